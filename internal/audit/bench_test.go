package audit_test

import (
	"context"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/testenv"
)

// Benchmark data: REXEC_BENCH_AUDIT_DATABASE_URL names a migrated database
// whose tenant 1 holds a log made by queryGenerate (for the figures of
// query.go: 1,000,000 runs, 10M events); without it, a test database gets
// REXEC_BENCH_AUDIT_RUNS runs (default 5,000: 50,000 events).
const (
	benchDatabaseEnv = "REXEC_BENCH_AUDIT_DATABASE_URL"
	benchRunsEnv     = "REXEC_BENCH_AUDIT_RUNS"
)

// queryGenerate appends the events of runs $3 to $4, ten or eleven each,
// 31.5 s apart from $5 (a year for 1M runs): every tenth run is tenant
// $2's, the others $1's; 50 submitters, 4 workers, 500 nodes (three a run),
// 20 services, 10 commands, 5 approvers (every twentieth run); exit code 2
// on one node in 200 runs, 1 in 50 (the other tenant's), state failed in
// one run in 100, cancelled in 300.
const queryGenerate = `
INSERT INTO audit_events (body)
SELECT jsonb_strip_nulls(jsonb_build_object(
	'tenant', CASE WHEN r % 10 = 0 THEN $2::bigint ELSE $1::bigint END,
	'run', md5('run' || r)::uuid, 'type', ty, 'actor', actor, 'node', node, 'data', data,
	'time', to_char(($5::timestamptz + (r * 31.536 + k * 0.2) * interval '1 second') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
))::text
FROM generate_series($3::int, $4::int) r
CROSS JOIN LATERAL (VALUES
	(1, 'run.submitted', 'user-' || (r % 50), NULL::text, jsonb_build_object(
		'argv', jsonb_build_array((ARRAY['systemctl restart nginx', 'uptime', 'df -h', 'cat /etc/os-release', 'echo hello',
			'apt-get upgrade -y', 'journalctl -u app', 'ls -la /var/log', 'free -m', 'reboot'])[1 + r % 10] || ' ' || r % 997),
		'service', 'svc-' || (r % 20), 'targets', jsonb_build_array('node-' || ((r * 7) % 500), 'node-' || ((r * 7 + 1) % 500), 'node-' || ((r * 7 + 2) % 500)))),
	(2, 'policy.decided', 'user-' || (r % 50), NULL, jsonb_build_object('action', 'exec.submit', 'outcome', 'allow')),
	(3, 'run.queued', 'user-' || (r % 50), NULL, NULL::jsonb),
	(4, 'run.started', 'worker:w' || (r % 4), NULL, jsonb_build_object('worker', 'w' || (r % 4))),
	(5, 'run.event_fired', 'worker:w' || (r % 4), NULL, NULL),
	(6, 'node.acked', 'worker:w' || (r % 4), 'node-' || ((r * 7) % 500), jsonb_build_object('node', 'node-' || ((r * 7) % 500))),
	(7, 'node.exited', 'worker:w' || (r % 4), 'node-' || ((r * 7) % 500), jsonb_build_object('node', 'node-' || ((r * 7) % 500),
		'exit_code', CASE WHEN r % 50 = 0 THEN 1 WHEN r % 200 = 3 THEN 2 ELSE 0 END)),
	(8, 'node.exited', 'worker:w' || (r % 4), 'node-' || ((r * 7 + 1) % 500), jsonb_build_object('node', 'node-' || ((r * 7 + 1) % 500), 'exit_code', 0)),
	(9, 'node.exited', 'worker:w' || (r % 4), 'node-' || ((r * 7 + 2) % 500), jsonb_build_object('node', 'node-' || ((r * 7 + 2) % 500), 'exit_code', 0)),
	(10, CASE WHEN r % 300 = 7 THEN 'run.cancelled' ELSE 'run.finished' END, 'worker:w' || (r % 4), NULL,
		jsonb_build_object('state', CASE WHEN r % 100 = 1 THEN 'failed' ELSE 'completed' END)),
	(11, CASE WHEN r % 20 = 5 THEN 'approval.given' END, 'approver-' || (r % 5), NULL, jsonb_build_object('comment', 'ok'))
) AS ev (k, ty, actor, node, data)
WHERE ty IS NOT NULL
ORDER BY r, k`

