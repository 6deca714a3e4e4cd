package store

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// TLS is a tenant's HTTPS settings for its Consul agent.
type TLS struct {
	CAFile             string `json:"ca_file,omitempty"`
	CertFile           string `json:"cert_file,omitempty"`
	KeyFile            string `json:"key_file,omitempty"`
	ServerName         string `json:"server_name,omitempty"`
	InsecureSkipVerify bool   `json:"insecure_skip_verify,omitempty"`
	Enabled            bool   `json:"enabled,omitempty"`
}

// Tenant is an isolated user of rexec with its own Consul connection.
type Tenant struct {
	ID         int64
	Name       string
	ConsulAddr string
	Datacenter string
	// ConsulToken is a secret: it never leaves the process but towards Consul.
	ConsulToken string
	TLS         TLS
	Prefix      string
	OutputCap   int64
	// StartTimeout bounds how long a run may wait to start (queue,
	// approval, recovery before firing). Zero means StartTimeoutDefault.
	StartTimeout time.Duration
	// ApprovalTTL bounds how long a run waits for approval before it
	// expires. Zero means ApprovalTTLDefault.
	ApprovalTTL time.Duration
	// TimeZone is the tenant's IANA time zone (policies about working
	// hours). Default: UTC.
	TimeZone string
	// WebhookURL and WebhookSecret tell approvers of runs that need them.
	// Both are secrets: never logged or returned.
	WebhookURL    string
	WebhookSecret string
	CreatedAt     time.Time
}

// StartTimeoutDefault is a tenant's default start bound.
const StartTimeoutDefault = 15 * time.Minute

const tenantColumns = `id, name, consul_addr, consul_datacenter, consul_token, consul_tls, prefix, output_cap, start_timeout_ms, approval_ttl_ms, time_zone, webhook_url, webhook_secret, created_at`

func scanTenant(row interface{ Scan(...any) error }) (Tenant, error) {
	var t Tenant
	var startMS, approvalMS int64
	err := row.Scan(&t.ID, &t.Name, &t.ConsulAddr, &t.Datacenter, &t.ConsulToken, &t.TLS, &t.Prefix, &t.OutputCap, &startMS,
		&approvalMS, &t.TimeZone, &t.WebhookURL, &t.WebhookSecret, &t.CreatedAt)
	t.StartTimeout = time.Duration(startMS) * time.Millisecond
	t.ApprovalTTL = time.Duration(approvalMS) * time.Millisecond
	return t, err
}

const queryCreateTenant = `
INSERT INTO tenants (name, consul_addr, consul_datacenter, consul_token, consul_tls, prefix, output_cap, start_timeout_ms,
	approval_ttl_ms, time_zone, webhook_url, webhook_secret)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING ` + tenantColumns

// tenantName is what a tenant may be called: its name is part of its
// audit log's origin, the first line of every signed checkpoint, where a
// space, a control character or a newline would make the log unverifiable.
var tenantName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ErrTenantName is returned for a name tenantName refuses.
var ErrTenantName = errors.New("a tenant name is 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")

// CreateTenant inserts t; ErrExists if the name is taken.
func (q *Queries) CreateTenant(ctx context.Context, t Tenant) (Tenant, error) {
	if !tenantName.MatchString(t.Name) {
		return Tenant{}, fmt.Errorf("tenant %q: %w", t.Name, ErrTenantName)
	}
	out, err := scanTenant(q.db.QueryRow(ctx, queryCreateTenant, t.Name, t.ConsulAddr, t.Datacenter, t.ConsulToken, t.TLS, t.Prefix, t.OutputCap, cmp.Or(t.StartTimeout, StartTimeoutDefault).Milliseconds(),
		cmp.Or(t.ApprovalTTL, ApprovalTTLDefault).Milliseconds(), cmp.Or(t.TimeZone, "UTC"), t.WebhookURL, t.WebhookSecret))
	if isUniqueViolation(err) {
		return Tenant{}, fmt.Errorf("tenant %q: %w", t.Name, ErrExists)
	}
	if err != nil {
		return Tenant{}, fmt.Errorf("create tenant: %w", err)
	}
	return out, nil
}

const queryTenantNames = `SELECT id, name FROM tenants`

// TenantNames returns every tenant's name by id.
func (q *Queries) TenantNames(ctx context.Context) (map[int64]string, error) {
	rows, err := q.db.Query(ctx, queryTenantNames)
	if err != nil {
		return nil, fmt.Errorf("tenant names: %w", err)
	}
	out := map[int64]string{}
	var (
		id   int64
		name string
	)
	if _, err := pgx.ForEachRow(rows, []any{&id, &name}, func() error { out[id] = name; return nil }); err != nil {
		return nil, fmt.Errorf("tenant names: %w", err)
	}
	return out, nil
}

const queryTenantByName = `SELECT ` + tenantColumns + ` FROM tenants WHERE name = $1`
const queryTenantByID = `SELECT ` + tenantColumns + ` FROM tenants WHERE id = $1`

// TenantByName returns the tenant called name.
func (q *Queries) TenantByName(ctx context.Context, name string) (Tenant, error) {
	t, err := scanTenant(q.db.QueryRow(ctx, queryTenantByName, name))
	if err != nil {
		return Tenant{}, fmt.Errorf("tenant %q: %w", name, notFound(err))
	}
	return t, nil
}

// TenantByID returns the tenant with id.
func (q *Queries) TenantByID(ctx context.Context, id int64) (Tenant, error) {
	t, err := scanTenant(q.db.QueryRow(ctx, queryTenantByID, id))
	if err != nil {
		return Tenant{}, fmt.Errorf("tenant %d: %w", id, notFound(err))
	}
	return t, nil
}

