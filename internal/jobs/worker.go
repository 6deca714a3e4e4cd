package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/store"
)

// errCancelRequested is the cause with which a run's engine context is
// cancelled when a user cancels the run.
var errCancelRequested = errors.New("cancel requested")

// ExecWorker carries out runs.
type ExecWorker struct {
	river.WorkerDefaults[ExecArgs]
	cfg     Config
	clients *Clients
}

// Work claims the run, executes or re-attaches it, and finishes it.
func (w *ExecWorker) Work(ctx context.Context, job *river.Job[ExecArgs]) error {
	st, log := w.cfg.Store, w.cfg.Logger.With(slog.String("run", job.Args.RunID))
	run, err := st.GetRunByID(ctx, job.Args.RunID)
	if errors.Is(err, store.ErrNotFound) {
		return river.JobCancel(err)
	}
	if err != nil {
		return err
	}
	if store.Terminal(run.State) {
		return nil
	}
	tenant, err := st.TenantByID(ctx, run.TenantID)
	if err != nil {
		return err
	}
	owner := store.NewLeaseOwner(w.cfg.WorkerID)
	actor := "worker:" + w.cfg.WorkerID
	var claimed bool
	err = st.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
		var first bool
		claimed, first, err = q.ClaimRun(ctx, run.ID, owner, w.cfg.LeaseTTL)
		if err != nil || !claimed {
			return err
		}
		typ := audit.RunResumed
		if first {
			typ = audit.RunStarted
		}
		return audit.Record(ctx, tx, audit.Event{TenantID: run.TenantID, RunID: run.ID, Actor: actor, Type: typ,
			Data: map[string]any{"worker": w.cfg.WorkerID, "attempt": job.Attempt, "recovery": job.Args.Recovery}})
	})
	if err != nil {
		return err
	}
	if !claimed {
		log.DebugContext(ctx, "run held by another worker or not runnable")
		return nil
	}
	// The claim may have moved a queued run to running: read it again.
	if run, err = st.GetRunByID(ctx, run.ID); err != nil {
		return err
	}
	e := &execution{w: w, run: run, tenant: tenant, owner: owner, actor: actor, log: log,
		lastAttempt: job.Attempt >= job.MaxAttempts}
	if job.Args.Recovery > MaxRecoveries {
		return e.finish(ctx, nil, store.StateFailed, "", fmt.Sprintf("gave up after %d recoveries", MaxRecoveries))
	}
	return e.carryOut(ctx)
}

// MaxRecoveries bounds how often a run is handed to a new worker.
const MaxRecoveries = 20

// execution is one worker's claim on one run.
type execution struct {
	w           *ExecWorker
	run         store.Run
	tenant      store.Tenant
	owner       string // the lease owner of this claim
	actor       string
	log         *slog.Logger
	lastAttempt bool // River will not retry this job
}

