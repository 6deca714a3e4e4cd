package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/testenv"
)

func TestServiceRoleDefault(t *testing.T) {
	if testenv.ServiceRole != ServiceRoleDefault {
		t.Fatalf("testenv.ServiceRole %q, store.ServiceRoleDefault %q: the tests would not act as the service", testenv.ServiceRole, ServiceRoleDefault)
	}
}

// TestServiceRoleAppendOnly: as the service role, the audit tables take
// INSERT and SELECT and nothing else, refused by privilege (42501) before
// any trigger could; nothing can be altered, dropped or created.
func TestServiceRoleAppendOnly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	svc := connect(t, b.db.Service)
	if err := audit.Record(ctx, svc, audit.Event{TenantID: b.tenant.ID, Actor: "alice", Type: audit.RunSubmitted}); err != nil {
		t.Fatalf("the service cannot record an audit event: %v", err)
	}
	const ok, denied = "", "42501"
	cases := []struct{ sql, code string }{
		{`SELECT count(*) FROM audit_events`, ok},
		{`INSERT INTO audit_leaves (log_id, idx, event_id) SELECT tenant_id, 0, id FROM audit_events`, ok},
		{`INSERT INTO audit_hashes (log_id, idx, hash) VALUES (1, 0, sha256(''))`, ok},
		{`INSERT INTO audit_checkpoints (log_id, size, root, last_txid, last_event, note) VALUES (1, 1, sha256(''), '1', 1, 'n')`, ok},
		{`SELECT count(*) FROM goose_db_version`, ok},
		{`INSERT INTO goose_db_version (version_id, is_applied) VALUES (99, true)`, denied},
		{`UPDATE runs SET reason = reason`, ok},
		{`ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update`, denied},
		{`DROP TRIGGER audit_events_no_update ON audit_events`, denied},
		{`CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$`, denied},
		{`DROP TABLE audit_events`, denied},
		{`ALTER TABLE audit_events ADD COLUMN x int`, denied},
		{`CREATE TABLE stray (i int)`, denied},
		{`CREATE TRIGGER stray BEFORE DELETE ON runs EXECUTE FUNCTION audit_events_append_only()`, denied},
		{`TRUNCATE runs`, denied},
		// Why River's reindexer is off (jobs.NewClient).
		{`REINDEX INDEX ` + river.ReindexerIndexNamesDefault()[0], denied},
		{`SET ROLE postgres`, denied},
	}
	// A column of each audit table, to update.
	column := map[string]string{"audit_events": "body", "audit_leaves": "idx", "audit_hashes": "hash", "audit_checkpoints": "note"}
	for _, table := range AuditTables {
		cases = append(cases, []struct{ sql, code string }{
			{`UPDATE ` + table + ` SET ` + column[table] + ` = ` + column[table], denied},
			{`DELETE FROM ` + table, denied},
			{`TRUNCATE ` + table, denied},
		}...)
	}
	for _, tc := range cases {
		_, err := svc.Exec(ctx, tc.sql)
		if got := sqlState(err); got != tc.code {
			t.Errorf("%s: SQLSTATE %q (%v), want %q", tc.sql, got, err, tc.code)
		}
	}
	var events int
	if err := svc.QueryRow(ctx, `SELECT count(*) FROM audit_events`).Scan(&events); err != nil || events != 1 {
		t.Errorf("audit events after the attempts: %d, %v; want 1", events, err)
	}
}

// TestServiceRolePrivileges: the service role holds exactly the designed
// privileges on every table and sequence of the schema, River's included.
func TestServiceRolePrivileges(t *testing.T) {
	t.Parallel()
	b := setup(t)
	checkPrivileges(t, b.db.Owner, ServiceRoleDefault)
}

// TestMigrateTwice: migrating again (new tables would be covered) changes
// nothing and the service goes on working.
func TestMigrateTwice(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	owner := ownerPool(t, b.db.Owner)
	for range 2 {
		if err := MigrateAndGrant(ctx, owner, ServiceRoleDefault, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
	}
	checkPrivileges(t, b.db.Owner, ServiceRoleDefault)
	if _, err := b.st.CreateTenant(ctx, Tenant{Name: "globex", ConsulAddr: "127.0.0.1:8500", Prefix: "_rexec", OutputCap: 1}); err != nil {
		t.Fatalf("the service after a second migrate: %v", err)
	}
}

// TestMigrateConcurrently: migrations of several databases of one server
// at once all create or find the same new role and grant it; so do
// migrations of one migrated database at once. (River's migrations of one
// empty database at once are not serialised: they collide.)
func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	dbs := []testenv.DB{testenv.NewDB(t), testenv.NewDB(t), testenv.NewDB(t)}
	role := newRoleName(t, dbs...)
	pools := make([]*pgxpool.Pool, len(dbs))
	for i, db := range dbs {
		pools[i] = ownerPool(t, db.Owner)
	}
	concurrently := func(n int) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				errs[i] = MigrateAndGrant(context.Background(), pools[i%len(pools)], role, slog.New(slog.DiscardHandler))
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
	}
	concurrently(len(dbs))     // each database once: the role is created once
	concurrently(3 * len(dbs)) // each migrated database three times
	for _, db := range dbs {
		checkPrivileges(t, db.Owner, role)
	}
}

