package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/mod/sumdb/note"

	"github.com/rexec/rexec/internal/api"
	"github.com/rexec/rexec/internal/auditlog"
	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/jobs"
	"github.com/rexec/rexec/internal/metrics"
	"github.com/rexec/rexec/internal/policy"
	"github.com/rexec/rexec/internal/service"
	"github.com/rexec/rexec/internal/store"
)

func cmdServe(ctx context.Context, args []string, stderr io.Writer, withAPI bool) error {
	name := "worker"
	if withAPI {
		name = "serve"
	}
	fs := newFlagSet(name, stderr)
	dbURL, level := fs.databaseURL(), fs.logLevel()
	var listen *string
	var hf httpFlags
	// Every process serves /metrics: a worker on this listener, the API on
	// its own and, if asked, on this one too (an address that only the
	// monitoring network reaches).
	metricsDefault, metricsHelp := "127.0.0.1:9090", "listen address of /metrics, /healthz and /readyz (plain HTTP); empty: none"
	if withAPI {
		metricsDefault, metricsHelp = "", "a second listen address of /metrics, /healthz and /readyz (plain HTTP), besides -listen"
	}
	metricsListen := fs.String("metrics-listen", "REXEC_METRICS_LISTEN", metricsDefault, metricsHelp)
	if withAPI {
		listen = fs.String("listen", "REXEC_LISTEN", "127.0.0.1:8080", "HTTP listen address")
		hf = addHTTPFlags(fs)
	}
	workers := fs.Int("workers", "REXEC_WORKERS", jobs.WorkersDefault, "runs carried out at once by this process (0: API only)")
	workerID := fs.String("worker-id", "REXEC_WORKER_ID", "", "name of this worker in leases and audit events (default: hostname-pid)")
	leaseTTL := fs.Duration("lease-ttl", "REXEC_LEASE_TTL", jobs.LeaseTTLDefault, "how long a worker's claim on a run holds without renewal; a dead worker's runs are recovered after it")
	sessionTTL := fs.Duration("session-ttl", "REXEC_SESSION_TTL", 0, "TTL of runs' Consul sessions: how long the agents' unread output outlives a dead worker (default: 60s, or six lease TTLs if more)")
	roundInterval := fs.Duration("round-interval", "REXEC_ROUND_INTERVAL", consul.RoundIntervalDefault, "least time between two listings of a prefix's results in Consul: lower answers runs sooner, higher reads less")
	maxStarting := fs.Int("max-starting", "REXEC_MAX_STARTING", consul.MaxStartingDefault, "runs of a tenant between preparing and the ack of their last target at once: how fast runs are fired against what the cluster's gossip carries")
	requeueAfter := fs.Duration("requeue-after", "REXEC_REQUEUE_AFTER", jobs.RequeueAfterDefault, "a run queued this long is checked for a live job and re-queued without one")
	auditKeyFile := fs.String("audit-key-file", "REXEC_AUDIT_KEY_FILE", "", "private key (from rexec-svc audit keygen) to sign audit checkpoints with; without one this process logs no events into the tenants' transparency logs")
	auditInterval := fs.Duration("audit-interval", "REXEC_AUDIT_INTERVAL", auditlog.IntervalDefault, "how often new audit events are logged and a checkpoint signed")
	var policyDir *string
	if withAPI {
		policyDir = fs.String("policy-dir", "REXEC_POLICY_DIR", "", "directory of Rego policies replacing the embedded default; SIGHUP reloads it")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if !withAPI && *workers <= 0 {
		return errors.New("-workers must be positive for rexec-svc worker")
	}
	if *workers < 0 {
		return errors.New("-workers must not be negative")
	}
	if *roundInterval <= 0 || *roundInterval > time.Second {
		return errors.New("-round-interval must be positive and at most 1s")
	}
	if *maxStarting < 1 || *maxStarting > 1000 {
		return errors.New("-max-starting must be between 1 and 1000")
	}
	// Checked, and the certificate read, before anything is started: a
	// mistyped flag fails at once, not after the database is reached.
	var httpOpts httpOptions
	if withAPI {
		var err error
		if httpOpts, err = hf.options(); err != nil {
			return err
		}
	}
	var signer note.Signer
	if *auditKeyFile != "" {
		var err error
		if signer, err = readAuditKey(*auditKeyFile); err != nil {
			return err
		}
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	st, err := openStore(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := store.CheckMigrated(ctx, st.Pool()); err != nil {
		return err
	}
	opts := serveOptions{workers: *workers, workerID: *workerID, leaseTTL: *leaseTTL, sessionTTL: *sessionTTL, requeueAfter: *requeueAfter,
		roundInterval: *roundInterval, maxStarting: *maxStarting, http: httpOpts, auditSigner: signer, auditInterval: *auditInterval}
	if withAPI {
		// A policy that does not compile stops the server before it listens.
		if opts.policy, err = loadPolicy(ctx, st, log, *policyDir); err != nil {
			return err
		}
		l, err := net.Listen("tcp", *listen)
		if err != nil {
			return fmt.Errorf("listen: %w", err)
		}
		opts.listener = l
	}
	if *metricsListen != "" {
		l, err := net.Listen("tcp", *metricsListen)
		if err != nil {
			return fmt.Errorf("metrics listen: %w", err)
		}
		opts.metricsListener = l
	}
	return serve(ctx, st, log, opts)
}

type serveOptions struct {
	listener net.Listener // nil: no API
	// metricsListener serves the metrics alone (nil: none; the API's
	// listener serves them too).
	metricsListener net.Listener
	workers         int
	workerID        string
	leaseTTL        time.Duration
	// sessionTTL, requeueAfter, roundInterval and maxStarting: zero for
	// the defaults.
	sessionTTL, requeueAfter, roundInterval time.Duration
	maxStarting                             int
	// policy decides the API's actions (required with a listener).
	policy *policy.Engine
	// http: the API's server and limits; zero values for the defaults.
	http httpOptions
	// auditSigner, when set, makes this process log audit events and
	// sign checkpoints, every auditInterval (zero: the default).
	auditSigner   note.Signer
	auditInterval time.Duration
	ready         func(addr string)
}

// serve runs the API and workers until ctx ends, then shuts down: the API
// stops taking requests, and running runs are left, with their lease
// released, for another worker to re-attach.
func serve(ctx context.Context, st *store.Store, log *slog.Logger, o serveOptions) error {
	var wg sync.WaitGroup
	nctx, cancelNotifiers := context.WithCancel(context.WithoutCancel(ctx))
	defer func() { cancelNotifiers(); wg.Wait() }()
	reg, mtr := newMetrics(st, log)
	ready := func(ctx context.Context) error { return store.CheckMigrated(ctx, st.Pool()) }
	var cancels *store.Notifier
	if o.workers > 0 {
		// Workers hear of cancels at once, not at their next lease renewal.
		cancels = store.NewNotifier(st, store.CancelChannel, log)
		wg.Add(1)
		go func() { defer wg.Done(); cancels.Run(nctx) }()
	}
	alog, err := auditlog.New(st.Pool(), auditlog.Config{Signer: o.auditSigner, Logs: st.TenantNames,
		Interval: o.auditInterval, Logger: log})
	if err != nil {
		return err
	}
	if o.auditSigner != nil {
		wg.Add(1)
		go func() { defer wg.Done(); _ = alog.Run(nctx) }()
		log.InfoContext(ctx, "signing audit checkpoints", slog.String("key", o.auditSigner.Name()))
	} else {
		log.WarnContext(ctx, "no -audit-key-file: this process signs no audit checkpoints; events wait for a process that does")
	}
	rc, err := jobs.NewClient(jobs.Config{Store: st, Workers: o.workers, WorkerID: o.workerID, LeaseTTL: o.leaseTTL,
		SessionTTL: o.sessionTTL, RequeueAfter: o.requeueAfter, RoundInterval: o.roundInterval, MaxStarting: o.maxStarting, Cancels: cancels, Logger: log, Metrics: mtr})
	if err != nil {
		return err
	}
	if o.workers > 0 {
		if err := rc.Start(ctx); err != nil {
			return fmt.Errorf("start workers: %w", err)
		}
		log.InfoContext(ctx, "workers started", slog.Int("workers", o.workers))
	}
	var srv *http.Server
	var serveErr error
	if o.listener != nil {
		svc, err := service.New(service.Config{Store: st, River: rc, Logger: log, Policy: o.policy, AuditLog: alog,
			ConsulConfig: func(c *consul.Config) { c.Metrics = mtr }, SubmitWriters: o.http.submitWriters})
		if err != nil {
			return err
		}
		defer svc.Close() // its tenants' catalog views
		mtr.SetCatalogViews(svc.CatalogViewAges)
		wg.Add(1)
		go func() { defer wg.Done(); reloadOnHUP(nctx, st, log, o.policy) }()
		rctx, cancelRuns := context.WithCancel(nctx)
		defer cancelRuns()
		notifier := store.NewNotifier(st, store.RunChannel, log)
		wg.Add(1)
		go func() { defer wg.Done(); notifier.Run(rctx) }()
		// Requests' contexts end when shutdown begins, so that long-polling
		// stream requests answer at once instead of holding shutdown up.
		baseCtx, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
		defer cancelBase()
		o.http.server.Logger = log
		srv = api.NewServer(o.http.server, api.Handler(api.Config{Service: svc, Notifier: notifier, Logger: log, Limits: o.http.limits,
			Ready: ready, Registry: reg, Metrics: mtr}))
		srv.BaseContext = func(net.Listener) context.Context { return baseCtx }
		srv.RegisterOnShutdown(cancelBase)
		// Read before serving: net/http fills TLSConfig in for HTTP/2 even
		// on a plain listener, once Serve has started.
		scheme := "http"
		if srv.TLSConfig != nil {
			scheme = "https"
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := api.Serve(srv, o.listener); !errors.Is(err, http.ErrServerClosed) {
				serveErr = err
			}
			cancelRuns()
		}()
		log.InfoContext(ctx, "listening", slog.String("addr", o.listener.Addr().String()), slog.String("scheme", scheme))
		if o.ready != nil {
			o.ready(o.listener.Addr().String())
		}
	}
	var msrv *http.Server
	if o.metricsListener != nil {
		msrv = api.NewServer(api.ServerConfig{Logger: log}, metrics.Handler(reg, ready))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := msrv.Serve(o.metricsListener); !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics listener failed", slog.Any("error", err))
			}
		}()
		log.InfoContext(ctx, "metrics listening", slog.String("addr", o.metricsListener.Addr().String()))
	}
	<-ctx.Done()
	log.Info("shutting down")
	if msrv != nil {
		// Scrapes are quick: a short grace, then cut.
		hctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := msrv.Shutdown(hctx); err != nil {
			log.Warn("metrics shutdown", slog.Any("error", err))
		}
		cancel()
	}
	if srv != nil {
		hctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := srv.Shutdown(hctx); err != nil {
			log.Warn("http shutdown", slog.Any("error", err))
		}
		cancel()
	}
	if o.workers > 0 {
		// Cancelling the jobs' contexts detaches their runs; recovery on
		// another (or the restarted) worker re-attaches them.
		wctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		if err := rc.StopAndCancel(wctx); err != nil {
			log.Warn("stop workers", slog.Any("error", err))
		}
		cancel()
	}
	cancelNotifiers()
	wg.Wait()
	return serveErr
}

// newMetrics returns the process's registry and metrics, the database's
// gauges read from st at every scrape.
func newMetrics(st *store.Store, log *slog.Logger) (*prometheus.Registry, *metrics.Metrics) {
	reg, m := metrics.NewRegistry()
	m.SetLogger(log)
	m.WatchDatabase(func(ctx context.Context) (metrics.DatabaseStats, error) {
		s, err := st.Stats(ctx, jobs.QueueExec)
		return metrics.DatabaseStats{Runs: s.Runs, QueueDepth: s.QueueDepth, QueueOldest: s.QueueOldest, AuditUnlogged: s.AuditUnlogged}, err
	})
	return reg, m
}