func (e *execution) carryOut(jobCtx context.Context) error {
	cfg, st := e.w.cfg, e.w.cfg.Store
	// The engine's context: cancelled to cancel the run (user cancel,
	// deadline), or with cause consul.ErrDetach to leave it for another
	// worker (this worker stops, or lost its lease).
	ectx, cancel := context.WithCancelCause(context.WithoutCancel(jobCtx))
	defer cancel(nil)
	stop := context.AfterFunc(jobCtx, func() {
		if errors.Is(context.Cause(jobCtx), river.ErrJobCancelledRemotely) {
			cancel(errCancelRequested)
		} else {
			cancel(consul.ErrDetach)
		}
	})
	defer stop()
	if e.run.Timeout > 0 && e.run.StartedAt != nil {
		var c context.CancelFunc
		ectx, c = context.WithDeadlineCause(ectx, e.run.StartedAt.Add(e.run.Timeout), errDeadline)
		defer c()
	}
	leaseDone := make(chan struct{})
	go func() {
		defer close(leaseDone)
		e.keepLease(ectx, cancel)
	}()
	defer func() { cancel(nil); <-leaseDone }()

	client, err := e.w.clients.Get(e.tenant, func(c *consul.Config) {
		c.SessionTTL = cfg.SessionTTL
		c.Logger = cfg.Logger
	})
	if err != nil {
		return e.finish(jobCtx, nil, store.StateFailed, "", fmt.Sprintf("consul configuration: %v", err))
	}
	var targets []consul.Node
	if err := json.Unmarshal(e.run.Targets, &targets); err != nil {
		return e.finish(jobCtx, nil, store.StateFailed, "", fmt.Sprintf("decode targets: %v", err))
	}
	spec := SpecOf(e.run)

	var r *consul.Run
	if e.run.FiringAt == nil {
		// What the engine refuses without asking Consul no retry can fix:
		// fail now rather than retry with backoff for days. Submission
		// refuses such runs; this catches those stored before it did.
		if err := client.CheckPlan(spec, targets); err != nil {
			return e.finish(jobCtx, nil, store.StateFailed, "", err.Error())
		}
		// Never fired: prepare afresh (a session of an earlier attempt that
		// stopped short of firing is abandoned to its TTL).
		r, err = client.Prepare(ectx, spec, targets)
		if err != nil {
			return e.notStarted(jobCtx, ectx, err)
		}
		err = st.InTx(jobCtx, func(tx pgx.Tx, q *store.Queries) error {
			return q.RecordSession(jobCtx, e.run.ID, e.owner, r.Session())
		})
		if err != nil {
			r.Close(jobCtx)
			return e.notStarted(jobCtx, ectx, err)
		}
		err = r.Fire(ectx, func(ctx context.Context) error {
			return st.MarkFiring(ctx, e.run.ID, e.owner, r.Session())
		})
		if err != nil {
			return e.notStarted(jobCtx, ectx, err)
		}
		firedAt, events := r.FiredAt()
		err = st.InTx(jobCtx, func(tx pgx.Tx, q *store.Queries) error {
			if err := q.MarkFired(jobCtx, e.run.ID, firedAt); err != nil {
				return err
			}
			return audit.Record(jobCtx, tx, audit.Event{TenantID: e.run.TenantID, RunID: e.run.ID, Actor: e.actor, Type: audit.EventFired,
				Data: map[string]any{"events": events, "session": r.Session()}})
		})
		if err != nil {
			e.log.ErrorContext(jobCtx, "record fired event", slog.Any("error", err))
		}
	} else {
		// It may have fired: never again. Carry on watching.
		r, err = client.Attach(ectx, spec, e.run.Session, targets)
		if errors.Is(err, consul.ErrSessionGone) {
			return e.finish(jobCtx, nil, store.StateFailed, string(consul.OutcomeSessionLost),
				"the Consul session expired before a worker re-attached; unfinished nodes are lost")
		}
		if err != nil {
			return e.leave(jobCtx, err)
		}
	}

	res, err := r.Watch(ectx, e.handle)
	if err != nil {
		return e.leave(jobCtx, err)
	}
	state, msg := store.StateCompleted, ""
	switch res.Outcome {
	case consul.OutcomeCancelled:
		state, msg = e.stopReason(ectx)
	case consul.OutcomeSessionLost:
		state, msg = store.StateFailed, "the Consul session disappeared during the run; unfinished nodes are lost"
	}
	return e.finish(jobCtx, res, state, string(res.Outcome), msg)
}

// errDeadline is the cause of a run's deadline passing.
var errDeadline = errors.New("run deadline passed")

// stopReason says how a run whose engine context ended is to finish.
func (e *execution) stopReason(ectx context.Context) (state, msg string) {
	if errors.Is(context.Cause(ectx), errDeadline) {
		return store.StateFailed, fmt.Sprintf("run deadline of %s passed", e.run.Timeout)
	}
	return store.StateCancelled, ""
}

