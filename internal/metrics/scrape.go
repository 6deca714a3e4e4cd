package metrics

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DatabaseTimeout bounds the database's part of a scrape: a slow database
// makes its gauges go missing from a scrape, not the scrape time out.
const DatabaseTimeout = 3 * time.Second

// DatabaseStats are the gauges read from Postgres at scrape time. They are
// the database's, not the process's: every process reports the same values,
// so aggregate them over processes with max, not sum.
type DatabaseStats struct {
	// Runs counts the runs in each state that has an index of its own
	// (pending_approval, queued, running); runs in a final state are
	// counted by rexec_runs_finished_total instead, as counting them would
	// read a table that only grows.
	Runs map[string]int64
	// QueueDepth counts the run jobs ready for a worker (River's available
	// jobs of the exec queue), and QueueOldest is how long the oldest of
	// them has been ready (0 for none).
	QueueDepth  int64
	QueueOldest time.Duration
	// AuditUnlogged is, per transparency log (a tenant's name, or
	// "system"), the age of the next audit event waiting to be logged; a
	// log with none waiting is absent.
	AuditUnlogged map[string]time.Duration
}

// DatabaseSource reads DatabaseStats; ctx carries DatabaseTimeout.
type DatabaseSource func(ctx context.Context) (DatabaseStats, error)

type databaseSource struct{ read DatabaseSource }

// WatchDatabase makes every scrape read the database gauges from read.
func (m *Metrics) WatchDatabase(read DatabaseSource) {
	if m != nil && read != nil {
		m.database.Store(&databaseSource{read})
	}
}

var (
	descRuns = prometheus.NewDesc(NameRuns,
		"Runs in each non-final state (pending_approval, queued, running), from the database at scrape time; every process reports the same values.",
		[]string{"state"}, nil)
	descQueueDepth = prometheus.NewDesc(NameQueueDepth,
		"Run jobs ready for a worker and waiting for one (River's available jobs of the exec queue), from the database at scrape time.", nil, nil)
	descQueueOldest = prometheus.NewDesc(NameQueueOldestAge,
		"How long the oldest run job ready for a worker has waited; 0 when none waits.", nil, nil)
	descAuditUnlogged = prometheus.NewDesc(NameAuditUnloggedAge,
		"Age of the next audit event waiting to be logged in a transparency log (a tenant's, or system), by log; absent when none waits.",
		[]string{"log"}, nil)
	descCatalogViewAge = prometheus.NewDesc(NameCatalogViewAge,
		"Age of a tenant's catalog view: time since it last matched Consul's catalog.", []string{"tenant"}, nil)
)

// databaseCollector reports DatabaseStats at scrape time.
type databaseCollector struct{ m *Metrics }

func (c databaseCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRuns
	ch <- descQueueDepth
	ch <- descQueueOldest
	ch <- descAuditUnlogged
	c.m.dbErrors.Describe(ch)
}

func (c databaseCollector) Collect(ch chan<- prometheus.Metric) {
	// The error counter is collected here, after this scrape's read, not
	// as a collector of its own: the registry collects its collectors at
	// once, and the scrape whose read failed would often show the count
	// from before.
	defer c.m.dbErrors.Collect(ch)
	src := c.m.database.Load()
	if src == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), DatabaseTimeout)
	defer cancel()
	st, err := src.read(ctx)
	if err != nil {
		// A scrape still answers, without these gauges: the process's own
		// metrics are as useful when the database is away, and the error
		// counter says why the gauges are missing.
		c.m.dbErrors.Inc()
		c.m.logger().Warn("read database metrics", slog.Any("error", err))
		return
	}
	for state, n := range st.Runs {
		ch <- prometheus.MustNewConstMetric(descRuns, prometheus.GaugeValue, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(descQueueDepth, prometheus.GaugeValue, float64(st.QueueDepth))
	ch <- prometheus.MustNewConstMetric(descQueueOldest, prometheus.GaugeValue, max(st.QueueOldest, 0).Seconds())
	for log, age := range st.AuditUnlogged {
		ch <- prometheus.MustNewConstMetric(descAuditUnlogged, prometheus.GaugeValue, max(age, 0).Seconds(), log)
	}
}

// CatalogViews reports the age of each tenant's catalog view, by tenant
// name: it calls report once per view. It is called at every scrape, so it
// must be quick and must not block on Consul.
type CatalogViews func(report func(tenant string, age time.Duration))

// SetCatalogViews makes scrapes report rexec_catalog_view_age_seconds from
// views. Until it is called the metric is absent (no view to report).
func (m *Metrics) SetCatalogViews(views CatalogViews) {
	if m != nil && views != nil {
		m.catalogViews.Store(&views)
	}
}

type catalogCollector struct{ m *Metrics }

func (c catalogCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descCatalogViewAge }

func (c catalogCollector) Collect(ch chan<- prometheus.Metric) {
	views := c.m.catalogViews.Load()
	if views == nil {
		return
	}
	seen := map[string]bool{}
	(*views)(func(tenant string, age time.Duration) {
		if seen[tenant] {
			return // a second view of one tenant would fail the scrape
		}
		seen[tenant] = true
		ch <- prometheus.MustNewConstMetric(descCatalogViewAge, prometheus.GaugeValue, max(age, 0).Seconds(), tenant)
	})
}
