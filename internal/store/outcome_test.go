package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func sum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// TestNodeOutputAtEnd: a node's exit and a node's end report what its
// output came to — every byte counted and hashed past the cap, the archived
// bytes and the cut — for the audit log; once only.
func TestNodeOutputAtEnd(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	r := b.insertRun(t, time.Hour, "a", "b", "c")
	var exit, again, ended NodeOutput
	var exitOK, againOK, endedOK bool
	err := b.st.InTx(ctx, func(_ pgx.Tx, q *Queries) error {
		for i, chunk := range []string{"hello ", "world"} {
			if _, err := q.AppendChunk(ctx, r.ID, "a", i, []byte(chunk), 4); err != nil {
				return err
			}
		}
		var err error
		if exit, exitOK, err = q.RecordExit(ctx, r.ID, "a", 3, time.Now()); err != nil {
			return err
		}
		if again, againOK, err = q.RecordExit(ctx, r.ID, "a", 3, time.Now()); err != nil {
			return err
		}
		if _, err := q.AppendChunk(ctx, r.ID, "b", 0, []byte("partial"), 1<<20); err != nil {
			return err
		}
		if ended, endedOK, err = q.EndNode(ctx, r.ID, "b", "lost"); err != nil {
			return err
		}
		_, _, err = q.RecordExit(ctx, r.ID, "c", 0, time.Now())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := (NodeOutput{Bytes: 11, StoredBytes: 4, Truncated: true, SHA256: sum("hello world")}); !exitOK || exit != want {
		t.Errorf("exit: %+v %v, want %+v", exit, exitOK, want)
	}
	if againOK || again != exit {
		t.Errorf("a second exit: %+v %v, want not recorded, the same output", again, againOK)
	}
	if want := (NodeOutput{Bytes: 7, StoredBytes: 7, SHA256: sum("partial")}); !endedOK || ended != want {
		t.Errorf("end: %+v %v, want %+v", ended, endedOK, want)
	}
	nodes, err := b.st.RunNodes(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := CountNodes(nodes), (NodeCounts{Targets: 3, Exited: 2, Failed: 1, Lost: 1}); got != want {
		t.Errorf("counts %+v, want %+v", got, want)
	}
}

func TestCountNodes(t *testing.T) {
	code := func(c int) *int { return &c }
	nodes := []NodeResult{
		{State: "exited", ExitCode: code(0)}, {State: "exited", ExitCode: code(2)}, {State: "exited", ExitCode: code(0)},
		{State: "lost"}, {State: "no_ack"}, {State: "no_ack"}, {State: "cancelled"}, {State: "acked"}, {State: "pending"},
	}
	want := NodeCounts{Targets: 9, Exited: 3, Failed: 1, Lost: 1, NoAck: 2, Cancelled: 1, Unfinished: 2}
	if got := CountNodes(nodes); got != want {
		t.Errorf("CountNodes = %+v, want %+v", got, want)
	}
}

// TestCancelledNodesNamed: the paths that end a run that never fired name
// the nodes they cancelled, for their node.ended events.
func TestCancelledNodesNamed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	r := b.insertRun(t, time.Hour, "n2", "n1")
	c, err := b.cancel(r)
	if err != nil || !slices.Equal(c.Nodes, []string{"n1", "n2"}) {
		t.Errorf("cancel of a queued run: %+v %v", c, err)
	}
	running := b.insertRun(t, time.Hour, "n1")
	b.claimPrepared(t, running, "w", time.Minute)
	if c, err := b.cancel(running); err != nil || c.Nodes != nil {
		t.Errorf("cancel of a running run names nodes: %+v %v", c, err)
	}
	pending := b.insertRun(t, time.Hour, "p1", "p2")
	if _, err := b.st.Pool().Exec(ctx, "UPDATE runs SET state = 'pending_approval' WHERE id = $1", pending.ID); err != nil {
		t.Fatal(err)
	}
	var nodes []string
	err = b.st.InTx(ctx, func(_ pgx.Tx, q *Queries) error {
		var err error
		nodes, err = q.EndPending(ctx, pending.ID, StateDenied, "no")
		return err
	})
	if err != nil || !slices.Equal(nodes, []string{"p1", "p2"}) {
		t.Errorf("denied: %v %v", nodes, err)
	}
}
