package store

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Run states.
const (
	StatePendingApproval = "pending_approval"
	StateQueued          = "queued"
	StateRunning         = "running"
	StateCompleted       = "completed"
	StateFailed          = "failed"
	StateCancelled       = "cancelled"
	StateDenied          = "denied"
	StateExpired         = "expired"
)

// States lists every run state, in the order of a run's life.
var States = []string{StatePendingApproval, StateQueued, StateRunning, StateCompleted, StateFailed, StateCancelled, StateDenied, StateExpired}

// OutcomeNotStarted is the outcome of a run that could not start within its
// start bound. (The engine's outcomes name the others.)
const OutcomeNotStarted = "not_started"

// Terminal reports whether a run in state s will not change again.
func Terminal(s string) bool {
	switch s {
	case StateCompleted, StateFailed, StateCancelled, StateDenied, StateExpired:
		return true
	}
	return false
}

// Run is one submitted execution.
type Run struct {
	ID            string
	TenantID      int64
	SubmittedBy   int64
	SubmitterName string
	State         string
	Argv          []string
	Script        []byte
	Shell         bool
	NodeFilter    string
	ServiceFilter string
	TagFilter     string
	Prefix        string
	Wait          time.Duration
	WaitRepl      time.Duration
	Timeout       time.Duration
	Reason        string
	OutputCap     int64
	// Targets is the frozen target set as JSON (a list of consul.Node).
	Targets  json.RawMessage
	Session  string
	FiringAt *time.Time
	// StartTimeout, on insert, sets StartBy to the submission time plus it.
	StartTimeout time.Duration
	// ApprovalTTL, on insert of a run pending approval, sets
	// ApprovalExpiresAt to the submission time plus it.
	ApprovalTTL time.Duration
	// StartBy is when a run that has not fired gives up: it fails rather
	// than fire late.
	StartBy time.Time
	// CancelRequested is set once a cancel is recorded: the run never
	// fires after it.
	CancelRequested bool
	// Recoveries counts the times a worker picked the run up again after
	// its previous worker went away.
	Recoveries int
	// Authorization: the policy's decision at submission.
	Policy PolicyDecision
	// RequestHash is RequestHash(run) as stored at submission; approvals
	// bind to it.
	RequestHash string
	// ApprovalExpiresAt is when a run pending approval expires.
	ApprovalExpiresAt *time.Time
	// Preflight is the Consul ACL preflight at submission, as JSON.
	Preflight  json.RawMessage
	Outcome    string
	Error      string
	CreatedAt  time.Time
	StartedAt  *time.Time
	FiredAt    *time.Time
	FinishedAt *time.Time

	// CatalogIndex is the Raft index of the Consul catalog the targets
	// were resolved at, and CatalogSource where that catalog came from:
	// "view" (the tenant's catalog view) or "direct" (read for this run).
	// 0 and "" for runs stored before they were recorded.
	CatalogIndex  uint64
	CatalogSource string
}

const runColumns = `r.id, r.tenant_id, r.submitted_by, p.name, r.state, r.argv, r.script, r.shell,
	r.node_filter, r.service_filter, r.tag_filter, r.prefix, r.wait_ms, r.wait_repl_ms, r.timeout_ms,
	r.reason, r.output_cap, r.targets, coalesce(r.session, ''), r.firing_at, r.start_by, r.cancel_requested_at IS NOT NULL, r.recoveries, coalesce(r.outcome, ''), coalesce(r.error, ''),
	r.created_at, r.started_at, r.fired_at, r.finished_at, r.start_timeout_ms, r.request_hash,
	r.policy_outcome, r.policy_reasons, r.policy_revision, r.approvals_required, r.approver_roles,
	r.approval_expires_at, r.preflight, coalesce(r.catalog_index, 0), coalesce(r.catalog_source, '')`

