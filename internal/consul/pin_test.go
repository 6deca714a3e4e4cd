package consul

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"testing"
	"time"
)

// seq is n sequential names: format with 1…n.
func seq(format string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf(format, i+1)
	}
	return out
}

// nearMisses are names close to the members of names that are not
// members: prefixes, extensions, one rune changed, dropped or doubled.
func nearMisses(names []string) []string {
	set := map[string]bool{}
	for _, n := range names {
		set[n] = true
	}
	var out []string
	add := func(s string) {
		if !set[s] {
			out = append(out, s)
		}
	}
	add("")
	for _, n := range names {
		rs := []rune(n)
		for i := range rs {
			add(string(rs[:i]))
			add(string(rs[i+1:]))
			add(string(rs[:i]) + string(rs[i+1:]))
			add(string(rs[:i+1]) + string(rs[i:]))
			for _, d := range []rune{-1, 1, 'x' - rs[i]} {
				c := slices.Clone(rs)
				c[i] += d
				add(string(c))
			}
		}
		for _, s := range []string{"x", "0", "9", "\n", ".", "-", "é"} {
			add(n + s)
			add(s + n)
		}
	}
	return out
}

// checkExact fails unless filter compiles and matches every name and none
// of others.
func checkExact(t *testing.T, filter string, names, others []string) {
	t.Helper()
	re, err := regexp.Compile(filter)
	if err != nil {
		t.Fatalf("filter %q does not compile: %v", filter, err)
	}
	for _, n := range names {
		if !re.MatchString(n) {
			t.Fatalf("filter %q misses member %q", filter, n)
		}
	}
	set := map[string]bool{}
	for _, n := range names {
		set[n] = true
	}
	for _, n := range others {
		if !set[n] && re.MatchString(n) {
			t.Fatalf("filter %q matches %q, not a member", filter, n)
		}
	}
}

func TestPinFilter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		note  string
		names []string
		want  string // the filter; "" to check exactness only
	}{
		{note: "single name", names: []string{"web-1"}, want: `^(?:web-1)$`},
		{note: "metacharacters quoted", names: []string{"a+b", "db.1", "(x)|y"}, want: `^(?:\(x\)\|y|a\+b|db\.1)$`},
		{note: "metacharacters in a class", names: []string{"a.b", "a+b", "a]b", "a-b", "a^b", `a\b`, "a[b"}, want: `^(?:a[\+\-\.\[-\^]b)$`}, // [ \ ] ^ are a run
		{note: "posix class syntax is not read", names: []string{"[:alpha:]", ":"}},
		{note: "prefixes of one another", names: []string{"web", "web-1", "web-10"}, want: `^(?:web(?:-10?)?)$`},
		{note: "sequential 1-9", names: seq("scale5000-%05d", 9), want: `^(?:scale5000-0000[1-9])$`},
		{note: "sequential 001-999", names: seq("web-%03d", 999), want: `^(?:web-(?:0(?:0[1-9]|[1-9]\d)|[1-9]\d\d))$`},
		{note: "5000 sequential", names: seq("scale5000-%05d", 5000), want: `^(?:scale5000-0(?:0(?:0(?:0[1-9]|[1-9]\d)|[1-9]\d\d)|[1-4]\d\d\d|5000))$`},
		{note: "shared suffixes", names: []string{"a-prod", "b-prod", "c-prod", "a-dev"}, want: `^(?:a-(?:dev|prod)|[bc]-prod)$`},
		{note: "two-member runs are listed", names: []string{"n1", "n2", "n5", "n6", "n7"}, want: `^(?:n[125-7])$`},
		{note: "unicode", names: []string{"ünïcode", "ünïcodé", "🚀", "🚁"}, want: `^(?:ünïcod[eé]|[🚀🚁])$`},
		{note: "control characters and space", names: []string{"a\nb", "a b", "a\x00b", "a\tb"}},
		{note: "the empty name", names: []string{""}, want: `^(?:)$`},
		{note: "digits but not all", names: seq("n%d", 8), want: `^(?:n[1-8])$`},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			f, _ := pinFilter(tc.names)
			if tc.want != "" && f != tc.want {
				t.Errorf("filter %q, want %q", f, tc.want)
			}
			checkExact(t, f, tc.names, nearMisses(tc.names))
		})
	}
}

// TestPinFilterDeep: a chain of names, each a prefix of the next, nests a
// group per name; the packing keeps the nesting within what Go's parser
// accepts (its parse tree height limit is 1000) even with a large event
// limit, and every filter compiles.
func TestPinFilterDeep(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("ab", 400)
	var names []string
	for i := 1; i <= len(long); i++ {
		names = append(names, long[:i])
	}
	slices.Sort(names)
	groups, err := pinnedGroups(names, encodePayload("_rexec", sessionPlaceholder), "", "", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) < 2 {
		t.Fatalf("%d groups: the nesting bound did not split", len(groups))
	}
	for _, g := range groups {
		f, depth := pinFilter(g)
		if depth > maxFilterGroups {
			t.Errorf("depth %d over %d", depth, maxFilterGroups)
		}
		if _, err := syntax.Parse(f, syntax.Perl); err != nil {
			t.Fatalf("%d names: %v", len(g), err)
		}
		checkExact(t, f, g, nil)
	}
	// One group past the bound is what Go refuses: the bound is needed.
	f, _ := pinFilter(names)
	if _, err := syntax.Parse(f, syntax.Perl); err == nil {
		t.Logf("note: the unsplit filter of %d nested names parses too", len(names))
	}
}

