// Package metrics defines rexec's Prometheus metrics in one place: their
// names, help, labels and buckets, and the bounded label values. The
// packages that do the work (jobs, service, api, consul) call the methods of
// a *Metrics they are given; a nil *Metrics does nothing, so a component
// built without one (a test, an admin command) needs no change.
//
// Nothing here registers with Prometheus's default registry: New takes the
// registerer, so that every process and every test has its own.
//
// docs/metrics.md is the catalogue for operators; Names lists the same
// names, and a test keeps the two in step.
package metrics

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metric names. Counters end in _total, durations are in seconds, sizes in
// bytes, as Prometheus's conventions ask.
const (
	NameRuns                = "rexec_runs"
	NameRunsFinished        = "rexec_runs_finished_total"
	NameQueueDepth          = "rexec_queue_depth"
	NameQueueOldestAge      = "rexec_queue_oldest_age_seconds"
	NameSubmit              = "rexec_submit_seconds"
	NamePickup              = "rexec_pickup_seconds"
	NameRunsInFlight        = "rexec_runs_in_flight"
	NameWorkerSlots         = "rexec_worker_slots"
	NameRunsWaitingToStart  = "rexec_runs_waiting_to_start"
	NameConsulRequests      = "rexec_consul_requests_total"
	NameConsulResponseBytes = "rexec_consul_response_bytes_total"
	NameCatalogViewAge      = "rexec_catalog_view_age_seconds"
	NameOutputBytesArchived = "rexec_output_bytes_archived_total"
	NameLeaseRenewalsFailed = "rexec_lease_renewals_failed_total"
	NameRecoveries          = "rexec_recoveries_total"
	NameAuditUnloggedAge    = "rexec_audit_unlogged_age_seconds"
	NameDatabaseScrapeError = "rexec_database_scrape_errors_total"
)

// Names are the metrics this package defines, in the order of
// docs/metrics.md. The API's own (rexec_http_*) are defined in package api.
var Names = []string{
	NameRuns, NameRunsFinished, NameQueueDepth, NameQueueOldestAge, NameSubmit, NamePickup,
	NameRunsInFlight, NameWorkerSlots, NameRunsWaitingToStart, NameConsulRequests, NameConsulResponseBytes, NameCatalogViewAge,
	NameOutputBytesArchived, NameLeaseRenewalsFailed, NameRecoveries, NameAuditUnloggedAge, NameDatabaseScrapeError,
}

// Recovery kinds, the values of rexec_recoveries_total's kind label.
const (
	// RecoveryLeaseExpired: a running run whose worker stopped renewing
	// its lease was handed to a new job.
	RecoveryLeaseExpired = "lease_expired"
	// RecoveryReattached: a worker re-attached to a run that had fired
	// under another claim (the new job of a lease_expired recovery, or a
	// worker that restarted).
	RecoveryReattached = "reattached"
	// RecoveryOrphanRequeued: a queued run whose River job was gone got a
	// new one.
	RecoveryOrphanRequeued = "orphan_requeued"
	// RecoveryLateFailed: a queued run past its start bound was failed
	// rather than fired late.
	RecoveryLateFailed = "late_failed"
	// RecoveryApprovalExpired: a run pending approval past its window
	// ended expired.
	RecoveryApprovalExpired = "approval_expired"
)

// RecoveryKinds are every kind label value.
var RecoveryKinds = []string{RecoveryLeaseExpired, RecoveryReattached, RecoveryOrphanRequeued, RecoveryLateFailed, RecoveryApprovalExpired}

// Lease renewal failures, the values of rexec_lease_renewals_failed_total's
// reason label.
const (
	// LeaseError: the renewal failed (the database is away); the worker
	// keeps the run and retries.
	LeaseError = "error"
	// LeaseLost: another claim holds the run; the worker lets it go.
	LeaseLost = "lost"
)

// Buckets of the latency histograms, in seconds.
var (
	// SubmitBuckets: a submission resolves targets in Consul, asks the
	// policy and commits one transaction — milliseconds to seconds.
	SubmitBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	// PickupBuckets: a job waits for a free worker — from the fetch poll
	// interval to however long a backlog takes.
	PickupBuckets = []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}
)