func scanRun(row interface{ Scan(...any) error }) (Run, error) {
	var r Run
	var wait, waitRepl, timeout, startTimeout, catalogIndex int64
	err := row.Scan(&r.ID, &r.TenantID, &r.SubmittedBy, &r.SubmitterName, &r.State, &r.Argv, &r.Script, &r.Shell,
		&r.NodeFilter, &r.ServiceFilter, &r.TagFilter, &r.Prefix, &wait, &waitRepl, &timeout,
		&r.Reason, &r.OutputCap, &r.Targets, &r.Session, &r.FiringAt, &r.StartBy, &r.CancelRequested, &r.Recoveries, &r.Outcome, &r.Error,
		&r.CreatedAt, &r.StartedAt, &r.FiredAt, &r.FinishedAt, &startTimeout, &r.RequestHash,
		&r.Policy.Outcome, &r.Policy.Reasons, &r.Policy.Revision, &r.Policy.Approvals, &r.Policy.ApproverRoles,
		&r.ApprovalExpiresAt, &r.Preflight, &catalogIndex, &r.CatalogSource)
	r.CatalogIndex = uint64(catalogIndex)
	r.Wait, r.WaitRepl, r.Timeout = time.Duration(wait)*time.Millisecond, time.Duration(waitRepl)*time.Millisecond, time.Duration(timeout)*time.Millisecond
	r.StartTimeout = time.Duration(startTimeout) * time.Millisecond
	return r, err
}

// queryInsertRuns stores runs with the times and IDs their caller chose,
// so that nothing of them needs reading back (QueueInsertRuns). Each
// parameter is one column of every run: one statement, which a connection
// parses and plans once, however many runs a batch holds. (A VALUES row a
// run made one statement per batch size, each parsed and planned again on
// every connection: a quarter of the submissions' statement time in the
// submit benchmark went there.)
// The text[] columns travel as array literals (textArrayLiteral), since an
// array of arrays must be rectangular.
const queryInsertRuns = `
INSERT INTO runs (id, tenant_id, submitted_by, state, argv, script, shell, node_filter, service_filter, tag_filter,
	prefix, wait_ms, wait_repl_ms, timeout_ms, reason, output_cap, targets, created_at, start_by, start_timeout_ms,
	request_hash, policy_outcome, policy_reasons, policy_revision, approvals_required, approver_roles,
	approval_expires_at, preflight, catalog_index, catalog_source)
SELECT id, tenant_id, submitted_by, state, argv::text[], script, shell, node_filter, service_filter, tag_filter,
	prefix, wait_ms, wait_repl_ms, timeout_ms, reason, output_cap, targets, created_at, start_by, start_timeout_ms,
	request_hash, policy_outcome, policy_reasons::text[], policy_revision, approvals_required, approver_roles::text[],
	approval_expires_at, preflight, nullif(catalog_index, 0), nullif(catalog_source, '')
FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bytea[], $7::boolean[],
	$8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[], $13::bigint[], $14::bigint[], $15::text[],
	$16::bigint[], $17::jsonb[], $18::timestamptz[], $19::timestamptz[], $20::bigint[], $21::text[], $22::text[],
	$23::text[], $24::text[], $25::int[], $26::text[], $27::timestamptz[], $28::jsonb[], $29::bigint[], $30::text[])
	AS u (id, tenant_id, submitted_by, state, argv, script, shell, node_filter, service_filter, tag_filter,
	prefix, wait_ms, wait_repl_ms, timeout_ms, reason, output_cap, targets, created_at, start_by, start_timeout_ms,
	request_hash, policy_outcome, policy_reasons, policy_revision, approvals_required, approver_roles,
	approval_expires_at, preflight, catalog_index, catalog_source)`

