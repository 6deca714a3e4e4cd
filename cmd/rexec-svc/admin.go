package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/tenantconsul"
)

func cmdMigrate(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("migrate", stderr)
	dbURL, level := fs.databaseURL(), fs.logLevel()
	role := fs.String("service-role", "REXEC_SERVICE_ROLE", store.ServiceRoleDefault,
		"the database role serve, worker, tenant and token connect as: created (WITH LOGIN, no password) unless it exists, and granted only what the service needs; -database-url connects as the tables' owner")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := store.ValidateRoleName(*role); err != nil {
		return err
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	return migrateAs(ctx, *dbURL, *role, log)
}

// migrateAs migrates the database at ownerURL, connecting as the tables'
// owner, and grants role the service's privileges.
func migrateAs(ctx context.Context, ownerURL, role string, log *slog.Logger) error {
	st, err := openStore(ctx, ownerURL)
	if err != nil {
		return err
	}
	defer st.Close()
	return store.MigrateAndGrant(ctx, st.Pool(), role, log)
}

func cmdTenantCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tenant create", stderr)
	dbURL := fs.databaseURL()
	addr := fs.String("consul-addr", "REXEC_CONSUL_ADDR", "", "the tenant's Consul agent, host:port (required)")
	token := fs.String("consul-token", "REXEC_CONSUL_TOKEN", "", "the tenant's Consul ACL token")
	tokenFile := fs.String("consul-token-file", "REXEC_CONSUL_TOKEN_FILE", "", "file holding the tenant's Consul ACL token")
	dc := fs.String("datacenter", "REXEC_CONSUL_DATACENTER", "", "Consul datacenter (default: the agent's)")
	prefix := fs.String("prefix", "REXEC_CONSUL_PREFIX", consul.PrefixDefault, "KV prefix; runs may use it or a prefix under it")
	outputCap := fs.Int("output-cap", "REXEC_OUTPUT_CAP", 1<<20, "bytes of output archived per node")
	startTimeout := fs.Duration("start-timeout", "REXEC_START_TIMEOUT", store.StartTimeoutDefault, "a run not started this long after submission fails instead of firing late; runs may set their own")
	approvalTTL := fs.Duration("approval-ttl", "REXEC_APPROVAL_TTL", store.ApprovalTTLDefault, "a run pending approval this long expires")
	timeZone := fs.String("time-zone", "REXEC_TIME_ZONE", "UTC", "the tenant's IANA time zone, for policies about working hours")
	webhookURL := fs.String("webhook-url", "REXEC_WEBHOOK_URL", "", "URL told of runs needing approval (a Slack incoming webhook works); a secret")
	webhookSecretFile := fs.String("webhook-secret-file", "REXEC_WEBHOOK_SECRET_FILE", "", "file holding the HMAC-SHA256 key that signs webhook deliveries")
	caFile := fs.String("consul-ca-file", "REXEC_CONSUL_CACERT", "", "CA bundle for HTTPS to Consul")
	certFile := fs.String("consul-cert-file", "REXEC_CONSUL_CLIENT_CERT", "", "client certificate for HTTPS to Consul")
	keyFile := fs.String("consul-key-file", "REXEC_CONSUL_CLIENT_KEY", "", "client key for HTTPS to Consul")
	serverName := fs.String("consul-tls-server-name", "REXEC_CONSUL_TLS_SERVER_NAME", "", "server name to verify in Consul's certificate")
	// The name comes first, as in SPEC; flags may follow it.
	name := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if name == "" && fs.NArg() == 1 {
		name = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	switch {
	case name == "":
		return errors.New("usage: rexec-svc tenant create NAME -consul-addr ADDR [flags]")
	case *addr == "":
		return errors.New("-consul-addr is required")
	case *token != "" && *tokenFile != "":
		return errors.New("give -consul-token or -consul-token-file, not both")
	case *outputCap <= 0:
		return errors.New("-output-cap must be positive")
	case *startTimeout < time.Second || *startTimeout > 7*24*time.Hour:
		return errors.New("-start-timeout must be between 1s and 168h")
	case *approvalTTL < time.Second || *approvalTTL > 30*24*time.Hour:
		return errors.New("-approval-ttl must be between 1s and 720h")
	}
	if _, err := time.LoadLocation(*timeZone); err != nil || *timeZone == "" || *timeZone == "Local" {
		return fmt.Errorf("-time-zone %q is not an IANA time zone", *timeZone)
	}
	if *webhookURL != "" {
		u, err := url.Parse(*webhookURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			// The URL is a secret (a Slack webhook URL is a credential): never echo it.
			return errors.New("-webhook-url must be an http or https URL")
		}
	}
	if (*webhookURL == "") != (*webhookSecretFile == "") {
		// Deliveries without a key are refused by every careful receiver:
		// approvers would never hear.
		return errors.New("-webhook-url and -webhook-secret-file go together")
	}
	var webhookSecret string
	if *webhookSecretFile != "" {
		b, err := os.ReadFile(*webhookSecretFile)
		if err != nil {
			return fmt.Errorf("read -webhook-secret-file: %w", err)
		}
		webhookSecret = strings.TrimSpace(string(b))
	}
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("read -consul-token-file: %w", err)
		}
		*token = strings.TrimSpace(string(b))
	}
	// Stored as text, which cannot hold a NUL or invalid UTF-8; the
	// messages name the flag, never the secret.
	for _, f := range []struct{ name, v string }{{"tenant name", name}, {"-consul-token", *token}, {"-datacenter", *dc}} {
		if err := consul.CheckText(f.name, f.v); err != nil {
			return err
		}
	}
	t := store.Tenant{
		Name: name, ConsulAddr: *addr, Datacenter: *dc, ConsulToken: *token, Prefix: *prefix, OutputCap: int64(*outputCap),
		StartTimeout: *startTimeout, ApprovalTTL: *approvalTTL, TimeZone: *timeZone,
		WebhookURL: *webhookURL, WebhookSecret: webhookSecret,
		TLS: store.TLS{CAFile: *caFile, CertFile: *certFile, KeyFile: *keyFile, ServerName: *serverName},
	}
	// The engine validates what it can of the connection before anything is stored.
	if _, err := consul.New(tenantconsul.Config(t)); err != nil {
		return err
	}
	if err := (consul.Spec{Argv: []string{"true"}, Prefix: t.Prefix}).WithDefaults().Validate(0); err != nil {
		return fmt.Errorf("-prefix: %w", err)
	}
	st, err := openStore(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer st.Close()
	err = st.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
		created, err := q.CreateTenant(ctx, t)
		if err != nil {
			return err
		}
		t = created
		// Never the Consul token, the webhook URL (a credential in a Slack
		// webhook) or its secret: only whether they are set.
		return audit.Record(ctx, tx, adminEvent(t.ID, audit.TenantCreated, map[string]any{"name": t.Name,
			"consul_addr": t.ConsulAddr, "datacenter": t.Datacenter, "prefix": t.Prefix, "output_cap": t.OutputCap,
			"start_timeout": t.StartTimeout.String(), "approval_ttl": t.ApprovalTTL.String(), "time_zone": t.TimeZone,
			"consul_token_set": t.ConsulToken != "", "webhook_set": t.WebhookURL != "",
			"consul_tls": map[string]any{"ca_file": t.TLS.CAFile, "cert_file": t.TLS.CertFile, "key_file": t.TLS.KeyFile,
				"server_name": t.TLS.ServerName}}))
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "created tenant %s (id %d)\n", t.Name, t.ID)
	return nil
}

func cmdTokenCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("token create", stderr)
	dbURL := fs.databaseURL()
	tenant := fs.String("tenant", "REXEC_TENANT", "", "tenant name (required)")
	principal := fs.String("principal", "REXEC_PRINCIPAL", "", "principal name (required; created if new)")
	roles := fs.String("roles", "REXEC_ROLES", "", "comma-separated roles: submitter, approver, auditor, admin (required)")
	setRoles := fs.FlagSet.Bool("set-roles", false, "change the roles of an existing principal (and so of all its tokens)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if *tenant == "" || *principal == "" || *roles == "" {
		return errors.New("usage: rexec-svc token create -tenant NAME -principal NAME -roles r1,r2")
	}
	rs, err := parseRoles(*roles)
	if err != nil {
		return err
	}
	// Stored as text, which cannot hold a NUL or invalid UTF-8.
	if err := consul.CheckText("-principal", *principal); err != nil {
		return err
	}
	st, err := openStore(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer st.Close()
	id, tok, err := createToken(ctx, st, *tenant, *principal, rs, *setRoles)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "token %d for %s/%s (roles %s); it is shown once:\n%s\n", id, *tenant, *principal, strings.Join(rs, ","), tok)
	return nil
}

func cmdTokenRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("token revoke", stderr)
	dbURL := fs.databaseURL()
	tenant := fs.String("tenant", "REXEC_TENANT", "", "tenant name (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *tenant == "" || fs.NArg() != 1 {
		return errors.New("usage: rexec-svc token revoke -tenant NAME TOKEN-ID")
	}
	id, err := strconv.ParseInt(fs.Arg(0), 10, 64)
	if err != nil {
		return fmt.Errorf("token ID %q is not a number", fs.Arg(0))
	}
	st, err := openStore(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer st.Close()
	err = st.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
		t, err := q.TenantByName(ctx, *tenant)
		if err != nil {
			return err
		}
		p, err := q.RevokeToken(ctx, t.ID, id)
		if err != nil {
			return err
		}
		return audit.Record(ctx, tx, adminEvent(t.ID, audit.TokenRevoked, map[string]any{"token_id": id, "principal": p.Name, "roles": p.Roles}))
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revoked token %d\n", id)
	return nil
}

