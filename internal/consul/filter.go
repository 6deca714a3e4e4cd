package consul

import (
	"encoding/json"
	"fmt"
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

// anchoredFilter is a node filter that matches exactly the given names:
// their compressed regex (pin.go), anchored.
func anchoredFilter(names []string) string {
	f, _ := pinFilter(names)
	return f
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

// MaxPinnedEvents bounds the user events one run may fire. Serf drops a
// user event whose Lamport time is more than its event buffer (512, which
// Consul keeps) behind the newest it has seen, and every run and every
// other user event in the cluster advance that one clock: a run's events
// go out one after another, so a burst near 512 could be partly dropped
// by a slow agent while other runs fire too. 128 leaves three quarters of
// the window to concurrent runs, and bounds the gossip a run costs (each
// event reaches every node) to 128 × 512 bytes per node. With compressed
// filters it is far from ordinary target sets: 5,000 sequential names fit
// one event.
const MaxPinnedEvents = 128

// TooManyEventsError is a target set whose pinned filters need more user
// events than MaxPinnedEvents.
type TooManyEventsError struct {
	Targets, Events, Limit int
}

func (e *TooManyEventsError) Error() string {
	return fmt.Sprintf("pinning these %d target nodes needs %d user events, over the limit of %d per run (Consul agents drop user events that fall too far behind): narrow the node, service or tag filter, or split the run",
		e.Targets, e.Events, e.Limit)
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

// pinnedGroups is pinnedFilters' split: the names each filter pins, runs of
// consecutive names, at most MaxPinnedEvents of them.
//
// Each group is grown greedily, but by galloping: it tries 1, 2, 4… names
// until a filter does not fit, then bisects between the last that fits and
// the first that does not, and ends the group where n names fit and n+1 do
// not. A compressed filter's size is not quite monotone in the names it
// holds (adding 4 to [1-35] makes [1-5]), so this may stop a little before
// some larger prefix that would fit; the price of building each filter
// O(log n) times rather than once per name, which at 5,000 names in one
// event would be quadratic.
func pinnedGroups(names []string, payload []byte, serviceFilter, tagFilter string, limit int) ([][]string, error) {
	size := func(group []string) (int, bool) {
		f, depth := pinFilter(group)
		return userEventSize(eventName, payload, f, serviceFilter, tagFilter), depth <= maxFilterGroups
	}
	fits := func(group []string) bool {
		s, ok := size(group)
		return ok && s <= limit
	}
	// The shortest pinned filter, naming one empty name: when even that
	// does not fit, no node name is to blame.
	if s, _ := size([]string{""}); s > limit {
		return nil, &EventTooLargeError{Size: s, Limit: limit}
	}
	for _, n := range names {
		// Agents compile the filter with Go's regexp, which refuses
		// invalid UTF-8 even when quoted.
		if !utf8.ValidString(n) {
			return nil, &TextError{Field: fmt.Sprintf("node name %q", n), Problem: "is not valid UTF-8: no node filter can name it"}
		}
	}
	// Most runs fit in one event: one filter to build, not a gallop.
	if len(names) > 1 && fits(names) {
		return [][]string{names[:len(names):len(names)]}, nil
	}
	var out [][]string
	for rest := names; len(rest) > 0; {
		if !fits(rest[:1]) {
			s, _ := size(rest[:1])
			return nil, &EventTooLargeError{Node: rest[0], Size: s, Limit: limit}
		}
		ok, bad := 1, 2 // rest[:ok] fits; rest[:bad] does not, or is past the end
		for bad <= len(rest) && fits(rest[:bad]) {
			ok, bad = bad, 2*bad
		}
		bad = min(bad, len(rest)+1)
		for bad-ok > 1 {
			mid := ok + (bad-ok)/2
			if fits(rest[:mid]) {
				ok = mid
			} else {
				bad = mid
			}
		}
		out = append(out, rest[:ok:ok])
		rest = rest[ok:]
	}
	if len(out) > MaxPinnedEvents {
		return nil, &TooManyEventsError{Targets: len(names), Events: len(out), Limit: MaxPinnedEvents}
	}
	return out, nil
}
