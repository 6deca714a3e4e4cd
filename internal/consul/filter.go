package consul

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
)

// eventName is the user event agents treat as a remote-exec request.
const eventName = "_rexec"

// eventPayload is the event's payload: consul's rExecEvent.
type eventPayload struct {
	Prefix  string
	Session string
}

func encodePayload(prefix, session string) []byte {
	b, _ := json.Marshal(eventPayload{Prefix: prefix, Session: session})
	return b
}

// userEventSize is the number of bytes Consul checks against its user event
// limit. Serf checks twice (serf.UserEvent): before encoding, the internal
// event name "consul:event:<name>" plus the msgpack encoding of
// agent.UserEvent, which carries field names, a 36-byte event ID and a
// version besides the payload and filters; after encoding, its own message
// around that, with a Lamport time whose size grows with the cluster's event
// history (counted here at its largest, 9 bytes). The second check binds, so
// the room left for filters is well under what the first error message
// suggests; a test pins this against a real agent.
func userEventSize(name string, payload []byte, nodeFilter, serviceFilter, tagFilter string) int {
	inner := 1                           // fixmap header (at most 7 entries)
	inner += mpStr(2) + mpStr(36)        // "ID": UUID
	inner += mpStr(1) + mpStr(len(name)) // "n"
	if len(payload) > 0 {
		inner += mpStr(1) + mpBin(len(payload)) // "p"
	}
	for _, f := range []string{nodeFilter, serviceFilter, tagFilter} {
		if f != "" {
			inner += mpStr(2) + mpStr(len(f)) // "nf", "sf", "tf"
		}
	}
	inner += mpStr(1) + 1 // "v": positive fixint

	serfName := len("consul:event:") + len(name)
	before := serfName + inner
	// serf's messageUserEvent, with its default handle (no str8, no bin).
	after := 1 + 1 // message type, fixmap header
	after += mpRaw(len("LTime")) + 9
	after += mpRaw(len("Name")) + mpRaw(serfName)
	after += mpRaw(len("Payload")) + mpRaw(inner)
	after += mpRaw(len("CC")) + 1
	return max(before, after)
}

// mpRaw is the size of a string or byte slice of n bytes in msgpack's old
// spec, which serf's handle writes: fixraw, raw16, raw32.
func mpRaw(n int) int {
	switch {
	case n < 32:
		return 1 + n
	case n < 1<<16:
		return 3 + n
	}
	return 5 + n
}

// mpStr is the msgpack size of a string of n bytes (str8 is used, as
// Consul's handle sets WriteExt).
func mpStr(n int) int {
	switch {
	case n < 32:
		return 1 + n
	case n < 1<<8:
		return 2 + n
	case n < 1<<16:
		return 3 + n
	}
	return 5 + n
}

// mpBin is the msgpack size of a byte slice of n bytes.
func mpBin(n int) int {
	switch {
	case n < 1<<8:
		return 2 + n
	case n < 1<<16:
		return 3 + n
	}
	return 5 + n
}

// anchoredFilter is a node filter that matches exactly the given names.
func anchoredFilter(names []string) string {
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = regexp.QuoteMeta(n)
	}
	return "^(?:" + strings.Join(quoted, "|") + ")$"
}

// pinnedFilters splits names (sorted, distinct) into as few anchored node
// filters as fit, each in an event within limit bytes together with payload
// and the service and tag filters.
func pinnedFilters(names []string, payload []byte, serviceFilter, tagFilter string, limit int) ([]string, error) {
	var out []string
	var group []string
	for _, n := range names {
		try := append(group, n)
		if userEventSize(eventName, payload, anchoredFilter(try), serviceFilter, tagFilter) <= limit {
			group = try
			continue
		}
		if len(group) == 0 {
			return nil, fmt.Errorf("node name %q is too long to fit a %d-byte user event with this prefix and filters", n, limit)
		}
		out = append(out, anchoredFilter(group))
		group = []string{n}
		if userEventSize(eventName, payload, anchoredFilter(group), serviceFilter, tagFilter) > limit {
			return nil, fmt.Errorf("node name %q is too long to fit a %d-byte user event with this prefix and filters", n, limit)
		}
	}
	if len(group) > 0 {
		out = append(out, anchoredFilter(group))
	}
	return out, nil
}
