package tenantconsul

import (
	"strings"
	"testing"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/store"
)

// TestViews: a tenant's submissions share one catalog view; new connection
// settings stop it and start another; Close stops every view. (No Consul is
// needed: the views' rounds fail against a closed port, which is not what
// this test looks at.)
func TestViews(t *testing.T) {
	t.Parallel()
	c := NewClients(nil)
	acme := store.Tenant{ID: 1, ConsulAddr: "127.0.0.1:1"}
	other := store.Tenant{ID: 2, ConsulAddr: "127.0.0.1:1"}
	view := func(tn store.Tenant) *consul.CatalogView {
		t.Helper()
		v, err := c.View(tn, nil)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	closed := func(v *consul.CatalogView) bool {
		_, ok, reason := v.Snapshot()
		return !ok && strings.Contains(reason, consul.ErrViewClosed.Error())
	}

	first := view(acme)
	if again := view(acme); again != first {
		t.Error("a second submission got a view of its own")
	}
	o := view(other)
	if o == first {
		t.Error("two tenants share a view")
	}

	moved := acme
	moved.ConsulAddr = "127.0.0.2:1"
	second := view(moved)
	if second == first || !closed(first) {
		t.Errorf("new settings: new view %t, old one closed %t", second != first, closed(first))
	}
	if closed(o) {
		t.Error("another tenant's view was closed")
	}

	c.Close()
	if !closed(second) || !closed(o) {
		t.Error("Close left a view running")
	}
}
