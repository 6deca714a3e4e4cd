// Package auditproof checks rexec's audit log without trusting the server
// that keeps it: signed checkpoints, the tree recomputed from the events,
// consistency between checkpoints and offline proof bundles. It needs no
// database and no network, so an auditor's copy of rexec-cli can use it on
// what the server handed over.
//
// The log is RFC 6962's Merkle tree as golang.org/x/mod/sumdb/tlog builds
// it; a leaf is the SHA-256 of 0x00 followed by an event's canonical body;
// a checkpoint is a signed note (golang.org/x/mod/sumdb/note) whose text is
// the C2SP checkpoint: origin, tree size and root hash, one per line.
package auditproof

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Checkpoint is a signed statement of a log's size and root.
type Checkpoint struct {
	Origin string
	Size   int64
	Root   tlog.Hash
	// Note is the signed note as the log issued it.
	Note []byte
}

// Format returns the checkpoint text (unsigned): what the log signs.
func Format(origin string, size int64, root tlog.Hash) []byte {
	return log.Checkpoint{Origin: origin, Size: uint64(size), Hash: root[:]}.Marshal()
}

// Sign returns the signed note of a checkpoint.
func Sign(origin string, size int64, root tlog.Hash, s note.Signer) ([]byte, error) {
	msg, err := note.Sign(&note.Note{Text: string(Format(origin, size, root))}, s)
	if err != nil {
		return nil, fmt.Errorf("sign checkpoint: %w", err)
	}
	return msg, nil
}

// ErrSignature is wrapped by every error about a checkpoint that the key
// did not sign, or that is not a checkpoint at all.
var ErrSignature = errors.New("checkpoint signature")

// Open verifies a signed checkpoint with the log's key and parses it.
func Open(signed []byte, key note.Verifier) (Checkpoint, error) {
	n, err := note.Open(signed, note.VerifierList(key))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: not signed by %s: %v", ErrSignature, key.Name(), err)
	}
	origin, _, _ := bytes.Cut([]byte(n.Text), []byte("\n"))
	cp, _, _, err := log.ParseCheckpoint(signed, string(origin), key)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	if len(cp.Hash) != tlog.HashSize || cp.Size == 0 || cp.Size > 1<<62 {
		return Checkpoint{}, fmt.Errorf("%w: malformed checkpoint (size %d, %d-byte root)", ErrSignature, cp.Size, len(cp.Hash))
	}
	c := Checkpoint{Origin: cp.Origin, Size: int64(cp.Size), Note: signed}
	copy(c.Root[:], cp.Hash)
	return c, nil
}

// NewVerifierKey parses a verifier key ("name+hash+base64", as
// `rexec-svc audit keygen` prints it).
func NewVerifierKey(vkey string) (note.Verifier, error) {
	v, err := note.NewVerifier(string(bytes.TrimSpace([]byte(vkey))))
	if err != nil {
		return nil, fmt.Errorf("audit public key: %w", err)
	}
	return v, nil
}

// LeafHash is the tree's hash of an event body.
func LeafHash(body []byte) tlog.Hash { return tlog.RecordHash(body) }

// CheckConsistency checks a proof that the log at newer extends the log at
// older: nothing in the older tree was changed or removed.
func CheckConsistency(older, newer Checkpoint, proof tlog.TreeProof) error {
	if older.Origin != newer.Origin {
		return fmt.Errorf("checkpoints of different logs: %q and %q", older.Origin, newer.Origin)
	}
	if older.Size > newer.Size {
		return fmt.Errorf("the log shrank: the older checkpoint has %d events, the newer %d", older.Size, newer.Size)
	}
	if err := tlog.CheckTree(proof, newer.Size, newer.Root, older.Size, older.Root); err != nil {
		return fmt.Errorf("the log at %d events does not extend the log at %d events: %w", newer.Size, older.Size, err)
	}
	return nil
}

// Signer names the key that signed a checkpoint and the log it claims, as
// the note says, without checking the signature: enough for a signer to
// see that it is about to extend a log someone else's key signed.
func Signer(signed []byte) (origin, name string, hash uint32, err error) {
	text, sigs, ok := bytes.Cut(signed, []byte("\n\n"))
	if !ok {
		return "", "", 0, fmt.Errorf("not a signed note")
	}
	o, _, _ := bytes.Cut(text, []byte("\n"))
	line, _, _ := bytes.Cut(sigs, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) != 3 || f[0] != "—" {
		return "", "", 0, fmt.Errorf("no signature line")
	}
	raw, err := base64.StdEncoding.DecodeString(f[2])
	if err != nil || len(raw) < 4 {
		return "", "", 0, fmt.Errorf("malformed signature")
	}
	return string(o), f[1], binary.BigEndian.Uint32(raw), nil
}
