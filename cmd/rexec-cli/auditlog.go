package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/auditproof"
	"github.com/rexec/rexec/internal/client"
)

// cmdAuditLog runs `rexec-cli audit checkpoint|verify|prove|verify-bundle`.
func cmdAuditLog(ctx context.Context, sub string, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	switch sub {
	case "checkpoint":
		return cmdAuditCheckpoint(ctx, args, stdout, stderr)
	case "verify":
		return cmdAuditVerify(ctx, args, stdout, stderr)
	case "prove":
		return cmdAuditProve(ctx, args, stdout, stderr)
	case "verify-bundle":
		return cmdAuditVerifyBundle(args, stdin, stdout, stderr)
	}
	return fmt.Errorf("unknown command \"audit %s\"", sub)
}

// cmdAuditCheckpoint prints the latest signed checkpoint, exactly, for an
// auditor to keep.
func cmdAuditCheckpoint(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("audit checkpoint", stderr)
	conn := addConnFlags(fs)
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	c, err := conn.client()
	if err != nil {
		return err
	}
	cp, err := c.AuditCheckpoint(ctx, 0)
	if err != nil {
		return err
	}
	_, err = io.WriteString(stdout, cp.Note)
	return err
}

func cmdAuditVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("audit verify", stderr)
	conn := addConnFlags(fs)
	pub := fs.String("pubkey", "", "the log's public key, or a file holding it (default $REXEC_AUDIT_PUBKEY)")
	since := fs.String("since-checkpoint", "", "a checkpoint kept from before (rexec-cli audit checkpoint > FILE): the log must extend it")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	key, err := publicKey(*pub)
	if err != nil {
		return err
	}
	var kept []byte
	if *since != "" {
		if kept, err = os.ReadFile(*since); err != nil {
			return fmt.Errorf("kept checkpoint: %w", err)
		}
	}
	c, err := conn.client()
	if err != nil {
		return err
	}
	res, err := auditproof.VerifyLog(ctx, c.AuditLog(), key, kept)
	if err != nil {
		if auditproof.IsMismatch(err) {
			fmt.Fprintf(stderr, "audit log verification FAILED: %v\n", err)
			return exitError(1)
		}
		return fmt.Errorf("audit verify: %w", err)
	}
	fmt.Fprintf(stdout, "audit log %s verified: %d events\nroot %s, signed by %s\n", res.Origin, res.Size, res.Root, key.Name())
	if kept != nil {
		cp, _ := auditproof.Open(kept, key)
		fmt.Fprintf(stdout, "it extends your kept checkpoint of %d events\n", cp.Size)
	}
	return nil
}

func cmdAuditProve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("audit prove", stderr)
	conn := addConnFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: rexec-cli audit prove RUN > bundle.json")
	}
	c, err := conn.client()
	if err != nil {
		return err
	}
	b, err := c.AuditBundle(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(b)
}

// cmdAuditVerifyBundle checks a bundle offline: no server, no database.
func cmdAuditVerifyBundle(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlags("audit verify-bundle", stderr)
	pub := fs.String("pubkey", "", "the log's public key, or a file holding it (default $REXEC_AUDIT_PUBKEY)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: rexec-cli audit verify-bundle -pubkey KEY bundle.json (or - for stdin)")
	}
	key, err := publicKey(*pub)
	if err != nil {
		return err
	}
	var raw []byte
	if fs.Arg(0) == "-" {
		raw, err = io.ReadAll(stdin)
	} else {
		raw, err = os.ReadFile(fs.Arg(0))
	}
	if err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	var b auditproof.Bundle
	if err := json.Unmarshal(raw, &b); err != nil {
		fmt.Fprintf(stderr, "bundle verification FAILED: not a bundle: %v\n", err)
		return exitError(1)
	}
	cp, err := b.Verify(key)
	if err != nil {
		fmt.Fprintf(stderr, "bundle verification FAILED: %v\n", err)
		return exitError(1)
	}
	fmt.Fprintf(stdout, "bundle verified: %d events of run %s are in log %s of %d events\nroot %s, signed by %s\n",
		len(b.Events), b.Run, cp.Origin, cp.Size, cp.Root, key.Name())
	for _, e := range b.Events {
		var ev struct{ Time, Type, Actor, Node string }
		_ = json.Unmarshal([]byte(e.Body), &ev)
		fmt.Fprintf(stdout, "  leaf %-8d %s  %-22s %s %s\n", e.Leaf, ev.Time, ev.Type, ev.Actor, ev.Node)
	}
	return nil
}

