package store

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ReportKind says what an agent reported in a watch round.
type ReportKind int

// Report kinds. Heartbeats are not reports: nothing of them is stored.
const (
	ReportAck ReportKind = iota + 1
	ReportOutput
	ReportExit
)

// Report is one fact an agent reported: an ack, a chunk of output (Seq,
// Data) or an exit (ExitCode). At is when the worker saw it.
type Report struct {
	Kind     ReportKind
	Node     string
	Seq      int
	Data     []byte
	ExitCode int
	At       time.Time
}

// Recorded is an ack or an exit that a round stored for the first time.
type Recorded struct {
	Kind     ReportKind // ReportAck or ReportExit
	Node     string
	At       time.Time
	ExitCode int
	// Output is the node's output as it ended (exits).
	Output NodeOutput
}

// RoundResult is what StoreRound stored.
type RoundResult struct {
	// Recorded are the acks and exits stored for the first time, node by
	// node in the order of each node's first report, a node's ack before
	// its exit: the order in which RecordAck and RecordExit called report
	// by report would have found them new.
	Recorded []Recorded
	// Chunks is how many chunks were stored, and StoredBytes how many of
	// their bytes (at most the output cap of each node).
	Chunks      int
	StoredBytes int64
}

const (
	// queryRoundNodes locks every node the round reports on, in node
	// order (a fixed order, so that two transactions cannot each hold a
	// row the other waits for), and reads its output so far.
	queryRoundNodes = `SELECT node, bytes, stored_bytes, truncated, hash_state FROM run_nodes
WHERE run_id = $1 AND node = ANY($2::text[]) ORDER BY node FOR UPDATE`
	// queryRoundStoredChunks names the round's chunks stored already (a
	// retried round, or a worker re-attached to a run): they must be
	// neither stored nor hashed again. It runs after queryRoundNodes, so
	// it sees whatever a transaction that held those locks committed.
	queryRoundStoredChunks = `SELECT c.node, c.seq FROM output_chunks c
JOIN unnest($2::text[], $3::int[]) AS r(node, seq) ON c.node = r.node AND c.seq = r.seq
WHERE c.run_id = $1`
	// queryRoundStreamIDs takes the stream positions of the round's
	// chunks and exits at once; they are handed out in the order the
	// report-by-report path took them, a node's output before its exit.
	queryRoundStreamIDs = `SELECT nextval('run_stream_seq') FROM generate_series(1, $1)`

	queryRoundAcks = `UPDATE run_nodes n SET state = 'acked', acked_at = r.at
FROM unnest($2::text[], $3::timestamptz[]) AS r(node, at)
WHERE n.run_id = $1 AND n.node = r.node AND n.acked_at IS NULL AND n.state = 'pending'
RETURNING n.node`
	queryRoundChunks = `INSERT INTO output_chunks (run_id, node, seq, stream_id, data)
SELECT $1, r.node, r.seq, r.stream_id, r.data FROM unnest($2::text[], $3::int[], $4::bigint[], $5::bytea[]) AS r(node, seq, stream_id, data)
ON CONFLICT DO NOTHING`
	// queryRoundOutput sets, rather than adds to, the totals: they were
	// read under the row lock that this transaction still holds, with the
	// hash state they go with.
	queryRoundOutput = `UPDATE run_nodes n SET bytes = r.bytes, stored_bytes = r.stored_bytes, truncated = r.truncated, hash_state = r.hash_state
FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bool[], $6::bytea[]) AS r(node, bytes, stored_bytes, truncated, hash_state)
WHERE n.run_id = $1 AND n.node = r.node`
	queryRoundExits = `UPDATE run_nodes n SET state = 'exited', exit_code = r.code, exited_at = r.at, exit_stream_id = r.stream_id,
	acked_at = coalesce(n.acked_at, r.at), sha256 = r.sha256
FROM unnest($2::text[], $3::int[], $4::timestamptz[], $5::bigint[], $6::text[]) AS r(node, code, at, stream_id, sha256)
WHERE n.run_id = $1 AND n.node = r.node AND n.exited_at IS NULL
RETURNING n.node, n.bytes, n.stored_bytes, n.truncated, n.sha256`
)

// batcher sends a pgx.Batch: a transaction, a connection or a pool.
type batcher interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// roundNode is one node's share of a round.
type roundNode struct {
	name   string
	ack    *Report
	exit   *Report
	chunks []Report // by sequence, each sequence once

	// Its row: whether it exists, and its output so far.
	found         bool
	bytes, stored int64
	truncated     bool
	state         []byte // the running sha256's state
}

