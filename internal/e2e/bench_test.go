package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/client"
	"github.com/rexec/rexec/internal/jobs"
	"github.com/rexec/rexec/internal/localconsul"
	"github.com/rexec/rexec/internal/testenv"
)

// BenchmarkCLIVsConsulExec runs `true` on the five agents with remote exec
// on, alternately with rexec-cli exec (through rexec-svc, its queue and a
// worker) and consul exec, default settings, and reports both, and the
// median of each phase of rexec's runs, from the run's own record: the CLI
// until the server accepted the run (the CLI's start, its request, the
// submission), the queue (to the worker's pickup), preparing (session and
// job spec) and firing, gossip (fire to the last ack), the command and its
// exit reports (last ack to last exit seen), finishing, and the CLI from
// the run's end to its own.
//
//	go test ./internal/e2e -run '^$' -bench CLIVsConsulExec -benchtime 10x
func BenchmarkCLIVsConsulExec(b *testing.B) {
	e := newEnv(b, envOpts{})
	c, err := client.New(e.addr, e.token)
	if err != nil {
		b.Fatal(err)
	}
	phases := []string{"cli-submit", "queue", "prepare-fire", "gossip", "exec-exit", "finish", "cli-end"}
	took := make([][]time.Duration, len(phases))
	var rexec, ceTotal time.Duration
	for b.Loop() {
		start := time.Now()
		r := e.cli(nil, "exec", "-node", execNodes, "true")
		end := time.Now()
		rexec += end.Sub(start)
		if r.code != 0 {
			b.Fatalf("rexec-cli exec: %d %s%s", r.code, r.stdout, r.stderr)
		}
		b.StopTimer()
		for i, d := range runPhases(b, c, start, end) {
			took[i] = append(took[i], d)
		}
		b.StartTimer()
		start = time.Now()
		ce := e.consulExec(nil, "-node", execNodes, "true")
		ceTook := time.Since(start)
		if ce.code != 0 {
			b.Fatalf("consul exec: %d %s%s", ce.code, ce.stdout, ce.stderr)
		}
		ceTotal += ceTook
	}
	n := float64(b.N)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(rexec.Milliseconds())/n, "rexec-ms/run")
	b.ReportMetric(float64(ceTotal.Milliseconds())/n, "consul-exec-ms/run")
	b.ReportMetric(float64(rexec)/float64(ceTotal), "time-ratio")
	for i, p := range phases {
		b.ReportMetric(ms(percentile(took[i], 50)), p+"-p50-ms")
	}
}

// runPhases reads the newest run, which rexec-cli ran from start to end,
// and returns its phases (BenchmarkCLIVsConsulExec).
func runPhases(b *testing.B, c *client.Client, start, end time.Time) []time.Duration {
	b.Helper()
	ctx := context.Background()
	l, err := c.List(ctx, "", 1, "")
	if err != nil || len(l.Runs) != 1 {
		b.Fatalf("list: %v %+v", err, l)
	}
	r, err := c.Get(ctx, l.Runs[0].ID)
	if err != nil {
		b.Fatal(err)
	}
	if r.StartedAt == nil || r.FiredAt == nil || r.FinishedAt == nil {
		b.Fatalf("run %s: not carried out: %+v", r.ID, r)
	}
	var lastAck, lastExit time.Time
	for _, n := range r.Nodes {
		if n.AckedAt == nil || n.ExitedAt == nil {
			b.Fatalf("run %s: node %s did not run: %+v", r.ID, n.Node, n)
		}
		if n.AckedAt.After(lastAck) {
			lastAck = *n.AckedAt
		}
		if n.ExitedAt.After(lastExit) {
			lastExit = *n.ExitedAt
		}
	}
	return []time.Duration{r.CreatedAt.Sub(start), r.StartedAt.Sub(r.CreatedAt), r.FiredAt.Sub(*r.StartedAt),
		lastAck.Sub(*r.FiredAt), lastExit.Sub(lastAck), r.FinishedAt.Sub(lastExit), end.Sub(*r.FinishedAt)}
}

// Benchmark settings, from the environment so that CI's one-iteration
// smoke run stays small while the README's figures come from the defaults.
const (
	// benchServicesEnv sets how many services the benchmark cluster's
	// client agents register between them (default 100).
	benchServicesEnv = "REXEC_BENCH_SERVICES"
	// benchClientsEnv sets how many clients submit at once (default 32).
	benchClientsEnv = "REXEC_BENCH_CLIENTS"
	// benchRateEnv sets the steady submission rate of BenchmarkQueuePickup
	// and, when set, of BenchmarkSubmit (open loop),
	// per second (default 100).
	benchRateEnv = "REXEC_BENCH_RATE"
)

// benchAgents is the number of client agents in the benchmark cluster.
const benchAgents = 4