// notStarted handles an error before anything was fired: a cancel or
// deadline ends the run; a detach or a transient error gives the run back
// to the queue for River to retry (with backoff, up to its attempts); an
// error retrying cannot fix ends the run failed.
func (e *execution) notStarted(jobCtx, ectx context.Context, err error) error {
	st := e.w.cfg.Store
	switch {
	case errors.Is(err, store.ErrLeaseLost):
		return nil // another claim holds the run
	case ectx.Err() != nil && !errors.Is(context.Cause(ectx), consul.ErrDetach):
		state, msg := e.stopReason(ectx)
		return e.finish(jobCtx, nil, state, string(consul.OutcomeCancelled), msg)
	case ectx.Err() == nil && permanent(err), e.lastAttempt && ectx.Err() == nil:
		return e.finish(jobCtx, nil, store.StateFailed, "", err.Error())
	}
	if rerr := st.Requeue(context.WithoutCancel(jobCtx), e.run.ID, e.owner); rerr != nil {
		e.log.WarnContext(jobCtx, "requeue run", slog.Any("error", rerr))
	}
	if jobCtx.Err() != nil {
		// This worker stops: River retries the job on a live one.
		return fmt.Errorf("worker stopping: %w", err)
	}
	return err
}

// permanent reports errors that no retry can fix: invalid specs, and
// Consul refusing the tenant's token or the request.
func permanent(err error) bool {
	var tooLarge *consul.SpecTooLargeError
	var filterErr *consul.FilterError
	var eventErr *consul.EventTooLargeError
	var textErr *consul.TextError
	var se api.StatusError
	switch {
	case errors.As(err, &tooLarge), errors.As(err, &filterErr), errors.Is(err, consul.ErrNoTargets),
		errors.As(err, &eventErr), errors.As(err, &textErr),
		errors.Is(err, consul.ErrNoCommand), errors.Is(err, consul.ErrScriptWithNoShell), errors.Is(err, consul.ErrTagWithoutService):
		return true
	case errors.As(err, &se):
		return se.Code == 400 || se.Code == 401 || se.Code == 403 || se.Code == 413
	}
	return strings.Contains(err.Error(), "Permission denied") || strings.Contains(err.Error(), "ACL not found")
}

// leave lets go of a fired run that this worker cannot finish (it stops, it
// lost its lease, its store or Consul failed): the lease is released so
// that recovery hands the run to a new job at once, which re-attaches.
func (e *execution) leave(jobCtx context.Context, err error) error {
	if !errors.Is(err, store.ErrLeaseLost) {
		if rerr := e.w.cfg.Store.ReleaseLease(context.WithoutCancel(jobCtx), e.run.ID, e.owner); rerr != nil {
			e.log.WarnContext(jobCtx, "release lease", slog.Any("error", rerr))
		}
	}
	e.log.InfoContext(jobCtx, "left the run for recovery", slog.Any("reason", err))
	// Recovery, not River's retry, resumes the run.
	return nil
}

// keepLease renews the run's lease until ctx ends. A lost lease, or
// renewals failing for a whole TTL, detaches the engine; a requested cancel
// cancels the run.
func (e *execution) keepLease(ctx context.Context, cancel context.CancelCauseFunc) {
	cfg := e.w.cfg
	t := time.NewTicker(cfg.LeaseTTL / 3)
	defer t.Stop()
	renewed := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cancelAsked, err := cfg.Store.RenewLease(ctx, e.run.ID, e.owner, cfg.LeaseTTL)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, store.ErrLeaseLost):
			e.log.WarnContext(ctx, "lease on run lost; leaving it to its new worker")
			cancel(consul.ErrDetach)
			return
		case err != nil:
			e.log.WarnContext(ctx, "renew lease", slog.Any("error", err))
			if time.Since(renewed) > cfg.LeaseTTL {
				cancel(consul.ErrDetach)
				return
			}
		case cancelAsked:
			cancel(errCancelRequested)
			return
		default:
			renewed = time.Now()
		}
	}
}

