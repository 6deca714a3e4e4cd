package jobs

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/metrics"
	"github.com/rexec/rexec/internal/store"
)

// keepLease renews the run's lease until ctx ends: every third of the
// lease's TTL, and at once when a cancel of the run is notified. A
// requested cancel cancels the engine (once) and renewal goes on, so that
// the teardown that follows still holds the run. Only a lease that is
// definitely lost — another claim holds the run — detaches the engine. A
// renewal that fails because the database is away is retried at the next
// tick, for as long as it takes: the lease may expire meanwhile, and the
// first renewal after the outage takes it back unless recovery handed the
// run to someone else first.
func (e *execution) keepLease(ctx context.Context, cancel context.CancelCauseFunc) {
	cfg := e.w.cfg
	t := time.NewTicker(cfg.LeaseTTL / 3)
	defer t.Stop()
	var wake <-chan struct{}
	if cfg.Cancels != nil {
		ch, unsubscribe := cfg.Cancels.Subscribe(e.run.ID)
		defer unsubscribe()
		wake = ch
	}
	var failingSince time.Time
	cancelled := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-wake:
		}
		cancelAsked, err := cfg.Store.RenewLease(ctx, e.run.ID, e.owner, cfg.LeaseTTL)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, store.ErrLeaseLost):
			cfg.Metrics.LeaseRenewalFailed(metrics.LeaseLost)
			e.log.WarnContext(ctx, "lease on run lost; leaving it to its new worker")
			cancel(consul.ErrDetach)
			return
		case err != nil:
			cfg.Metrics.LeaseRenewalFailed(metrics.LeaseError)
			if failingSince.IsZero() {
				failingSince = time.Now()
				e.log.WarnContext(ctx, "renew lease; keeping the run and retrying", slog.Any("error", err))
			}
			continue
		}
		if !failingSince.IsZero() {
			e.log.InfoContext(ctx, "lease renewed after an outage", slog.Duration("outage", time.Since(failingSince)))
			failingSince = time.Time{}
		}
		if cancelAsked && !cancelled {
			cancelled = true
			cancel(errCancelRequested)
		}
	}
}