func envInt(b *testing.B, name string, def int) int {
	b.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

// benchCluster starts a cluster of its own for a benchmark: benchAgents
// client agents, bench-1 … bench-4, each registering the same
// REXEC_BENCH_SERVICES/4 services (100 in all by default: svc-00 … svc-24
// on every agent, tagged with the agent's name and the number's parity).
// The package's cluster has five services; this is closer to the catalogs
// that target resolution meets, where services run on several nodes.
// Consul's bound of 200 HTTP connections per client address is raised: one
// rexec-svc talks to the tenant's agent from one address, and at a hundred
// runs a second its sessions, watches and submissions pass that bound,
// which is Consul's protection, not what the benchmarks measure.
func benchCluster(b *testing.B) *localconsul.Cluster {
	b.Helper()
	perAgent := max(1, envInt(b, benchServicesEnv, 100)/benchAgents)
	clients := make([]localconsul.AgentConfig, benchAgents)
	for i := range clients {
		clients[i].Name = fmt.Sprintf("bench-%d", i+1)
		clients[i].ExtraHCL = "limits { http_max_conns_per_client = 5000 }\n"
		for s := range perAgent {
			clients[i].Services = append(clients[i].Services, localconsul.Service{Name: fmt.Sprintf("svc-%02d", s),
				Tags: []string{clients[i].Name, []string{"even", "odd"}[s%2]}})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl, err := localconsul.Start(ctx, localconsul.Config{Binary: bins.consul, Clients: clients, Logger: testenv.Logger(b)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cl.Stop)
	return cl
}

// benchFilters are the submissions BenchmarkSubmit times: every node (the
// server and the four clients), a node filter (two of the clients) and a
// service filter (every client).
var benchFilters = []struct {
	name string
	req  apitype.SubmitRequest
}{
	{"plain", apitype.SubmitRequest{Argv: []string{"true"}}},
	{"node", apitype.SubmitRequest{Argv: []string{"true"}, Node: "^bench-[12]$"}},
	{"service", apitype.SubmitRequest{Argv: []string{"true"}, Service: "^svc-0[0-4]$"}},
}

// BenchmarkSubmit measures submissions accepted by one API-only rexec-svc
// (-workers 0): REXEC_BENCH_CLIENTS (32) clients submit b.N runs between
// them as fast as they are answered, to a cluster of four client agents
// with REXEC_BENCH_SERVICES (100) services; each submission authenticates,
// resolves its targets from Consul, runs the ACL preflight (cached) and the
// policy, and commits the run, its audit events and its River job. It
// reports submissions per second and the latency of one submission, median
// and p99, for each of benchFilters.
//
// With REXEC_BENCH_RATE set, submissions arrive at that steady rate
// instead, each on its own (an open loop), so that latency is measured at a
// given load rather than at saturation, where 32 clients waiting on each
// other make it 32 / the rate by Little's law.
//
//	go test ./internal/e2e -run '^$' -bench 'Submit$' -benchtime 1000x
func BenchmarkSubmit(b *testing.B) {
	e := newEnv(b, envOpts{workers: -1, cluster: benchCluster(b), tenantAgent: "bench-1"})
	c, err := client.New(e.addr, e.token)
	if err != nil {
		b.Fatal(err)
	}
	clients := envInt(b, benchClientsEnv, 32)
	rate := 0
	if os.Getenv(benchRateEnv) != "" {
		rate = envInt(b, benchRateEnv, 0)
	}
	for _, f := range benchFilters {
		b.Run(f.name, func(b *testing.B) {
			ctx := context.Background()
			// A few submissions first, from every client at once, so that
			// connections (the server's pool grows to what the clients
			// need, each new PostgreSQL backend loading its caches), the
			// preflight cache and the policy are warm for the timed ones.
			var warm errgroup.Group
			for range clients {
				warm.Go(func() error {
					for range 4 {
						if _, err := c.Submit(ctx, f.req); err != nil {
							return err
						}
					}
					return nil
				})
			}
			if err := warm.Wait(); err != nil {
				b.Fatal(err)
			}
			cpu0 := childCPU(b)
			lat := make([]time.Duration, b.N)
			var next atomic.Int64
			var failed atomic.Int64
			var firstErr atomic.Value
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			submit := func(i int64) {
				t0 := time.Now()
				_, err := c.Submit(ctx, f.req)
				lat[i] = time.Since(t0)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
			if rate > 0 {
				tick := time.NewTicker(time.Second / time.Duration(rate))
				for i := range int64(b.N) {
					<-tick.C
					wg.Go(func() { submit(i) })
				}
				tick.Stop()
			} else {
				for range clients {
					wg.Go(func() {
						for {
							i := next.Add(1) - 1
							if i >= int64(b.N) {
								return
							}
							submit(i)
						}
					})
				}
			}
			wg.Wait()
			took := time.Since(start)
			b.StopTimer()
			cpu := childCPU(b)
			if n := failed.Load(); n > 0 {
				b.Fatalf("%d submissions failed, the first: %v", n, firstErr.Load())
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(b.N)/took.Seconds(), "submissions/s")
			b.ReportMetric(ms(percentile(lat, 50)), "p50-ms")
			b.ReportMetric(ms(percentile(lat, 99)), "p99-ms")
			// CPU per submission of each kind of process: unlike rates on
			// a shared machine, it hardly depends on what else runs.
			for _, name := range []string{"rexec-svc", "postgres", "consul", "bench"} {
				b.ReportMetric(ms(cpu[name]-cpu0[name])/float64(b.N), name+"-cpu-ms/op")
			}
		})
	}
}

// BenchmarkQueuePickup measures the time from submission to a worker
// starting the run (queue pickup) and to the event being fired, median and
// p99, for b.N runs submitted at a steady REXEC_BENCH_RATE (100) per second
// to one rexec-svc with the default 500 workers, on the cluster of
// BenchmarkSubmit, and the rate at which the runs were carried out. Each
// run targets one node with a command that exits at once; every run must
// complete with its node exited. The figures are read from the runs'
// created_at, started_at, fired_at and finished_at.
//
// Gossip carries fewer events a second than are submitted here, so runs
// wait at the start gate (consul.Client's MaxStarting) between pickup and
// firing: the fired figures and runs/s show the cluster's rate, the pickup
// figures the queue's.
//
//	go test ./internal/e2e -run '^$' -bench QueuePickup -benchtime 1000x
func BenchmarkQueuePickup(b *testing.B) {
	e := newEnv(b, envOpts{workers: jobs.WorkersDefault, cluster: benchCluster(b), tenantAgent: "bench-1"})
	c, err := client.New(e.addr, e.token)
	if err != nil {
		b.Fatal(err)
	}
	rate := envInt(b, benchRateEnv, 100)
	// A sub-benchmark, so that the cluster and the server above are set
	// up once, not again for each b.N the framework tries.
	b.Run(fmt.Sprintf("%d/s", rate), func(b *testing.B) {
		ctx := context.Background()
		ids := make([]string, b.N)
		errs := make(chan error, b.N)
		var wg sync.WaitGroup
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		b.ResetTimer()
		first := time.Now()
		for i := range b.N {
			<-tick.C
			wg.Go(func() {
				r, err := c.Submit(ctx, apitype.SubmitRequest{Argv: []string{"true"}, Node: "^bench-2$"})
				if err != nil {
					errs <- err
					return
				}
				ids[i] = r.ID
			})
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			b.Fatalf("%d submissions failed, the first: %v", len(errs)+1, err)
		}
		var pickup, fired []time.Duration
		var last time.Time
		failed := map[string]int{}
		for _, id := range ids {
			for {
				p, err := c.Stream(ctx, id, 0, 10*time.Second)
				if err != nil {
					b.Fatalf("run %s: %v", id, err)
				}
				if p.Done {
					break
				}
			}
			r, err := c.Get(ctx, id)
			if err != nil || r.StartedAt == nil || r.FiredAt == nil || r.FinishedAt == nil {
				b.Fatalf("run %s: %v %+v", id, err, r)
			}
			if r.State != "completed" || r.Outcome != "completed" {
				failed[r.State+"/"+r.Outcome]++
			}
			pickup = append(pickup, r.StartedAt.Sub(r.CreatedAt))
			fired = append(fired, r.FiredAt.Sub(r.CreatedAt))
			if r.FinishedAt.After(last) {
				last = *r.FinishedAt
			}
		}
		b.StopTimer()
		if len(failed) > 0 {
			b.Fatalf("runs that did not complete with their node exited, by state/outcome: %v", failed)
		}
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(ms(percentile(pickup, 50)), "pickup-p50-ms")
		b.ReportMetric(ms(percentile(pickup, 99)), "pickup-p99-ms")
		b.ReportMetric(ms(percentile(fired, 50)), "fired-p50-ms")
		b.ReportMetric(ms(percentile(fired, 99)), "fired-p99-ms")
		b.ReportMetric(float64(b.N)/last.Sub(first).Seconds(), "runs/s")
	})
}

// childCPU returns the CPU time (user and system) used so far by this
// process's descendants, summed by command name: rexec-svc, postgres (the
// server and its backends, when testenv started it), consul (every agent
// of the package's and the benchmark's clusters), and bench, this process
// itself (the load generator). It reads Linux's /proc.
func childCPU(b *testing.B) map[string]time.Duration {
	b.Helper()
	type proc struct {
		ppid int
		comm string
		cpu  time.Duration
	}
	procs := map[int]proc{}
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		b.Fatal(err)
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid … utime stime (fields 14 and 15, in
		// USER_HZ = 100 ticks a second); comm may hold spaces.
		open, closing := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
		if open < 0 || closing < open {
			continue
		}
		f := strings.Fields(string(stat[closing+1:]))
		if len(f) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		utime, _ := strconv.ParseInt(f[11], 10, 64)
		stime, _ := strconv.ParseInt(f[12], 10, 64)
		procs[pid] = proc{ppid: ppid, comm: string(stat[open+1 : closing]), cpu: time.Duration(utime+stime) * 10 * time.Millisecond}
	}
	out := map[string]time.Duration{}
	self := os.Getpid()
	// This process: the load generator (and the tests' own bookkeeping).
	out["bench"] = procs[self].cpu
	for _, p := range procs {
		for a := p.ppid; a > 1; a = procs[a].ppid {
			if a == self {
				out[p.comm] += p.cpu
				break
			}
		}
	}
	return out
}

func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, (len(s)*p)/100)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