// textArrayLiteral returns ss as a PostgreSQL array literal, each element
// quoted (so that none reads as NULL) with its quotes and backslashes
// escaped: one text[] value as one element of a text[] parameter.
func textArrayLiteral(ss []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, s := range ss {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for j := range len(s) {
			if s[j] == '"' || s[j] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(s[j])
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// queryInsertRunNodes stores the target nodes of runs: $2 lists them all,
// $1 the run of each.
const queryInsertRunNodes = `INSERT INTO run_nodes (run_id, node) SELECT unnest($1::uuid[]), unnest($2::text[])`

// jsonObject is raw, or an empty object for nothing.
func jsonObject(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 {
		return json.RawMessage("{}")
	}
	return raw
}

// PrepareRun returns r, a new run submitted at now, as QueueInsertRuns
// stores it: with a new ID, CreatedAt = now, StartBy = now + StartTimeout
// (default StartTimeoutDefault), ApprovalExpiresAt = now + ApprovalTTL
// (default ApprovalTTLDefault) when it awaits approval, and its
// RequestHash.
//
// The ID and the times are chosen here rather than by the database so
// that the caller knows the run before the statements run: its audit
// events, which name the run and its start bound, go into the same batch,
// and nothing is read back. The times are the submitting process's clock,
// as its audit events' are (at microseconds, the database's precision).
func PrepareRun(r Run, now time.Time) Run {
	if r.Argv == nil {
		r.Argv = []string{}
	}
	r.ID = uuid.NewString()
	r.StartTimeout = cmp.Or(r.StartTimeout, StartTimeoutDefault)
	r.Policy.Outcome = cmp.Or(r.Policy.Outcome, PolicyAllow)
	r.Policy.Reasons, r.Policy.ApproverRoles = nonNil(r.Policy.Reasons), nonNil(r.Policy.ApproverRoles)
	r.Preflight = jsonObject(r.Preflight)
	r.CreatedAt = now.Truncate(time.Microsecond)
	r.StartBy = r.CreatedAt.Add(r.StartTimeout)
	r.ApprovalExpiresAt = nil
	if r.State == StatePendingApproval {
		at := r.CreatedAt.Add(cmp.Or(r.ApprovalTTL, ApprovalTTLDefault))
		r.ApprovalExpiresAt = &at
	}
	// The hash is of the request as it will be read back.
	if r.RequestHash == "" {
		r.RequestHash = RequestHash(r)
	}
	return r
}

// QueueInsertRuns queues on b the statements that store runs prepared by
// PrepareRun, each with one pending row per target node (nodes[i] are
// runs[i]'s): two statements however many runs, so that a batch of
// submissions costs the database little more than one.
func QueueInsertRuns(b *pgx.Batch, runs []Run, nodes [][]string) {
	if len(runs) == 0 {
		return
	}
	// The columns of queryInsertRuns, in its order, a run an element.
	var c struct {
		ids                                        []string
		tenants, submitters                        []int64
		states, argvs                              []string
		scripts                                    [][]byte
		shells                                     []bool
		nodeFilters, serviceFilters, tagFilters    []string
		prefixes                                   []string
		waits, waitRepls, timeouts                 []int64
		reasons                                    []string
		outputCaps                                 []int64
		targets                                    []json.RawMessage
		created, startBy                           []time.Time
		startTimeouts                              []int64
		hashes, outcomes, policyReasons, revisions []string
		approvals                                  []int32
		approverRoles                              []string
		approvalExpires                            []*time.Time
		preflights                                 []json.RawMessage
		catalogIndexes                             []int64
		catalogSources                             []string
	}
	var nodeRuns, nodeNames []string
	for i, r := range runs {
		c.ids = append(c.ids, r.ID)
		c.tenants = append(c.tenants, r.TenantID)
		c.submitters = append(c.submitters, r.SubmittedBy)
		c.states = append(c.states, r.State)
		c.argvs = append(c.argvs, textArrayLiteral(r.Argv))
		c.scripts = append(c.scripts, r.Script)
		c.shells = append(c.shells, r.Shell)
		c.nodeFilters = append(c.nodeFilters, r.NodeFilter)
		c.serviceFilters = append(c.serviceFilters, r.ServiceFilter)
		c.tagFilters = append(c.tagFilters, r.TagFilter)
		c.prefixes = append(c.prefixes, r.Prefix)
		c.waits = append(c.waits, r.Wait.Milliseconds())
		c.waitRepls = append(c.waitRepls, r.WaitRepl.Milliseconds())
		c.timeouts = append(c.timeouts, r.Timeout.Milliseconds())
		c.reasons = append(c.reasons, r.Reason)
		c.outputCaps = append(c.outputCaps, r.OutputCap)
		c.targets = append(c.targets, r.Targets)
		c.created = append(c.created, r.CreatedAt)
		c.startBy = append(c.startBy, r.StartBy)
		c.startTimeouts = append(c.startTimeouts, r.StartTimeout.Milliseconds())
		c.hashes = append(c.hashes, r.RequestHash)
		c.outcomes = append(c.outcomes, r.Policy.Outcome)
		c.policyReasons = append(c.policyReasons, textArrayLiteral(r.Policy.Reasons))
		c.revisions = append(c.revisions, r.Policy.Revision)
		c.approvals = append(c.approvals, int32(r.Policy.Approvals))
		c.approverRoles = append(c.approverRoles, textArrayLiteral(r.Policy.ApproverRoles))
		c.approvalExpires = append(c.approvalExpires, r.ApprovalExpiresAt)
		c.preflights = append(c.preflights, r.Preflight)
		c.catalogIndexes = append(c.catalogIndexes, int64(r.CatalogIndex))
		c.catalogSources = append(c.catalogSources, r.CatalogSource)
		for _, n := range nodes[i] {
			nodeRuns, nodeNames = append(nodeRuns, r.ID), append(nodeNames, n)
		}
	}
	b.Queue(queryInsertRuns, c.ids, c.tenants, c.submitters, c.states, c.argvs, c.scripts, c.shells,
		c.nodeFilters, c.serviceFilters, c.tagFilters, c.prefixes, c.waits, c.waitRepls, c.timeouts, c.reasons,
		c.outputCaps, c.targets, c.created, c.startBy, c.startTimeouts, c.hashes, c.outcomes,
		c.policyReasons, c.revisions, c.approvals, c.approverRoles, c.approvalExpires, c.preflights,
		c.catalogIndexes, c.catalogSources)
	b.Queue(queryInsertRunNodes, nodeRuns, nodeNames)
}

// QueueInsertRun queues on b the statements that store r, a new run
// submitted at now, with one pending row per target node, and returns r
// as they store it (PrepareRun).
func QueueInsertRun(b *pgx.Batch, r Run, nodes []string, now time.Time) Run {
	r = PrepareRun(r, now)
	QueueInsertRuns(b, []Run{r}, [][]string{nodes})
	return r
}

// InsertRun stores a new run with one pending row per target node, in one
// round trip, and returns it as stored (QueueInsertRun).
func (q *Queries) InsertRun(ctx context.Context, r Run, nodes []string) (Run, error) {
	b := &pgx.Batch{}
	r = QueueInsertRun(b, r, nodes, time.Now())
	if err := q.db.SendBatch(ctx, b).Close(); err != nil {
		return Run{}, fmt.Errorf("insert run: %w", err)
	}
	return r, nil
}

const queryGetRun = `SELECT ` + runColumns + ` FROM runs r JOIN principals p ON p.id = r.submitted_by
WHERE r.tenant_id = $1 AND r.id = $2::uuid`

// GetRun returns the tenant's run; ErrNotFound for another tenant's run, a
// missing one or an ID that is not a UUID alike.
func (q *Queries) GetRun(ctx context.Context, tenantID int64, id string) (Run, error) {
	if !IsUUID(id) {
		return Run{}, fmt.Errorf("run %s: %w", id, ErrNotFound)
	}
	r, err := scanRun(q.db.QueryRow(ctx, queryGetRun, tenantID, id))
	if err != nil {
		return Run{}, fmt.Errorf("run %s: %w", id, notFound(err))
	}
	return r, nil
}

const queryGetRunAny = `SELECT ` + runColumns + ` FROM runs r JOIN principals p ON p.id = r.submitted_by WHERE r.id = $1::uuid`

// IsUUID reports whether s is a UUID in its canonical text form (any case).
func IsUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'):
			return false
		}
	}
	return true
}