// handle stores one watch round in one transaction, idempotently.
func (e *execution) handle(ctx context.Context, events []consul.Event) error {
	run := e.run
	return e.w.cfg.Store.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
		if err := q.HoldLease(ctx, run.ID, e.owner); err != nil {
			return err
		}
		var evs []audit.Event
		for _, ev := range events {
			switch ev.Kind {
			case consul.EventAck:
				ok, err := q.RecordAck(ctx, run.ID, ev.Node, ev.At)
				if err != nil {
					return err
				}
				if ok {
					evs = append(evs, audit.Event{TenantID: run.TenantID, RunID: run.ID, Actor: e.actor, Type: audit.NodeAcked,
						Data: map[string]any{"node": ev.Node}})
				}
			case consul.EventOutput:
				if _, err := q.AppendChunk(ctx, run.ID, ev.Node, ev.Seq, ev.Data, run.OutputCap); err != nil {
					return err
				}
			case consul.EventExit:
				ok, err := q.RecordExit(ctx, run.ID, ev.Node, ev.ExitCode, ev.At)
				if err != nil {
					return err
				}
				if ok {
					evs = append(evs, audit.Event{TenantID: run.TenantID, RunID: run.ID, Actor: e.actor, Type: audit.NodeExited,
						Data: map[string]any{"node": ev.Node, "exit_code": ev.ExitCode}})
				}
			}
		}
		if err := audit.Record(ctx, tx, evs...); err != nil {
			return err
		}
		return q.NotifyRun(ctx, run.ID)
	})
}

// finish classifies unfinished nodes and ends the run, in one transaction.
func (e *execution) finish(ctx context.Context, res *consul.Result, state, outcome, msg string) error {
	ctx = context.WithoutCancel(ctx)
	run := e.run
	err := e.w.cfg.Store.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
		if err := q.HoldLease(ctx, run.ID, e.owner); err != nil {
			return err
		}
		nodes, err := q.RunNodes(ctx, run.ID)
		if err != nil {
			return err
		}
		final := map[string]string{}
		if res != nil {
			for _, n := range res.Nodes {
				final[n.Node] = string(n.State)
			}
		}
		var evs []audit.Event
		for _, n := range nodes {
			if n.State == "exited" {
				continue
			}
			ns := final[n.Node]
			switch {
			case ns == string(consul.NodeExited):
				continue // stored by the handler
			case ns == "" && (state == store.StateCancelled || outcome == string(consul.OutcomeCancelled)):
				ns = "cancelled" // cancelled, or its deadline passed, before it could run
			case ns == "" && n.State == "acked", ns == "" && outcome == string(consul.OutcomeSessionLost):
				ns = "lost"
			case ns == "":
				ns = "no_ack"
			}
			ok, err := q.EndNode(ctx, run.ID, n.Node, ns)
			if err != nil {
				return err
			}
			if ok {
				evs = append(evs, audit.Event{TenantID: run.TenantID, RunID: run.ID, Actor: e.actor, Type: audit.NodeEnded,
					Data: map[string]any{"node": n.Node, "state": ns}})
			}
		}
		ok, err := q.FinishRun(ctx, run.ID, e.owner, state, outcome, msg)
		if err != nil || !ok {
			return err
		}
		evs = append(evs, audit.Event{TenantID: run.TenantID, RunID: run.ID, Actor: e.actor, Type: audit.RunFinished,
			Data: map[string]any{"state": state, "outcome": outcome, "error": msg}})
		if err := audit.Record(ctx, tx, evs...); err != nil {
			return err
		}
		return q.NotifyRun(ctx, run.ID)
	})
	if errors.Is(err, store.ErrLeaseLost) {
		return nil // another claim holds the run and will finish it
	}
	if err != nil {
		return fmt.Errorf("finish run: %w", err)
	}
	e.log.InfoContext(ctx, "run finished", slog.String("state", state), slog.String("outcome", outcome))
	return nil
}

// RecoverWorker hands runs whose lease expired to new jobs.
type RecoverWorker struct {
	river.WorkerDefaults[RecoverArgs]
	cfg Config
}

// Work reserves abandoned runs and inserts a job for each, in one
// transaction.
func (w *RecoverWorker) Work(ctx context.Context, job *river.Job[RecoverArgs]) error {
	client := river.ClientFromContext[pgx.Tx](ctx)
	return w.cfg.Store.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
		recs, err := q.TakeExpiredLeases(ctx, 3*w.cfg.LeaseTTL)
		if err != nil {
			return err
		}
		for _, r := range recs {
			w.cfg.Logger.InfoContext(ctx, "recovering run", slog.String("run", r.RunID), slog.Int("recovery", r.Recoveries))
			if _, err := client.InsertTx(ctx, tx, ExecArgs{RunID: r.RunID, Recovery: r.Recoveries}, nil); err != nil {
				return fmt.Errorf("insert recovery job: %w", err)
			}
		}
		return nil
	})
}
