package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rexec/rexec/internal/audit"
)

// ErrLeaseLost means another worker holds the run now, or it ended.
var ErrLeaseLost = errors.New("lease on run lost")

// NewLeaseOwner returns a lease owner for one claim by worker.
func NewLeaseOwner(worker string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return worker + "/" + hex.EncodeToString(b)
}

const queryClaimRun = `
WITH old AS (SELECT id, started_at FROM runs WHERE id = $1 FOR UPDATE)
UPDATE runs r SET state = 'running', started_at = coalesce(r.started_at, now()),
	recoveries = r.recoveries + CASE WHEN old.started_at IS NULL THEN 0 ELSE 1 END,
	lease_owner = $2, lease_expires_at = now() + $3 * interval '1 millisecond'
FROM old
WHERE r.id = old.id AND r.state IN ('queued', 'running')
	AND (r.lease_owner IS NULL OR r.lease_expires_at < now())
RETURNING old.started_at IS NULL`

// ClaimRun takes the run for owner for ttl, moving it to running. It
// reports claimed=false when the run is not queued or running, or another
// live claim holds it; first is true on the run's first start. Every other
// claim counts as a recovery: recoveries are counted when a worker picks a
// run up, not when one is scheduled. owner must be unique per claim (see
// NewLeaseOwner), so that two jobs of one process cannot both hold a run.
//
// A claimed run may still have a cancel recorded or its start bound
// passed: the caller must not prepare it (MarkFiring refuses it anyway).
func (q *Queries) ClaimRun(ctx context.Context, runID, owner string, ttl time.Duration) (claimed, first bool, err error) {
	err = q.db.QueryRow(ctx, queryClaimRun, runID, owner, ttl.Milliseconds()).Scan(&first)
	if err != nil {
		if errors.Is(notFound(err), ErrNotFound) {
			return false, false, nil
		}
		return false, false, fmt.Errorf("claim run: %w", err)
	}
	return true, first, nil
}

const queryRenewLease = `
UPDATE runs SET lease_expires_at = now() + $3 * interval '1 millisecond'
WHERE id = $1 AND lease_owner = $2 AND state = 'running'
RETURNING cancel_requested_at IS NOT NULL`

// RenewLease extends owner's lease; it reports whether a cancel was
// requested, and ErrLeaseLost when owner no longer holds the run.
func (q *Queries) RenewLease(ctx context.Context, runID, owner string, ttl time.Duration) (cancelRequested bool, err error) {
	err = q.db.QueryRow(ctx, queryRenewLease, runID, owner, ttl.Milliseconds()).Scan(&cancelRequested)
	if err != nil {
		if errors.Is(notFound(err), ErrNotFound) {
			return false, ErrLeaseLost
		}
		return false, fmt.Errorf("renew lease: %w", err)
	}
	return cancelRequested, nil
}

const queryHoldLease = `SELECT 1 FROM runs WHERE id = $1 AND lease_owner = $2 AND state = 'running' FOR SHARE`

// HoldLease asserts, for the rest of the transaction, that owner holds the
// run: every write of a run's results goes through it, so that a worker
// that lost its claim cannot write beside the new holder.
func (q *Queries) HoldLease(ctx context.Context, runID, owner string) error {
	var one int
	if err := q.db.QueryRow(ctx, queryHoldLease, runID, owner).Scan(&one); err != nil {
		if errors.Is(notFound(err), ErrNotFound) {
			return ErrLeaseLost
		}
		return fmt.Errorf("hold lease: %w", err)
	}
	return nil
}

const queryLockLease = `SELECT 1 FROM runs WHERE id = $1 AND lease_owner = $2 AND state = 'running' FOR UPDATE`

// LockLease asserts that owner holds the run and keeps anyone else from
// taking it until the transaction ends: a claim or a recovery sweep waits
// for (or skips) the lock. Consul-side actions that only the holder may
// take (destroying a fired run's session and prefix) happen inside such a
// transaction, so that a worker that stalled past its lease cannot take
// them once another worker holds the run.
func (q *Queries) LockLease(ctx context.Context, runID, owner string) error {
	var one int
	if err := q.db.QueryRow(ctx, queryLockLease, runID, owner).Scan(&one); err != nil {
		if errors.Is(notFound(err), ErrNotFound) {
			return ErrLeaseLost
		}
		return fmt.Errorf("lock lease: %w", err)
	}
	return nil
}

