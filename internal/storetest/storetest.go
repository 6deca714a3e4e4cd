// Package storetest sets up, for the tests of packages that use the store,
// what they need of it: a migrated database of the test's own, reached as
// the service's database role, with tenants and principals in it.
//
// The store's own tests do not use it (they test what it calls); it lives
// apart from testenv, which the store's tests import and which therefore
// cannot import the store.
package storetest

import (
	"context"
	"testing"

	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/testenv"
)

// Open returns a Store on a migrated database of tb's own, connected as
// the service's database role (testenv.Migrated), closed when tb ends.
// The package's TestMain must have asked testenv for PostgreSQL and
// store.MigrateAndGrant.
func Open(tb testing.TB) *store.Store {
	tb.Helper()
	st, err := store.Open(context.Background(), testenv.Migrated(tb).Service)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(st.Close)
	return st
}

// Tenant creates a tenant named name: an agent address that tests which
// reach no Consul never dial, the default prefix and a 1 MiB output cap.
func Tenant(tb testing.TB, st *store.Store, name string) store.Tenant {
	tb.Helper()
	tn, err := st.CreateTenant(context.Background(), store.Tenant{Name: name, ConsulAddr: "127.0.0.1:8500",
		Prefix: "_rexec", OutputCap: 1 << 20})
	if err != nil {
		tb.Fatal(err)
	}
	return tn
}

// Principal creates the principal name of tenant with roles (or gives an
// existing one these roles).
func Principal(tb testing.TB, st *store.Store, tenant int64, name string, roles ...string) store.Principal {
	tb.Helper()
	p, err := st.UpsertPrincipal(context.Background(), tenant, name, roles)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}
