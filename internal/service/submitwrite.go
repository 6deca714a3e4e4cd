package service

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/jobs"
	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/webhook"
)

// Storing submissions. Each accepted submission is a transaction of its
// own in effect — the run, its nodes, its audit events and its job are
// stored together or not at all — but under load, submissions that wait
// for a writer at the same moment share one: a writer takes every
// submission then waiting (up to maxWriteBatch) and stores them with one
// statement per table. The database's cost of a statement, and of a
// commit, is mostly the same for one row as for a few dozen, and it is
// that cost that bounds the rate of submissions.
//
// There is no goroutine of its own: the submitters are the writers (flat
// combining). One that gets a writer's slot writes what is waiting,
// its own submission or not; one whose submission another writer took
// waits for that writer's answer. A writer that finds nothing waiting
// (another took its submission) gives its place back at once.

// submitWrite is an accepted submission, prepared (store.PrepareRun), with
// its audit events.
type submitWrite struct {
	tenant store.Tenant
	run    store.Run
	nodes  []string
	events []audit.Event
}

// writeSubmissions stores submissions in one transaction: one round trip
// begins it and stores the runs, their nodes and their audit events, in
// the order of the submissions; River's jobs follow, and the commit.
func (s *Service) writeSubmissions(ctx context.Context, subs []submitWrite) error {
	return s.store.InBatchTx(ctx, func(b *pgx.Batch) error {
		runs, nodes := make([]store.Run, len(subs)), make([][]string, len(subs))
		var events []audit.Event
		for i, sw := range subs {
			runs[i], nodes[i] = sw.run, sw.nodes
			events = append(events, sw.events...)
		}
		store.QueueInsertRuns(b, runs, nodes)
		return audit.Queue(b, events...)
	}, func(tx pgx.Tx, _ *store.Queries) error {
		var execs []river.InsertManyParams
		for _, sw := range subs {
			if sw.run.State == store.StatePendingApproval {
				if err := jobs.NotifyApprovers(ctx, s.river, tx, sw.tenant, sw.run, webhook.EventApprovalRequested, "", "", 0); err != nil {
					return err
				}
				continue
			}
			execs = append(execs, river.InsertManyParams{Args: jobs.ExecArgs{RunID: sw.run.ID}})
		}
		if len(execs) == 0 {
			return nil
		}
		_, err := s.river.InsertManyTx(ctx, tx, execs)
		return err
	})
}

// maxWriteBatch bounds the submissions one transaction stores.
const maxWriteBatch = 64

// writeTimeout bounds one transaction of submissions. It does not follow
// any one submitter's context: a writer stores others' submissions too.
const writeTimeout = 30 * time.Second

// pendingWrite is a submission ready to be stored.
type pendingWrite[T any] struct {
	item T
	done chan error // the outcome, once stored or refused
}

// batchWriter stores items, at most cap(slots) transactions at once.
type batchWriter[T any] struct {
	// slots holds a token for each writer at work.
	slots chan struct{}
	// write stores items in one transaction: all or none.
	write func(ctx context.Context, items []T) error

	mu      sync.Mutex
	pending []*pendingWrite[T]
}

func newBatchWriter[T any](writers int, write func(ctx context.Context, items []T) error) *batchWriter[T] {
	return &batchWriter[T]{slots: make(chan struct{}, writers), write: write}
}

// store stores item, alone or with others, and returns the outcome. Once a
// writer has taken item, its outcome stands even if ctx ends meanwhile:
// the caller learns whether it was stored.
func (w *batchWriter[T]) store(ctx context.Context, item T) error {
	p := &pendingWrite[T]{item: item, done: make(chan error, 1)}
	w.mu.Lock()
	w.pending = append(w.pending, p)
	w.mu.Unlock()
	for {
		select {
		case err := <-p.done:
			return err
		case w.slots <- struct{}{}:
			batch := w.take()
			if len(batch) > 0 {
				w.writeBatch(ctx, batch)
			}
			<-w.slots
			if len(batch) == 0 {
				// Another writer took p; it answers.
				return <-p.done
			}
		case <-ctx.Done():
			if w.withdraw(p) {
				return context.Cause(ctx)
			}
			return <-p.done
		}
	}
}

// take removes the oldest waiting submissions, up to maxWriteBatch.
func (w *batchWriter[T]) take() []*pendingWrite[T] {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := min(len(w.pending), maxWriteBatch)
	batch := slices.Clone(w.pending[:n])
	w.pending = slices.Delete(w.pending, 0, n)
	return batch
}

// withdraw removes p if no writer has taken it yet.
func (w *batchWriter[T]) withdraw(p *pendingWrite[T]) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	i := slices.Index(w.pending, p)
	if i < 0 {
		return false
	}
	w.pending = slices.Delete(w.pending, i, i+1)
	return true
}

// writeBatch stores batch in one transaction and answers each submission.
// If the transaction fails, each is tried alone, so that one submission's
// failure is not the others'.
func (w *batchWriter[T]) writeBatch(ctx context.Context, batch []*pendingWrite[T]) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	items := make([]T, len(batch))
	for i, p := range batch {
		items[i] = p.item
	}
	err := w.write(ctx, items)
	if err == nil || len(batch) == 1 {
		for _, p := range batch {
			p.done <- err
		}
		return
	}
	for _, p := range batch {
		p.done <- w.write(ctx, []T{p.item})
	}
}