// StoreRound stores one watch round of a run's reports, as RecordAck,
// AppendChunk and RecordExit would report by report, idempotently, but in
// a number of round trips that does not grow with the round: the round's
// nodes are locked and read in one query, the output's totals and sha256
// are carried on in Go, and each kind of fact is written by one statement.
// It must run in a transaction that holds the run's lease (HoldLease).
//
// A node's chunks are hashed in sequence order, each once: a chunk stored
// before (the round retried after a failed commit, or handed again to a
// worker that re-attached) is neither stored nor counted again. Chunks
// must reach a node's stream in order across rounds, as the engine hands
// them. A node's exit comes after its chunks of the same round.
func (q *Queries) StoreRound(ctx context.Context, runID string, outputCap int64, reports []Report) (RoundResult, error) {
	var res RoundResult
	if len(reports) == 0 {
		return res, nil
	}
	db, ok := q.db.(batcher)
	if !ok {
		return res, errors.New("store round: the database handle cannot send batches")
	}
	nodes, names := groupRound(reports)

	// Read: lock the nodes, find what is stored already, take stream IDs.
	byName := make(map[string]*roundNode, len(nodes))
	var chunkNodes []string
	var chunkSeqs []int32
	streamItems := 0
	for _, n := range nodes {
		byName[n.name] = n
		for _, c := range n.chunks {
			chunkNodes, chunkSeqs = append(chunkNodes, n.name), append(chunkSeqs, int32(c.Seq))
		}
		streamItems += len(n.chunks)
		if n.exit != nil {
			streamItems++
		}
	}
	stored := map[chunkKey]bool{}
	var streamIDs []int64
	b := &pgx.Batch{}
	b.Queue(queryRoundNodes, runID, names).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var name string
			var bytes, storedBytes int64
			var truncated bool
			var state []byte
			if err := rows.Scan(&name, &bytes, &storedBytes, &truncated, &state); err != nil {
				return err
			}
			if n := byName[name]; n != nil {
				n.found, n.bytes, n.stored, n.truncated, n.state = true, bytes, storedBytes, truncated, state
			}
		}
		return rows.Err()
	})
	if len(chunkNodes) > 0 {
		b.Queue(queryRoundStoredChunks, runID, chunkNodes, chunkSeqs).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var k chunkKey
				if err := rows.Scan(&k.node, &k.seq); err != nil {
					return err
				}
				stored[k] = true
			}
			return rows.Err()
		})
	}
	if streamItems > 0 {
		b.Queue(queryRoundStreamIDs, streamItems).Query(func(rows pgx.Rows) error {
			ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
			streamIDs = ids
			return err
		})
	}
	if err := db.SendBatch(ctx, b).Close(); err != nil {
		return res, fmt.Errorf("store round: read nodes: %w", err)
	}
	if len(streamIDs) != streamItems {
		return res, fmt.Errorf("store round: %d stream IDs for %d items", len(streamIDs), streamItems)
	}
	slices.Sort(streamIDs) // handed out in the order of the nodes' reports

	// Compute: carry each node's totals and hash through its new chunks.
	var ackNodes []string
	var ackAts []time.Time
	var cNodes []string
	var cSeqs []int32
	var cIDs []int64
	var cData [][]byte
	var oNodes []string
	var oBytes, oStored []int64
	var oTrunc []bool
	var oStates [][]byte
	var xNodes, xSums []string
	var xCodes []int32
	var xAts []time.Time
	var xIDs []int64
	next := 0
	for _, n := range nodes {
		if !n.found {
			if len(n.chunks) > 0 || n.exit != nil {
				return res, fmt.Errorf("store round: node %q: %w", n.name, ErrNotFound)
			}
			continue // an ack of an unknown node records nothing, as RecordAck
		}
		if n.ack != nil {
			ackNodes, ackAts = append(ackNodes, n.name), append(ackAts, n.ack.At)
		}
		var h hash.Hash
		for _, c := range n.chunks {
			id := streamIDs[next]
			next++
			if stored[chunkKey{n.name, int32(c.Seq)}] {
				continue
			}
			if h == nil {
				var err error
				if h, err = resumeHash(n.state); err != nil {
					return res, fmt.Errorf("store round: node %q: %w", n.name, err)
				}
			}
			keep := underCap(c.Data, n.stored, outputCap)
			h.Write(c.Data)
			n.bytes += int64(len(c.Data))
			n.stored += int64(len(keep))
			n.truncated = n.truncated || len(keep) < len(c.Data)
			cNodes, cSeqs, cIDs, cData = append(cNodes, n.name), append(cSeqs, int32(c.Seq)), append(cIDs, id), append(cData, keep)
			res.Chunks++
			res.StoredBytes += int64(len(keep))
		}
		if h != nil {
			state, err := marshalHash(h)
			if err != nil {
				return res, fmt.Errorf("store round: node %q: %w", n.name, err)
			}
			n.state = state
			oNodes, oBytes, oStored = append(oNodes, n.name), append(oBytes, n.bytes), append(oStored, n.stored)
			oTrunc, oStates = append(oTrunc, n.truncated), append(oStates, state)
		}
		if n.exit != nil {
			sum, err := finalHash(n.state)
			if err != nil {
				return res, fmt.Errorf("store round: node %q: %w", n.name, err)
			}
			xNodes, xCodes, xAts = append(xNodes, n.name), append(xCodes, int32(n.exit.ExitCode)), append(xAts, n.exit.At)
			xIDs, xSums = append(xIDs, streamIDs[next]), append(xSums, sum)
			next++
		}
	}

	// Write: one statement per kind of fact, in one round trip. The
	// updates below touch only rows locked above.
	acked := map[string]bool{}
	exited := map[string]NodeOutput{}
	b = &pgx.Batch{}
	if len(ackNodes) > 0 {
		b.Queue(queryRoundAcks, runID, ackNodes, ackAts).Query(func(rows pgx.Rows) error {
			names, err := pgx.CollectRows(rows, pgx.RowTo[string])
			for _, n := range names {
				acked[n] = true
			}
			return err
		})
	}
	if len(cNodes) > 0 {
		b.Queue(queryRoundChunks, runID, cNodes, cSeqs, cIDs, cData).Exec(func(tag pgconn.CommandTag) error {
			if tag.RowsAffected() != int64(len(cNodes)) {
				// Impossible while every writer of chunks locks their node
				// first; a retry of the round would hash nothing twice.
				return fmt.Errorf("stored %d of %d new chunks: written concurrently", tag.RowsAffected(), len(cNodes))
			}
			return nil
		})
		b.Queue(queryRoundOutput, runID, oNodes, oBytes, oStored, oTrunc, oStates)
	}
	if len(xNodes) > 0 {
		b.Queue(queryRoundExits, runID, xNodes, xCodes, xAts, xIDs, xSums).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var name string
				var o NodeOutput
				if err := rows.Scan(&name, &o.Bytes, &o.StoredBytes, &o.Truncated, &o.SHA256); err != nil {
					return err
				}
				exited[name] = o
			}
			return rows.Err()
		})
	}
	if b.Len() > 0 {
		if err := db.SendBatch(ctx, b).Close(); err != nil {
			return RoundResult{}, fmt.Errorf("store round: write: %w", err)
		}
	}
	for _, n := range nodes {
		if acked[n.name] {
			res.Recorded = append(res.Recorded, Recorded{Kind: ReportAck, Node: n.name, At: n.ack.At})
		}
		if o, ok := exited[n.name]; ok {
			res.Recorded = append(res.Recorded, Recorded{Kind: ReportExit, Node: n.name, At: n.exit.At, ExitCode: n.exit.ExitCode, Output: o})
		}
	}
	return res, nil
}

type chunkKey struct {
	node string
	seq  int32
}

// groupRound splits reports by node, in the order of each node's first
// report: the first ack and the first exit of each node, its chunks by
// sequence, the first of each sequence (a repeat is a retry). names are
// the nodes, for the lock query.
func groupRound(reports []Report) ([]*roundNode, []string) {
	var nodes []*roundNode
	byName := map[string]*roundNode{}
	seen := map[chunkKey]bool{}
	for i := range reports {
		r := &reports[i]
		n := byName[r.Node]
		if n == nil {
			n = &roundNode{name: r.Node}
			byName[r.Node] = n
			nodes = append(nodes, n)
		}
		switch r.Kind {
		case ReportAck:
			if n.ack == nil {
				n.ack = r
			}
		case ReportExit:
			if n.exit == nil {
				n.exit = r
			}
		case ReportOutput:
			k := chunkKey{r.Node, int32(r.Seq)}
			if !seen[k] {
				seen[k] = true
				n.chunks = append(n.chunks, *r)
			}
		}
	}
	names := make([]string, len(nodes))
	for i, n := range nodes {
		slices.SortStableFunc(n.chunks, func(a, b Report) int { return a.Seq - b.Seq })
		names[i] = n.name
	}
	return nodes, names
}
