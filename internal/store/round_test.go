package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

var roundT0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func ack(node string) Report { return Report{Kind: ReportAck, Node: node, At: roundT0} }
func out(node string, seq int, data string) Report {
	return Report{Kind: ReportOutput, Node: node, Seq: seq, Data: []byte(data), At: roundT0}
}
func exit(node string, code int) Report {
	return Report{Kind: ReportExit, Node: node, ExitCode: code, At: roundT0.Add(time.Second)}
}

// storeRound stores one round in a transaction of its own.
func (b *bundle) storeRound(t *testing.T, r Run, outputCap int64, reports []Report) (RoundResult, error) {
	t.Helper()
	ctx := context.Background()
	var res RoundResult
	err := b.st.InTx(ctx, func(_ pgx.Tx, q *Queries) error {
		var err error
		res, err = q.StoreRound(ctx, r.ID, outputCap, reports)
		return err
	})
	return res, err
}

// manyNodes is a round of n nodes that each ack, send two chunks and exit.
func manyNodes(n int) (nodes []string, round []Report, streams map[string]string) {
	streams = map[string]string{}
	for i := range n {
		node := fmt.Sprintf("node-%05d", i)
		nodes = append(nodes, node)
		round = append(round, ack(node), out(node, 0, node+" says "), out(node, 2, "hello\n"), exit(node, i%3))
		streams[node] = node + " says hello\n"
	}
	return nodes, round, streams
}

// TestStoreRound: a round stores each ack, chunk and exit once, whatever
// is repeated; every byte is counted and hashed in sequence order, at most
// the cap archived.
func TestStoreRound(t *testing.T) {
	t.Parallel()
	many, manyRound, manyStreams := manyNodes(2000)
	var manyRecorded []string
	for _, n := range many {
		manyRecorded = append(manyRecorded, "ack "+n, "exit "+n)
	}
	for _, tc := range []struct {
		name   string
		nodes  []string
		cap    int64
		rounds [][]Report
		// streams are each node's whole output; exited the nodes that exit.
		streams map[string]string
		exited  []string
		// recorded are the facts each round records first, "kind node".
		recorded [][]string
	}{{
		name: "acks", nodes: []string{"a", "b"}, cap: 100,
		rounds:   [][]Report{{ack("a"), ack("b")}, {ack("a"), ack("b")}},
		recorded: [][]string{{"ack a", "ack b"}, nil},
	}, {
		name: "chunks in order", nodes: []string{"a"}, cap: 100,
		rounds:  [][]Report{{ack("a"), out("a", 0, "hello "), out("a", 1, "world"), exit("a", 0)}},
		streams: map[string]string{"a": "hello world"}, exited: []string{"a"},
		recorded: [][]string{{"ack a", "exit a"}},
	}, {
		name: "chunks out of order within a round", nodes: []string{"a"}, cap: 100,
		rounds:  [][]Report{{ack("a"), out("a", 7, "c"), out("a", 0, "a"), out("a", 3, "b"), exit("a", 1)}},
		streams: map[string]string{"a": "abc"}, exited: []string{"a"},
		recorded: [][]string{{"ack a", "exit a"}},
	}, {
		name: "a chunk repeated within a round", nodes: []string{"a"}, cap: 100,
		rounds:  [][]Report{{ack("a"), out("a", 0, "x"), out("a", 0, "x"), out("a", 1, "y")}},
		streams: map[string]string{"a": "xy"}, recorded: [][]string{{"ack a"}},
	}, {
		name: "a chunk repeated in the next round", nodes: []string{"a"}, cap: 100,
		rounds:  [][]Report{{ack("a"), out("a", 0, "x")}, {out("a", 0, "x"), out("a", 1, "y"), exit("a", 0)}},
		streams: map[string]string{"a": "xy"}, exited: []string{"a"},
		recorded: [][]string{{"ack a"}, {"exit a"}},
	}, {
		name: "a round repeated entirely", nodes: []string{"a", "b"}, cap: 100,
		rounds: [][]Report{
			{ack("a"), out("a", 0, "1"), out("a", 1, "2"), exit("a", 0), ack("b"), out("b", 0, "3")},
			{ack("a"), out("a", 0, "1"), out("a", 1, "2"), exit("a", 0), ack("b"), out("b", 0, "3")},
		},
		streams: map[string]string{"a": "12", "b": "3"}, exited: []string{"a"},
		recorded: [][]string{{"ack a", "exit a", "ack b"}, nil},
	}, {
		name: "the cap crossed within a round", nodes: []string{"a"}, cap: 4,
		rounds:  [][]Report{{ack("a"), out("a", 0, "hello "), out("a", 1, "world"), exit("a", 3)}},
		streams: map[string]string{"a": "hello world"}, exited: []string{"a"},
		recorded: [][]string{{"ack a", "exit a"}},
	}, {
		name: "the cap crossed across rounds", nodes: []string{"a"}, cap: 8,
		rounds:  [][]Report{{ack("a"), out("a", 0, "hello ")}, {out("a", 1, "world")}, {out("a", 2, "!"), exit("a", 0)}},
		streams: map[string]string{"a": "hello world!"}, exited: []string{"a"},
		recorded: [][]string{{"ack a"}, nil, {"exit a"}},
	}, {
		name: "an exit implies the ack", nodes: []string{"a"}, cap: 100,
		rounds:  [][]Report{{exit("a", 255)}, {ack("a"), exit("a", 255)}},
		streams: map[string]string{}, exited: []string{"a"},
		recorded: [][]string{{"exit a"}, nil},
	}, {
		name: "an ack of a node outside the run", nodes: []string{"a"}, cap: 100,
		rounds:   [][]Report{{ack("stranger"), ack("a")}},
		recorded: [][]string{{"ack a"}},
	}, {
		name: "many nodes in one round", nodes: many, cap: 16,
		rounds: [][]Report{manyRound}, streams: manyStreams, exited: many,
		recorded: [][]string{manyRecorded},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := context.Background()
			r := b.insertRun(t, time.Hour, tc.nodes...)
			var chunks int
			var storedBytes int64
			exits := map[string]NodeOutput{}
			for i, round := range tc.rounds {
				res, err := b.storeRound(t, r, tc.cap, round)
				if err != nil {
					t.Fatalf("round %d: %v", i, err)
				}
				var got []string
				for _, f := range res.Recorded {
					kind := map[ReportKind]string{ReportAck: "ack", ReportExit: "exit"}[f.Kind]
					got = append(got, kind+" "+f.Node)
					if f.Kind == ReportExit {
						exits[f.Node] = f.Output
					}
				}
				if !slices.Equal(got, tc.recorded[i]) {
					t.Errorf("round %d recorded %.80q, want %.80q", i, got, tc.recorded[i])
				}
				chunks += res.Chunks
				storedBytes += res.StoredBytes
			}

			nodes, err := b.st.RunNodes(ctx, r.ID)
			if err != nil {
				t.Fatal(err)
			}
			var wantStored int64
			for _, n := range nodes {
				stream := tc.streams[n.Node]
				want := NodeOutput{Bytes: int64(len(stream)), StoredBytes: min(int64(len(stream)), tc.cap),
					Truncated: int64(len(stream)) > tc.cap, SHA256: sum(stream)}
				wantStored += want.StoredBytes
				got := NodeOutput{Bytes: n.Bytes, StoredBytes: n.StoredBytes, Truncated: n.Truncated}
				if slices.Contains(tc.exited, n.Node) {
					got.SHA256 = n.SHA256
					if n.State != "exited" || n.AckedAt == nil || n.ExitCode == nil {
						t.Errorf("%s: %s, acked %v, exit code %v, want exited", n.Node, n.State, n.AckedAt, n.ExitCode)
					}
					if exits[n.Node] != want {
						t.Errorf("%s: exit recorded output %+v, want %+v", n.Node, exits[n.Node], want)
					}
				} else {
					got.SHA256 = b.runningSum(t, r, n.Node)
				}
				if got != want {
					t.Errorf("%s: output %+v, want %+v", n.Node, got, want)
				}
				if got := b.archived(t, r, n.Node); got != stream[:want.StoredBytes] {
					t.Errorf("%s: archived %q, want %q", n.Node, got, stream[:want.StoredBytes])
				}
			}
			if storedBytes != wantStored {
				t.Errorf("rounds stored %d bytes, want %d", storedBytes, wantStored)
			}
			if n := b.chunkCount(t, r); chunks != n {
				t.Errorf("rounds stored %d chunks, the table holds %d", chunks, n)
			}
		})
	}
}