// benchStart is the time of the generated log's first run.
var benchStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// benchLog returns a pool on a generated log, the tenant to query and the
// time of its last event.
func benchLog(b *testing.B) (*pgxpool.Pool, int64, time.Time) {
	b.Helper()
	ctx := context.Background()
	url := os.Getenv(benchDatabaseEnv)
	if url == "" {
		url = testenv.Database(b)
	}
	st, err := store.Open(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(st.Close)
	pool := st.Pool()
	if os.Getenv(benchDatabaseEnv) == "" {
		runs := 5000
		if v := os.Getenv(benchRunsEnv); v != "" {
			if runs, err = strconv.Atoi(v); err != nil {
				b.Fatalf("%s: %v", benchRunsEnv, err)
			}
		}
		ta, tb := twoTenants(b, st)
		for lo := 1; lo <= runs; lo += 50000 {
			if _, err := pool.Exec(ctx, queryGenerate, ta, tb, lo, min(lo+49999, runs), benchStart); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := pool.Exec(ctx, `VACUUM ANALYZE audit_events`); err != nil {
			b.Fatal(err)
		}
	}
	var tenant int64
	var last time.Time
	err = pool.QueryRow(ctx, `SELECT tenant_id, created_at FROM audit_events WHERE tenant_id IS NOT NULL AND run_id IS NOT NULL ORDER BY id DESC LIMIT 1`).Scan(&tenant, &last)
	if err != nil {
		b.Fatal(err)
	}
	if tenant != 1 {
		// The generator's last run is every tenth one: the other tenant's.
		err = pool.QueryRow(ctx, `SELECT min(tenant_id) FROM audit_events`).Scan(&tenant)
	}
	if err != nil {
		b.Fatal(err)
	}
	return pool, tenant, last
}

// BenchmarkQuery times the first page of audit queries; p95-ms is the 95th
// percentile of the iterations.
func BenchmarkQuery(b *testing.B) {
	pool, tenant, last := benchLog(b)
	code := func(n int) *int { return &n }
	// A week a tenth of the way into the log, and the week up to its end.
	span := last.Sub(benchStart)
	weekAgo := benchStart.Add(span / 10)
	for _, bc := range []struct {
		name string
		f    audit.Filter
	}{
		{"all", audit.Filter{}},
		{"principal", audit.Filter{Principal: "user-7"}},
		{"node", audit.Filter{Node: "node-17"}},
		{"exit-code", audit.Filter{ExitCode: code(2)}},
		{"node+last-week", audit.Filter{Node: "node-17", Since: last.Add(-7 * 24 * time.Hour)}},
		{"node+old-week", audit.Filter{Node: "node-17", Since: weekAgo, Until: weekAgo.Add(7 * 24 * time.Hour)}},
		{"principal+old-week", audit.Filter{Principal: "user-7", Since: weekAgo, Until: weekAgo.Add(7 * 24 * time.Hour)}},
		{"exit-code+old-week", audit.Filter{ExitCode: code(2), Since: weekAgo, Until: weekAgo.Add(7 * 24 * time.Hour)}},
		{"old-week", audit.Filter{Since: weekAgo, Until: weekAgo.Add(7 * 24 * time.Hour)}},
		{"service", audit.Filter{Service: "svc-3"}},
		{"command", audit.Filter{Command: "os-release 99"}},
		{"state", audit.Filter{State: "failed"}},
		{"approver", audit.Filter{Approver: "approver-0"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			bc.f.TenantID = tenant
			var took []time.Duration
			for b.Loop() {
				start := time.Now()
				if _, err := audit.Query(context.Background(), pool, bc.f); err != nil {
					b.Fatal(err)
				}
				took = append(took, time.Since(start))
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)*95/100].Microseconds())/1000, "p95-ms")
		})
	}
}