// TestValidateRoleName: a service role is a plain identifier.
func TestValidateRoleName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, want string }{
		{"rexec_service", ""},
		{"_svc2", ""},
		{strings.Repeat("r", 63), ""},
		{"", "lower-case letters"},
		{"Rexec", "lower-case letters"},
		{"2rexec", "not starting with a digit"},
		{"rexec-service", "lower-case letters"},
		{`x"; DROP TABLE runs; --`, "lower-case letters"},
		{strings.Repeat("r", 64), "1 to 63"},
		{"pg_rexec", "reserved by PostgreSQL"},
		{"public", "reserved"},
		{"current_user", "reserved"},
	} {
		err := ValidateRoleName(tc.name)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("ValidateRoleName(%q) = %v, want %q", tc.name, err, tc.want)
		}
	}
	// GrantService and MigrateAndGrant validate before touching the database.
	if err := GrantService(context.Background(), nil, "Rexec"); err == nil || !strings.Contains(err.Error(), "lower-case") {
		t.Errorf("GrantService with a bad name: %v", err)
	}
	if err := MigrateAndGrant(context.Background(), nil, "Rexec", slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "lower-case") {
		t.Errorf("MigrateAndGrant with a bad name: %v", err)
	}
}

// TestServiceRoleRefused: a role that could get round the privileges is
// refused with a clear error.
func TestServiceRoleRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// prepare, as the owner on a migrated database, returns the role.
		prepare func(t *testing.T, db testenv.DB, owner *pgxpool.Pool) string
		want    string
	}{
		{"the-connecting-user", func(*testing.T, testenv.DB, *pgxpool.Pool) string { return "postgres" }, "is the user this connects as"},
		{"a-superuser", func(t *testing.T, db testenv.DB, owner *pgxpool.Pool) string {
			return newRole(t, db, owner, "SUPERUSER")
		}, "is a superuser"},
		{"owner-of-a-table", func(t *testing.T, db testenv.DB, owner *pgxpool.Pool) string {
			r := newRole(t, db, owner, "")
			exec(t, owner, `CREATE TABLE stray (i int)`, `ALTER TABLE stray OWNER TO `+r)
			return r
		}, "owns objects"},
		{"owner-of-the-database", func(t *testing.T, db testenv.DB, owner *pgxpool.Pool) string {
			r := newRole(t, db, owner, "")
			var name string
			if err := owner.QueryRow(context.Background(), `SELECT current_database()`).Scan(&name); err != nil {
				t.Fatal(err)
			}
			exec(t, owner, `ALTER DATABASE `+pgx.Identifier{name}.Sanitize()+` OWNER TO `+r)
			// Given back before the role is dropped.
			t.Cleanup(func() { exec(t, owner, `ALTER DATABASE `+pgx.Identifier{name}.Sanitize()+` OWNER TO postgres`) })
			return r
		}, "owns objects"},
		{"member-of-the-owner", func(t *testing.T, db testenv.DB, owner *pgxpool.Pool) string {
			r := newRole(t, db, owner, "")
			exec(t, owner, `GRANT postgres TO `+r)
			return r
		}, "is a member of the user this connects as"},
		{"member-of-a-privileged-role", func(t *testing.T, db testenv.DB, owner *pgxpool.Pool) string {
			r, dba := newRole(t, db, owner, ""), newRole(t, db, owner, "")
			exec(t, owner, `GRANT ALL ON ALL TABLES IN SCHEMA public TO `+dba, `GRANT `+dba+` TO `+r)
			return r
		}, "would still hold DELETE on audit_checkpoints, DELETE on audit_events, DELETE on audit_hashes, DELETE on audit_leaves, REFERENCES on api_tokens and 54 more, "},
		{"public-may-create", func(t *testing.T, db testenv.DB, owner *pgxpool.Pool) string {
			exec(t, owner, `GRANT CREATE ON SCHEMA public TO PUBLIC`)
			return newRole(t, db, owner, "")
		}, "would still hold CREATE on schema public"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := testenv.Migrated(t)
			owner := ownerPool(t, db.Owner)
			role := tc.prepare(t, db, owner)
			err := MigrateAndGrant(context.Background(), owner, role, slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("MigrateAndGrant(%q) = %v, want an error saying %q", role, err, tc.want)
			}
			t.Log(err)
		})
	}
}

