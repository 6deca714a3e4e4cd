package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/failpoint"
	"github.com/rexec/rexec/internal/metrics"
	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/tenantconsul"
)

// errCancelRequested is the cause with which a run's engine context is
// cancelled when a user cancels the run.
var errCancelRequested = errors.New("cancel requested")

// errDeadline is the cause of a run's deadline passing.
var errDeadline = errors.New("run deadline passed")

// MaxRecoveries bounds how often a run is picked up again after its worker
// went away.
const MaxRecoveries = 20

// ExecWorker carries out runs.
type ExecWorker struct {
	river.WorkerDefaults[ExecArgs]
	cfg     Config
	clients *tenantconsul.Clients
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
	w.cfg.Metrics.PickedUp(waited(job.JobRow))
	defer w.cfg.Metrics.RunStarted()()
	failpoint.Inject(failpoint.Claimed)
	// The claim moved the run to running and counted a recovery: read it again.
	if run, err = st.GetRunByID(ctx, run.ID); err != nil {
		return err
	}
	e := &execution{w: w, run: run, tenant: tenant, owner: owner, actor: actor, log: log,
		lastAttempt: job.Attempt >= job.MaxAttempts, exited: map[string]bool{}}
	if run.FiringAt == nil {
		// Never fired: a recorded cancel or a passed start bound ends it
		// here, before anything is prepared.
		switch {
		case run.CancelRequested:
			e.discardUnfired(ctx)
			return e.close(ctx, nil, nil, store.StateCancelled, string(consul.OutcomeCancelled), "")
		}
		// A passed start bound is judged by the database's clock, not this
		// worker's: MarkFiring refuses the run then.
		if msg, err := w.checkApprovals(ctx, run); err != nil {
			return err
		} else if msg != "" {
			return e.close(ctx, nil, nil, store.StateFailed, "", msg)
		}
	}
	if run.Recoveries > MaxRecoveries {
		return e.close(ctx, nil, nil, store.StateFailed, "", fmt.Sprintf("gave up after %d recoveries", MaxRecoveries))
	}
	return e.carryOut(ctx)
}

// waited is how long a job was ready before a worker took it: from its
// scheduled_at (its insert, or the end of a retry's backoff) to its
// attempted_at, both set by the database's clock, so a worker's clock does
// not skew it.
func waited(j *rivertype.JobRow) time.Duration {
	if j.AttemptedAt == nil {
		return 0
	}
	return j.AttemptedAt.Sub(j.ScheduledAt)
}

// checkApprovals says why a run that needed approval may not start: its
// stored request no longer hashes to what was approved, or too few
// approvals match it. Empty when it may.
func (w *ExecWorker) checkApprovals(ctx context.Context, run store.Run) (string, error) {
	if run.RequestHash != "" && !store.RequestHashMatches(run) {
		return "the run's stored request no longer matches the request hash it was submitted (and approved) with; it was not fired", nil
	}
	if run.Policy.Approvals == 0 {
		return "", nil
	}
	approvals, err := w.cfg.Store.Approvals(ctx, run.ID)
	if err != nil {
		return "", err
	}
	given := store.ApprovalsGiven(approvals, run.RequestHash)
	if given < run.Policy.Approvals {
		return fmt.Sprintf("%d of %d required approvals match the run's request; it was not fired", given, run.Policy.Approvals), nil
	}
	return "", nil
}

// execution is one worker's claim on one run.
type execution struct {
	w           *ExecWorker
	run         store.Run
	tenant      store.Tenant
	owner       string // the lease owner of this claim
	actor       string
	log         *slog.Logger
	lastAttempt bool            // River will not retry this job
	exited      map[string]bool // nodes whose exit this claim stored or saw
	targets     int             // how many nodes the run expects
	// unrecordedFire is a firing not yet recorded (fired_at and its audit
	// event), because the database failed when it went out.
	unrecordedFire *firedRecord
	// stopLease stops renewing the lease (once the run's row is about to
	// be locked for its end, renewals would only wait on that lock).
	stopLease func()
	// finalState is the state finishTx ended the run in: the one asked
	// for, or completed for a lost session whose every node had exited.
	finalState string
}

