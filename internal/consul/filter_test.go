package consul

import (
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/rexec/rexec/internal/testenv"
)

func TestAnchoredFilter(t *testing.T) {
	t.Parallel()
	re := regexp.MustCompile(anchoredFilter([]string{"web-1", "db.1", "a+b"}))
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"web-1", true}, {"db.1", true}, {"a+b", true},
		{"web-10", false}, {"xweb-1", false}, {"dbx1", false}, {"aab", false}, {"", false},
	} {
		if got := re.MatchString(tc.name); got != tc.want {
			t.Errorf("%q matches: %t, want %t", tc.name, got, tc.want)
		}
	}
}

func TestPinnedFilters(t *testing.T) {
	t.Parallel()
	payload := encodePayload("_rexec", strings.Repeat("0", 36))
	var names []string
	for i := range 40 {
		names = append(names, strings.Repeat(string(rune('a'+i%26)), 20)+"-"+string(rune('a'+i/26)))
	}
	slices.Sort(names)
	filters, err := pinnedFilters(names, payload, "web", "v1", 512)
	if err != nil {
		t.Fatal(err)
	}
	if len(filters) < 2 {
		t.Fatalf("%d filters for %d long names", len(filters), len(names))
	}
	// Every name in exactly one filter, every event within the limit.
	for _, n := range names {
		hits := 0
		for _, f := range filters {
			if regexp.MustCompile(f).MatchString(n) {
				hits++
			}
		}
		if hits != 1 {
			t.Errorf("%s matched by %d filters", n, hits)
		}
	}
	for _, f := range filters {
		if s := userEventSize(eventName, payload, f, "web", "v1"); s > 512 {
			t.Errorf("event of %d bytes", s)
		}
	}
}

// TestUserEventSizeMatchesConsul pins the size computation against a real
// agent: the longest node filter the agent accepts is at most 8 bytes longer
// than the longest the computation allows (the slack of counting the Lamport
// time at its largest), and never shorter.
func TestUserEventSizeMatchesConsul(t *testing.T) {
	t.Parallel()
	cl := testenv.Cluster(t)
	a, err := api.NewClient(&api.Config{Address: cl.HTTPAddr(), HttpClient: http.DefaultClient})
	if err != nil {
		t.Fatal(err)
	}
	payload := encodePayload("rexec-test/size", strings.Repeat("0", 36))
	filter := func(n int) string { return "^nomatch" + strings.Repeat("x", n) + "$" }
	for _, tc := range []struct {
		note     string
		svc, tag string
	}{
		{note: "node filter only"},
		{note: "with service and tag", svc: "^nosuchservice$", tag: "^t$"},
		{note: "long service filter", svc: "^" + strings.Repeat("s", 200) + "$"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			computed := 0
			for userEventSize(eventName, payload, filter(computed+1), tc.svc, tc.tag) <= 512 {
				computed++
			}
			accepted := func(n int) bool {
				_, _, err := a.Event().Fire(&api.UserEvent{Name: eventName, Payload: payload, NodeFilter: filter(n), ServiceFilter: tc.svc, TagFilter: tc.tag}, nil)
				if err != nil && !strings.Contains(err.Error(), "exceeds configured limit of 512 bytes") {
					t.Fatalf("fire: %v", err)
				}
				return err == nil
			}
			real := computed
			for accepted(real + 1) {
				real++
			}
			if !accepted(computed) {
				t.Errorf("a filter of the computed maximum (%d) is refused", computed)
			}
			if real-computed > 8 {
				t.Errorf("agent accepts %d filler bytes, computation allows %d: too pessimistic", real, computed)
			}
		})
	}
}