// GetRunByID returns a run of any tenant (for workers).
func (q *Queries) GetRunByID(ctx context.Context, id string) (Run, error) {
	r, err := scanRun(q.db.QueryRow(ctx, queryGetRunAny, id))
	if err != nil {
		return Run{}, fmt.Errorf("run %s: %w", id, notFound(err))
	}
	return r, nil
}

// A list of runs is queryListRuns, a WHERE clause of the fragments below
// joined by AND, and queryListRunsOrder. Each fragment takes its values as
// the positional arguments whose numbers fill its %d verbs; $1 is always
// the tenant. Values never enter the SQL text. The tenant's runs are read
// newest first through runs_tenant_created; the filters on a run's nodes
// and approvals probe their primary keys run by run.
const (
	queryListRuns      = `SELECT ` + runColumns + ` FROM runs r JOIN principals p ON p.id = r.submitted_by WHERE `
	queryListRunsOrder = ` ORDER BY r.created_at DESC, r.id DESC LIMIT $%d`

	runsWhereTenant    = `r.tenant_id = $1`
	runsWhereBefore    = `(r.created_at, r.id) < ($%d, $%d::uuid)`
	runsWhereState     = `r.state = $%d`
	runsWhereSince     = `r.created_at >= $%d`
	runsWhereUntil     = `r.created_at < $%d`
	runsWherePrincipal = `p.name = $%d`
	runsWhereService   = `r.service_filter = $%d`
	runsWhereCommand   = `array_to_string(r.argv, ' ') ILIKE $%d`
	runsWhereNode      = `EXISTS (SELECT 1 FROM run_nodes n WHERE n.run_id = r.id AND n.node = $%d)`
	runsWhereExitCode  = `EXISTS (SELECT 1 FROM run_nodes n WHERE n.run_id = r.id AND n.exit_code = $%d)`
	runsWhereApprover  = `EXISTS (SELECT 1 FROM approvals a WHERE a.run_id = r.id AND a.principal_name = $%d)`
)