func (e *execution) carryOut(jobCtx context.Context) error {
	st := e.w.cfg.Store
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
	// The lease is renewed until the run is finished or left, through a
	// cancel's or deadline's teardown too: its own context, not ectx.
	lctx, stopLease := context.WithCancel(context.WithoutCancel(jobCtx))
	leaseDone := make(chan struct{})
	go func() {
		defer close(leaseDone)
		e.keepLease(lctx, cancel)
	}()
	var once sync.Once
	e.stopLease = func() { once.Do(func() { stopLease(); <-leaseDone }) }
	defer e.stopLease()

	client, err := e.client()
	if err != nil {
		return e.close(jobCtx, nil, nil, store.StateFailed, "", fmt.Sprintf("consul configuration: %v", err))
	}
	var targets []consul.Node
	if err := json.Unmarshal(e.run.Targets, &targets); err != nil {
		return e.close(jobCtx, nil, nil, store.StateFailed, "", fmt.Sprintf("decode targets: %v", err))
	}
	e.targets = len(targets)
	spec := SpecOf(e.run)

	var r *consul.Run
	if e.run.FiringAt == nil {
		// What the engine refuses without asking Consul no retry can fix:
		// fail now rather than retry with backoff for days. Submission
		// refuses such runs; this catches those stored before it did.
		if err := client.CheckPlan(spec, targets); err != nil {
			return e.close(jobCtx, nil, nil, store.StateFailed, "", err.Error())
		}
		// Never fired: prepare afresh. The session of an earlier attempt
		// that stopped short of firing is discarded.
		e.discardUnfired(jobCtx)
		// Prepare may wait for a place at the tenant's start gate. A run
		// whose start bound passes meanwhile gives up there, before it
		// writes a session and a job spec that MarkFiring would refuse.
		// (The bound is the submitting process's clock, MarkFiring's the
		// database's: they differ by the machines' skew.)
		pctx, stopPrepare := context.WithDeadlineCause(ectx, e.run.StartBy, store.ErrStartBoundPassed)
		r, err = client.Prepare(pctx, spec, targets)
		stopPrepare()
		if err != nil {
			if ectx.Err() == nil && errors.Is(context.Cause(pctx), store.ErrStartBoundPassed) {
				err = fmt.Errorf("prepare: %w", store.ErrStartBoundPassed)
			}
			return e.notStarted(jobCtx, ectx, err)
		}
		err = st.InTx(jobCtx, func(tx pgx.Tx, q *store.Queries) error {
			return q.RecordSession(jobCtx, e.run.ID, e.owner, r.Session())
		})
		if err != nil {
			_ = r.Close(jobCtx)
			return e.notStarted(jobCtx, ectx, err)
		}
		failpoint.Inject(failpoint.SessionRecorded)
		err = r.Fire(ectx, func(ctx context.Context) error {
			if err := st.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
				return q.MarkFiring(ctx, e.run.ID, e.owner, r.Session())
			}); err != nil {
				return err
			}
			failpoint.Inject(failpoint.FiringMarked)
			return nil
		})
		if errors.Is(err, consul.ErrFireFailed) {
			// Marked firing, yet nothing went out: the run ends here, torn
			// down under the lease like any other, its nodes no_ack.
			return e.close(jobCtx, r, nil, store.StateFailed, "", err.Error())
		}
		if err != nil {
			return e.notStarted(jobCtx, ectx, err)
		}
		failpoint.Inject(failpoint.Fired)
		e.recordFired(jobCtx, r)
	} else {
		// It may have fired: never again. Carry on watching.
		r, err = client.Attach(ectx, spec, e.run.Session, targets)
		if errors.Is(err, consul.ErrSessionGone) {
			return e.close(jobCtx, nil, nil, store.StateFailed, string(consul.OutcomeSessionLost),
				"the Consul session expired before a worker re-attached; unfinished nodes are lost")
		}
		if err != nil {
			return e.leave(jobCtx, err)
		}
		if err := e.restore(jobCtx, r); err != nil {
			r.Detach()
			return e.leave(jobCtx, err)
		}
		e.w.cfg.Metrics.Recovered(metrics.RecoveryReattached, 1)
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
	return e.close(jobCtx, r, res, state, string(res.Outcome), msg)
}

