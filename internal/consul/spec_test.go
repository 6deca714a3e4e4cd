package consul

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	ok := Spec{Argv: []string{"uptime"}}
	for _, tc := range []struct {
		note    string
		edit    func(*Spec)
		wantErr string // part of the message; "" for success
	}{
		{note: "plain command", edit: func(*Spec) {}},
		{note: "UTF-8 everywhere", edit: func(s *Spec) {
			s.Argv = []string{"echo", "héllo ✓"}
			s.NodeFilter, s.ServiceFilter, s.TagFilter, s.Prefix = "^nœud", "sérvice", "étiquette", "_rexec/é"
		}},
		{note: "a filter may match a NUL by escape", edit: func(s *Spec) { s.NodeFilter = `\x00` }},
		{note: "script with any bytes", edit: func(s *Spec) { s.Argv, s.Script = nil, []byte("\x00\xff\xfe") }},
		{note: "NUL in argv", edit: func(s *Spec) { s.Argv = []string{"echo", "a\x00b"} }, wantErr: "argv[1] contains a NUL byte"},
		{note: "NUL alone in argv", edit: func(s *Spec) { s.Argv = []string{"\x00"} }, wantErr: "argv[0] contains a NUL byte"},
		{note: "NUL in argv without a shell", edit: func(s *Spec) { s.NoShell, s.Argv = true, []string{"ls", "\x00"} }, wantErr: "argv[1] contains a NUL byte"},
		{note: "invalid UTF-8 in argv", edit: func(s *Spec) { s.Argv = []string{"echo", "\xff"} }, wantErr: "argv[1] is not valid UTF-8"},
		{note: "NUL in node filter", edit: func(s *Spec) { s.NodeFilter = "web\x00" }, wantErr: "node filter contains a NUL byte"},
		{note: "NUL in service filter", edit: func(s *Spec) { s.ServiceFilter = "\x00" }, wantErr: "service filter contains a NUL byte"},
		{note: "NUL in tag filter", edit: func(s *Spec) { s.ServiceFilter, s.TagFilter = "web", "v\x001" }, wantErr: "tag filter contains a NUL byte"},
		{note: "invalid UTF-8 in node filter", edit: func(s *Spec) { s.NodeFilter = "\xc3" }, wantErr: "node filter is not valid UTF-8"},
		{note: "NUL in prefix", edit: func(s *Spec) { s.Prefix = "_rexec/\x00" }, wantErr: "prefix contains a NUL byte"},
		{note: "invalid UTF-8 in prefix", edit: func(s *Spec) { s.Prefix = "_rexec/\xfe" }, wantErr: "prefix is not valid UTF-8"},
		{note: "empty program without a shell", edit: func(s *Spec) { s.NoShell, s.Argv = true, []string{"", "x"} }, wantErr: "needs a program name"},
		{note: "blank command", edit: func(s *Spec) { s.Argv = []string{" ", "\t"} }, wantErr: "no command"},
		{note: "invalid regex", edit: func(s *Spec) { s.NodeFilter = "(" }, wantErr: "invalid node filter"},
		{note: "tag without service", edit: func(s *Spec) { s.TagFilter = "v1" }, wantErr: "-tag requires -service"},
		{note: "dot segment in prefix", edit: func(s *Spec) { s.Prefix = "_rexec/../x" }, wantErr: ". or .. segments"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			s := ok
			tc.edit(&s)
			err := s.WithDefaults().Validate(0)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Validate: %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestCheckText(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		problem string // "" when accepted
	}{
		{"", ""}, {"plain", ""}, {"ünïcödé ✓ 🚀", ""}, {"\t\n", ""}, {`\x00`, ""},
		{"\x00", "contains a NUL byte"}, {"a\x00", "contains a NUL byte"},
		{"\xff", "is not valid UTF-8"}, {"\xed\xa0\x80", "is not valid UTF-8"}, // a lone surrogate
		{"\xc3", "is not valid UTF-8"}, {"\x00\xff", "contains a NUL byte"},
	} {
		err := CheckText("field", tc.in)
		var te *TextError
		switch {
		case tc.problem == "" && err != nil:
			t.Errorf("CheckText(%q) = %v, want nil", tc.in, err)
		case tc.problem != "" && (!errors.As(err, &te) || te.Problem != tc.problem || te.Field != "field"):
			t.Errorf("CheckText(%q) = %v, want %q", tc.in, err, tc.problem)
		}
	}
}
