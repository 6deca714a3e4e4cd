package audit

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// Canonical returns the canonical encoding of v: the JSON Canonicalization
// Scheme of RFC 8785 (object members sorted by the UTF-16 code units of
// their names, no insignificant whitespace, strings escaped only where
// JSON requires it, numbers as ECMAScript writes them).
//
// v is first encoded with encoding/json, so structs and typed maps are
// welcome; what comes out depends only on the JSON value, never on the
// order of a map or of a struct's fields, nor on how jsonb keeps them.
func Canonical(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("canonical encoding: %w", err)
	}
	return CanonicalJSON(raw)
}

// CanonicalJSON re-encodes a JSON text canonically (see Canonical).
func CanonicalJSON(raw []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var val any
	if err := dec.Decode(&val); err != nil {
		return nil, fmt.Errorf("canonical encoding: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("canonical encoding: trailing data after the JSON value")
	}
	var b bytes.Buffer
	if err := writeCanonical(&b, val); err != nil {
		return nil, fmt.Errorf("canonical encoding: %w", err)
	}
	return b.Bytes(), nil
}

func writeCanonical(b *bytes.Buffer, v any) error {
	switch v := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		b.WriteString(strconv.FormatBool(v))
	case string:
		writeString(b, v)
	case json.Number:
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return fmt.Errorf("number %s has no IEEE 754 double", v)
		}
		if f == 0 {
			f = 0 // ECMAScript writes -0 as 0
		}
		// encoding/json writes a float64 as ECMAScript does (RFC 8785 §3.2.2.3).
		out, err := json.Marshal(f)
		if err != nil {
			return err
		}
		b.Write(out)
	case []any:
		b.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := writeCanonical(b, e); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, compareUTF16)
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			writeString(b, k)
			b.WriteByte(':')
			if err := writeCanonical(b, v[k]); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	default:
		return fmt.Errorf("unexpected JSON value %T", v)
	}
	return nil
}

// writeString escapes as RFC 8785 §3.2.2.2: the quote, the backslash and
// control characters, with the two-character forms where JSON has them.
func writeString(b *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20:
			b.WriteString(`\u00`)
			b.WriteByte(hex[r>>4])
			b.WriteByte(hex[r&0xf])
		case r == utf8.RuneError:
			// Invalid UTF-8 was already replaced by encoding/json; a
			// literal U+FFFD is written as itself.
			b.WriteRune(r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
}

// compareUTF16 orders a and b by their UTF-16 code units, as RFC 8785
// sorts member names, without converting them (which cost four
// allocations a comparison, on every event's keys). That order is the
// code points' order, but for a supplementary character (encoded as a
// surrogate pair, D800–DFFF) against one of U+E000–U+FFFF: the pair's
// first unit sorts first. Invalid UTF-8 compares as U+FFFD, as []rune
// makes it.
func compareUTF16(a, b string) int {
	for a != "" && b != "" {
		ra, na := utf8.DecodeRuneInString(a)
		rb, nb := utf8.DecodeRuneInString(b)
		if ra != rb {
			if ra >= 0x10000 && rb >= 0x10000 {
				return cmp.Compare(ra, rb)
			}
			return cmp.Compare(firstUTF16(ra), firstUTF16(rb))
		}
		a, b = a[na:], b[nb:]
	}
	return cmp.Compare(len(a), len(b))
}

// firstUTF16 is the first UTF-16 code unit of r.
func firstUTF16(r rune) rune {
	if r < 0x10000 {
		return r
	}
	hi, _ := utf16.EncodeRune(r)
	return hi
}
