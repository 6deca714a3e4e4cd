package auditlog_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/mod/sumdb/note"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/auditlog"
	"github.com/rexec/rexec/internal/auditproof"
	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/storetest"
	"github.com/rexec/rexec/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.Main(m, testenv.Options{Postgres: true, Migrate: store.MigrateAndGrant})
}

// fixture is one test's database with tenants, a signing key and a log.
type fixture struct {
	t    *testing.T
	pool *pgxpool.Pool
	st   *store.Store
	// ownerURL connects as the database's superuser, to tamper with.
	ownerURL string
	tenants  map[int64]string
	key      note.Verifier
	signer   note.Signer
	log      *auditlog.Log
}

func setup(t *testing.T, tenants ...string) *fixture {
	t.Helper()
	ctx := context.Background()
	// The log is written and read as the service's database role.
	db := testenv.Migrated(t)
	st, err := store.Open(ctx, db.Service)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	f := &fixture{t: t, pool: st.Pool(), st: st, ownerURL: db.Owner, tenants: map[int64]string{}}
	for _, name := range tenants {
		f.tenants[storetest.Tenant(t, st, name).ID] = name
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, "rexec-test")
	if err != nil {
		t.Fatal(err)
	}
	if f.signer, err = note.NewSigner(skey); err != nil {
		t.Fatal(err)
	}
	if f.key, err = note.NewVerifier(vkey); err != nil {
		t.Fatal(err)
	}
	f.log = f.newLog()
	return f
}

func (f *fixture) newLog() *auditlog.Log {
	l, err := auditlog.New(f.pool, auditlog.Config{Signer: f.signer, Batch: 1000, Interval: 20 * time.Millisecond,
		Logger: testenv.Logger(f.t),
		Logs:   func(context.Context) (map[int64]string, error) { return f.tenants, nil }})
	if err != nil {
		f.t.Fatal(err)
	}
	return l
}

func (f *fixture) tenant(name string) int64 {
	for id, n := range f.tenants {
		if n == name {
			return id
		}
	}
	f.t.Fatalf("no tenant %s", name)
	return 0
}

// record writes n events of a tenant, one transaction each.
func (f *fixture) record(tenant int64, n int, typ string) {
	f.t.Helper()
	for i := range n {
		err := audit.Record(context.Background(), f.pool, audit.Event{TenantID: tenant, Actor: "alice", Type: typ,
			Data: map[string]any{"command": fmt.Sprintf("ls /tmp/%d", i)}})
		if err != nil {
			f.t.Fatal(err)
		}
	}
}

// integrate brings every log up to date.
func (f *fixture) integrate() {
	f.t.Helper()
	if _, err := f.log.IntegrateAll(context.Background()); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) verify(tenant int64, kept []byte) (auditproof.Result, error) {
	return auditproof.VerifyLog(context.Background(), f.log.Source(tenant), f.key, kept)
}

// awaitIntegrated integrates until the logs hold n events in all.
func (f *fixture) awaitIntegrated(n int64) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		f.integrate()
		var logged int64
		if err := f.pool.QueryRow(ctx, "SELECT count(*) FROM audit_leaves").Scan(&logged); err != nil {
			f.t.Fatal(err)
		}
		if logged >= n {
			return
		}
		if ctx.Err() != nil {
			f.t.Fatalf("after 30 s, %d of %d events are logged", logged, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
