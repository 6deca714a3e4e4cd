package service

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"sync"
	"testing"
)

// recorder is a batchWriter's write function that records its batches,
// can be held (each call waits for a release), and fails any batch that
// holds a poisoned item.
type recorder struct {
	mu      sync.Mutex
	batches [][]int
	hold    chan struct{} // nil: no waiting
	entered chan struct{} // told of each call, if not nil
	poison  int
}

var errPoison = errors.New("poisoned item")

func (r *recorder) write(ctx context.Context, items []int) error {
	if r.entered != nil {
		r.entered <- struct{}{}
	}
	if r.hold != nil {
		<-r.hold
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, slices.Clone(items))
	if r.poison != 0 && slices.Contains(items, r.poison) {
		return errPoison
	}
	return nil
}

// awaitPending waits until n submissions wait for a writer.
func awaitPending(w *batchWriter[int], n int) {
	for {
		w.mu.Lock()
		got := len(w.pending)
		w.mu.Unlock()
		if got == n {
			return
		}
		runtime.Gosched()
	}
}

// TestBatchWriterCombines: submissions that arrive while the only writer
// is busy are stored together, in one write, in their order.
func TestBatchWriterCombines(t *testing.T) {
	t.Parallel()
	rec := &recorder{hold: make(chan struct{}), entered: make(chan struct{}, 100)}
	w := newBatchWriter(1, rec.write)
	ctx := context.Background()
	errs := make(chan error, 11)
	go func() { errs <- w.store(ctx, 0) }()
	<-rec.entered // the first is being written, alone
	for i := 1; i <= 10; i++ {
		go func() { errs <- w.store(ctx, i) }()
		awaitPending(w, i)
	}
	close(rec.hold)
	for range 11 {
		if err := <-errs; err != nil {
			t.Fatalf("store: %v", err)
		}
	}
	want := [][]int{{0}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}}
	if !slices.EqualFunc(rec.batches, want, slices.Equal) {
		t.Fatalf("batches %v, want %v", rec.batches, want)
	}
}

// TestBatchWriterIsolatesFailure: a batch that fails is tried item by
// item, so that only the bad item fails.
func TestBatchWriterIsolatesFailure(t *testing.T) {
	t.Parallel()
	rec := &recorder{hold: make(chan struct{}), entered: make(chan struct{}, 100), poison: 3}
	w := newBatchWriter(1, rec.write)
	ctx := context.Background()
	errs := make([]chan error, 5)
	for i := range errs {
		errs[i] = make(chan error, 1)
	}
	go func() { errs[0] <- w.store(ctx, 0) }()
	<-rec.entered
	for i := 1; i < 5; i++ {
		go func() { errs[i] <- w.store(ctx, i) }()
		awaitPending(w, i)
	}
	close(rec.hold)
	for i, ch := range errs {
		err := <-ch
		if want := i == 3; errors.Is(err, errPoison) != want || (!want && err != nil) {
			t.Errorf("item %d: %v", i, err)
		}
	}
	want := [][]int{{0}, {1, 2, 3, 4}, {1}, {2}, {3}, {4}}
	if !slices.EqualFunc(rec.batches, want, slices.Equal) {
		t.Fatalf("batches %v, want %v", rec.batches, want)
	}
}

// TestBatchWriterContext: a submission whose context ends while it waits
// is withdrawn, never written; one already being written keeps its
// outcome.
func TestBatchWriterContext(t *testing.T) {
	t.Parallel()
	rec := &recorder{hold: make(chan struct{}), entered: make(chan struct{}, 100)}
	w := newBatchWriter(1, rec.write)
	writing, cancelWriting := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { first <- w.store(writing, 1) }()
	<-rec.entered
	cancelWriting() // being written: its outcome stands

	waiting, cancelWaiting := context.WithCancel(context.Background())
	second := make(chan error, 1)
	go func() { second <- w.store(waiting, 2) }()
	awaitPending(w, 1)
	cancelWaiting()
	if err := <-second; !errors.Is(err, context.Canceled) {
		t.Fatalf("withdrawn submission: %v, want context.Canceled", err)
	}
	close(rec.hold)
	if err := <-first; err != nil {
		t.Fatalf("submission being written: %v, want its outcome (stored)", err)
	}
	if want := [][]int{{1}}; !slices.EqualFunc(rec.batches, want, slices.Equal) {
		t.Fatalf("batches %v, want %v", rec.batches, want)
	}
}
