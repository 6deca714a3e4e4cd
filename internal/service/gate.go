package service

import "context"

// gate admits at most cap(g) holders at once; the others wait in enter
// until one leaves or their context ends.
type gate chan struct{}

func newGate(n int) gate { return make(gate, n) }

// enter waits for a place, or returns the context's cause.
func (g gate) enter(ctx context.Context) error {
	select {
	case g <- struct{}{}:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// leave gives the place taken by enter back.
func (g gate) leave() { <-g }
