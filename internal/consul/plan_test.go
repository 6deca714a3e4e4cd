package consul

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestCheckPlan(t *testing.T) {
	t.Parallel()
	c, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	small, err := New(Config{KVMaxValueSize: 1024})
	if err != nil {
		t.Fatal(err)
	}
	nodes := func(names ...string) []Node {
		out := make([]Node, len(names))
		for i, n := range names {
			out[i] = Node{Name: n}
		}
		return out
	}
	many := make([]string, 200)
	for i := range many {
		many[i] = fmt.Sprintf("node-%03d-%s", i, strings.Repeat("x", 40))
	}
	spec := Spec{Argv: []string{"true"}}
	for _, tc := range []struct {
		note      string
		client    *Client
		spec      Spec
		targets   []Node
		wantErr   string // part of the message; "" for success
		event     bool   // the error is an *EventTooLargeError...
		eventNode string // ...naming this node
	}{
		{note: "one node", spec: spec, targets: nodes("web-1")},
		{note: "many long names split over events", spec: spec, targets: nodes(many...)},
		{note: "a 63-byte DNS label", spec: spec, targets: nodes(strings.Repeat("n", 63))},
		{note: "no targets", spec: spec, wantErr: "match no alive node"},
		{note: "duplicate target", spec: spec, targets: nodes("a", "a"), wantErr: "duplicate target"},
		{note: "empty name", spec: spec, targets: nodes(""), wantErr: "empty node name"},
		{note: "node name too long for an event", spec: spec, targets: nodes("web-1", strings.Repeat("n", 400)),
			wantErr: "is too long to fit", event: true, eventNode: strings.Repeat("n", 400)},
		{note: "service filter leaves no room", spec: Spec{Argv: []string{"true"}, ServiceFilter: "web|" + strings.Repeat("s", 450)},
			targets: nodes("web-1"), wantErr: "shorten them", event: true},
		{note: "tag filter leaves no room", spec: Spec{Argv: []string{"true"}, ServiceFilter: "web", TagFilter: strings.Repeat("t", 450)},
			targets: nodes("web-1"), wantErr: "shorten them", event: true},
		{note: "prefix leaves no room", spec: Spec{Argv: []string{"true"}, Prefix: "_rexec/" + strings.Repeat("p", 450)},
			targets: nodes("web-1"), wantErr: "shorten them", event: true},
		{note: "5,000 sequential names fit", spec: spec, targets: nodes(seq("web-%05d", 5000)...)},
		{note: "too many events", spec: spec, targets: nodes(randomNames(5000, 12)...),
			wantErr: "needs 200 user events, over the limit of 128 per run"},
		{note: "invalid UTF-8 node name", spec: spec, targets: nodes("web-\xff"), wantErr: "not valid UTF-8"},
		{note: "spec is validated", spec: Spec{Argv: []string{"a\x00"}}, targets: nodes("web-1"), wantErr: "NUL"},
		{note: "the client's KV limit applies", client: small, spec: Spec{Script: make([]byte, 1000)}, targets: nodes("web-1"),
			wantErr: "over Consul's KV value limit of 1024 bytes"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			cl := c
			if tc.client != nil {
				cl = tc.client
			}
			err := cl.CheckPlan(tc.spec, tc.targets)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckPlan: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("CheckPlan: %v, want %q", err, tc.wantErr)
			}
			var ev *EventTooLargeError
			switch isEvent := errors.As(err, &ev); {
			case isEvent != tc.event:
				t.Errorf("CheckPlan: %T, want an *EventTooLargeError: %t", err, tc.event)
			case isEvent && (ev.Node != tc.eventNode || ev.Limit != EventSizeLimitDefault || ev.Size <= ev.Limit):
				t.Errorf("EventTooLargeError %+v, want node %q and a size over %d", ev, tc.eventNode, EventSizeLimitDefault)
			}
		})
	}
}

// TestCheckSpec: before the targets are known, the spec and the room left
// in the event are checked; nothing about nodes is.
func TestCheckSpec(t *testing.T) {
	t.Parallel()
	c, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckSpec(Spec{Argv: []string{"true"}}); err != nil {
		t.Errorf("CheckSpec: %v", err)
	}
	var ev *EventTooLargeError
	if err := c.CheckSpec(Spec{Argv: []string{"true"}, ServiceFilter: strings.Repeat("s", 500)}); !errors.As(err, &ev) || ev.Node != "" {
		t.Errorf("CheckSpec with a huge service filter: %v, want an EventTooLargeError without a node", err)
	}
	if err := c.CheckSpec(Spec{Argv: []string{"\x00"}}); err == nil {
		t.Error("CheckSpec accepts a NUL in argv")
	}
}