// publicKey reads a verifier key given as the key itself, as a file
// holding it, or from $REXEC_AUDIT_PUBKEY.
func publicKey(v string) (note.Verifier, error) {
	if v == "" {
		v = os.Getenv("REXEC_AUDIT_PUBKEY")
	}
	if v == "" {
		return nil, errors.New("no audit public key: give -pubkey (the key, or a file holding it) or set REXEC_AUDIT_PUBKEY")
	}
	if !strings.Contains(v, "+") {
		b, err := os.ReadFile(v)
		if err != nil {
			return nil, fmt.Errorf("audit public key: %w", err)
		}
		v = string(b)
	}
	return auditproof.NewVerifierKey(v)
}

func parseNoArgs(fs interface {
	Parse([]string) error
	NArg() int
	Args() []string
}, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return nil
}

// followPoll is how often -follow asks for a new checkpoint; events are
// logged every half second or so.
const followPoll = time.Second

// followAudit streams the log's events from leaf from (-1: the log's end)
// as NDJSON, in log order: integrated events only, so that an event
// committed late is never skipped, and each line names its leaf so that a
// shipper can resume after it.
func followAudit(ctx context.Context, c *client.Client, from int64, types []string, stdout io.Writer) error {
	size := func() (int64, error) {
		cp, err := c.AuditCheckpoint(ctx, 0)
		var ce *client.Error
		if errors.As(err, &ce) && ce.Status == http.StatusNotFound {
			return 0, nil // nothing logged yet
		}
		return cp.Size, err
	}
	pos := from
	if pos < 0 {
		var err error
		if pos, err = size(); err != nil {
			return err
		}
	}
	start := true
	for {
		n, err := size()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for pos < n {
			leaves, err := c.AuditLeaves(ctx, pos, min(pos+auditproof.LeafPage, n), start)
			if err != nil {
				return err
			}
			start = false
			if len(leaves) == 0 {
				return fmt.Errorf("the log has no leaf %d though its checkpoint has %d: run rexec-cli audit verify", pos, n)
			}
			for _, l := range leaves {
				if l.Body == nil {
					return fmt.Errorf("leaf %d: its event is missing: run rexec-cli audit verify", l.Index)
				}
				e, err := eventOfBody(l.EventID, l.Body)
				if err != nil {
					return fmt.Errorf("leaf %d: %w", l.Index, err)
				}
				if len(types) == 0 || slices.Contains(types, e.Type) {
					leaf := l.Index
					e.Leaf = &leaf
					b, err := eventJSON(e)
					if err != nil {
						return err
					}
					if _, err := fmt.Fprintf(stdout, "%s\n", b); err != nil {
						return err
					}
				}
				pos = l.Index + 1
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(followPoll):
		}
	}
}

// eventOfBody is the API's view of an event, read from its body.
func eventOfBody(id int64, body []byte) (apitype.AuditEvent, error) {
	var b struct {
		Type, Actor, Run, Node string
		Time                   time.Time
		RequestID              string `json:"request_id"`
		ClientAddr             string `json:"client_addr"`
		OSUser                 string `json:"os_user"`
		Data                   json.RawMessage
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return apitype.AuditEvent{}, fmt.Errorf("event body: %w", err)
	}
	if b.Data == nil {
		b.Data = json.RawMessage("{}")
	}
	return apitype.AuditEvent{ID: id, Time: b.Time, Type: b.Type, Actor: b.Actor, Run: b.Run, Node: b.Node, RequestID: b.RequestID,
		ClientAddr: b.ClientAddr, OSUser: b.OSUser, Data: b.Data, Body: string(body)}, nil
}
