package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rexec/rexec/internal/testenv"
)

// BenchmarkStoreRound stores one watch round of N nodes that each ack,
// send a 64-byte chunk and exit (the simulator's default run), in one
// transaction: report by report (RecordAck, AppendChunk, RecordExit: the
// worker's handler before StoreRound) and as a round. It reports the time
// and the statements (round trips) per round.
//
//	go test ./internal/store -run '^$' -bench StoreRound -benchtime 3x
func BenchmarkStoreRound(b *testing.B) {
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(testenv.Migrated(b).Service)
	if err != nil {
		b.Fatal(err)
	}
	var counter statementCounter
	cfg.ConnConfig.Tracer = &counter
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	st := &Store{Queries: New(pool), pool: pool}
	tn, err := st.CreateTenant(ctx, Tenant{Name: "bench", ConsulAddr: "127.0.0.1:8500", Prefix: "_rexec", OutputCap: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	p, err := st.UpsertPrincipal(ctx, tn.ID, "bench", []string{RoleSubmitter})
	if err != nil {
		b.Fatal(err)
	}

	byReport := func(ctx context.Context, q *Queries, runID string, round []Report) error {
		for _, r := range round {
			var err error
			switch r.Kind {
			case ReportAck:
				_, err = q.RecordAck(ctx, runID, r.Node, r.At)
			case ReportOutput:
				_, err = q.AppendChunk(ctx, runID, r.Node, r.Seq, r.Data, 1<<20)
			case ReportExit:
				_, _, err = q.RecordExit(ctx, runID, r.Node, r.ExitCode, r.At)
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	asRound := func(ctx context.Context, q *Queries, runID string, round []Report) error {
		_, err := q.StoreRound(ctx, runID, 1<<20, round)
		return err
	}
	for _, n := range []int{1000, 5000} {
		var nodes []string
		var round []Report
		for i := range n {
			node := fmt.Sprintf("node-%05d", i)
			nodes = append(nodes, node)
			round = append(round, ack(node), Report{Kind: ReportOutput, Node: node, Data: bytes.Repeat([]byte("x"), 64), At: roundT0},
				exit(node, 0))
		}
		targets, _ := json.Marshal(nodes)
		for _, path := range []struct {
			name  string
			store func(context.Context, *Queries, string, []Report) error
		}{{"report-by-report", byReport}, {"round", asRound}} {
			b.Run(fmt.Sprintf("%s/nodes=%d", path.name, n), func(b *testing.B) {
				var statements int64
				for range b.N {
					b.StopTimer()
					r, err := st.InsertRun(ctx, Run{TenantID: tn.ID, SubmittedBy: p.ID, State: StateQueued, Argv: []string{"true"},
						Shell: true, Prefix: "_rexec", Wait: 2 * time.Second, OutputCap: 1 << 20, Targets: targets, StartTimeout: time.Hour}, nodes)
					if err != nil {
						b.Fatal(err)
					}
					before := counter.n.Load()
					b.StartTimer()
					err = st.InTx(ctx, func(_ pgx.Tx, q *Queries) error { return path.store(ctx, q, r.ID, round) })
					if err != nil {
						b.Fatal(err)
					}
					statements += counter.n.Load() - before
				}
				b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/round")
				b.ReportMetric(float64(statements)/float64(b.N), "round-trips/round")
			})
		}
	}
}
