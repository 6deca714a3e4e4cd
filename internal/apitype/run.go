package apitype

import "time"

// Run is a run as the API shows it.
type Run struct {
	ID          string     `json:"id"`
	State       string     `json:"state"`
	SubmittedBy string     `json:"submitted_by"`
	CreatedAt   time.Time  `json:"created_at"`
	StartedAt   *time.Time `json:"started_at,omitempty"`
	StartBy     time.Time  `json:"start_by"`
	FiringAt    *time.Time `json:"firing_at,omitempty"`
	FiredAt     *time.Time `json:"fired_at,omitempty"`
	// CancelRequested is true once a cancel is recorded; with no FiringAt
	// the command never runs.
	CancelRequested bool `json:"cancel_requested,omitempty"`
	Recoveries      int  `json:"recoveries,omitempty"`
	// Policy is the policy's decision at submission.
	Policy *Policy `json:"policy,omitempty"`
	// RequestHash is the sha256 of the canonical request; approvals bind
	// to it.
	RequestHash       string     `json:"request_hash,omitempty"`
	ApprovalExpiresAt *time.Time `json:"approval_expires_at,omitempty"`
	Approvals         []Approval `json:"approvals,omitempty"`
	FinishedAt        *time.Time `json:"finished_at,omitempty"`
	Argv              []string   `json:"argv,omitempty"`
	ScriptBytes       int        `json:"script_bytes,omitempty"`
	Shell             bool       `json:"shell"`
	Node              string     `json:"node,omitempty"`
	Service           string     `json:"service,omitempty"`
	Tag               string     `json:"tag,omitempty"`
	Prefix            string     `json:"prefix"`
	Wait              string     `json:"wait"`
	WaitRepl          string     `json:"wait_repl"`
	Timeout           string     `json:"timeout,omitempty"`
	Reason            string     `json:"reason,omitempty"`
	Outcome           string     `json:"outcome,omitempty"`
	Error             string     `json:"error,omitempty"`
	TargetCount       int        `json:"target_count"`
	Targets           []Target   `json:"targets,omitempty"`
	Nodes             []Node     `json:"nodes,omitempty"`

	// CatalogIndex is the Raft index of the Consul catalog the targets
	// were resolved at; CatalogSource is "view" (the tenant's catalog
	// view) or "direct" (read for this run, the view being unusable), and
	// CatalogReason why, in the answer to a submission.
	CatalogIndex  uint64 `json:"catalog_index,omitempty"`
	CatalogSource string `json:"catalog_source,omitempty"`
	CatalogReason string `json:"catalog_reason,omitempty"`
}

// Target is a node of a run's frozen target set, with its service
// instances, as target resolution found it in the Consul catalog.
type Target struct {
	Name     string          `json:"node"`
	Address  string          `json:"address"`
	Services []TargetService `json:"services"`
}

// TargetService is a service instance on a target node.
type TargetService struct {
	ID   string   `json:"id"`
	Name string   `json:"name"`
	Tags []string `json:"tags"`
}

// Policy is a policy decision as the API shows it.
type Policy struct {
	Outcome       string   `json:"outcome"`
	Reasons       []string `json:"reasons,omitempty"`
	Revision      string   `json:"revision,omitempty"`
	Approvals     int      `json:"approvals,omitempty"`
	ApproverRoles []string `json:"approver_roles,omitempty"`
}

// Approval is one principal's verdict on a run.
type Approval struct {
	Principal   string    `json:"principal"`
	Verdict     string    `json:"verdict"`
	Comment     string    `json:"comment,omitempty"`
	RequestHash string    `json:"request_hash"`
	At          time.Time `json:"at"`
}

// Node is one expected node's result.
type Node struct {
	Node      string     `json:"node"`
	State     string     `json:"state"`
	ExitCode  *int       `json:"exit_code"`
	AckedAt   *time.Time `json:"acked_at,omitempty"`
	ExitedAt  *time.Time `json:"exited_at,omitempty"`
	Bytes     int64      `json:"bytes"`
	Stored    int64      `json:"stored_bytes"`
	SHA256    string     `json:"sha256,omitempty"`
	Truncated bool       `json:"truncated"`
}

// RunList is a page of runs; Next is the cursor of the next page.
type RunList struct {
	Runs []Run  `json:"runs"`
	Next string `json:"next,omitempty"`
}

// Chunk is a piece of output; Data is base64 in JSON.
type Chunk struct {
	Seq  int    `json:"seq"`
	Data []byte `json:"data"`
}

// OutputPage is a page of one node's output.
type OutputPage struct {
	Node   string  `json:"node"`
	Chunks []Chunk `json:"chunks"`
}

// StreamItem is an output chunk or an exit.
type StreamItem struct {
	Kind     string `json:"kind"`
	Node     string `json:"node"`
	Seq      int    `json:"seq,omitempty"`
	Data     []byte `json:"data,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
}

// StreamPage is a page of a run's stream. Nodes is set on the last page.
type StreamPage struct {
	Run    Run          `json:"run"`
	Items  []StreamItem `json:"items"`
	Cursor int64        `json:"cursor"`
	Done   bool         `json:"done"`
	Nodes  []Node       `json:"nodes,omitempty"`
}
