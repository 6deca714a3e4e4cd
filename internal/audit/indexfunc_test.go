package audit_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/testenv"
)

// TestIndexFunctionsInlined: the functions the audit indexes are built on
// (migrations 00005 and 00008) are inlined by PostgreSQL — one expression,
// not a statement run per row, which made the trigram index on commands
// half the cost of storing a submission's events — and return exactly what
// their first definitions returned for every kind of input, so that the
// indexes built with those stay valid.
func TestIndexFunctionsInlined(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := testenv.Database(t)
	st, err := store.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := store.Migrate(ctx, st.Pool(), slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	// One session: the old definitions are its temporary functions.
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	// The definitions of 00005, as temporary functions of this session.
	for _, def := range []string{
		`CREATE FUNCTION pg_temp.old_words(v jsonb) RETURNS text LANGUAGE sql IMMUTABLE STRICT
			AS $$ SELECT CASE jsonb_typeof(v)
				WHEN 'string' THEN v #>> '{}'
				WHEN 'array' THEN (SELECT string_agg(w, ' ' ORDER BY n) FROM jsonb_array_elements_text(v) WITH ORDINALITY AS a (w, n))
			END $$`,
		`CREATE FUNCTION pg_temp.old_command(data jsonb) RETURNS text LANGUAGE sql IMMUTABLE STRICT
			AS $$ SELECT coalesce(pg_temp.old_words(data -> 'command'), pg_temp.old_words(data -> 'argv'), '') $$`,
		`CREATE FUNCTION pg_temp.old_service(data jsonb) RETURNS text LANGUAGE sql IMMUTABLE STRICT
			AS $$ SELECT nullif(coalesce(data ->> 'service_filter', data ->> 'service'), '') $$`,
	} {
		if _, err := conn.Exec(ctx, def); err != nil {
			t.Fatal(err)
		}
	}

	inputs := []*string{
		nil, ptr(`{}`), ptr(`null`),
		ptr(`{"command": "uptime -p"}`), ptr(`{"command": ""}`), ptr(`{"command": null}`),
		ptr(`{"argv": ["ls", "-l", "/tmp dir"]}`), ptr(`{"argv": []}`), ptr(`{"argv": ["echo", 1, true, null]}`),
		ptr(`{"command": "a", "argv": ["b"]}`), ptr(`{"command": 7, "argv": "x y"}`), ptr(`{"command": {"x": 1}}`),
		ptr(`{"service_filter": "^web$"}`), ptr(`{"service_filter": ""}`), ptr(`{"service": "db"}`),
		ptr(`{"service_filter": "", "service": "db"}`), ptr(`{"service_filter": null, "service": ""}`),
	}
	for _, in := range inputs {
		var oldCmd, newCmd, oldSvc, newSvc *string
		err := conn.QueryRow(ctx, `SELECT pg_temp.old_command(d), rexec_audit_command(d), pg_temp.old_service(d), rexec_audit_service(d)
			FROM (SELECT $1::jsonb AS d) AS x`, in).Scan(&oldCmd, &newCmd, &oldSvc, &newSvc)
		if err != nil {
			t.Fatalf("%v: %v", str(in), err)
		}
		if str(oldCmd) != str(newCmd) {
			t.Errorf("rexec_audit_command(%s) = %s, was %s", str(in), str(newCmd), str(oldCmd))
		}
		if str(oldSvc) != str(newSvc) {
			t.Errorf("rexec_audit_service(%s) = %s, was %s", str(in), str(newSvc), str(oldSvc))
		}
	}

	// Inlined: the plan holds their bodies' expressions, not calls. (Only
	// an array of words still calls rexec_audit_join.)
	rows, _ := conn.Query(ctx, `EXPLAIN (VERBOSE) SELECT rexec_audit_command(data), rexec_audit_service(data) FROM audit_events`)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	for _, fn := range []string{"rexec_audit_command(", "rexec_audit_service(", "rexec_audit_words("} {
		if strings.Contains(plan, fn) {
			t.Errorf("%s is not inlined:\n%s", strings.TrimSuffix(fn, "("), plan)
		}
	}
}

func ptr(s string) *string { return &s }

func str(s *string) string {
	if s == nil {
		return "NULL"
	}
	return `"` + *s + `"`
}
