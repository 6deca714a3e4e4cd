// Package jobs carries runs out: a River job per run drives the remote-exec
// engine, stores every ack, chunk and exit as it arrives, and classifies
// every expected node at the end.
//
// The lifecycle and its guarantees (docs/lifecycle.md says it for users):
//
//   - At most once. A worker claims a run with a lease in the runs table,
//     records the Consul session before anything is fired, and marks the
//     run firing in the database at the last moment before the event goes
//     out. A run marked firing is never fired again: a later worker
//     re-attaches to its session.
//   - Cancel beats firing. The firing mark and a cancel are serialised on
//     the run's row: once a cancel (or a denial, or an expiry) is recorded
//     the mark is refused and the run ends cancelled without firing. A
//     worker hears of a cancel at once through LISTEN/NOTIFY.
//   - Nothing is lost. Sessions are TTL-only and renewed by the worker that
//     holds the run, however long its database is away; while it is, the
//     worker stops reading the agents' reports and leaves them in Consul,
//     and archives them when the database is back. A worker regains its
//     claim after an outage by renewing its lease, which works as long as
//     nobody took the run over; if recovery did, the worker lets go without
//     touching Consul and the new holder re-attaches.
//   - The lease guards Consul too. A fired run's session and prefix are
//     destroyed only inside a transaction that holds the run's row locked
//     for the lease holder, so a worker that stalled past its lease never
//     tears down a run that another worker now holds.
//   - No run left behind. A leader-only periodic job hands runs whose lease
//     expired to new jobs (ahead of new runs), re-queues queued runs whose
//     River job is gone, and fails runs that could not start within their
//     start bound instead of firing them late.
package jobs

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/metrics"
	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/tenantconsul"
	"github.com/rexec/rexec/internal/webhook"
)

// Defaults.
const (
	LeaseTTLDefault        = 10 * time.Second
	SessionTTLDefault      = 60 * time.Second
	RecoverIntervalDefault = 2 * time.Second
	RequeueAfterDefault    = time.Minute
	// WorkersDefault is how many runs a worker process carries at once.
	// A run in flight holds no database connection and no connection of
	// its own to Consul (consul: one shared key watch per tenant and
	// prefix, short requests over a bounded pool); it costs goroutines and
	// a little memory (README, Capacity), a lease renewal every LeaseTTL/3
	// and a session renewal every SessionTTL/3.
	WorkersDefault = 500
	QueueExec      = "exec"
)

const (
	// River runs lower priorities first: recovery before new runs.
	priorityRecovery = 1
	priorityNew      = 2

	recoveryActor    = "rexec:recovery"
	maxFinishBackoff = 5 * time.Second
	requeueListLimit = 10000
	// fetchCooldown is River's FetchCooldown for every client (NewClient).
	fetchCooldown = 20 * time.Millisecond
	// A run taken for recovery is reserved this many lease TTLs, so that
	// one sweep does not race the next before the new job claims it.
	recoveryLeaseHoldFactor = 3
)

// ExecArgs is the River job that carries out one run.
type ExecArgs struct {
	RunID string `json:"run_id"`
	// Recovery numbers the jobs that resume a run after its worker went
	// away, so that each is a job of its own.
	Recovery int `json:"recovery,omitempty"`
}

// Kind implements river.JobArgs.
func (ExecArgs) Kind() string { return "rexec_exec" }

// InsertOpts implements river.JobArgsWithInsertOpts.
func (ExecArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueExec, MaxAttempts: 10, Priority: priorityNew}
}

// RecoverArgs is the periodic job that hands abandoned runs to new jobs.
type RecoverArgs struct{}

// Kind implements river.JobArgs.
func (RecoverArgs) Kind() string { return "rexec_recover" }

// InsertOpts implements river.JobArgsWithInsertOpts.
func (RecoverArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 1}
}

// Config configures the River client and its workers.
type Config struct {
	// Store is the database (required).
	Store *store.Store
	// Workers is how many runs one process carries out at once (River's
	// MaxWorkers of the exec queue): a run occupies its slot from claim to
	// finish, sleeping commands included. 0 makes an insert-only client (an
	// API-only process). Default for Workers < 0: 500.
	Workers int
	// WorkerID names this process in leases and audit events.
	// Default: hostname-pid.
	WorkerID string
	// LeaseTTL is how long a claim on a run holds without renewal; it is
	// renewed every third of it. Default: 10s.
	LeaseTTL time.Duration
	// SessionTTL is the Consul session TTL of runs. It must cover a worker's
	// death plus the lease expiry and the recovery of the run, or the
	// agents' unread output is deleted by Consul first. Default: 60s, or six
	// LeaseTTLs if that is more.
	SessionTTL time.Duration
	// RecoverInterval is how often the leader looks for abandoned runs.
	// Default: 2s.
	RecoverInterval time.Duration
	// RequeueAfter is how long a run may sit queued before the leader
	// checks that it still has a River job, and re-queues it if not.
	// Default: 1m.
	RequeueAfter time.Duration
	// Cancels, when set and running, tells each execution at once of a
	// cancel of its run (store.CancelChannel). Without it a cancel is
	// noticed at the next lease renewal.
	Cancels *store.Notifier
	// RoundInterval is the least time between two listings of a prefix's
	// shared key watch (consul.Config.RoundInterval): a run's latency
	// against what it reads. Zero: the engine's default (50ms).
	RoundInterval time.Duration
	// MaxStarting bounds each tenant's runs between preparing and the ack
	// of their last target at once (consul.Config.MaxStarting): how fast
	// runs are fired against what the tenant's gossip carries. Zero: the
	// engine's default (4).
	MaxStarting int
	// ConsulConfig adjusts each tenant's engine configuration (tests count
	// requests with it). Optional.
	ConsulConfig func(*consul.Config)
	// Logger. Default: discard.
	Logger *slog.Logger
	// Metrics counts what the workers and the recovery sweep do, and the
	// workers' requests to Consul. Default: nothing counted.
	Metrics *metrics.Metrics
}

