package consul

import (
	"encoding/binary"
	"regexp"
	"slices"
	"strings"
)

// Compressed node filters.
//
// Every user event is gossiped to every node, so the events a run fires
// cost nodes × events in gossip, and serf drops a user event that is more
// than its event buffer (512 Lamport ticks) behind the newest it has seen.
// A pinned filter that spells out each name (^(?:a|b|c…)$) needs an event
// per few dozen names; the same exact set written as the minimal acyclic
// automaton of the names, as a regex, needs a handful of bytes for runs of
// sequential names (web-001…web-999 is ^(?:web-(?:0(?:0[1-9]|[1-9]\d)|[1-9]\d\d))$).
//
// Exactness: the names go into a trie over runes, whose language is
// exactly the set; merging states with the same finality and the same
// labelled edges to (already merged) states does not change the language
// of any state, so the minimised automaton accepts exactly the set. The
// regex of a state s is written as the union, over the distinct targets t
// of its edges, of [the runes leading from s to t] followed by the regex of
// t, plus the empty string when s is final: by induction on the (acyclic)
// automaton, it matches exactly the language of s. Literals are QuoteMeta'd
// and class members are escaped when not alphanumeric, so no name's rune
// is read as syntax; the filter is anchored with ^(?:…)$, and without the m
// flag Go's $ matches only at the end of the text, so a name matches iff it
// is in the set. Agents run regexp.MatchString, which asks whether any
// match exists, so the order of alternatives does not matter.

// maxFilterGroups bounds the nesting of groups in a compressed filter: Go's
// parser refuses a parse tree higher than 1000, and each group adds at most
// three levels (concatenation, alternation, ?). A group of names whose
// filter would nest deeper is split as if it were too large.
const maxFilterGroups = 250

// pinFilter is the compressed node filter of a set of names and the depth
// of its nested groups. The names need not be sorted; duplicates are
// harmless.
func pinFilter(names []string) (string, int) {
	a := buildAutomaton(names)
	body, depth := a.emit(a.root)
	if a.grouped(a.root) {
		return "^" + body + "$", depth // already one group: ^(?:a|b)$
	}
	return "^(?:" + body + ")$", depth
}

// trieNode is a state of the trie of a set of names, edges sorted by rune.
type trieNode struct {
	final bool
	edges []trieEdge
}

type trieEdge struct {
	r  rune
	to *trieNode
}

// state is a state of the minimised automaton: edges sorted by rune, their
// targets indices into automaton.states.
type state struct {
	final bool
	edges []stateEdge
}

type stateEdge struct {
	r  rune
	to int
}

type automaton struct {
	states []state
	root   int
	memo   map[int]emitted
}

type emitted struct {
	re    string
	depth int
}

func buildAutomaton(names []string) *automaton {
	root := &trieNode{}
	for _, n := range names {
		t := root
		for _, r := range n {
			i, found := slices.BinarySearchFunc(t.edges, r, func(e trieEdge, r rune) int { return int(e.r - r) })
			if !found {
				t.edges = slices.Insert(t.edges, i, trieEdge{r: r, to: &trieNode{}})
			}
			t = t.edges[i].to
		}
		t.final = true
	}
	a := &automaton{memo: map[int]emitted{}}
	register := map[string]int{}
	var key []byte
	// Bottom-up: a state's signature is its finality and its edges to
	// states already merged, so equal signatures are equal languages.
	var merge func(t *trieNode) int
	merge = func(t *trieNode) int {
		edges := make([]stateEdge, len(t.edges))
		for i, e := range t.edges {
			edges[i] = stateEdge{r: e.r, to: merge(e.to)}
		}
		key = key[:0]
		if t.final {
			key = append(key, 1)
		} else {
			key = append(key, 0)
		}
		for _, e := range edges {
			key = binary.AppendUvarint(key, uint64(e.r))
			key = binary.AppendUvarint(key, uint64(e.to))
		}
		if id, ok := register[string(key)]; ok {
			return id
		}
		id := len(a.states)
		a.states = append(a.states, state{final: t.final, edges: edges})
		register[string(key)] = id
		return id
	}
	a.root = merge(root)
	return a
}

// grouped reports whether the regex of state id is a group of
// alternatives, (?:a|b), which needs no other group around it.
func (a *automaton) grouped(id int) bool {
	s := a.states[id]
	if s.final || len(s.edges) < 2 {
		return false
	}
	for _, e := range s.edges[1:] {
		if e.to != s.edges[0].to {
			return true
		}
	}
	return false
}

// emit is the regex of the language of state id (unanchored, safe to
// concatenate: no top-level |) and the depth of its nested groups.
func (a *automaton) emit(id int) (string, int) {
	if e, ok := a.memo[id]; ok {
		return e.re, e.depth
	}
	s := a.states[id]
	// The runes leading to each target, targets in the order of their
	// first rune.
	var targets []int
	runes := map[int][]rune{}
	for _, e := range s.edges {
		if _, ok := runes[e.to]; !ok {
			targets = append(targets, e.to)
		}
		runes[e.to] = append(runes[e.to], e.r)
	}
	alts := make([]string, len(targets))
	depth := 0
	atom := false // the only alternative is a single character or class
	for i, t := range targets {
		sub, d := a.emit(t)
		alts[i] = runeClass(runes[t]) + sub
		depth = max(depth, d)
		atom = sub == ""
	}
	var re string
	switch {
	case len(alts) == 0:
		re = ""
	case len(alts) == 1 && !s.final:
		re = alts[0]
	case len(alts) == 1 && atom:
		re = alts[0] + "?"
	case len(alts) == 1:
		re, depth = "(?:"+alts[0]+")?", depth+1
	default:
		re, depth = "(?:"+strings.Join(alts, "|")+")", depth+1
		if s.final {
			re += "?"
		}
	}
	a.memo[id] = emitted{re, depth}
	return re, depth
}

// runeClass is a single regex atom matching exactly the given runes
// (sorted, distinct): a quoted literal, \d, or a bracketed class with
// ranges for runs of three or more.
func runeClass(rs []rune) string {
	if len(rs) == 1 {
		return regexp.QuoteMeta(string(rs[0]))
	}
	if len(rs) == 10 && rs[0] == '0' && rs[9] == '9' {
		return `\d` // ASCII digits only in Go's syntax
	}
	var b strings.Builder
	b.WriteByte('[')
	for i := 0; i < len(rs); {
		j := i
		for j+1 < len(rs) && rs[j+1] == rs[j]+1 {
			j++
		}
		switch {
		case j-i >= 2:
			classRune(&b, rs[i])
			b.WriteByte('-')
			classRune(&b, rs[j])
		default:
			j = i
			classRune(&b, rs[i])
		}
		i = j + 1
	}
	b.WriteByte(']')
	return b.String()
}

// classRune writes r as a member of a bracketed class: ASCII punctuation
// is escaped (] [ ^ - \ and [: would otherwise be syntax, and Go reads any
// escaped punctuation as itself); letters, digits and everything else are
// themselves, as Go's parser takes any other rune literally in a class.
func classRune(b *strings.Builder, r rune) {
	if r < 0x80 && r > ' ' && !('0' <= r && r <= '9' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z') {
		b.WriteByte('\\')
	}
	b.WriteRune(r)
}