// restore tells a re-attached run what earlier claims stored: the engine
// deletes stored acks and exits from KV during a run, so without this a
// node that exited before the re-attach would look silent and the run
// would wait out its quiet period for it. A database that is away is
// waited out, the session renewed meanwhile, as the handler's is.
func (e *execution) restore(ctx context.Context, r *consul.Run) error {
	var nodes []store.NodeResult
	backoff := 100 * time.Millisecond
	for {
		var err error
		nodes, err = e.w.cfg.Store.RunNodes(ctx, e.run.ID)
		if err == nil {
			break
		}
		if store.Permanent(err) || ctx.Err() != nil {
			return fmt.Errorf("read stored nodes: %w", err)
		}
		e.log.WarnContext(ctx, "read stored nodes; retrying", slog.Any("error", err))
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxFinishBackoff)
	}
	known := make([]consul.NodeResult, 0, len(nodes))
	for _, n := range nodes {
		k := consul.NodeResult{Node: n.Node}
		if n.AckedAt != nil {
			k.AckedAt = *n.AckedAt
		}
		if n.State == string(consul.NodeExited) && n.ExitCode != nil {
			k.State, k.ExitCode = consul.NodeExited, *n.ExitCode
			if n.ExitedAt != nil {
				k.ExitedAt = *n.ExitedAt
			}
			e.exited[n.Node] = true
		}
		known = append(known, k)
	}
	r.Restore(known)
	return nil
}

func (e *execution) client() (*consul.Client, error) {
	return e.w.clients.Get(e.tenant, func(c *consul.Config) {
		c.SessionTTL = e.w.cfg.SessionTTL
		c.RoundInterval = e.w.cfg.RoundInterval
		c.MaxStarting = e.w.cfg.MaxStarting
		c.Logger = e.w.cfg.Logger
		c.Metrics = e.w.cfg.Metrics
	})
}

// discardUnfired destroys the session of an earlier attempt that was
// recorded but never fired: no worker will ever attach to it, and its job
// spec would otherwise sit in KV until the session's TTL.
func (e *execution) discardUnfired(ctx context.Context) {
	if e.run.Session == "" || e.run.FiringAt != nil {
		return
	}
	client, err := e.client()
	if err == nil {
		err = client.Discard(ctx, e.run.Prefix, e.run.Session)
	}
	if err != nil {
		e.log.WarnContext(ctx, "discard an unfired session; it expires by its TTL", slog.Any("error", err))
	}
}

// firedRecord is what the run's fired_at and its run.event_fired event
// record: when the events went out, their IDs and the nodes each names.
type firedRecord struct {
	at      time.Time
	events  []consul.FiredEvent
	session string
}

// recordFired records that the event went out: the run's fired_at and the
// run.event_fired audit event, in one transaction. It is not what keeps
// the run from firing again — the firing mark, committed before the event,
// is — so a failure (the database is away) does not stop the run: the
// record is written in the transaction of the first watch round or of the
// finish that commits instead.
func (e *execution) recordFired(ctx context.Context, r *consul.Run) {
	at, events := r.FiredAt()
	e.unrecordedFire = &firedRecord{at: at, events: events, session: r.Session()}
	err := e.w.cfg.Store.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
		return e.recordUnrecordedFire(ctx, tx, q)
	})
	if err != nil {
		e.log.WarnContext(ctx, "record fired event; it is recorded with the next watch round", slog.Any("error", err))
		return
	}
	e.unrecordedFire = nil
}