// Metrics are rexec's metrics of one process. The zero value is not
// usable; a nil *Metrics is, and does nothing.
type Metrics struct {
	runsFinished   *prometheus.CounterVec
	submit         prometheus.Histogram
	pickup         prometheus.Histogram
	inFlight       prometheus.Gauge
	workerSlots    prometheus.Gauge
	startWaiting   prometheus.Gauge
	consulRequests *prometheus.CounterVec
	consulBytes    *prometheus.CounterVec
	outputBytes    prometheus.Counter
	leaseFailed    *prometheus.CounterVec
	recoveries     *prometheus.CounterVec
	dbErrors       prometheus.Counter

	// catalogViews reports the catalog views' ages at scrape time; set
	// once the views exist (SetCatalogViews).
	catalogViews atomic.Pointer[CatalogViews]
	// database reads the database's gauges at scrape time (WatchDatabase).
	database atomic.Pointer[databaseSource]
	log      atomic.Pointer[slog.Logger]
}

// New defines the metrics and registers them with reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		runsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{Name: NameRunsFinished,
			Help: "Runs this process ended, by final state (completed, failed, cancelled, denied, expired)."}, []string{"state"}),
		submit: prometheus.NewHistogram(prometheus.HistogramOpts{Name: NameSubmit,
			Help: "Latency of accepted submissions (POST /v1/runs answered 201): targets resolved, policy decided, run stored and queued.", Buckets: SubmitBuckets}),
		pickup: prometheus.NewHistogram(prometheus.HistogramOpts{Name: NamePickup,
			Help: "Time a run's job waited between becoming available and a worker of this process claiming the run.", Buckets: PickupBuckets}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: NameRunsInFlight,
			Help: "Runs this process is carrying out now."}),
		workerSlots: prometheus.NewGauge(prometheus.GaugeOpts{Name: NameWorkerSlots,
			Help: "Runs this process carries out at once at most (-workers); 0 for an API-only process."}),
		startWaiting: prometheus.NewGauge(prometheus.GaugeOpts{Name: NameRunsWaitingToStart,
			Help: "Runs of this process waiting for a place at their tenant's start gate, before writing anything to Consul: the gate's places are held by runs not yet acknowledged by all their targets, so that runs are fired no faster than gossip carries them."}),
		consulRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: NameConsulRequests,
			Help: "HTTP requests to Consul agents, by endpoint (a fixed route, never a key, session or node) and result (2xx, 3xx, 4xx, 5xx, error, canceled)."},
			[]string{"endpoint", "result"}),
		consulBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: NameConsulResponseBytes,
			Help: "Bytes of Consul agents' response bodies read, by endpoint."}, []string{"endpoint"}),
		outputBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: NameOutputBytesArchived,
			Help: "Output bytes this process archived in Postgres (within each node's output cap)."}),
		leaseFailed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: NameLeaseRenewalsFailed,
			Help: "Lease renewals that failed, by reason: error (database away, retried) or lost (another claim holds the run)."}, []string{"reason"}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: NameRecoveries,
			Help: "Recoveries by kind: lease_expired, reattached, orphan_requeued, late_failed, approval_expired."}, []string{"kind"}),
		dbErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: NameDatabaseScrapeError,
			Help: "Scrapes whose database gauges (rexec_runs, rexec_queue_*, rexec_audit_unlogged_age_seconds) could not be read; those gauges are missing from such a scrape."}),
	}
	// Every label value known in advance starts at zero, so that a rate()
	// over it exists before the first event and a scrape lists every name.
	for _, k := range RecoveryKinds {
		m.recoveries.WithLabelValues(k)
	}
	for _, r := range []string{LeaseError, LeaseLost} {
		m.leaseFailed.WithLabelValues(r)
	}
	for _, s := range FinalStates {
		m.runsFinished.WithLabelValues(s)
	}
	reg.MustRegister(m.runsFinished, m.submit, m.pickup, m.inFlight, m.workerSlots, m.startWaiting, m.consulRequests, m.consulBytes,
		m.outputBytes, m.leaseFailed, m.recoveries, catalogCollector{m}, databaseCollector{m})
	return m
}

