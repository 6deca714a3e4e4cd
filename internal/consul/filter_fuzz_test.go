package consul

import (
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// nameSep separates the node names of a fuzzed target set.
const nameSep = "\x1f"

// FuzzPinnedFilters: the pinned node filters compile as Go regexps (which
// agents use), match every target name exactly once and no other name (of
// many near misses: prefixes, extensions, one rune changed, dropped or
// doubled), and each event fits the limit as userEventSize counts it. When
// it fails, the error says truly why.
func FuzzPinnedFilters(f *testing.F) {
	long := strings.Repeat("x", 63)
	for _, s := range []struct {
		names, other, prefix, service, tag string
		limit                              int
	}{
		{names: "web-1" + nameSep + "web-2", other: "web-3", prefix: "_rexec"},
		{names: "db.1" + nameSep + "a+b" + nameSep + "(x)|y", other: "dbx1", prefix: "_rexec", service: "web", tag: "v1"},
		{names: "long-1-" + long + nameSep + "long-2-" + long + nameSep + "long-3-" + long + nameSep + "long-4-" + long +
			nameSep + "long-5-" + long + nameSep + "long-6-" + long + nameSep + "long-7-" + long, other: "long-", prefix: "_rexec"},
		{names: "web-1", other: "web-1\n", prefix: "_rexec"},
		{names: "a\nb" + nameSep + "c", other: "a", prefix: "_rexec"},
		{names: "ünïcode" + nameSep + "🚀", other: "unicode", prefix: "_rexec/é"},
		{names: "web-\xff", prefix: "_rexec"},
		{names: "n\x00ul", other: "n", prefix: "_rexec"},
		{names: strings.Repeat("n", 400), prefix: "_rexec"},
		{names: "web-1", prefix: "_rexec", service: strings.Repeat("s", 450)},
		{names: "web-1", prefix: "_rexec/" + strings.Repeat("p", 450)},
		{names: "a" + nameSep + "b", prefix: "_rexec", limit: 1},
		{names: "web-1" + nameSep + "web-2" + nameSep + "web-3", other: "web-4", prefix: "_rexec", limit: 2000},
		{names: strings.Join(seq("web-%03d", 120), nameSep), other: "web-000", prefix: "_rexec"},
		{names: "web" + nameSep + "web-1" + nameSep + "web-10" + nameSep + "web-2", other: "web-", prefix: "_rexec"},
		{names: "a.b" + nameSep + "a]b" + nameSep + "a^b" + nameSep + `a\b` + nameSep + "a-b" + nameSep + "[:a:]", other: "a_b", prefix: "_rexec"},
		{names: "n-ä1" + nameSep + "n-ä2" + nameSep + "n-ä3" + nameSep + "n-ö3", other: "n-ö1", prefix: "_rexec", limit: 130},
	} {
		f.Add(s.names, s.other, s.prefix, s.service, s.tag, s.limit)
	}
	f.Fuzz(func(t *testing.T, namesIn, other, prefix, service, tag string, limit int) {
		if limit == 0 {
			limit = EventSizeLimitDefault
		} else {
			limit = 128 + abs(limit)%1920
		}
		var names []string
		for _, n := range strings.Split(namesIn, nameSep) {
			if n != "" {
				names = append(names, n)
			}
		}
		slices.Sort(names)
		names = slices.Compact(names)
		payload := encodePayload(prefix, sessionPlaceholder)

		filters, err := pinnedFilters(names, payload, service, tag, limit)
		if err != nil {
			var ev *EventTooLargeError
			var tooMany *TooManyEventsError
			switch {
			case errors.As(err, &tooMany):
				if tooMany.Targets != len(names) || tooMany.Events <= tooMany.Limit || tooMany.Limit != MaxPinnedEvents {
					t.Fatalf("%v, for %d names", err, len(names))
				}
			case errors.As(err, &ev) && ev.Node == "":
				if s := userEventSize(eventName, payload, anchoredFilter([]string{""}), service, tag); s <= limit || s != ev.Size {
					t.Fatalf("%v, but the shortest pinned event is %d bytes", err, s)
				}
			case errors.As(err, &ev):
				if !slices.Contains(names, ev.Node) {
					t.Fatalf("%v names a node that is not a target", err)
				}
				if s := userEventSize(eventName, payload, anchoredFilter([]string{ev.Node}), service, tag); s <= limit || s != ev.Size {
					t.Fatalf("%v, but the node's own event is %d bytes", err, s)
				}
			case !slices.ContainsFunc(names, func(n string) bool { return !utf8.ValidString(n) }):
				t.Fatalf("unexpected error: %v", err)
			}
			return
		}
		if len(names) == 0 {
			if len(filters) != 0 {
				t.Fatalf("%d filters for no names", len(filters))
			}
			return
		}
		res := make([]*regexp.Regexp, len(filters))
		for i, f := range filters {
			if res[i], err = regexp.Compile(f); err != nil {
				t.Fatalf("filter %q does not compile: %v", f, err)
			}
			if s := userEventSize(eventName, payload, f, service, tag); s > limit {
				t.Fatalf("event of %d bytes, over the limit of %d", s, limit)
			}
		}
		hits := func(n string) int {
			c := 0
			for _, re := range res {
				if re.MatchString(n) {
					c++
				}
			}
			return c
		}
		for _, n := range names {
			if h := hits(n); h != 1 {
				t.Fatalf("target %q matched by %d filters", n, h)
			}
		}
		outsiders := []string{other, "", other + "\n", "\n" + other}
		for _, n := range names {
			outsiders = append(outsiders, n+"x", "x"+n, n+"\n", n[:len(n)-1], n[1:], strings.ToUpper(n), n+n)
		}
		// Near misses cost about 10 strings per rune of the names, each
		// matched against every filter: within reason for the fuzzer.
		if total := len(strings.Join(names, "")); total*len(filters) <= 4000 {
			outsiders = append(outsiders, nearMisses(names)...)
		}
		for _, n := range outsiders {
			if !slices.Contains(names, n) && hits(n) != 0 {
				t.Fatalf("%q is not a target but a filter matches it", n)
			}
		}
	})
}