func parseRoles(s string) ([]string, error) {
	var out []string
	for _, r := range strings.Split(s, ",") {
		r = strings.TrimSpace(r)
		switch r {
		case store.RoleSubmitter, store.RoleApprover, store.RoleAuditor, store.RoleAdmin:
			out = append(out, r)
		default:
			return nil, fmt.Errorf("unknown role %q (roles: submitter, approver, auditor, admin)", r)
		}
	}
	return out, nil
}

// createToken makes a token for the principal, creating the principal if
// new, audited, in one transaction. The roles of an existing principal
// change only when setRoles says so.
func createToken(ctx context.Context, st *store.Store, tenantName, principal string, roles []string, setRoles bool) (int64, string, error) {
	var id int64
	var token string
	err := st.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
		t, err := q.TenantByName(ctx, tenantName)
		if err != nil {
			return err
		}
		p, err := q.PrincipalByName(ctx, t.ID, principal)
		newPrincipal := errors.Is(err, store.ErrNotFound)
		switch {
		case newPrincipal:
		case err != nil:
			return err
		case !sameRoles(p.Roles, roles) && !setRoles:
			return fmt.Errorf("principal %q has roles %s; pass -set-roles to change them (for all its tokens)", principal, strings.Join(p.Roles, ","))
		case !sameRoles(p.Roles, roles):
			if err := audit.Record(ctx, tx, adminEvent(t.ID, audit.RolesChanged,
				map[string]any{"principal": principal, "from": p.Roles, "to": roles})); err != nil {
				return err
			}
		}
		p, err = q.UpsertPrincipal(ctx, t.ID, principal, roles)
		if err != nil {
			return err
		}
		id, token, err = q.CreateToken(ctx, p.ID)
		if err != nil {
			return err
		}
		return audit.Record(ctx, tx, adminEvent(t.ID, audit.TokenCreated,
			map[string]any{"principal": principal, "roles": roles, "token_id": id, "new_principal": newPrincipal}))
	})
	return id, token, err
}

func sameRoles(a, b []string) bool {
	a, b = slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b))
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// adminEvent is an audit event of an admin command: its actor is "admin",
// and the operating-system user who ran it is recorded.
func adminEvent(tenantID int64, typ string, data map[string]any) audit.Event {
	return audit.Event{TenantID: tenantID, Actor: "admin", Type: typ, OSUser: osUser(), Data: data}
}
