package consul

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
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

// EventTooLargeError is a pinned event that cannot fit the user event size
// limit. Node is empty when the prefix and the service and tag filters alone
// leave no room for any node filter; otherwise it names the node whose name
// does not fit even in an event of its own.
type EventTooLargeError struct {
	Node        string
	Size, Limit int
}

func (e *EventTooLargeError) Error() string {
	if e.Node == "" {
		return fmt.Sprintf("the prefix and the service and tag filters make a %d-byte user event, over Consul's limit of %d bytes: shorten them",
			e.Size, e.Limit)
	}
	return fmt.Sprintf("node name %q is too long to fit a %d-byte user event with this prefix and these filters (the event naming it alone is %d bytes)",
		e.Node, e.Limit, e.Size)
}

// pinnedFilters splits names (sorted, distinct) into as few anchored node
// filters as fit, each in an event within limit bytes together with payload
// and the service and tag filters.
func pinnedFilters(names []string, payload []byte, serviceFilter, tagFilter string, limit int) ([]string, error) {
	groups, err := pinnedGroups(names, payload, serviceFilter, tagFilter, limit)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(groups))
	for i, g := range groups {
		out[i] = anchoredFilter(g)
	}
	return out, nil
}

// pinnedGroups is pinnedFilters' split: the names each filter pins.
func pinnedGroups(names []string, payload []byte, serviceFilter, tagFilter string, limit int) ([][]string, error) {
	size := func(group []string) int {
		return userEventSize(eventName, payload, anchoredFilter(group), serviceFilter, tagFilter)
	}
	// The shortest pinned filter, naming one empty name: when even that
	// does not fit, no node name is to blame.
	if s := size([]string{""}); s > limit {
		return nil, &EventTooLargeError{Size: s, Limit: limit}
	}
	var out [][]string
	var group []string
	for _, n := range names {
		// Agents compile the filter with Go's regexp, which refuses
		// invalid UTF-8 even when quoted.
		if !utf8.ValidString(n) {
			return nil, &TextError{Field: fmt.Sprintf("node name %q", n), Problem: "is not valid UTF-8: no node filter can name it"}
		}
		try := append(group, n)
		if size(try) <= limit {
			group = try
			continue
		}
		if len(group) == 0 {
			return nil, &EventTooLargeError{Node: n, Size: size(try), Limit: limit}
		}
		out = append(out, group)
		group = []string{n}
		if s := size(group); s > limit {
			return nil, &EventTooLargeError{Node: n, Size: s, Limit: limit}
		}
	}
	if len(group) > 0 {
		out = append(out, group)
	}
	return out, nil
}
