package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"strconv"
	"syscall"

	"github.com/jackc/pgx/v5"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/policy"
	"github.com/rexec/rexec/internal/store"
)

// loadPolicy loads the policy (dir, or the embedded default) and audits
// which revision is in force.
func loadPolicy(ctx context.Context, st *store.Store, log *slog.Logger, dir string) (*policy.Engine, error) {
	e, err := policy.New(ctx, policy.Config{Dir: dir, Logger: log})
	if err != nil {
		return nil, err
	}
	err = auditPolicy(ctx, st, audit.PolicyLoaded, map[string]any{"revision": e.Revision(), "dir": dir, "files": e.Files()})
	return e, err
}

// auditPolicy records a policy event once in each tenant's log, in one
// transaction, so that every tenant's auditor sees which policy governs
// it; with no tenant yet, once in the system log. The operating-system
// user running the server is the one who loaded the policy.
func auditPolicy(ctx context.Context, st *store.Store, typ string, data map[string]any) error {
	return st.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
		ids, err := q.TenantIDs(ctx)
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			ids = []int64{0}
		}
		evs := make([]audit.Event, len(ids))
		for i, id := range ids {
			evs[i] = audit.Event{TenantID: id, Actor: "rexec-svc", Type: typ, OSUser: osUser(), Data: data}
		}
		return audit.Record(ctx, tx, evs...)
	})
}

// reloadOnHUP reloads the policy on every SIGHUP until ctx ends. A policy
// that does not compile is refused (logged, and audited) and the one in
// force stays.
func reloadOnHUP(ctx context.Context, st *store.Store, log *slog.Logger, e *policy.Engine) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		previous := e.Revision()
		data := map[string]any{"previous_revision": previous, "dir": e.Dir()}
		typ := audit.PolicyLoaded
		if err := e.Reload(ctx); err != nil {
			typ = audit.PolicyRejected
			data["error"] = err.Error()
		}
		data["revision"], data["files"] = e.Revision(), e.Files()
		if err := auditPolicy(ctx, st, typ, data); err != nil {
			log.ErrorContext(ctx, "audit policy reload", slog.Any("error", err))
		}
	}
}

// osUser names the operating-system user running the process, for the
// audit log: its name, else $USER, else its numeric uid.
func osUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	return strconv.Itoa(os.Getuid())
}
