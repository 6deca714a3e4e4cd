// Package auditlog keeps each tenant's audit events in a transparency log:
// it integrates committed events into a Merkle tree (golang.org/x/mod's
// tlog), signs a checkpoint for every tree it grows, and serves the leaves,
// checkpoints and proofs that package auditproof checks.
//
// Writers never wait for the log: audit.Record only inserts a row, and an
// integrator appends rows to the tree shortly after they commit, in the
// order of their transactions' ids. An event is integrated once every
// transaction that could still commit an event ordered before it has
// ended (the snapshot's xmin), so a late commit of a lower id is neither
// skipped nor able to fork the log.
//
// The package owns audit_leaves, audit_hashes and audit_checkpoints, and
// reads audit_events, which package audit writes: the events it logs.
package auditlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/mod/sumdb/note"
)

// SystemLog is the log of events outside any tenant.
const SystemLog = 0

// ErrEmpty is returned when a log has no checkpoint yet.
var ErrEmpty = errors.New("the audit log has no checkpoint yet")

// ErrOtherKey is returned when a log's last checkpoint was signed by
// another key, or for another origin: every signing process must share
// one key (and its name).
var ErrOtherKey = errors.New("audit log signed by another key")

// ErrNotFound is returned for a leaf, size or run the log does not hold.
var ErrNotFound = errors.New("not in the audit log")

// IntervalDefault is how often new events are integrated by default: an
// event is in a signed checkpoint about this long after it commits.
const IntervalDefault = 500 * time.Millisecond

// Config configures a Log.
type Config struct {
	// Signer signs checkpoints. Without one the Log only reads: it serves
	// checkpoints and proofs that other processes made.
	Signer note.Signer
	// Logs lists the logs to integrate, with their names: the tenants'
	// (log id = tenant id); the system log is always integrated too.
	Logs func(ctx context.Context) (map[int64]string, error)
	// Interval is how often the integrator looks for new events.
	// Default IntervalDefault.
	Interval time.Duration
	// Batch is how many events one transaction integrates at most.
	// Default 5000.
	Batch int
	// Logger logs failed integrations (they are retried).
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Interval <= 0 {
		c.Interval = IntervalDefault
	}
	if c.Batch <= 0 {
		c.Batch = 5000
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Log is the audit transparency log in one database.
type Log struct {
	pool *pgxpool.Pool
	cfg  Config
}

// New returns a Log over pool.
func New(pool *pgxpool.Pool, cfg Config) (*Log, error) {
	if pool == nil {
		return nil, errors.New("auditlog: no database")
	}
	cfg = cfg.withDefaults()
	if cfg.Signer != nil && cfg.Logs == nil {
		return nil, errors.New("auditlog: a signer needs Logs, the logs to integrate")
	}
	return &Log{pool: pool, cfg: cfg}, nil
}

// Origin is the name a log's checkpoints carry: the signing key's name and
// the tenant's, so that a checkpoint of one tenant never passes for
// another's.
func Origin(keyName, tenant string) string {
	return keyName + "/tenant/" + tenant
}

// SystemOrigin is the system log's origin.
func SystemOrigin(keyName string) string { return keyName + "/system" }

// Run integrates new events every Interval until ctx ends.
func (l *Log) Run(ctx context.Context) error {
	if l.cfg.Signer == nil {
		return errors.New("auditlog: cannot integrate without a signing key")
	}
	t := time.NewTicker(l.cfg.Interval)
	defer t.Stop()
	for {
		if _, err := l.IntegrateAll(ctx); err != nil && ctx.Err() == nil {
			l.cfg.Logger.Error("audit log integration failed; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// IntegrateAll integrates every log's committed events and returns how
// many it appended.
func (l *Log) IntegrateAll(ctx context.Context) (int, error) {
	logs, err := l.cfg.Logs(ctx)
	if err != nil {
		return 0, fmt.Errorf("list logs: %w", err)
	}
	total := 0
	var errs []error
	for id, name := range logs {
		n, err := l.integrateLog(ctx, id, Origin(l.cfg.Signer.Name(), name))
		total += n
		if err != nil {
			errs = append(errs, fmt.Errorf("log %d: %w", id, err))
		}
	}
	n, err := l.integrateLog(ctx, SystemLog, SystemOrigin(l.cfg.Signer.Name()))
	total += n
	if err != nil {
		errs = append(errs, fmt.Errorf("system log: %w", err))
	}
	return total, errors.Join(errs...)
}

func (l *Log) integrateLog(ctx context.Context, id int64, origin string) (int, error) {
	total := 0
	for {
		n, err := l.integrate(ctx, id, origin)
		total += n
		if err != nil || n < l.cfg.Batch {
			return total, err
		}
	}
}