// TestRefusedBeforeMigrating: a refused role leaves an empty database
// empty.
func TestRefusedBeforeMigrating(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	owner := ownerPool(t, db.Owner)
	if err := MigrateAndGrant(context.Background(), owner, "postgres", slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("migrating for the connecting user as the service role was not refused")
	}
	var tables int
	if err := owner.QueryRow(context.Background(), `SELECT count(*) FROM pg_tables WHERE schemaname = 'public'`).Scan(&tables); err != nil || tables != 0 {
		t.Errorf("tables after a refusal: %d, %v; want none", tables, err)
	}
}

// checkPrivileges compares role's privileges on every table and sequence
// of the schema with the design.
func checkPrivileges(t *testing.T, ownerURL, role string) {
	t.Helper()
	ctx := context.Background()
	owner := connect(t, ownerURL)
	rows, err := owner.Query(ctx, `SELECT c.relname, c.relkind::text,
	array_remove(ARRAY[
		CASE WHEN c.relkind = 'S' THEN NULL WHEN has_table_privilege($1, c.oid, 'SELECT') THEN 'SELECT' END,
		CASE WHEN c.relkind = 'S' THEN NULL WHEN has_table_privilege($1, c.oid, 'INSERT') THEN 'INSERT' END,
		CASE WHEN c.relkind = 'S' THEN NULL WHEN has_table_privilege($1, c.oid, 'UPDATE') THEN 'UPDATE' END,
		CASE WHEN c.relkind = 'S' THEN NULL WHEN has_table_privilege($1, c.oid, 'DELETE') THEN 'DELETE' END,
		CASE WHEN c.relkind = 'S' THEN NULL WHEN has_table_privilege($1, c.oid, 'TRUNCATE') THEN 'TRUNCATE' END,
		CASE WHEN c.relkind = 'S' THEN NULL WHEN has_table_privilege($1, c.oid, 'REFERENCES') THEN 'REFERENCES' END,
		CASE WHEN c.relkind = 'S' THEN NULL WHEN has_table_privilege($1, c.oid, 'TRIGGER') THEN 'TRIGGER' END,
		CASE WHEN c.relkind <> 'S' THEN NULL WHEN has_sequence_privilege($1, c.oid, 'USAGE') THEN 'USAGE' END,
		CASE WHEN c.relkind <> 'S' THEN NULL WHEN has_sequence_privilege($1, c.oid, 'UPDATE') THEN 'UPDATE' END
	], NULL), pg_get_userbyid(c.relowner) = $1
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') ORDER BY c.relname`, role)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for rows.Next() {
		var name, kind string
		var privs []string
		var owns bool
		if err := rows.Scan(&name, &kind, &privs, &owns); err != nil {
			t.Fatal(err)
		}
		seen[name] = true
		want := []string{"SELECT", "INSERT", "UPDATE", "DELETE"}
		switch {
		case kind == "S":
			want = []string{"USAGE"}
		case slices.Contains(AuditTables, name):
			want = []string{"SELECT", "INSERT"}
		case name == VersionTable:
			want = []string{"SELECT"}
		}
		if !slices.Equal(privs, want) || owns {
			t.Errorf("%s: %s holds %v (owner %t), want %v", name, role, privs, owns, want)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, name := range append([]string{"runs", "river_job", "river_leader", "river_queue", "river_migration", "run_stream_seq", VersionTable}, AuditTables...) {
		if !seen[name] {
			t.Errorf("no %s in the schema", name)
		}
	}
	var create, usage bool
	if err := owner.QueryRow(ctx, `SELECT has_schema_privilege($1, 'public', 'CREATE'), has_schema_privilege($1, 'public', 'USAGE')`, role).Scan(&create, &usage); err != nil || create || !usage {
		t.Errorf("%s on schema public: CREATE %t, USAGE %t (%v); want only USAGE", role, create, usage, err)
	}
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func ownerPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func exec(t *testing.T, db DBTX, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		if _, err := db.Exec(context.Background(), s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// newRoleName returns the name of a role of this test alone, dropped when
// it ends together with what it holds in dbs (roles are the server's, and
// the server may be shared).
func newRoleName(t *testing.T, dbs ...testenv.DB) string {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	role := "rexec_test_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		ctx := context.Background()
		var last *pgx.Conn
		for _, db := range dbs {
			conn, err := pgx.Connect(ctx, db.Owner)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close(ctx)
			if _, err := conn.Exec(ctx, `DROP OWNED BY `+role); err != nil && sqlState(err) != "42704" {
				t.Errorf("drop owned by %s: %v", role, err)
			}
			last = conn
		}
		if _, err := last.Exec(ctx, `DROP ROLE IF EXISTS `+role); err != nil {
			t.Errorf("drop role %s: %v", role, err)
		}
	})
	return role
}

// newRole creates a role of this test alone with the given attributes.
func newRole(t *testing.T, db testenv.DB, owner *pgxpool.Pool, attrs string) string {
	t.Helper()
	role := newRoleName(t, db)
	exec(t, owner, fmt.Sprintf(`CREATE ROLE %s WITH LOGIN %s`, role, attrs))
	return role
}

func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	if err != nil {
		return "error: " + err.Error()
	}
	return ""
}
