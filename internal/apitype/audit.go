package apitype

import (
	"encoding/json"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// AuditEvent is an audit event as the API shows it.
type AuditEvent struct {
	ID         int64           `json:"id"`
	Time       time.Time       `json:"time"`
	Type       string          `json:"type"`
	Actor      string          `json:"actor"`
	Run        string          `json:"run,omitempty"`
	Node       string          `json:"node,omitempty"`
	RequestID  string          `json:"request_id,omitempty"`
	ClientAddr string          `json:"client_addr,omitempty"`
	OSUser     string          `json:"os_user,omitempty"`
	Data       json.RawMessage `json:"data"`
	// Body is the event's canonical encoding as stored: the leaf of the
	// tenant's transparency log (docs/audit.md).
	Body string `json:"body"`
	// Leaf is the event's index in the log, in a -follow stream.
	Leaf *int64 `json:"leaf,omitempty"`
}

// AuditPage is a page of audit events, newest first; Next is the cursor of
// the next page, absent after the last.
type AuditPage struct {
	Events []AuditEvent `json:"events"`
	Next   string       `json:"next,omitempty"`
}

// The tenant's transparency log, for `rexec-cli audit checkpoint|verify|
// prove` (docs/audit.md).

// Checkpoint is a signed checkpoint.
type Checkpoint struct {
	Size int64     `json:"size"`
	Time time.Time `json:"time"`
	// Note is the signed note: the checkpoint text and its signature.
	Note string `json:"note"`
}

// CheckpointList is a page of checkpoints, smallest first.
type CheckpointList struct {
	Checkpoints []Checkpoint `json:"checkpoints"`
}

// Leaf is a log entry: an event's body at its index, and the leaf hash
// stored when it was logged. Body is null when the event is gone.
type Leaf struct {
	Index   int64     `json:"index"`
	EventID int64     `json:"event_id"`
	Body    *string   `json:"body"`
	Hash    tlog.Hash `json:"hash"`
}

// LeafList is a page of leaves.
type LeafList struct {
	Leaves []Leaf `json:"leaves"`
}

// ConsistencyProof proves that the log at Size extends the log at Old.
type ConsistencyProof struct {
	Old   int64          `json:"old"`
	Size  int64          `json:"size"`
	Proof tlog.TreeProof `json:"proof"`
}
