package auditlog

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/rexec/rexec/internal/auditproof"
)

// lockClass is the first key of the advisory lock that lets one process
// at a time integrate a log ('rxlg').
const lockClass = 0x72786c67

const (
	queryLock = `SELECT pg_try_advisory_xact_lock($1, $2::int)`

	// The oldest transaction still running: every event from a
	// transaction below it has committed or never will.
	queryHorizon = `SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint`

	queryLast = `SELECT size, last_txid::text::bigint, last_event, note FROM audit_checkpoints
		WHERE log_id = $1 ORDER BY size DESC LIMIT 1`

	// The next events in log order, (txid, id), after the last one
	// integrated and below the horizon.
	// (The ORDER BY names the table's columns: an output column of the
	// same name would sort by the text cast, past the index.)
	queryPendingTenant = `SELECT e.id, e.body, e.txid::text::bigint AS txid_n FROM audit_events e
		WHERE e.tenant_id = $1 AND (e.txid, e.id) > ($2::bigint::text::xid8, $3) AND e.txid < $4::bigint::text::xid8
		ORDER BY e.txid, e.id LIMIT $5`
	queryPendingSystem = `SELECT e.id, e.body, e.txid::text::bigint AS txid_n FROM audit_events e
		WHERE e.tenant_id IS NULL AND (e.txid, e.id) > ($2::bigint::text::xid8, $3) AND e.txid < $4::bigint::text::xid8 AND $1 = 0
		ORDER BY e.txid, e.id LIMIT $5`

	queryInsertLeaves = `INSERT INTO audit_leaves (log_id, idx, event_id)
		SELECT $1, idx, ev FROM unnest($2::bigint[], $3::bigint[]) AS u(idx, ev)`
	queryInsertHashes = `INSERT INTO audit_hashes (log_id, idx, hash)
		SELECT $1, idx, h FROM unnest($2::bigint[], $3::bytea[]) AS u(idx, h)`
	queryInsertCheckpoint = `INSERT INTO audit_checkpoints (log_id, size, root, last_txid, last_event, note)
		VALUES ($1, $2, $3, $4::bigint::text::xid8, $5, $6)`

	queryHashes = `SELECT idx, hash FROM audit_hashes WHERE log_id = $1 AND idx = ANY($2)`
)

// integrate appends one batch of a log's committed events to its tree and
// signs the new tree; it returns how many it appended.
func (l *Log) integrate(ctx context.Context, logID int64, origin string) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		var locked bool
		if err := tx.QueryRow(ctx, queryLock, lockClass, logID).Scan(&locked); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		if !locked {
			return nil // another process is integrating this log
		}
		// Read committed: each statement below sees every commit before
		// it, the last checkpoint included.
		var horizon int64
		if err := tx.QueryRow(ctx, queryHorizon).Scan(&horizon); err != nil {
			return fmt.Errorf("horizon: %w", err)
		}
		var (
			size, lastTxid, lastEvent int64
			lastNote                  string
		)
		err := tx.QueryRow(ctx, queryLast, logID).Scan(&size, &lastTxid, &lastEvent, &lastNote)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("last checkpoint: %w", err)
		}
		if lastNote != "" {
			// A process with another key (or key name) would extend the
			// log under a signer no auditor expects: refuse, loudly.
			o, name, hash, err := auditproof.Signer([]byte(lastNote))
			if err != nil {
				return fmt.Errorf("last checkpoint: %w", err)
			}
			if o != origin || name != l.cfg.Signer.Name() || hash != l.cfg.Signer.KeyHash() {
				return fmt.Errorf("%w: the log %q was signed by %s (key %08x) as %q; this process signs as %s (key %08x)",
					ErrOtherKey, o, name, hash, o, l.cfg.Signer.Name(), l.cfg.Signer.KeyHash())
			}
		}
		q := queryPendingTenant
		if logID == SystemLog {
			q = queryPendingSystem
		}
		rows, err := tx.Query(ctx, q, logID, lastTxid, lastEvent, horizon, l.cfg.Batch)
		if err != nil {
			return fmt.Errorf("pending events: %w", err)
		}
		type event struct {
			id, txid int64
			body     []byte
		}
		events, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (event, error) {
			var e event
			return e, r.Scan(&e.id, &e.body, &e.txid)
		})
		if err != nil {
			return fmt.Errorf("pending events: %w", err)
		}
		if len(events) == 0 {
			return nil
		}

		r := &hashReader{ctx: ctx, q: tx, logID: logID, cache: map[int64]tlog.Hash{}}
		var (
			leafIdx, leafEvents []int64
			hashIdx             []int64
			hashes              [][]byte
		)
		for i, e := range events {
			idx := size + int64(i)
			hs, err := tlog.StoredHashes(idx, e.body, r)
			if err != nil {
				return fmt.Errorf("hash leaf %d: %w", idx, err)
			}
			first := tlog.StoredHashIndex(0, idx)
			for j, h := range hs {
				r.cache[first+int64(j)] = h
				hashIdx = append(hashIdx, first+int64(j))
				hashes = append(hashes, h[:])
			}
			leafIdx = append(leafIdx, idx)
			leafEvents = append(leafEvents, e.id)
		}
		newSize := size + int64(len(events))
		root, err := tlog.TreeHash(newSize, r)
		if err != nil {
			return fmt.Errorf("root: %w", err)
		}
		signed, err := auditproof.Sign(origin, newSize, root, l.cfg.Signer)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, queryInsertLeaves, logID, leafIdx, leafEvents); err != nil {
			return fmt.Errorf("store leaves: %w", err)
		}
		if _, err := tx.Exec(ctx, queryInsertHashes, logID, hashIdx, hashes); err != nil {
			return fmt.Errorf("store hashes: %w", err)
		}
		last := events[len(events)-1]
		if _, err := tx.Exec(ctx, queryInsertCheckpoint, logID, newSize, root[:], last.txid, last.id, string(signed)); err != nil {
			return fmt.Errorf("store checkpoint: %w", err)
		}
		n = len(events)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("integrate: %w", err)
	}
	return n, nil
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// hashReader reads a log's stored hashes, keeping what it read and what
// the integration in progress computed: a batch reads the tree's right
// edge from the database about once.
type hashReader struct {
	ctx   context.Context
	q     querier
	logID int64
	cache map[int64]tlog.Hash
}

func (r *hashReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	var missing []int64
	for _, i := range indexes {
		if _, ok := r.cache[i]; !ok {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		rows, err := r.q.Query(r.ctx, queryHashes, r.logID, missing)
		if err != nil {
			return nil, fmt.Errorf("read hashes: %w", err)
		}
		var (
			idx int64
			h   []byte
		)
		_, err = pgx.ForEachRow(rows, []any{&idx, &h}, func() error {
			if len(h) != tlog.HashSize {
				return fmt.Errorf("stored hash %d has %d bytes", idx, len(h))
			}
			r.cache[idx] = tlog.Hash(h)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("read hashes: %w", err)
		}
	}
	out := make([]tlog.Hash, len(indexes))
	for i, idx := range indexes {
		h, ok := r.cache[idx]
		if !ok {
			return nil, fmt.Errorf("stored hash %d of log %d is missing", idx, r.logID)
		}
		out[i] = h
	}
	return out, nil
}