// ListFilter selects runs (every field set narrows the list); Before* is
// the keyset cursor of the previous page.
type ListFilter struct {
	State string
	// Since and Until bound the submission time: Since <= created < Until.
	Since, Until time.Time
	// Principal is the submitter's name.
	Principal string
	// Node: runs whose targets include this node.
	Node string
	// Service: runs submitted with this service filter (its text).
	Service string
	// Command: runs whose argv, joined by spaces, contains this text in
	// any case.
	Command string
	// ExitCode: runs on which some node exited with this code.
	ExitCode *int
	// Approver: runs this principal approved or refused.
	Approver string
	BeforeAt *time.Time
	BeforeID string
	Limit    int
}

// where is a WHERE clause being built: fragments and their arguments.
type where struct {
	sql  []string
	args []any
}

// add appends a fragment with its arguments, numbering their placeholders.
func (w *where) add(fragment string, args ...any) {
	pos := make([]any, len(args))
	for i, a := range args {
		w.args = append(w.args, a)
		pos[i] = len(w.args)
	}
	w.sql = append(w.sql, fmt.Sprintf(fragment, pos...))
}

// likeEscaper makes text match itself in a LIKE pattern.
var likeEscaper = strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)

// ListRuns returns the tenant's runs that f selects, newest first.
func (q *Queries) ListRuns(ctx context.Context, tenantID int64, f ListFilter) ([]Run, error) {
	w := where{sql: []string{runsWhereTenant}, args: []any{tenantID}}
	if f.BeforeAt != nil {
		w.add(runsWhereBefore, *f.BeforeAt, f.BeforeID)
	}
	if !f.Since.IsZero() {
		w.add(runsWhereSince, f.Since)
	}
	if !f.Until.IsZero() {
		w.add(runsWhereUntil, f.Until)
	}
	for _, c := range []struct{ fragment, value string }{
		{runsWhereState, f.State}, {runsWherePrincipal, f.Principal}, {runsWhereService, f.Service},
		{runsWhereNode, f.Node}, {runsWhereApprover, f.Approver},
	} {
		if c.value != "" {
			w.add(c.fragment, c.value)
		}
	}
	if f.Command != "" {
		w.add(runsWhereCommand, "%"+likeEscaper.Replace(f.Command)+"%")
	}
	if f.ExitCode != nil {
		w.add(runsWhereExitCode, *f.ExitCode)
	}
	w.args = append(w.args, f.Limit)
	sql := queryListRuns + strings.Join(w.sql, " AND ") + fmt.Sprintf(queryListRunsOrder, len(w.args))
	rows, err := q.db.Query(ctx, sql, w.args...)
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Run, error) { return scanRun(row) })
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	return out, nil
}

// NodeResult is one expected node of a run.
type NodeResult struct {
	Node        string
	State       string
	ExitCode    *int
	AckedAt     *time.Time
	ExitedAt    *time.Time
	Bytes       int64
	StoredBytes int64
	Truncated   bool
	SHA256      string
}