const queryRequeue = `UPDATE runs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL
WHERE id = $1 AND lease_owner = $2 AND state = 'running' AND firing_at IS NULL`

// Requeue gives back a run that never reached firing, for River to retry;
// false if owner no longer held it.
func (q *Queries) Requeue(ctx context.Context, runID, owner string) (bool, error) {
	tag, err := q.db.Exec(ctx, queryRequeue, runID, owner)
	if err != nil {
		return false, fmt.Errorf("requeue run: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

const queryReleaseLease = `UPDATE runs SET lease_expires_at = now() WHERE id = $1 AND lease_owner = $2 AND state = 'running'`

// ReleaseLease gives a running run up for recovery by another worker.
func (q *Queries) ReleaseLease(ctx context.Context, runID, owner string) error {
	if _, err := q.db.Exec(ctx, queryReleaseLease, runID, owner); err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	return nil
}

const queryRecordSession = `UPDATE runs SET session = $3 WHERE id = $1 AND lease_owner = $2 AND state = 'running' AND firing_at IS NULL`

// RecordSession stores the Consul session before anything is fired; it
// replaces the session of an earlier attempt that never reached firing.
func (q *Queries) RecordSession(ctx context.Context, runID, owner, session string) error {
	tag, err := q.db.Exec(ctx, queryRecordSession, runID, owner, session)
	if err != nil {
		return fmt.Errorf("record session: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return ErrLeaseLost
	}
	return nil
}

// Why a run may not fire.
var (
	// ErrCancelRequested: a cancel (or a denial, or an expiry) was recorded.
	ErrCancelRequested = errors.New("cancel requested before the run fired")
	// ErrStartBoundPassed: the run did not fire within its start bound.
	ErrStartBoundPassed = errors.New("run did not start within its start bound")
)

const (
	queryFiringCheck = `SELECT lease_owner IS NOT DISTINCT FROM $2 AND state = 'running' AND firing_at IS NULL AND session IS NOT DISTINCT FROM $3,
	cancel_requested_at IS NOT NULL, now() > start_by
FROM runs WHERE id = $1 FOR UPDATE`
	queryMarkFiring = `UPDATE runs SET firing_at = now() WHERE id = $1`
)

// MarkFiring records, at the last moment before the first event goes out,
// that the command may run from now on: the run is never fired again. It
// must run in a transaction, which it serialises with CancelRun on the
// run's row: once a cancel is recorded it refuses with ErrCancelRequested,
// and a cancel that comes after it finds the run firing. It refuses with
// ErrStartBoundPassed past the run's start bound, and ErrLeaseLost when
// owner no longer holds the run with this session.
func (q *Queries) MarkFiring(ctx context.Context, runID, owner, session string) error {
	var held, cancelled, late bool
	if err := q.db.QueryRow(ctx, queryFiringCheck, runID, owner, session).Scan(&held, &cancelled, &late); err != nil {
		if errors.Is(notFound(err), ErrNotFound) {
			return ErrLeaseLost
		}
		return fmt.Errorf("mark firing: %w", err)
	}
	switch {
	case !held:
		return ErrLeaseLost
	case cancelled:
		return ErrCancelRequested
	case late:
		return ErrStartBoundPassed
	}
	if _, err := q.db.Exec(ctx, queryMarkFiring, runID); err != nil {
		return fmt.Errorf("mark firing: %w", err)
	}
	return nil
}

const queryMarkFired = `UPDATE runs SET fired_at = $2 WHERE id = $1 AND fired_at IS NULL`

// MarkFired records when the event went out; false if that was recorded
// already (a commit whose answer was lost, retried).
func (q *Queries) MarkFired(ctx context.Context, runID string, at time.Time) (bool, error) {
	tag, err := q.db.Exec(ctx, queryMarkFired, runID, at)
	if err != nil {
		return false, fmt.Errorf("mark fired: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

const queryAck = `UPDATE run_nodes SET state = 'acked', acked_at = $3 WHERE run_id = $1 AND node = $2 AND acked_at IS NULL AND state = 'pending'`

// RecordAck marks a node acknowledged; false if it already was. The worker
// stores whole watch rounds with StoreRound; RecordAck, AppendChunk and
// RecordExit store one report each, in a few round trips.
func (q *Queries) RecordAck(ctx context.Context, runID, node string, at time.Time) (bool, error) {
	tag, err := q.db.Exec(ctx, queryAck, runID, node, at)
	if err != nil {
		return false, fmt.Errorf("record ack: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

const (
	queryLockNode    = `SELECT bytes, stored_bytes, hash_state FROM run_nodes WHERE run_id = $1 AND node = $2 FOR UPDATE`
	queryNodeTotals  = `SELECT bytes, stored_bytes, truncated, hash_state FROM run_nodes WHERE run_id = $1 AND node = $2 FOR UPDATE`
	queryInsertChunk = `INSERT INTO output_chunks (run_id, node, seq, data) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`
	queryNodeBytes   = `UPDATE run_nodes SET bytes = bytes + $3, stored_bytes = stored_bytes + $4,
	truncated = truncated OR $5, hash_state = $6 WHERE run_id = $1 AND node = $2`
)

// AppendChunk stores a chunk once, keyed by (run, node, seq), keeping at
// most outputCap bytes of the node's output and counting every byte and the
// sha256 of the whole stream. It returns how many of the chunk's bytes it
// stored (fewer than the chunk's past the cap); a chunk already stored is a
// no-op (0). Chunks of one node must come in sequence order, as the engine
// hands them.
func (q *Queries) AppendChunk(ctx context.Context, runID, node string, seq int, data []byte, outputCap int64) (int, error) {
	var total, stored int64
	var state []byte
	if err := q.db.QueryRow(ctx, queryLockNode, runID, node).Scan(&total, &stored, &state); err != nil {
		return 0, fmt.Errorf("append chunk: %w", notFound(err))
	}
	keep := underCap(data, stored, outputCap)
	tag, err := q.db.Exec(ctx, queryInsertChunk, runID, node, seq, keep)
	if err != nil {
		return 0, fmt.Errorf("append chunk: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return 0, nil
	}
	h, err := resumeHash(state)
	if err != nil {
		return 0, err
	}
	h.Write(data)
	state, err = marshalHash(h)
	if err != nil {
		return 0, fmt.Errorf("append chunk: %w", err)
	}
	if _, err := q.db.Exec(ctx, queryNodeBytes, runID, node, len(data), len(keep), len(keep) < len(data), state); err != nil {
		return 0, fmt.Errorf("append chunk: %w", err)
	}
	return len(keep), nil
}

// underCap is the part of a chunk that is archived when stored bytes of
// its node's output are already: all of it up to the cap, nothing past it.
// Every byte still counts and is hashed; only the archive is capped.
func underCap(data []byte, stored, outputCap int64) []byte {
	return data[:min(int64(len(data)), max(0, outputCap-stored))]
}

// resumeHash is the running sha256 of a node's output from its stored
// state (none: nothing hashed yet).
func resumeHash(state []byte) (hash.Hash, error) {
	h := sha256.New()
	if len(state) > 0 {
		if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
			return nil, fmt.Errorf("resume output hash: %w", err)
		}
	}
	return h, nil
}

// marshalHash is the state of a running sha256, to store.
func marshalHash(h hash.Hash) ([]byte, error) {
	state, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("save output hash: %w", err)
	}
	return state, nil
}

// finalHash is the hex sha256 of a node's output from its stored state.
func finalHash(state []byte) (string, error) {
	h, err := resumeHash(state)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

const queryExit = `UPDATE run_nodes SET state = 'exited', exit_code = $3, exited_at = $4, exit_stream_id = nextval('run_stream_seq'),
	acked_at = coalesce(acked_at, $4), sha256 = $5
WHERE run_id = $1 AND node = $2 AND exited_at IS NULL`

// NodeOutput is what a node's output came to when it ended: every byte it
// sent, the bytes archived (at most the output cap), whether the cap cut
// it, and the hex sha256 of the whole stream.
type NodeOutput struct {
	Bytes       int64
	StoredBytes int64
	Truncated   bool
	SHA256      string
}

// lockNodeOutput locks a node's row and returns its output so far.
func (q *Queries) lockNodeOutput(ctx context.Context, runID, node string) (NodeOutput, error) {
	var o NodeOutput
	var state []byte
	if err := q.db.QueryRow(ctx, queryNodeTotals, runID, node).Scan(&o.Bytes, &o.StoredBytes, &o.Truncated, &state); err != nil {
		return NodeOutput{}, notFound(err)
	}
	sum, err := finalHash(state)
	if err != nil {
		return NodeOutput{}, err
	}
	o.SHA256 = sum
	return o, nil
}

// RecordExit marks a node exited with code and fixes its output hash;
// false if it already was. It returns the node's output as it ended.
func (q *Queries) RecordExit(ctx context.Context, runID, node string, code int, at time.Time) (NodeOutput, bool, error) {
	o, err := q.lockNodeOutput(ctx, runID, node)
	if err != nil {
		return NodeOutput{}, false, fmt.Errorf("record exit: %w", err)
	}
	tag, err := q.db.Exec(ctx, queryExit, runID, node, code, at, o.SHA256)
	if err != nil {
		return NodeOutput{}, false, fmt.Errorf("record exit: %w", err)
	}
	return o, tag.RowsAffected() == 1, nil
}

const queryEndNode = `UPDATE run_nodes SET state = $3, sha256 = $4 WHERE run_id = $1 AND node = $2 AND exited_at IS NULL AND state IN ('pending', 'acked')`

// EndNode gives an unfinished node its final state (lost, no_ack,
// cancelled); false if it had already ended. It returns the node's output
// as it ended.
func (q *Queries) EndNode(ctx context.Context, runID, node, state string) (NodeOutput, bool, error) {
	o, err := q.lockNodeOutput(ctx, runID, node)
	if err != nil {
		return NodeOutput{}, false, fmt.Errorf("end node: %w", err)
	}
	tag, err := q.db.Exec(ctx, queryEndNode, runID, node, state, o.SHA256)
	if err != nil {
		return NodeOutput{}, false, fmt.Errorf("end node: %w", err)
	}
	return o, tag.RowsAffected() == 1, nil
}

const queryFinishRun = `UPDATE runs SET state = $3, outcome = nullif($4, ''), error = nullif($5, ''), finished_at = now(),
	lease_owner = NULL, lease_expires_at = NULL
WHERE id = $1 AND lease_owner = $2 AND state = 'running'`

// FinishRun moves owner's run to its final state; false if owner no longer
// holds it.
func (q *Queries) FinishRun(ctx context.Context, runID, owner, state, outcome, errMsg string) (bool, error) {
	tag, err := q.db.Exec(ctx, queryFinishRun, runID, owner, state, outcome, errMsg)
	if err != nil {
		return false, fmt.Errorf("finish run: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

const queryCancelRun = `
UPDATE runs SET
	state = CASE WHEN state = 'running' THEN state ELSE 'cancelled' END,
	finished_at = CASE WHEN state = 'running' THEN finished_at ELSE now() END,
	lease_owner = CASE WHEN state = 'running' THEN lease_owner END,
	lease_expires_at = CASE WHEN state = 'running' THEN lease_expires_at END,
	cancel_requested_at = coalesce(cancel_requested_at, now())
WHERE tenant_id = $1 AND id = $2::uuid AND state IN ('queued', 'running', 'pending_approval')
RETURNING state, firing_at IS NOT NULL`

const queryCancelNodes = `UPDATE run_nodes SET state = 'cancelled' WHERE run_id = $1 AND state IN ('pending', 'acked') RETURNING node`

// cancelNodes ends the unfinished nodes of a run that never fired as
// cancelled and returns their names, in order.
func (q *Queries) cancelNodes(ctx context.Context, runID string) ([]string, error) {
	rows, err := q.db.Query(ctx, queryCancelNodes, runID)
	if err != nil {
		return nil, err
	}
	nodes, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	slices.Sort(nodes)
	return nodes, nil
}

const queryNotifyCancel = `SELECT pg_notify('` + CancelChannel + `', $1)`

// CancelChannel is the notification channel on which workers hear of
// cancels at once, rather than at their next lease renewal.
const CancelChannel = "rexec_cancel"

// Cancellation is the outcome of CancelRun.
type Cancellation struct {
	// State is the run's state after the call: cancelled for a run that
	// had not started, running for one whose worker will cancel it.
	State string
	// Fired is true when the run may already have fired: a cancel that
	// finds it false guarantees that the command never runs.
	Fired bool
	// Nodes are the nodes the cancel ended cancelled (a run that had not
	// started); none for a running run, whose worker ends them.
	Nodes []string
}

// CancelRun records a cancel. A run that has not started ends cancelled at
// once; for a running one the cancel is recorded on its row (where
// MarkFiring will refuse to fire it) and its worker is notified on commit.
// ErrNotFound when the run is not the tenant's or cannot be cancelled in
// its state (the caller tells which apart).
func (q *Queries) CancelRun(ctx context.Context, tenantID int64, runID string) (Cancellation, error) {
	if !IsUUID(runID) {
		return Cancellation{}, fmt.Errorf("cancel run: %w", ErrNotFound)
	}
	var c Cancellation
	if err := q.db.QueryRow(ctx, queryCancelRun, tenantID, runID).Scan(&c.State, &c.Fired); err != nil {
		return Cancellation{}, fmt.Errorf("cancel run: %w", notFound(err))
	}
	if c.State == StateCancelled {
		nodes, err := q.cancelNodes(ctx, runID)
		if err != nil {
			return Cancellation{}, fmt.Errorf("cancel run: %w", err)
		}
		c.Nodes = nodes
	}
	if _, err := q.db.Exec(ctx, queryNotifyCancel, runID); err != nil {
		return Cancellation{}, fmt.Errorf("cancel run: notify: %w", err)
	}
	return c, nil
}

const queryCancelRequester = `SELECT actor FROM audit_events WHERE run_id = $1 AND type = '` + audit.RunCancelAsked + `' ORDER BY id LIMIT 1`

// CancelRequester names who asked to cancel a running run, from the audit
// event the request left; empty when nobody did through the API.
func (q *Queries) CancelRequester(ctx context.Context, runID string) (string, error) {
	var who string
	err := q.db.QueryRow(ctx, queryCancelRequester, runID).Scan(&who)
	if errors.Is(notFound(err), ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("cancel requester: %w", err)
	}
	return who, nil
}

const queryExpiredLeases = `
UPDATE runs SET lease_owner = NULL, lease_expires_at = now() + $1 * interval '1 millisecond'
WHERE id IN (SELECT id FROM runs WHERE state = 'running' AND lease_expires_at < now() ORDER BY lease_expires_at LIMIT 100 FOR UPDATE SKIP LOCKED)
RETURNING id, recoveries`

// Recovery is a run whose worker stopped renewing its lease.
type Recovery struct {
	RunID      string
	Recoveries int
}

// TakeExpiredLeases reserves up to 100 runs whose lease expired for
// recovery, for hold, so that one sweep does not race the next. A run
// whose lease is locked (its holder is tearing it down) is skipped.
// Recoveries is the count so far; ClaimRun counts the new one.
func (q *Queries) TakeExpiredLeases(ctx context.Context, hold time.Duration) ([]Recovery, error) {
	rows, err := q.db.Query(ctx, queryExpiredLeases, hold.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("expired leases: %w", err)
	}
	defer rows.Close()
	var out []Recovery
	for rows.Next() {
		var r Recovery
		if err := rows.Scan(&r.RunID, &r.Recoveries); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

const queryNotify = `SELECT pg_notify('` + RunChannel + `', $1)`

// NotifyRun wakes followers of the run once the transaction commits.
func (q *Queries) NotifyRun(ctx context.Context, runID string) error {
	if _, err := q.db.Exec(ctx, queryNotify, runID); err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	return nil
}
