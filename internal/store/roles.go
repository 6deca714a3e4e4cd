package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pressly/goose/v3"
)

// Two database roles (SPEC §5, append-only by privilege): migrations run as
// the owner of every table, the service as a role that owns nothing and
// may only INSERT and SELECT the audit log. The audit tables' triggers
// refuse UPDATE, DELETE and TRUNCATE too, but an owner could drop them;
// the service role cannot.

// ServiceRoleDefault is the role the service connects as unless
// `rexec-svc migrate -service-role` names another.
const ServiceRoleDefault = "rexec_service"

// AuditTables are append-only for the service role: INSERT and SELECT.
// Every other table of the schema gets SELECT, INSERT, UPDATE and DELETE,
// except goose's version table (VersionTable), SELECT only.
var AuditTables = []string{"audit_events", "audit_leaves", "audit_hashes", "audit_checkpoints"}

// VersionTable is goose's record of rexec's applied migrations.
const VersionTable = goose.DefaultTablename

// The statements that give the service role its privileges, in order, in
// one transaction. {role}, {schema}, {database}, {audit} (the audit tables)
// and {version} stand for quoted identifiers. Everything is revoked first,
// so that the role ends up with exactly these privileges whatever it held,
// and granted again on every migrate, so that new tables are covered.
const (
	// Advisory locks are per database: this one serialises grants on one
	// database, which would otherwise fail with "tuple concurrently
	// updated" when two migrations of it end at once.
	grantLock = `SELECT pg_advisory_xact_lock(8243127069826314868)` // "rexecgrt"

	revokeTables    = `REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}`
	revokeSequences = `REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {role}`
	// PostgreSQL 15 no longer lets PUBLIC create in schema public; a role
	// given CREATE by name loses it here (verifyGrants checks the rest).
	revokeCreate   = `REVOKE CREATE ON SCHEMA {schema} FROM {role}`
	grantConnect   = `GRANT CONNECT ON DATABASE {database} TO {role}`
	grantUsage     = `GRANT USAGE ON SCHEMA {schema} TO {role}`
	grantTables    = `GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}`
	revokeAudit    = `REVOKE UPDATE, DELETE ON {audit} FROM {role}`
	revokeVersion  = `REVOKE INSERT, UPDATE, DELETE ON {version} FROM {role}`
	grantSequences = `GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}`
)

var grantStatements = []string{
	grantLock, revokeTables, revokeSequences, revokeCreate,
	grantConnect, grantUsage, grantTables, revokeAudit, revokeVersion, grantSequences,
}

const (
	queryRoleExists = `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`
	createRole      = `CREATE ROLE {role} WITH LOGIN`

	// Whether the role is the connecting user, a superuser, a member of
	// the connecting user (holding, or able to SET ROLE to, the owner's
	// privileges), or owns anything in this database (an object, or the
	// database itself, whose owner may create in schema public).
	queryCheckRole = `SELECT r.rolname = current_user, r.rolsuper, pg_has_role(r.oid, current_user, 'MEMBER'),
	EXISTS (SELECT 1 FROM pg_shdepend d JOIN pg_database db ON db.oid = d.dbid
		WHERE db.datname = current_database() AND d.refclassid = 'pg_authid'::regclass
		AND d.refobjid = r.oid AND d.deptype = 'o')
	OR EXISTS (SELECT 1 FROM pg_database WHERE datname = current_database() AND datdba = r.oid)
FROM pg_roles r WHERE r.rolname = $1`

	// What the role may still do that it must not, whichever way it holds
	// it (by name, through PUBLIC or through a role it belongs to): create
	// in the schema; truncate, reference or trigger on any table; update or
	// delete an audit table.
	queryExcessPrivileges = `SELECT 'CREATE on schema ' || n.nspname FROM pg_namespace n
WHERE n.nspname = $2 AND has_schema_privilege($1, n.oid, 'CREATE')
UNION ALL
SELECT p.priv || ' on ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	CROSS JOIN unnest(ARRAY['TRUNCATE', 'REFERENCES', 'TRIGGER', 'UPDATE', 'DELETE']) AS p(priv)
WHERE n.nspname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
	AND (p.priv NOT IN ('UPDATE', 'DELETE') OR c.relname = ANY($3))
	AND has_table_privilege($1, c.oid, p.priv)
ORDER BY 1`
)

// validRoleName is what rexec accepts as a service role: an identifier
// that needs no quoting (psql's `ALTER ROLE rexec_service PASSWORD …`
// then names the same role), within PostgreSQL's 63 bytes.
var validRoleName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// ValidateRoleName reports whether name may be the service role.
func ValidateRoleName(name string) error {
	switch {
	case !validRoleName.MatchString(name):
		return fmt.Errorf("service role %q: use 1 to 63 lower-case letters, digits and underscores, not starting with a digit", name)
	case strings.HasPrefix(name, "pg_"):
		return fmt.Errorf("service role %q: names starting with pg_ are reserved by PostgreSQL", name)
	case name == "public" || name == "none" || name == "current_user" || name == "session_user" || name == "current_role":
		return fmt.Errorf("service role %q: a reserved name", name)
	}
	return nil
}

// MigrateAndGrant is what `rexec-svc migrate` does: it applies the
// migrations as the pool's user, the owner, and then gives role the
// service's privileges (GrantService). It refuses before migrating when
// role could not be the service's.
func MigrateAndGrant(ctx context.Context, pool *pgxpool.Pool, role string, logger *slog.Logger) error {
	if err := ValidateRoleName(role); err != nil {
		return err
	}
	if err := checkServiceRole(ctx, pool, role); err != nil {
		return err
	}
	if err := Migrate(ctx, pool, logger); err != nil {
		return err
	}
	if err := GrantService(ctx, pool, role); err != nil {
		return err
	}
	logger.InfoContext(ctx, "granted the service role its privileges", slog.String("role", role))
	return nil
}

