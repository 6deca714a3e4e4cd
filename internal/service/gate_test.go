package service

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestGate(t *testing.T) {
	t.Parallel()
	g := newGate(2)
	ctx := context.Background()
	for range 2 {
		if err := g.enter(ctx); err != nil {
			t.Fatalf("enter with room: %v", err)
		}
	}
	// Full: a waiter gives up when its context ends, holding nothing.
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if err := g.enter(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("enter when full: %v, want the deadline", err)
	}
	if len(g) != 2 {
		t.Fatalf("%d places taken, want 2", len(g))
	}
	// A waiter gets in as soon as a holder leaves.
	entered := make(chan error, 1)
	go func() { entered <- g.enter(ctx) }()
	select {
	case err := <-entered:
		t.Fatalf("entered a full gate: %v", err)
	default:
	}
	g.leave()
	if err := <-entered; err != nil {
		t.Fatalf("enter after a leave: %v", err)
	}
	if len(g) != 2 {
		t.Fatalf("%d places taken, want 2", len(g))
	}
}
