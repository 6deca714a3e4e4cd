package consul

import (
	"context"
	"time"
)

// EventKind says what an agent reported.
type EventKind int

// Event kinds.
const (
	// EventAck: the agent read the job spec and is starting the command.
	EventAck EventKind = iota + 1
	// EventOutput: a chunk of the command's interleaved stdout and stderr.
	EventOutput
	// EventHeartbeat: an empty chunk the agent writes every Wait without
	// output, to show the command is still running. The engine reads it as
	// a sign of life and deletes it; it never reaches a Handler, since it
	// carries nothing to store (a run of many long silent commands would
	// otherwise cost a database transaction per node every Wait).
	EventHeartbeat
	// EventExit: the command exited.
	EventExit
)

func (k EventKind) String() string {
	switch k {
	case EventAck:
		return "ack"
	case EventOutput:
		return "output"
	case EventHeartbeat:
		return "heartbeat"
	case EventExit:
		return "exit"
	}
	return "unknown"
}

// Event is one fact reported by one agent.
type Event struct {
	Kind EventKind
	Node string
	// Seq is the chunk's sequence number (Output and Heartbeat). Heartbeats
	// take sequence numbers too, so those of output chunks have gaps.
	Seq int
	// Data is the chunk (Output), at most 4 KiB.
	Data []byte
	// ExitCode is the command's exit code (Exit); 255 when it could not start.
	ExitCode int
	// At is when the engine saw the event.
	At time.Time
}

// Handler receives the events of one watch round, in per-node order: a
// node's ack first, then its output chunks by sequence, then its exit
// (never heartbeats). A nil return confirms that every event of the batch
// is stored; the engine then deletes their keys — chunks, ack and exit —
// from KV, so that a run's later rounds never read them again. An error that wraps ErrDetach abandons the run
// without tearing it down, so that another process can re-attach (see
// Client.Attach); any other error is retried with backoff until the handler
// takes the batch, and nothing more is read from KV meanwhile.
//
// ctx lives for the call only, and is not cancelled when the run is: what
// the agents reported is stored even then.
//
// After a re-attach, events the previous watcher already saw may come again:
// store them idempotently, keyed by (node, kind, seq). Since stored acks and
// exits leave KV, a re-attaching caller tells the run what was stored
// (Run.Restore); otherwise such nodes look silent.
type Handler func(ctx context.Context, events []Event) error

// NodeState is how an expected node ended.
type NodeState string

// Node states.
const (
	NodeExited    NodeState = "exited"    // it reported an exit code
	NodeLost      NodeState = "lost"      // it acknowledged but never reported an exit
	NodeNoAck     NodeState = "no_ack"    // it never acknowledged
	NodeCancelled NodeState = "cancelled" // the run was cancelled before it exited
)

// NodeResult is the end state of one expected node.
type NodeResult struct {
	Node     string
	State    NodeState
	ExitCode int       // meaningful when State is NodeExited
	AckedAt  time.Time // zero if it never acknowledged
	ExitedAt time.Time // zero unless exited
}

// Outcome says why a run ended.
type Outcome string

// Outcomes.
const (
	// OutcomeCompleted: every expected node exited.
	OutcomeCompleted Outcome = "completed"
	// OutcomeQuiet: no agent reported anything for the quiet period; the
	// stragglers are lost or no_ack.
	OutcomeQuiet Outcome = "quiet"
	// OutcomeCancelled: the context was cancelled (or its deadline passed).
	OutcomeCancelled Outcome = "cancelled"
	// OutcomeSessionLost: the session disappeared, and with it every key
	// the agents had not yet had read; unfinished nodes are lost.
	OutcomeSessionLost Outcome = "session_lost"
)

// Result is the end of a run.
type Result struct {
	Session string
	Outcome Outcome
	// Nodes has one entry per expected node, sorted by name.
	Nodes []NodeResult
	// Events is the number of user events fired (0 after a re-attach).
	Events int
	// FiredAt is when the first event was fired (zero after a re-attach).
	FiredAt    time.Time
	FinishedAt time.Time
}

// Counts returns how many nodes exited and how many acknowledged, as
// `consul exec` prints them ("N / M node(s) completed / acknowledged").
func (r *Result) Counts() (exited, acked int) {
	for _, n := range r.Nodes {
		if n.State == NodeExited {
			exited++
		}
		if n.State == NodeExited || n.State == NodeLost || !n.AckedAt.IsZero() {
			acked++
		}
	}
	return exited, acked
}