func (c Config) withDefaults() Config {
	if c.Workers < 0 {
		c.Workers = WorkersDefault
	}
	if c.WorkerID == "" {
		host, _ := os.Hostname()
		c.WorkerID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	c.LeaseTTL = cmp.Or(c.LeaseTTL, LeaseTTLDefault)
	c.SessionTTL = cmp.Or(c.SessionTTL, max(SessionTTLDefault, 6*c.LeaseTTL))
	c.RecoverInterval = cmp.Or(c.RecoverInterval, RecoverIntervalDefault)
	c.RequeueAfter = cmp.Or(c.RequeueAfter, RequeueAfterDefault)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// NewClient returns the River client: with workers and the recovery job
// when cfg.Workers > 0, insert-only otherwise. Start it to work.
func NewClient(cfg Config) (*river.Client[pgx.Tx], error) {
	cfg = cfg.withDefaults()
	if cfg.Store == nil {
		return nil, errors.New("jobs: Store is required")
	}
	switch {
	case cfg.LeaseTTL < time.Second || cfg.LeaseTTL > 10*time.Minute:
		return nil, errors.New("jobs: LeaseTTL must be between 1s and 10m")
	case cfg.SessionTTL < 3*cfg.LeaseTTL || cfg.SessionTTL > time.Hour:
		return nil, errors.New("jobs: SessionTTL must be at least three LeaseTTLs (so that a run outlives its lease) and at most 1h")
	case cfg.SessionTTL < 10*time.Second:
		return nil, errors.New("jobs: SessionTTL must be at least 10s (Consul's minimum)")
	case cfg.RequeueAfter < time.Second:
		return nil, errors.New("jobs: RequeueAfter must be at least 1s")
	case cfg.RoundInterval < 0 || cfg.RoundInterval > time.Second:
		return nil, errors.New("jobs: RoundInterval must be between 0 (the default) and 1s")
	case cfg.MaxStarting < 0 || cfg.MaxStarting > 1000:
		return nil, errors.New("jobs: MaxStarting must be between 0 (the default) and 1000")
	}
	rc := &river.Config{
		ID:     cfg.WorkerID,
		Logger: cfg.Logger,
		// Runs manage their own deadline; a River timeout would cut a run
		// off without its teardown.
		JobTimeout:           -1,
		RescueStuckJobsAfter: time.Hour,
		// Reindex nothing: REINDEX takes the index's owner, and the
		// service's database role owns nothing (store.GrantService), so
		// River's periodic reindex would only fail. Operators may reindex
		// River's indexes as the owner (README, Database roles).
		ReindexerIndexNames: []string{},
		// A job is fetched when its insert's notification arrives, but
		// River notifies (in the inserting process) and fetches (in the
		// worker) at most once per FetchCooldown, 100 ms by default: at a
		// steady stream of submissions most runs waited for the next
		// one. 20 ms bounds that wait for at most 50 notifications and
		// fetches a second per process.
		FetchCooldown: fetchCooldown,
	}
	if cfg.Workers > 0 {
		workers := river.NewWorkers()
		river.AddWorker(workers, &ExecWorker{cfg: cfg, clients: tenantconsul.NewClients(cfg.ConsulConfig)})
		river.AddWorker(workers, &RecoverWorker{cfg: cfg})
		if err := webhook.AddWorkers(workers, webhook.Config{Targets: webhookTargets{cfg.Store}, Recorder: deliveryAudit{cfg.Store},
			Logger: cfg.Logger}); err != nil {
			return nil, err
		}
		cfg.Metrics.SetWorkerSlots(cfg.Workers)
		rc.Workers = workers
		rc.Queues = map[string]river.QueueConfig{
			QueueExec:          {MaxWorkers: cfg.Workers},
			river.QueueDefault: {MaxWorkers: 2},
			webhook.Queue:      webhook.QueueConfig(),
		}
		rc.FetchPollInterval = 200 * time.Millisecond
		rc.PeriodicJobs = []*river.PeriodicJob{
			river.NewPeriodicJob(river.PeriodicInterval(cfg.RecoverInterval),
				func() (river.JobArgs, *river.InsertOpts) { return RecoverArgs{}, nil },
				&river.PeriodicJobOpts{ID: "rexec_recover", RunOnStart: true}),
		}
	}
	client, err := river.NewClient(riverpgxv5.New(cfg.Store.Pool()), rc)
	if err != nil {
		return nil, fmt.Errorf("river client: %w", err)
	}
	return client, nil
}

// SpecOf rebuilds the engine spec of a stored run.
func SpecOf(r store.Run) consul.Spec {
	return consul.Spec{
		Argv:          r.Argv,
		Script:        r.Script,
		NoShell:       !r.Shell,
		NodeFilter:    r.NodeFilter,
		ServiceFilter: r.ServiceFilter,
		TagFilter:     r.TagFilter,
		Prefix:        r.Prefix,
		Wait:          r.Wait,
		WaitRepl:      r.WaitRepl,
	}
}
