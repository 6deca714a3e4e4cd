package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"syscall"

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
	err = audit.Record(ctx, st.Pool(), audit.Event{Actor: "rexec-svc", Type: audit.PolicyLoaded,
		Data: map[string]any{"revision": e.Revision(), "dir": dir, "os_user": osUser()}})
	return e, err
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
		data := map[string]any{"previous_revision": previous, "os_user": osUser()}
		typ := audit.PolicyLoaded
		if err := e.Reload(ctx); err != nil {
			typ = audit.PolicyRejected
			data["error"] = err.Error()
		}
		data["revision"] = e.Revision()
		if err := audit.Record(ctx, st.Pool(), audit.Event{Actor: "rexec-svc", Type: typ, Data: data}); err != nil {
			log.ErrorContext(ctx, "audit policy reload", slog.Any("error", err))
		}
	}
}

// osUser names the operating-system user running the process, for the
// audit log.
func osUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return os.Getenv("USER")
}