// runningSum is the sha256 of what a node sent so far, from its state.
func (b *bundle) runningSum(t *testing.T, r Run, node string) string {
	t.Helper()
	var state []byte
	if err := b.st.Pool().QueryRow(context.Background(), "SELECT hash_state FROM run_nodes WHERE run_id = $1 AND node = $2", r.ID, node).Scan(&state); err != nil {
		t.Fatal(err)
	}
	s, err := finalHash(state)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// archived is a node's stored output, its chunks in sequence order.
func (b *bundle) archived(t *testing.T, r Run, node string) string {
	t.Helper()
	chunks, err := b.st.NodeOutput(context.Background(), r.ID, node, -1, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	for _, c := range chunks {
		sb.Write(c.Data)
	}
	return sb.String()
}

func (b *bundle) chunkCount(t *testing.T, r Run) int {
	t.Helper()
	var n int
	if err := b.st.Pool().QueryRow(context.Background(), "SELECT count(*) FROM output_chunks WHERE run_id = $1", r.ID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestStoreRoundLikeReportByReport: a round stored at once leaves the
// database as RecordAck, AppendChunk and RecordExit called report by report
// in the engine's order do, the run's stream (followers' order) included.
func TestStoreRoundLikeReportByReport(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	nodes := []string{"a", "b", "c"}
	rounds := [][]Report{
		{ack("a"), out("a", 0, "a0 "), out("a", 2, "a2 "), ack("b"), out("b", 1, "b1 ")},
		{out("a", 2, "a2 "), out("a", 3, "a3"), exit("a", 0), out("b", 2, "b2"), exit("b", 1), ack("c")},
		{out("a", 3, "a3"), exit("a", 0), exit("c", 2)},
	}
	const outputCap = 5
	batched := b.insertRun(t, time.Hour, nodes...)
	one := b.insertRun(t, time.Hour, nodes...)
	var batchedFacts, oneFacts []Recorded
	for _, round := range rounds {
		res, err := b.storeRound(t, batched, outputCap, round)
		if err != nil {
			t.Fatal(err)
		}
		batchedFacts = append(batchedFacts, res.Recorded...)
		err = b.st.InTx(ctx, func(_ pgx.Tx, q *Queries) error {
			for _, rep := range round {
				switch rep.Kind {
				case ReportAck:
					ok, err := q.RecordAck(ctx, one.ID, rep.Node, rep.At)
					if err != nil {
						return err
					}
					if ok {
						oneFacts = append(oneFacts, Recorded{Kind: ReportAck, Node: rep.Node, At: rep.At})
					}
				case ReportOutput:
					if _, err := q.AppendChunk(ctx, one.ID, rep.Node, rep.Seq, rep.Data, outputCap); err != nil {
						return err
					}
				case ReportExit:
					o, ok, err := q.RecordExit(ctx, one.ID, rep.Node, rep.ExitCode, rep.At)
					if err != nil {
						return err
					}
					if ok {
						oneFacts = append(oneFacts, Recorded{Kind: ReportExit, Node: rep.Node, At: rep.At, ExitCode: rep.ExitCode, Output: o})
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(batchedFacts, oneFacts) {
		t.Errorf("recorded\n%+v\nreport by report\n%+v", batchedFacts, oneFacts)
	}
	nodeLines := func(r Run) []string {
		nodes, err := b.st.RunNodes(ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for _, n := range nodes {
			lines = append(lines, fmt.Sprintf("%s %s %d %v %v %d %d %t %s", n.Node, n.State, *n.ExitCode, *n.AckedAt, *n.ExitedAt,
				n.Bytes, n.StoredBytes, n.Truncated, n.SHA256))
		}
		return lines
	}
	if got, want := nodeLines(batched), nodeLines(one); !slices.Equal(got, want) {
		t.Errorf("nodes\n%q\nreport by report\n%q", got, want)
	}
	stream := func(r Run) []string {
		items, err := b.st.Stream(ctx, r.ID, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for _, it := range items {
			lines = append(lines, fmt.Sprintf("%s %s %d %q %d", it.Kind, it.Node, it.Seq, it.Data, it.ExitCode))
		}
		return lines
	}
	if got, want := stream(batched), stream(one); !slices.Equal(got, want) {
		t.Errorf("stream\n%q\nreport by report\n%q", got, want)
	}
}

// TestStoreRoundUnknownNode: output or an exit of a node the run does not
// expect is refused, as AppendChunk and RecordExit refuse it, and nothing
// of the round is stored.
func TestStoreRoundUnknownNode(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.insertRun(t, time.Hour, "a")
	for _, rep := range []Report{out("stranger", 0, "x"), exit("stranger", 0)} {
		_, err := b.storeRound(t, r, 100, []Report{ack("a"), out("a", 0, "x"), rep})
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%v from a stranger: %v, want ErrNotFound", rep.Kind, err)
		}
	}
	if n := b.chunkCount(t, r); n != 0 {
		t.Errorf("%d chunks stored", n)
	}
}

// statementCounter counts the statements and batches a pool sends: once a
// connection has prepared them, one round trip each.
type statementCounter struct{ n atomic.Int64 }

func (c *statementCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}
func (c *statementCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (c *statementCounter) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	c.n.Add(1)
	return ctx
}
func (c *statementCounter) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (c *statementCounter) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// TestStoreRoundTrips: what a round costs in round trips does not depend
// on how many nodes it reports on.
func TestStoreRoundTrips(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(b.db.Service)
	if err != nil {
		t.Fatal(err)
	}
	var counter statementCounter
	cfg.ConnConfig.Tracer = &counter
	cfg.MaxConns = 1 // one connection, whose statements are prepared once
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	st := &Store{Queries: New(pool), pool: pool}

	trips := func(n int) int64 {
		nodes, round, _ := manyNodes(n)
		r := b.insertRun(t, time.Hour, nodes...)
		before := counter.n.Load()
		err := st.InTx(ctx, func(_ pgx.Tx, q *Queries) error {
			_, err := q.StoreRound(ctx, r.ID, 1<<20, round)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return counter.n.Load() - before
	}
	trips(1) // prepares the statements
	small, large := trips(10), trips(1000)
	if small != large {
		t.Errorf("a round of 10 nodes took %d round trips, of 1,000 nodes %d", small, large)
	}
	// BEGIN, read the nodes, write the facts, COMMIT.
	if large != 4 {
		t.Errorf("a round took %d round trips, want 4", large)
	}
}