// recordUnrecordedFire writes, in tx, the firing this claim did but has not
// recorded yet (none: nothing). The caller clears it once tx commits.
func (e *execution) recordUnrecordedFire(ctx context.Context, tx pgx.Tx, q *store.Queries) error {
	f := e.unrecordedFire
	if f == nil {
		return nil
	}
	// Recorded once: a retry after a commit whose answer was lost finds
	// fired_at set and writes no second event.
	if first, err := q.MarkFired(ctx, e.run.ID, f.at); err != nil || !first {
		return err
	}
	return audit.Record(ctx, tx, e.runEvent(audit.EventFired, map[string]any{"fired_at": f.at, "events": f.events,
		"session": f.session, "targets": e.targets}))
}

// stopReason says how a run whose engine context ended is to finish.
func (e *execution) stopReason(ectx context.Context) (state, msg string) {
	if errors.Is(context.Cause(ectx), errDeadline) {
		return store.StateFailed, fmt.Sprintf("run deadline of %s passed", e.run.Timeout)
	}
	return store.StateCancelled, ""
}

// notStarted handles an error before anything was fired: a cancel,
// deadline or passed start bound ends the run; a detach or a transient
// error gives the run back to the queue for River to retry (with backoff,
// up to its attempts); an error retrying cannot fix ends the run failed.
func (e *execution) notStarted(jobCtx, ectx context.Context, err error) error {
	st := e.w.cfg.Store
	switch {
	case errors.Is(err, store.ErrLeaseLost):
		return nil // another claim holds the run
	case errors.Is(err, store.ErrCancelRequested):
		return e.close(jobCtx, nil, nil, store.StateCancelled, string(consul.OutcomeCancelled), "")
	case errors.Is(err, store.ErrStartBoundPassed):
		return e.close(jobCtx, nil, nil, store.StateFailed, store.OutcomeNotStarted, store.NotStartedError(e.run.StartTimeout))
	case ectx.Err() != nil && !errors.Is(context.Cause(ectx), consul.ErrDetach):
		state, msg := e.stopReason(ectx)
		return e.close(jobCtx, nil, nil, state, string(consul.OutcomeCancelled), msg)
	case ectx.Err() == nil && permanent(err), e.lastAttempt && ectx.Err() == nil:
		return e.close(jobCtx, nil, nil, store.StateFailed, "", err.Error())
	}
	cause := err
	rctx, cancel := context.WithTimeout(context.WithoutCancel(jobCtx), 10*time.Second)
	defer cancel()
	if rerr := st.InTx(rctx, func(tx pgx.Tx, q *store.Queries) error {
		ok, err := q.Requeue(rctx, e.run.ID, e.owner)
		if err != nil || !ok {
			return err
		}
		return audit.Record(rctx, tx, audit.Event{TenantID: e.run.TenantID, RunID: e.run.ID, Actor: e.actor, Type: audit.RunRequeued,
			Data: map[string]any{"reason": cause.Error()}})
	}); rerr != nil {
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
// lost its lease, Consul stayed unreachable): the engine has detached, and
// the lease is released so that recovery hands the run to a new job at
// once, which re-attaches.
func (e *execution) leave(jobCtx context.Context, err error) error {
	if !errors.Is(err, store.ErrLeaseLost) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(jobCtx), 10*time.Second)
		if rerr := e.w.cfg.Store.ReleaseLease(rctx, e.run.ID, e.owner); rerr != nil {
			e.log.WarnContext(jobCtx, "release lease", slog.Any("error", rerr))
		}
		cancel()
	}
	e.log.InfoContext(jobCtx, "left the run for recovery", slog.Any("reason", err))
	// Recovery, not River's retry, resumes the run.
	return nil
}