// Roles a principal can hold.
const (
	RoleSubmitter = "submitter"
	RoleApprover  = "approver"
	RoleAuditor   = "auditor"
	RoleAdmin     = "admin"
)

// Principal is a named user of one tenant.
type Principal struct {
	ID       int64
	TenantID int64
	Name     string
	Roles    []string
}

// Has reports whether p holds any of roles.
func (p Principal) Has(roles ...string) bool {
	for _, r := range roles {
		for _, h := range p.Roles {
			if r == h {
				return true
			}
		}
	}
	return false
}

const queryPrincipalByName = `SELECT id, tenant_id, name, roles FROM principals WHERE tenant_id = $1 AND name = $2`

// PrincipalByName returns the tenant's principal called name.
func (q *Queries) PrincipalByName(ctx context.Context, tenantID int64, name string) (Principal, error) {
	var p Principal
	err := q.db.QueryRow(ctx, queryPrincipalByName, tenantID, name).Scan(&p.ID, &p.TenantID, &p.Name, &p.Roles)
	if err != nil {
		return Principal{}, fmt.Errorf("principal %q: %w", name, notFound(err))
	}
	return p, nil
}

const queryUpsertPrincipal = `
INSERT INTO principals (tenant_id, name, roles) VALUES ($1, $2, $3)
ON CONFLICT (tenant_id, name) DO UPDATE SET roles = EXCLUDED.roles
RETURNING id, tenant_id, name, roles`

// UpsertPrincipal creates the principal or replaces its roles.
func (q *Queries) UpsertPrincipal(ctx context.Context, tenantID int64, name string, roles []string) (Principal, error) {
	var p Principal
	err := q.db.QueryRow(ctx, queryUpsertPrincipal, tenantID, name, roles).Scan(&p.ID, &p.TenantID, &p.Name, &p.Roles)
	if err != nil {
		return Principal{}, fmt.Errorf("save principal: %w", err)
	}
	return p, nil
}

// tokenPrefix marks rexec API tokens, so that secret scanners can find them.
const tokenPrefix = "rxt_"

// HashToken is how tokens are stored.
func HashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

const queryInsertToken = `INSERT INTO api_tokens (principal_id, token_hash) VALUES ($1, $2) RETURNING id`

// CreateToken makes a new random API token for the principal and stores
// only its hash. The token is returned once.
func (q *Queries) CreateToken(ctx context.Context, principalID int64) (id int64, token string, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return 0, "", err
	}
	token = tokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	if err := q.db.QueryRow(ctx, queryInsertToken, principalID, HashToken(token)).Scan(&id); err != nil {
		return 0, "", fmt.Errorf("create token: %w", err)
	}
	return id, token, nil
}

const queryRevokeToken = `UPDATE api_tokens k SET revoked_at = now() FROM principals p
WHERE k.id = $1 AND k.revoked_at IS NULL AND p.id = k.principal_id AND p.tenant_id = $2
RETURNING p.id, p.tenant_id, p.name, p.roles`

// RevokeToken revokes the tenant's token with id and returns the
// principal it belonged to.
func (q *Queries) RevokeToken(ctx context.Context, tenantID, id int64) (Principal, error) {
	var p Principal
	err := q.db.QueryRow(ctx, queryRevokeToken, id, tenantID).Scan(&p.ID, &p.TenantID, &p.Name, &p.Roles)
	if errors.Is(notFound(err), ErrNotFound) {
		return Principal{}, fmt.Errorf("token %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Principal{}, fmt.Errorf("revoke token: %w", err)
	}
	return p, nil
}

const queryTenantIDs = `SELECT id FROM tenants ORDER BY id`

// TenantIDs returns every tenant's ID, in order.
func (q *Queries) TenantIDs(ctx context.Context) ([]int64, error) {
	rows, err := q.db.Query(ctx, queryTenantIDs)
	if err != nil {
		return nil, fmt.Errorf("tenant ids: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("tenant ids: %w", err)
	}
	return ids, nil
}

const queryAuthenticate = `
SELECT p.id, p.tenant_id, p.name, p.roles, ` + tenantColumnsT + `
FROM api_tokens k
JOIN principals p ON p.id = k.principal_id
JOIN tenants t ON t.id = p.tenant_id
WHERE k.token_hash = $1 AND k.revoked_at IS NULL`

const tenantColumnsT = `t.id, t.name, t.consul_addr, t.consul_datacenter, t.consul_token, t.consul_tls, t.prefix, t.output_cap, t.start_timeout_ms, t.approval_ttl_ms, t.time_zone, t.webhook_url, t.webhook_secret, t.created_at`

// Authenticate returns the principal and tenant of a live token, or
// ErrNotFound.
func (q *Queries) Authenticate(ctx context.Context, token string) (Principal, Tenant, error) {
	if !strings.HasPrefix(token, tokenPrefix) {
		return Principal{}, Tenant{}, ErrNotFound
	}
	var p Principal
	var t Tenant
	var startMS, approvalMS int64
	err := q.db.QueryRow(ctx, queryAuthenticate, HashToken(token)).Scan(&p.ID, &p.TenantID, &p.Name, &p.Roles,
		&t.ID, &t.Name, &t.ConsulAddr, &t.Datacenter, &t.ConsulToken, &t.TLS, &t.Prefix, &t.OutputCap, &startMS,
		&approvalMS, &t.TimeZone, &t.WebhookURL, &t.WebhookSecret, &t.CreatedAt)
	if err != nil {
		return Principal{}, Tenant{}, notFound(err)
	}
	t.StartTimeout = time.Duration(startMS) * time.Millisecond
	t.ApprovalTTL = time.Duration(approvalMS) * time.Millisecond
	return p, t, nil
}
