// Package store is rexec's Postgres persistence: tenants, principals and API
// tokens, runs, per-node results and output chunks. Every query is named
// here; callers compose them in transactions through Store.InTx and a
// Queries bound to the transaction, so that a run row, its audit events and
// its River job commit together.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/rexec/rexec/migrations"
)

// MaxConnsDefault is the pool size unless the URL sets pool_max_conns.
const MaxConnsDefault = 32

// Errors callers branch on.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
)

// DBTX is a pool, a connection or a transaction.
type DBTX interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// Queries runs the named queries on one DBTX.
type Queries struct{ db DBTX }

// New binds the queries to db.
func New(db DBTX) *Queries { return &Queries{db: db} }

// Store owns the connection pool.
type Store struct {
	*Queries
	pool *pgxpool.Pool
}

// Open connects to the database at url.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	if !strings.Contains(url, "pool_max_conns") {
		// pgxpool's default (4 on small machines) starves a worker that
		// stores the reports of many runs at once.
		cfg.MaxConns = MaxConnsDefault
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	return &Store{Queries: New(pool), pool: pool}, nil
}

// Pool returns the connection pool (River shares it).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// InTx runs fn in a transaction: committed if fn returns nil, rolled back
// otherwise.
func (s *Store) InTx(ctx context.Context, fn func(tx pgx.Tx, q *Queries) error) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error { return fn(tx, New(tx)) })
}

// InBatchTx is InTx for a transaction whose first statements are known
// before it begins: queue adds them to a batch that travels with the BEGIN
// in one round trip (pgx.Batch.BeginTx), and then fn, if not nil, runs in
// the same transaction. It is committed if queue, every statement and fn
// succeed, and rolled back otherwise: a statement that fails leaves nothing
// of the batch behind.
func (s *Store) InBatchTx(ctx context.Context, queue func(b *pgx.Batch) error, fn func(tx pgx.Tx, q *Queries) error) error {
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	if err := queue(b); err != nil {
		return err
	}
	br := s.pool.SendBatch(ctx, b)
	tx := br.Tx()
	// As pgx.BeginFunc: a no-op once committed; on any failure, the
	// rollback that ends the transaction and releases the connection.
	defer func() { _ = tx.Rollback(ctx) }()
	if err := br.Close(); err != nil {
		return err
	}
	if fn != nil {
		if err := fn(tx, New(tx)); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// Migrate applies River's migrations and then rexec's. It is safe to run
// again; concurrent runs serialise on goose's lock.
func Migrate(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger) error {
	m, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Logger: logger})
	if err != nil {
		return fmt.Errorf("river migrations: %w", err)
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("river migrations: %w", err)
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	p, err := newGoose(db)
	if err != nil {
		return err
	}
	res, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("rexec migrations: %w", err)
	}
	for _, r := range res {
		logger.InfoContext(ctx, "applied migration", slog.String("source", r.Source.Path), slog.Duration("took", r.Duration))
	}
	return nil
}

// CheckMigrated reports an error unless every migration is applied (for
// readiness checks).
func CheckMigrated(ctx context.Context, pool *pgxpool.Pool) error {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	p, err := newGoose(db)
	if err != nil {
		return err
	}
	pending, err := p.HasPending(ctx)
	if err != nil {
		return fmt.Errorf("check migrations: %w", err)
	}
	if pending {
		return errors.New("migrations pending: run rexec-svc migrate")
	}
	return nil
}

func newGoose(db *sql.DB) (*goose.Provider, error) {
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return nil, fmt.Errorf("rexec migrations: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS, goose.WithSessionLocker(locker))
	if err != nil {
		return nil, fmt.Errorf("rexec migrations: %w", err)
	}
	return p, nil
}

// Permanent reports whether err is one that retrying the same statement
// cannot fix: a lost lease, a missing row, or the database refusing the
// data or the statement itself (SQLSTATE classes 22, 23, 42). Everything
// else — a refused or broken connection, a server shutting down or
// restarting, a serialization failure — may go away: a worker that holds
// a run waits it out rather than give the run up.
func Permanent(err error) bool {
	if errors.Is(err, ErrLeaseLost) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrCancelRequested) ||
		errors.Is(err, ErrStartBoundPassed) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code[:2] {
		case "22", "23", "42":
			return true
		}
	}
	return false
}

// isUniqueViolation reports a unique_violation error.
func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// notFound maps pgx.ErrNoRows to ErrNotFound.
func notFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	return err
}
