package jobs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/storetest"
)

// TestHandleRounds: the handler's audit events name the facts of each
// round stored for the first time, node by node, an ack before its exit;
// a round handed again (its commit's answer lost) writes nothing twice.
func TestHandleRounds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.Open(t)
	tn := storetest.Tenant(t, st, "acme")
	p := storetest.Principal(t, st, tn.ID, "alice", store.RoleSubmitter)
	nodes := []string{"a", "b", "c"}
	targets, _ := json.Marshal(nodes)
	run, err := st.InsertRun(ctx, store.Run{TenantID: tn.ID, SubmittedBy: p.ID, State: store.StateQueued, Argv: []string{"true"},
		Shell: true, Prefix: "_rexec", Wait: 2 * time.Second, OutputCap: 6, Targets: targets, StartTimeout: time.Hour}, nodes)
	if err != nil {
		t.Fatal(err)
	}
	owner := store.NewLeaseOwner("test")
	if claimed, _, err := st.ClaimRun(ctx, run.ID, owner, time.Minute); err != nil || !claimed {
		t.Fatalf("claim: %v %v", claimed, err)
	}
	e := &execution{w: &ExecWorker{cfg: Config{Store: st}}, run: run, owner: owner, actor: "worker:test",
		log: slog.Default(), exited: map[string]bool{}, targets: len(nodes)}

	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ev := func(kind consul.EventKind, node string, seq int, data string) consul.Event {
		return consul.Event{Kind: kind, Node: node, Seq: seq, Data: []byte(data), ExitCode: seq, At: at}
	}
	first := []consul.Event{
		ev(consul.EventAck, "a", 0, ""), ev(consul.EventOutput, "a", 0, "hello "), ev(consul.EventOutput, "a", 2, "world"),
		ev(consul.EventExit, "a", 3, ""),
		ev(consul.EventAck, "b", 0, ""), ev(consul.EventOutput, "b", 0, "b0"), ev(consul.EventHeartbeat, "b", 1, ""),
	}
	second := []consul.Event{ev(consul.EventOutput, "b", 2, "b2"), ev(consul.EventExit, "b", 0, ""), ev(consul.EventAck, "c", 0, "")}
	for _, round := range [][]consul.Event{first, first, second, second} {
		if err := e.handle(ctx, round); err != nil {
			t.Fatal(err)
		}
	}

	rows, err := st.Pool().Query(ctx, "SELECT body FROM audit_events WHERE body::jsonb ->> 'run' = $1 ORDER BY id", run.ID)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var body string
		if err := rows.Scan(&body); err != nil {
			t.Fatal(err)
		}
		var b struct {
			Type, Node string
			Data       map[string]any
		}
		if err := json.Unmarshal([]byte(body), &b); err != nil {
			t.Fatal(err)
		}
		line := b.Type + " " + b.Node
		if b.Type == "node.exited" {
			line += fmt.Sprintf(" code=%v bytes=%v stored=%v truncated=%v sha256=%v", b.Data["exit_code"], b.Data["bytes"],
				b.Data["stored_bytes"], b.Data["truncated"], b.Data["sha256"])
		}
		got = append(got, line)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	want := []string{
		"node.acked a",
		"node.exited a code=3 bytes=11 stored=6 truncated=true sha256=" + sum("hello world"),
		"node.acked b",
		"node.exited b code=0 bytes=4 stored=4 truncated=false sha256=" + sum("b0b2"),
		"node.acked c",
	}
	if !slices.Equal(got, want) {
		t.Errorf("audit events\n%q\nwant\n%q", got, want)
	}
}
