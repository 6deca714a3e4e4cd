package audit

import (
	"context"
	"fmt"
)

// plans are the ways a test may force a query to be carried out.
var plans = map[string]plan{
	"walk":            {window: 1, runListMax: RunListMax},
	"window":          {window: 2, runListMax: RunListMax},
	"probes":          {runListMax: -1},
	"windowed probes": {window: 2, runListMax: -1},
	"short lists":     {runListMax: 1},
}

// PlanNames names the plans of QueryPlanned.
var PlanNames = []string{"walk", "window", "probes", "windowed probes", "short lists"}

// QueryPlanned is Query carried out as the named plan says.
func QueryPlanned(ctx context.Context, db TxBeginner, f Filter, name string) (Page, error) {
	pl, ok := plans[name]
	if !ok {
		return Page{}, fmt.Errorf("no plan %q", name)
	}
	return queryPlanned(ctx, db, f, pl)
}
