package store

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.Main(m, testenv.Options{Postgres: true, Migrate: MigrateAndGrant})
}

// bundle is one test's migrated database with a tenant and a principal; st
// connects as the service role.
type bundle struct {
	db        testenv.DB
	st        *Store
	tenant    Tenant
	principal Principal
}

func setup(t *testing.T) *bundle {
	t.Helper()
	ctx := context.Background()
	db := testenv.Migrated(t)
	st, err := Open(ctx, db.Service)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	tn, err := st.CreateTenant(ctx, Tenant{Name: "acme", ConsulAddr: "127.0.0.1:8500", Prefix: "_rexec", OutputCap: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	p, err := st.UpsertPrincipal(ctx, tn.ID, "alice", []string{RoleSubmitter})
	if err != nil {
		t.Fatal(err)
	}
	return &bundle{db: db, st: st, tenant: tn, principal: p}
}

// insertRun stores a queued run on nodes, starting within startTimeout.
func (b *bundle) insertRun(t *testing.T, startTimeout time.Duration, nodes ...string) Run {
	t.Helper()
	targets, _ := json.Marshal(nodes)
	r, err := b.st.InsertRun(context.Background(), Run{
		TenantID: b.tenant.ID, SubmittedBy: b.principal.ID, State: StateQueued, Argv: []string{"true"}, Shell: true,
		Prefix: "_rexec", Wait: 2 * time.Second, WaitRepl: 200 * time.Millisecond, OutputCap: 1 << 20,
		Targets: targets, StartTimeout: startTimeout,
	}, nodes)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
