package audit

import (
	"slices"
	"testing"
	"unicode/utf16"
)

func TestCanonicalJSON(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"sorted keys, no whitespace", `{ "b": 1, "a": [true, null, "x"] }`, `{"a":[true,null,"x"],"b":1}`},
		{"nested objects sorted", `{"z":{"y":1,"x":2},"a":{}}`, `{"a":{},"z":{"x":2,"y":1}}`},
		// RFC 8785 §3.2.3: sorting by UTF-16 code units, not by UTF-8 bytes.
		{"utf-16 order", `{"\ufb33":1,"\ud83d\ude00":2,"\u00e9":3,"1":4}`, "{\"1\":4,\"\u00e9\":3,\"\U0001f600\":2,\"\ufb33\":1}"},
		{"escapes only what JSON requires", `"\u003c\u2028\/\u0001\n\u001f\""`, "\"<\u2028/\\u0001\\n\\u001f\\\"\""},
		{"numbers as ECMAScript", `[1, 1.0, -0, 1e21, 1e20, 0.000001, 1e-7, 123456789012]`, `[1,1,0,1e+21,100000000000000000000,0.000001,1e-7,123456789012]`},
		{"html characters kept", `"<&>"`, `"<&>"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CanonicalJSON([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestCanonicalRejects(t *testing.T) {
	for _, in := range []string{`{`, `{} {}`, `1e400`} {
		if _, err := CanonicalJSON([]byte(in)); err == nil {
			t.Errorf("%s: no error", in)
		}
	}
}

func FuzzCanonicalJSON(f *testing.F) {
	f.Add(`{"a":"b","c":[1,2.5,"\u0000"]}`)
	f.Fuzz(func(t *testing.T, in string) {
		once, err := CanonicalJSON([]byte(in))
		if err != nil {
			return
		}
		twice, err := CanonicalJSON(once)
		if err != nil {
			t.Fatalf("canonical output %q does not parse: %v", once, err)
		}
		if string(once) != string(twice) {
			t.Fatalf("not idempotent: %q then %q", once, twice)
		}
	})
}

// TestCompareUTF16: member names compare as their UTF-16 code units do,
// over every kind of character that orders differently in UTF-8 and in
// UTF-16, prefixes, and invalid UTF-8.
func TestCompareUTF16(t *testing.T) {
	byUnits := func(a, b string) int { return slices.Compare(utf16.Encode([]rune(a)), utf16.Encode([]rune(b))) }
	words := []string{"", "a", "ab", "b", "A", "1", "\u00e9", "\u00e9a", "\u07ff", "\u0800", "\ud7ff", "\ue000", "\ufb33",
		"\uffff", "\U00010000", "\U0001f600", "\U0001f600a", "\U0010ffff", "\xff", "\xffa", "a\xff", "\xc3", "\ufffd"}
	for _, a := range words {
		for _, b := range words {
			if got, want := compareUTF16(a, b), byUnits(a, b); got != want {
				t.Errorf("compareUTF16(%q, %q) = %d, want %d", a, b, got, want)
			}
		}
	}
}