// NodeCounts counts a run's nodes by how they ended, for the audit log.
type NodeCounts struct {
	Targets int `json:"targets"`
	// Exited counts every node that exited, Failed those of them whose
	// exit code was not 0.
	Exited    int `json:"exited"`
	Failed    int `json:"failed"`
	Lost      int `json:"lost"`
	NoAck     int `json:"no_ack"`
	Cancelled int `json:"cancelled"`
	// Unfinished counts nodes in no final state (none once a run ended).
	Unfinished int `json:"unfinished"`
}

// CountNodes counts nodes by their state.
func CountNodes(nodes []NodeResult) NodeCounts {
	c := NodeCounts{Targets: len(nodes)}
	for _, n := range nodes {
		switch n.State {
		case "exited":
			c.Exited++
			if n.ExitCode == nil || *n.ExitCode != 0 {
				c.Failed++
			}
		case "lost":
			c.Lost++
		case "no_ack":
			c.NoAck++
		case "cancelled":
			c.Cancelled++
		default:
			c.Unfinished++
		}
	}
	return c
}

const queryRunNodes = `SELECT run_id::text, node, state, exit_code, acked_at, exited_at, bytes, stored_bytes, truncated, coalesce(sha256, '')
FROM run_nodes WHERE run_id = ANY($1::uuid[]) ORDER BY run_id, node`

// RunNodes returns the run's per-node results, sorted by node.
func (q *Queries) RunNodes(ctx context.Context, runID string) ([]NodeResult, error) {
	m, err := q.RunsNodes(ctx, []string{runID})
	return m[runID], err
}

// RunsNodes returns the per-node results of several runs, by run ID.
func (q *Queries) RunsNodes(ctx context.Context, runIDs []string) (map[string][]NodeResult, error) {
	rows, err := q.db.Query(ctx, queryRunNodes, runIDs)
	if err != nil {
		return nil, fmt.Errorf("run nodes: %w", err)
	}
	defer rows.Close()
	out := map[string][]NodeResult{}
	for rows.Next() {
		var id string
		var n NodeResult
		if err := rows.Scan(&id, &n.Node, &n.State, &n.ExitCode, &n.AckedAt, &n.ExitedAt, &n.Bytes, &n.StoredBytes, &n.Truncated, &n.SHA256); err != nil {
			return nil, fmt.Errorf("run nodes: %w", err)
		}
		out[id] = append(out[id], n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("run nodes: %w", err)
	}
	return out, nil
}

// StreamItem is an output chunk or a node's exit, in the run's stream order.
type StreamItem struct {
	StreamID int64
	Kind     string // "output" or "exit"
	Node     string
	Seq      int
	Data     []byte
	ExitCode int
}

const queryStream = `
SELECT stream_id, 'output', node, seq, data, 0 FROM output_chunks WHERE run_id = $1 AND stream_id > $2 AND octet_length(data) > 0
UNION ALL
SELECT exit_stream_id, 'exit', node, 0, ''::bytea, exit_code FROM run_nodes WHERE run_id = $1 AND exit_stream_id > $2
ORDER BY 1 LIMIT $3`

// Stream returns up to limit items after cursor.
func (q *Queries) Stream(ctx context.Context, runID string, cursor int64, limit int) ([]StreamItem, error) {
	rows, err := q.db.Query(ctx, queryStream, runID, cursor, limit)
	if err != nil {
		return nil, fmt.Errorf("read stream: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (StreamItem, error) {
		var it StreamItem
		err := row.Scan(&it.StreamID, &it.Kind, &it.Node, &it.Seq, &it.Data, &it.ExitCode)
		return it, err
	})
	if err != nil {
		return nil, fmt.Errorf("read stream: %w", err)
	}
	return out, nil
}

// Chunk is a stored piece of one node's output.
type Chunk struct {
	Seq  int
	Data []byte
}

const queryNodeOutput = `SELECT seq, data FROM output_chunks WHERE run_id = $1 AND node = $2 AND seq > $3 ORDER BY seq LIMIT $4`

// NodeOutput returns up to limit of a node's chunks with sequence > after.
func (q *Queries) NodeOutput(ctx context.Context, runID, node string, after, limit int) ([]Chunk, error) {
	rows, err := q.db.Query(ctx, queryNodeOutput, runID, node, after, limit)
	if err != nil {
		return nil, fmt.Errorf("read output: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Chunk, error) {
		var c Chunk
		err := row.Scan(&c.Seq, &c.Data)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read output: %w", err)
	}
	return out, nil
}
