package auditproof

import (
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func keys(t *testing.T) (note.Signer, note.Verifier) {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, "rexec-test")
	if err != nil {
		t.Fatal(err)
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return s, v
}

// tree builds a log of n bodies in memory: leaves and signed checkpoints
// at the sizes given.
func tree(t *testing.T, s note.Signer, v note.Verifier, n int, at ...int64) ([]Leaf, map[int64]Checkpoint) {
	t.Helper()
	hashes := map[int64]tlog.Hash{}
	r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = hashes[x]
		}
		return out, nil
	})
	var leaves []Leaf
	cps := map[int64]Checkpoint{}
	for i := range n {
		body := []byte(`{"actor":"alice","n":` + string(rune('0'+i%10)) + `}`)
		hs, err := tlog.StoredHashes(int64(i), body, r)
		if err != nil {
			t.Fatal(err)
		}
		for j, h := range hs {
			hashes[tlog.StoredHashIndex(0, int64(i))+int64(j)] = h
		}
		leaves = append(leaves, Leaf{Index: int64(i), EventID: int64(100 + i), Body: body, Hash: LeafHash(body)})
	}
	for _, size := range at {
		root, err := tlog.TreeHash(size, r)
		if err != nil {
			t.Fatal(err)
		}
		signed, err := Sign("rexec-test/tenant/acme", size, root, s)
		if err != nil {
			t.Fatal(err)
		}
		if cps[size], err = Open(signed, v); err != nil {
			t.Fatal(err)
		}
	}
	return leaves, cps
}

func TestVerifier(t *testing.T) {
	s, v := keys(t)
	leaves, cps := tree(t, s, v, 10, 3, 7, 10)
	run := func(mod func([]Leaf), latest Checkpoint, others ...Checkpoint) error {
		ls := append([]Leaf(nil), leaves...)
		mod(ls)
		ver, err := NewVerifier(latest, others...)
		if err != nil {
			return err
		}
		for _, l := range ls {
			if err := ver.Add(l); err != nil {
				return err
			}
		}
		_, err = ver.Finish()
		return err
	}
	same := func([]Leaf) {}
	if err := run(same, cps[10], cps[3], cps[7]); err != nil {
		t.Fatalf("honest log: %v", err)
	}
	for _, tc := range []struct {
		name string
		mod  func([]Leaf)
		leaf int64
		want string
	}{
		{"body changed", func(l []Leaf) { l[5].Body = []byte(`{"actor":"mallory"}`) }, 5, "does not hash to the leaf"},
		{"body and hash changed", func(l []Leaf) { l[5].Body = []byte(`{"x":1}`); l[5].Hash = LeafHash(l[5].Body) }, 3, "root signed for 7 events"},
		{"hash gone", func(l []Leaf) { l[2].Hash = tlog.Hash{} }, 2, "no leaf hash"},
		{"event gone", func(l []Leaf) { l[8].Body = nil }, 8, "deleted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(tc.mod, cps[10], cps[3], cps[7])
			var m *Mismatch
			if !errors.As(err, &m) || m.Leaf != tc.leaf || !strings.Contains(m.Reason, tc.want) {
				t.Errorf("got %v, want a mismatch at leaf %d saying %q", err, tc.leaf, tc.want)
			}
		})
	}
	// A log that ends early, and a checkpoint beyond the latest.
	if err := run(same, cps[7]); err != nil {
		t.Errorf("the first 7 of 10 against their checkpoint: %v", err)
	}
	if _, err := NewVerifier(cps[7], cps[10]); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("a kept checkpoint beyond the latest: %v", err)
	}
	ver, _ := NewVerifier(cps[10])
	for _, l := range leaves[:6] {
		_ = ver.Add(l)
	}
	if _, err := ver.Finish(); err == nil || !strings.Contains(err.Error(), "ends at 6 events") {
		t.Errorf("short log: %v", err)
	}
	// Two checkpoints for one size with different roots: a fork.
	signed, err := Sign("rexec-test/tenant/acme", 7, tlog.Hash{9}, s)
	if err != nil {
		t.Fatal(err)
	}
	forked, err := Open(signed, v)
	if err != nil {
		t.Fatal(err)
	}
	ver, _ = NewVerifier(cps[10], cps[7])
	if err := ver.Expect(forked); err == nil || !strings.Contains(err.Error(), "forked") {
		t.Errorf("a forked checkpoint: %v", err)
	}
}

func TestSignerAndOpen(t *testing.T) {
	s, v := keys(t)
	signed, err := Sign("rexec-test/tenant/acme", 3, tlog.Hash{1}, s)
	if err != nil {
		t.Fatal(err)
	}
	origin, name, hash, err := Signer(signed)
	if err != nil || origin != "rexec-test/tenant/acme" || name != "rexec-test" || hash != s.KeyHash() {
		t.Errorf("Signer: %q %q %08x %v", origin, name, hash, err)
	}
	if _, _, _, err := Signer([]byte("no note")); err == nil {
		t.Error("Signer of garbage: no error")
	}
	if _, err := Open(signed, v); err != nil {
		t.Fatal(err)
	}
	_, other := keys(t)
	if _, err := Open(signed, other); !errors.Is(err, ErrSignature) {
		t.Errorf("another key: %v", err)
	}
	changed := []byte(strings.Replace(string(signed), "\n3\n", "\n4\n", 1))
	if _, err := Open(changed, v); !errors.Is(err, ErrSignature) {
		t.Errorf("changed size: %v", err)
	}
}

func TestBundleRefusesBadInput(t *testing.T) {
	_, v := keys(t)
	for _, b := range []Bundle{
		{Format: "other"},
		{Format: BundleFormat, Checkpoint: "not a note"},
	} {
		if _, err := b.Verify(v); err == nil {
			t.Errorf("%+v: no error", b)
		}
	}
}
