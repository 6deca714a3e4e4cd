package store

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Notification channels.
const (
	// RunChannel carries a run ID whenever the run changes (NotifyRun).
	RunChannel = "rexec_run"
)

// Notifier delivers the notifications of one channel (sent on commit) to
// subscribers in this process, by run ID, over one LISTEN connection.
type Notifier struct {
	s       *Store
	channel string
	log     *slog.Logger
	mu      sync.Mutex
	subs    map[string]map[chan struct{}]struct{}
}

// NewNotifier returns a Notifier of channel (RunChannel, CancelChannel);
// Run must be running for it to deliver.
func NewNotifier(s *Store, channel string, log *slog.Logger) *Notifier {
	return &Notifier{s: s, channel: channel, log: log, subs: map[string]map[chan struct{}]struct{}{}}
}

// Subscribe returns a channel that receives a value (coalesced) whenever
// the run changes, and a function to unsubscribe.
func (n *Notifier) Subscribe(runID string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	if n.subs[runID] == nil {
		n.subs[runID] = map[chan struct{}]struct{}{}
	}
	n.subs[runID][ch] = struct{}{}
	n.mu.Unlock()
	return ch, func() {
		n.mu.Lock()
		delete(n.subs[runID], ch)
		if len(n.subs[runID]) == 0 {
			delete(n.subs, runID)
		}
		n.mu.Unlock()
	}
}

func (n *Notifier) deliver(runID string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for ch := range n.subs[runID] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (n *Notifier) deliverAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, chs := range n.subs {
		for ch := range chs {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
}

// Run listens until ctx ends, reconnecting after errors. Subscribers also
// poll, so a gap while reconnecting only delays them. After a reconnect
// every subscriber is woken once: a notification sent meanwhile is lost,
// so each must look again.
func (n *Notifier) Run(ctx context.Context) {
	for ctx.Err() == nil {
		if err := n.listen(ctx); err != nil && ctx.Err() == nil {
			n.log.WarnContext(ctx, "listen for notifications", slog.String("channel", n.channel), slog.Any("error", err))
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (n *Notifier) listen(ctx context.Context) error {
	conn, err := n.s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	// The connection will be in LISTEN mode: never hand it back to the pool.
	pc := conn.Hijack()
	defer pc.Close(context.WithoutCancel(ctx))
	if _, err := pc.Exec(ctx, "LISTEN "+pgx.Identifier{n.channel}.Sanitize()); err != nil {
		return err
	}
	n.deliverAll()
	for {
		note, err := pc.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		n.deliver(note.Payload)
	}
}