// FinalStates are the values of rexec_runs_finished_total's state label.
var FinalStates = []string{"completed", "failed", "cancelled", "denied", "expired"}

// NewRegistry returns a registry with the Go runtime's and the process's
// collectors, and rexec's metrics registered with it.
func NewRegistry() (*prometheus.Registry, *Metrics) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg, New(reg)
}

// SetLogger sets where scrape-time failures are logged. Default: nowhere.
func (m *Metrics) SetLogger(l *slog.Logger) {
	if m != nil && l != nil {
		m.log.Store(l)
	}
}

func (m *Metrics) logger() *slog.Logger {
	if l := m.log.Load(); l != nil {
		return l
	}
	return slog.New(slog.DiscardHandler)
}

// RunFinished counts a run this process ended in state, once the
// transaction that ended it committed.
func (m *Metrics) RunFinished(state string) {
	if m != nil {
		m.runsFinished.WithLabelValues(state).Inc()
	}
}

// SubmitAccepted observes the latency of an accepted submission.
func (m *Metrics) SubmitAccepted(d time.Duration) {
	if m != nil {
		m.submit.Observe(d.Seconds())
	}
}

// PickedUp observes how long a run's job waited for a worker.
func (m *Metrics) PickedUp(d time.Duration) {
	if m != nil {
		m.pickup.Observe(max(d, 0).Seconds())
	}
}

// RunStarted counts a run this process now carries out; the returned
// function, called once when it stops, uncounts it.
func (m *Metrics) RunStarted() (done func()) {
	if m == nil {
		return func() {}
	}
	m.inFlight.Inc()
	return m.inFlight.Dec
}

// StartWaiting counts a run waiting for a place at a start gate; the
// returned function, called once when it stops waiting, uncounts it.
func (m *Metrics) StartWaiting() (done func()) {
	if m == nil {
		return func() {}
	}
	m.startWaiting.Inc()
	return m.startWaiting.Dec
}

// SetWorkerSlots records how many runs this process carries out at most.
func (m *Metrics) SetWorkerSlots(n int) {
	if m != nil {
		m.workerSlots.Set(float64(n))
	}
}

// OutputArchived counts output bytes stored in Postgres.
func (m *Metrics) OutputArchived(n int64) {
	if m != nil && n > 0 {
		m.outputBytes.Add(float64(n))
	}
}

// LeaseRenewalFailed counts a failed lease renewal; reason is LeaseError or
// LeaseLost.
func (m *Metrics) LeaseRenewalFailed(reason string) {
	if m != nil {
		m.leaseFailed.WithLabelValues(reason).Inc()
	}
}

// Recovered counts n recoveries of kind (one of RecoveryKinds).
func (m *Metrics) Recovered(kind string, n int) {
	if m != nil && n > 0 {
		m.recoveries.WithLabelValues(kind).Add(float64(n))
	}
}

// Handler serves /metrics from reg, with /healthz (the process is up) and
// /readyz (ready reports nil; nil ready: always). It is a worker-only
// process's whole HTTP interface; the API serves the same paths itself.
func Handler(reg *prometheus.Registry, ready func(context.Context) error) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeStatus(w, http.StatusOK, `{"status":"ok"}`)
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ready != nil {
			if err := ready(r.Context()); err != nil {
				// The error is the readiness check's own (database
				// unreachable, not migrated), as the API's /readyz says.
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write(jsonError(err.Error()))
				return
			}
		}
		writeStatus(w, http.StatusOK, `{"status":"ready"}`)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

// jsonError is the API's error body (api.ErrorBody) for a process that is
// not ready.
func jsonError(msg string) []byte {
	b, _ := json.Marshal(map[string]string{"error": msg, "code": "not_ready"})
	return append(b, '\n')
}

func writeStatus(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body + "\n"))
}
