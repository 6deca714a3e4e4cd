package store

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestRunCatalogIndex: a run keeps the catalog index and source its
// targets were resolved at; a run without them (stored before they were
// recorded) reads back as 0 and ""; the database refuses a source it does
// not know.
func TestRunCatalogIndex(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	run := Run{TenantID: b.tenant.ID, SubmittedBy: b.principal.ID, State: StateQueued, Argv: []string{"true"}, Shell: true,
		Prefix: "_rexec", Wait: 2 * time.Second, OutputCap: 1 << 20, Targets: []byte(`[{"node":"a"}]`)}
	for _, tc := range []struct {
		note    string
		index   uint64
		source  string
		wantErr string
	}{
		{note: "from the view", index: 1 << 40, source: "view"},
		{note: "from a direct read", index: 7, source: "direct"},
		{note: "not recorded", index: 0, source: ""},
		{note: "unknown source", index: 7, source: "cache", wantErr: "catalog_source"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			r := run
			r.CatalogIndex, r.CatalogSource = tc.index, tc.source
			got, err := b.st.InsertRun(ctx, r, []string{"a"})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			again, err := b.st.GetRun(ctx, b.tenant.ID, got.ID)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range []Run{got, again} {
				if r.CatalogIndex != tc.index || r.CatalogSource != tc.source {
					t.Errorf("catalog index %d from %q, want %d from %q", r.CatalogIndex, r.CatalogSource, tc.index, tc.source)
				}
			}
		})
	}
}