// TestPinnedScale: how many events sequential names need, and that a
// target set needing more than MaxPinnedEvents is refused, naming both.
func TestPinnedScale(t *testing.T) {
	t.Parallel()
	payload := encodePayload("_rexec", sessionPlaceholder)
	for _, tc := range []struct {
		note       string
		names      []string
		maxEvents  int // at most
		wantTooMny bool
	}{
		{note: "1,000 sequential", names: seq("scale1000-%05d", 1000), maxEvents: 1},
		{note: "5,000 sequential", names: seq("scale5000-%05d", 5000), maxEvents: 1},
		{note: "50,000 sequential", names: seq("scale50000-%05d", 50000), maxEvents: 1},
		{note: "5,000 sequential, long names", names: seq("ip-10-0-%05d.eu-west-1.compute.internal", 5000), maxEvents: 1},
		{note: "5,000 random hex", names: randomNames(5000, 12), wantTooMny: true},
		{note: "50,000 random hex", names: randomNames(50000, 12), wantTooMny: true},
		{note: "1,000 random hex", names: randomNames(1000, 12), maxEvents: MaxPinnedEvents},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			groups, err := pinnedGroups(tc.names, payload, "", "", EventSizeLimitDefault)
			took := time.Since(start)
			var tooMany *TooManyEventsError
			if tc.wantTooMny {
				if !errors.As(err, &tooMany) || tooMany.Targets != len(tc.names) || tooMany.Events <= MaxPinnedEvents || tooMany.Limit != MaxPinnedEvents {
					t.Fatalf("err = %v, want a TooManyEventsError", err)
				}
				t.Logf("%d names need %d events: refused in %v: %v", len(tc.names), tooMany.Events, took, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d names in %d events, planned in %v", len(tc.names), len(groups), took)
			if len(groups) > tc.maxEvents {
				t.Errorf("%d events, want at most %d", len(groups), tc.maxEvents)
			}
			var all []string
			for _, g := range groups {
				f := anchoredFilter(g)
				if s := userEventSize(eventName, payload, f, "", ""); s > EventSizeLimitDefault {
					t.Errorf("event of %d bytes", s)
				}
				checkExact(t, f, g, nil)
				all = append(all, g...)
			}
			if !slices.Equal(all, tc.names) {
				t.Error("the groups are not the names, in order")
			}
		})
	}
}

// randomNames are n distinct sorted names of hex digits, which barely
// compress.
func randomNames(n, length int) []string {
	r := rand.New(rand.NewPCG(1, uint64(n)))
	set := map[string]bool{}
	for len(set) < n {
		b := make([]byte, length)
		for i := range b {
			b[i] = "0123456789abcdef"[r.IntN(16)]
		}
		set["n-"+string(b)] = true
	}
	out := make([]string, 0, n)
	for s := range set {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// TestPinnedGroupsAcrossGroups: with many groups, no filter matches a
// member of another group or a near miss.
func TestPinnedGroupsAcrossGroups(t *testing.T) {
	t.Parallel()
	names := randomNames(300, 6)
	names = append(names, seq("web-%03d", 200)...)
	slices.Sort(names)
	payload := encodePayload("_rexec", sessionPlaceholder)
	groups, err := pinnedGroups(names, payload, "web", "", EventSizeLimitDefault)
	if err != nil {
		t.Fatal(err)
	}
	misses := nearMisses(names)
	for _, g := range groups {
		var others []string
		for _, n := range names {
			if !slices.Contains(g, n) {
				others = append(others, n)
			}
		}
		checkExact(t, anchoredFilter(g), g, append(others, misses...))
	}
	t.Logf("%d names in %d events", len(names), len(groups))
}

// BenchmarkPinnedGroups5000 plans 5,000 sequential names, and 5,000 that
// barely compress (which are then refused for needing too many events).
func BenchmarkPinnedGroups5000(b *testing.B) {
	payload := encodePayload("_rexec", sessionPlaceholder)
	for _, bc := range []struct {
		note  string
		names []string
	}{
		{"sequential", seq("scale5000-%05d", 5000)},
		{"random", randomNames(5000, 12)},
	} {
		b.Run(bc.note, func(b *testing.B) {
			for b.Loop() {
				_, _ = pinnedGroups(bc.names, payload, "", "", EventSizeLimitDefault)
			}
		})
	}
}
