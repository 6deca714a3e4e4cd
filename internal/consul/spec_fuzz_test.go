package consul

import (
	"encoding/json"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// argvSep separates the words of a fuzzed argv: the fuzzer has no []string.
const argvSep = "\x1f"

// FuzzSpecValidate: Validate never panics, and a spec it accepts is one the
// agents receive exactly as given: its job spec fits the KV limit, decodes
// back to the same command, script and wait, and every text field is valid
// UTF-8 without NUL.
func FuzzSpecValidate(f *testing.F) {
	for _, s := range []struct {
		argv                      string
		script                    []byte
		noShell                   bool
		node, service, tag, prefx string
		wait, waitRepl            int64
		kvLimit                   int
	}{
		{argv: "uptime"},
		{argv: "echo" + argvSep + "hello world", node: "^web-", service: "web", tag: "v1", prefx: "_rexec/team"},
		{argv: "ls" + argvSep + "-l", noShell: true, wait: int64(time.Second)},
		{script: []byte("#!/bin/sh\necho \x00\xff"), kvLimit: 1024},
		{script: make([]byte, 800), kvLimit: 1024},
		{argv: "a\x00b"},
		{argv: "echo" + argvSep + "\xff\xfe"},
		{argv: "" + argvSep + "x", noShell: true},
		{argv: " ", node: "\x00"},
		{argv: "true", node: "(", service: "[", tag: "v1"},
		{argv: "true", tag: "v1"},
		{argv: "true", prefx: "_rexec/../x"},
		{argv: "true", prefx: "/_rexec"},
		{argv: "true", prefx: "_rexec/\xc3"},
		{argv: "true", wait: -1, waitRepl: -1},
		{argv: "true", node: `\x00`},
	} {
		f.Add(s.argv, s.script, s.script != nil, s.noShell, s.node, s.service, s.tag, s.prefx, s.wait, s.waitRepl, s.kvLimit)
	}
	f.Fuzz(func(t *testing.T, argv string, script []byte, hasScript, noShell bool, node, service, tag, prefix string, wait, waitRepl int64, kvLimit int) {
		s := Spec{NoShell: noShell, NodeFilter: node, ServiceFilter: service, TagFilter: tag,
			Prefix: prefix, Wait: time.Duration(wait), WaitRepl: time.Duration(waitRepl)}
		if argv != "" {
			s.Argv = strings.Split(argv, argvSep)
		}
		if hasScript {
			s.Script = script
			if s.Script == nil {
				s.Script = []byte{}
			}
		}
		s = s.WithDefaults()
		if kvLimit != 0 {
			// Small limits make SpecTooLargeError reachable.
			kvLimit = 1024 + abs(kvLimit)%4096
		}
		err := s.Validate(kvLimit)
		if again := s.Validate(kvLimit); (err == nil) != (again == nil) || (err != nil && err.Error() != again.Error()) {
			t.Fatalf("Validate is not deterministic: %v, then %v", err, again)
		}
		if err != nil {
			var tooLarge *SpecTooLargeError
			if errors.As(err, &tooLarge) && tooLarge.Size <= tooLarge.Limit {
				t.Fatalf("SpecTooLargeError within the limit: %v", err)
			}
			return
		}
		limit := kvLimit
		if limit == 0 {
			limit = KVMaxValueSizeDefault
		}
		b, err := s.encodeJob()
		if err != nil {
			t.Fatalf("accepted spec does not encode: %v", err)
		}
		if len(b) > limit {
			t.Fatalf("accepted spec encodes to %d bytes, over the limit of %d", len(b), limit)
		}
		var got jobSpec
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("job spec does not decode: %v", err)
		}
		want := s.job()
		if got.Command != want.Command || !slices.Equal(got.Args, want.Args) || string(got.Script) != string(want.Script) || got.Wait != want.Wait {
			t.Fatalf("the agent would read %+v, not %+v", got, want)
		}
		if s.Script == nil && strings.TrimSpace(got.Command+strings.Join(got.Args, "")) == "" {
			t.Fatalf("accepted spec has no command: %+v", got)
		}
		for i, a := range s.Argv {
			if CheckText("argv", a) != nil {
				t.Fatalf("accepted argv[%d] %q", i, a)
			}
		}
		for _, f := range []string{s.NodeFilter, s.ServiceFilter, s.TagFilter, s.Prefix} {
			if CheckText("field", f) != nil {
				t.Fatalf("accepted text %q", f)
			}
		}
		for _, f := range []string{s.NodeFilter, s.ServiceFilter, s.TagFilter} {
			if _, err := regexp.Compile(f); err != nil {
				t.Fatalf("accepted filter %q does not compile: %v", f, err)
			}
		}
		if validatePrefix(s.Prefix) != nil || s.Wait <= 0 || s.WaitRepl < 0 {
			t.Fatalf("accepted prefix %q, wait %s, wait-repl %s", s.Prefix, s.Wait, s.WaitRepl)
		}
	})
}

func abs(n int) int {
	if n < 0 {
		if n == -n { // the most negative int
			return 0
		}
		return -n
	}
	return n
}