// GrantService creates role (WITH LOGIN, no password) unless it exists and
// gives it exactly the service's privileges on the schema the pool's user
// migrated (its current schema): SELECT and INSERT on the audit tables,
// SELECT, INSERT, UPDATE and DELETE on every other table but goose's
// version table (SELECT), USAGE on the sequences, nothing else. It runs as
// the owner after Migrate, is safe to repeat, and refuses a role that is
// the connecting user, a superuser, a member of the connecting user, or
// owns anything in the database (checkServiceRole). It
// fails, granting nothing, when the role would still hold more (CREATE on
// the schema through PUBLIC, say).
func GrantService(ctx context.Context, pool *pgxpool.Pool, role string) error {
	if err := ValidateRoleName(role); err != nil {
		return err
	}
	if err := createServiceRole(ctx, pool, role); err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var schema, database string
		if err := tx.QueryRow(ctx, `SELECT coalesce(current_schema(), ''), current_database()`).Scan(&schema, &database); err != nil {
			return fmt.Errorf("grant service role: %w", err)
		}
		if schema == "" {
			return errors.New("grant service role: no schema in the search_path exists")
		}
		if err := checkServiceRole(ctx, tx, role); err != nil {
			return err
		}
		audit := make([]string, len(AuditTables))
		for i, t := range AuditTables {
			audit[i] = pgx.Identifier{schema, t}.Sanitize()
		}
		r := strings.NewReplacer(
			"{role}", pgx.Identifier{role}.Sanitize(),
			"{schema}", pgx.Identifier{schema}.Sanitize(),
			"{database}", pgx.Identifier{database}.Sanitize(),
			"{audit}", strings.Join(audit, ", "),
			"{version}", pgx.Identifier{schema, VersionTable}.Sanitize(),
		)
		for _, s := range grantStatements {
			if _, err := tx.Exec(ctx, r.Replace(s)); err != nil {
				return fmt.Errorf("grant service role %s: %s: %w", role, r.Replace(s), err)
			}
		}
		return verifyGrants(ctx, tx, role, schema)
	})
}

// createServiceRole creates role unless it exists. Migrations of several
// databases on one server may race to create it (roles are the server's):
// the loser finds it made.
func createServiceRole(ctx context.Context, db DBTX, role string) error {
	var exists bool
	if err := db.QueryRow(ctx, queryRoleExists, role).Scan(&exists); err != nil {
		return fmt.Errorf("service role %s: %w", role, err)
	}
	if exists {
		return nil
	}
	_, err := db.Exec(ctx, strings.ReplaceAll(createRole, "{role}", pgx.Identifier{role}.Sanitize()))
	var pe *pgconn.PgError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &pe) && (pe.Code == "42710" || pe.Code == "23505"):
		// duplicate_object, or the unique index of pg_authid when the
		// other CREATE ROLE committed while this one waited on it.
		return nil
	case errors.As(err, &pe) && pe.Code == "42501":
		return fmt.Errorf("create service role %s: %w (the migrating user needs CREATEROLE, or create the role beforehand)", role, err)
	default:
		return fmt.Errorf("create service role %s: %w", role, err)
	}
}

// checkServiceRole refuses a role that is the connecting user, a
// superuser, a member of the connecting user, or owns anything in the
// database: each would get round the privileges. A role that does not
// exist yet passes.
func checkServiceRole(ctx context.Context, db DBTX, role string) error {
	var self, super, member, owns bool
	err := db.QueryRow(ctx, queryCheckRole, role).Scan(&self, &super, &member, &owns)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("service role %s: %w", role, err)
	case self:
		return fmt.Errorf("the service role %q is the user this connects as: migrate as the tables' owner and give the service another role (-service-role)", role)
	case super:
		return fmt.Errorf("the service role %q is a superuser, above every privilege (the append-only audit log's included): give the service a role without SUPERUSER", role)
	case member:
		return fmt.Errorf("the service role %q is a member of the user this connects as, the tables' owner, and may act as it: revoke that membership", role)
	case owns:
		return fmt.Errorf("the service role %q owns objects in this database, or the database: an owner may alter them (drop the audit log's triggers); give them to the migrating user (ALTER … OWNER TO, REASSIGN OWNED BY %s TO …)", role, role)
	}
	return nil
}

// verifyGrants fails when role may still do more than GrantService gives
// it, however it holds the privilege.
func verifyGrants(ctx context.Context, tx pgx.Tx, role, schema string) error {
	rows, err := tx.Query(ctx, queryExcessPrivileges, role, schema, AuditTables)
	if err != nil {
		return fmt.Errorf("verify service role %s: %w", role, err)
	}
	excess, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("verify service role %s: %w", role, err)
	}
	if len(excess) > 0 {
		held := strings.Join(excess[:min(5, len(excess))], ", ")
		if len(excess) > 5 {
			held += fmt.Sprintf(" and %d more", len(excess)-5)
		}
		return fmt.Errorf("the service role %q would still hold %s, through PUBLIC or a role it belongs to: revoke it there "+
			"(before PostgreSQL 15, PUBLIC may create in schema public: REVOKE CREATE ON SCHEMA public FROM PUBLIC)",
			role, held)
	}
	return nil
}
