package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/testenv"
	"github.com/rexec/rexec/internal/webhook"
)

func TestMain(m *testing.M) {
	testenv.Main(m, testenv.Options{Postgres: true, Migrate: store.MigrateAndGrant})
}

const (
	tenantID = 7
	secret   = "whsec-test-secret"
)

// receiver is a webhook endpoint on 127.0.0.1 that answers the statuses it
// is given in turn (the last one repeating) and keeps what it was sent.
type receiver struct {
	srv      *httptest.Server
	statuses []int
	location string // for 3xx answers
	echo     bool   // answers with the request's URL, as some error pages do

	mu       sync.Mutex
	requests []request
}

type request struct {
	header http.Header
	body   []byte
}

// newReceiver starts a receiver; opts set its other fields before it
// starts.
func newReceiver(t *testing.T, statuses []int, opts ...func(*receiver)) *receiver {
	r := &receiver{statuses: statuses}
	for _, o := range opts {
		o(r)
	}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.requests = append(r.requests, request{header: req.Header.Clone(), body: body})
		status := r.statuses[min(len(r.requests), len(r.statuses))-1]
		r.mu.Unlock()
		if r.location != "" {
			w.Header().Set("Location", r.location)
		}
		w.WriteHeader(status)
		if r.echo {
			fmt.Fprintf(w, "no hook at %s", req.URL)
			return
		}
		fmt.Fprint(w, http.StatusText(status))
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) got() []request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]request(nil), r.requests...)
}

// targets is a TargetSource over a fixed map.
type targets map[int64]string

func (ts targets) WebhookTarget(_ context.Context, tenantID int64) (string, []byte, error) {
	u, ok := ts[tenantID]
	if !ok {
		return "", nil, nil
	}
	return u, []byte(secret), nil
}

// recorder is a Recorder that keeps every delivery, after failing the
// first fail calls (its database is away).
type recorder struct {
	fail atomic.Int64
	mu   sync.Mutex
	got  []webhook.Delivery
}

func (r *recorder) RecordDelivery(_ context.Context, d webhook.Delivery) error {
	if r.fail.Add(-1) >= 0 {
		return errors.New("audit log is away")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, d)
	return nil
}

func (r *recorder) deliveries() []webhook.Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]webhook.Delivery(nil), r.got...)
}

// logBuffer collects log output (River's debug lines included) for
// searching; a failed test prints it.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type testBundle struct {
	client *river.Client[pgx.Tx]
	rec    *recorder
	logs   *logBuffer
	events <-chan *river.Event
}

// setup starts a River client working the webhook queue on a database of
// the test's own, connected as the service's database role, with fast
// retries. Both River and the worker log into
// bundle.logs, so that a test can search everything that was logged.
func setup(t *testing.T, tg webhook.TargetSource) *testBundle {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.Migrated(t).Service)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	driver := riverpgxv5.New(pool)

	b := &testBundle{rec: &recorder{}, logs: &logBuffer{}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", b.logs)
		}
	})
	logger := slog.New(slog.NewTextHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	workers := river.NewWorkers()
	if err := webhook.AddWorkers(workers, webhook.Config{
		Targets:       tg,
		Recorder:      b.rec,
		Logger:        logger,
		RetrySchedule: []time.Duration{10 * time.Millisecond},
	}); err != nil {
		t.Fatal(err)
	}
	b.client, err = river.NewClient(driver, &river.Config{
		Queues:            map[string]river.QueueConfig{webhook.Queue: webhook.QueueConfig()},
		Workers:           workers,
		Logger:            logger,
		FetchCooldown:     5 * time.Millisecond,
		FetchPollInterval: 10 * time.Millisecond,
		TestOnly:          true,
	})
	if err != nil {
		t.Fatal(err)
	}
	events, cancel := b.client.Subscribe(river.EventKindJobCompleted, river.EventKindJobCancelled, river.EventKindJobFailed)
	t.Cleanup(cancel)
	b.events = events
	if err := b.client.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.client.Stop(ctx); err != nil {
			t.Errorf("stop River: %v", err)
		}
	})
	return b
}

// send inserts a notice for tenantID and waits until its job is finalized
// (completed, cancelled or discarded), returning the job's last row.
func (b *testBundle) send(t *testing.T, tenant int64, maxAttempts int) *rivertype.JobRow {
	t.Helper()
	n := notice(webhook.EventApprovalRequested)
	res, err := b.client.Insert(context.Background(), webhook.DeliverArgs{
		TenantID: tenant, RunID: n.RunID, Event: n.Event, Notice: n,
	}, &river.InsertOpts{MaxAttempts: maxAttempts})
	if err != nil {
		t.Fatal(err)
	}
	if res.Job.Queue != webhook.Queue {
		t.Fatalf("inserted in queue %q, want %q", res.Job.Queue, webhook.Queue)
	}
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev := <-b.events:
			if ev.Job.ID == res.Job.ID && ev.Job.FinalizedAt != nil {
				return ev.Job
			}
		case <-timeout:
			t.Fatalf("job %d not finalized within 30s; deliveries %+v", res.Job.ID, b.rec.deliveries())
		}
	}
}

// closedURL is a URL on 127.0.0.1 where nothing listens.
func closedURL(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

func TestDeliver(t *testing.T) {
	t.Parallel()
	type outcome struct {
		status           int
		delivered, final bool
	}
	for _, tc := range []struct {
		note        string
		statuses    []int // the receiver's answers in turn
		redirect    bool  // the receiver redirects to a second one
		down        bool  // nothing listens
		maxAttempts int
		wantState   rivertype.JobState
		want        []outcome
	}{
		{note: "200 is delivered", statuses: []int{200}, maxAttempts: 3, wantState: rivertype.JobStateCompleted,
			want: []outcome{{200, true, false}}},
		{note: "204 is delivered", statuses: []int{204}, maxAttempts: 3, wantState: rivertype.JobStateCompleted,
			want: []outcome{{204, true, false}}},
		{note: "500 then 200: delivered on the second attempt", statuses: []int{500, 200}, maxAttempts: 3, wantState: rivertype.JobStateCompleted,
			want: []outcome{{500, false, false}, {200, true, false}}},
		{note: "429 is retried", statuses: []int{429, 429, 200}, maxAttempts: 3, wantState: rivertype.JobStateCompleted,
			want: []outcome{{429, false, false}, {429, false, false}, {200, true, false}}},
		{note: "408 is retried", statuses: []int{408, 200}, maxAttempts: 3, wantState: rivertype.JobStateCompleted,
			want: []outcome{{408, false, false}, {200, true, false}}},
		{note: "400 is permanent", statuses: []int{400, 200}, maxAttempts: 3, wantState: rivertype.JobStateCancelled,
			want: []outcome{{400, false, true}}},
		{note: "410 (a deleted Slack hook) is permanent", statuses: []int{410}, maxAttempts: 3, wantState: rivertype.JobStateCancelled,
			want: []outcome{{410, false, true}}},
		{note: "500 on every attempt: final on the last", statuses: []int{500}, maxAttempts: 3, wantState: rivertype.JobStateDiscarded,
			want: []outcome{{500, false, false}, {500, false, false}, {500, false, true}}},
		{note: "a redirect is not followed", statuses: []int{302}, redirect: true, maxAttempts: 3, wantState: rivertype.JobStateCancelled,
			want: []outcome{{302, false, true}}},
		{note: "a receiver that is down is retried, then final", down: true, maxAttempts: 3, wantState: rivertype.JobStateDiscarded,
			want: []outcome{{0, false, false}, {0, false, false}, {0, false, true}}},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			var rcv, elsewhere *receiver
			url := closedURL(t)
			if !tc.down {
				var opts []func(*receiver)
				if tc.redirect {
					elsewhere = newReceiver(t, []int{200})
					opts = append(opts, func(r *receiver) { r.location = elsewhere.srv.URL })
				}
				rcv = newReceiver(t, tc.statuses, opts...)
				url = rcv.srv.URL + "/hooks/acme"
			}
			b := setup(t, targets{tenantID: url})
			start := time.Now()
			job := b.send(t, tenantID, tc.maxAttempts)

			if job.State != tc.wantState {
				t.Errorf("job state %s, want %s; errors %+v", job.State, tc.wantState, job.Errors)
			}
			ds := b.rec.deliveries()
			if len(ds) != len(tc.want) {
				t.Fatalf("%d deliveries recorded, want %d: %+v", len(ds), len(tc.want), ds)
			}
			for i, d := range ds {
				w := tc.want[i]
				if d.Status != w.status || d.Delivered != w.delivered || d.Final != w.final || d.Attempt != i+1 {
					t.Errorf("delivery %d = %+v, want attempt %d %+v", i, d, i+1, w)
				}
				if d.TenantID != tenantID || d.RunID != runID || d.Event != webhook.EventApprovalRequested {
					t.Errorf("delivery %d is about %d/%s/%s", i, d.TenantID, d.RunID, d.Event)
				}
				if d.Target != strings.TrimSuffix(url, "/hooks/acme") {
					t.Errorf("delivery %d target %q, want the scheme://host of %s", i, d.Target, url)
				}
				if (d.Error == "") != d.Delivered {
					t.Errorf("delivery %d: delivered %t with error %q", i, d.Delivered, d.Error)
				}
			}
			if rcv != nil {
				reqs := rcv.got()
				if len(reqs) != len(tc.want) {
					t.Errorf("receiver got %d requests, want %d", len(reqs), len(tc.want))
				}
				for i, r := range reqs {
					checkRequest(t, r, start, job.ID)
					if i > 0 && !bytes.Equal(r.body, reqs[0].body) {
						t.Errorf("attempt %d sent another body than the first", i+1)
					}
				}
			}
			if elsewhere != nil && len(elsewhere.got()) != 0 {
				t.Errorf("the redirect was followed")
			}
		})
	}
}

// checkRequest checks one request as a receiver would, and its body.
func checkRequest(t *testing.T, r request, sentAfter time.Time, jobID int64) {
	t.Helper()
	h := r.header
	if err := webhook.Verify([]byte(secret), h.Get(webhook.SignatureHeader), h.Get(webhook.TimestampHeader), r.body, time.Minute); err != nil {
		t.Errorf("Verify: %v", err)
	}
	for name, want := range map[string]string{
		"Content-Type":          "application/json",
		"User-Agent":            "rexec-webhook/1",
		webhook.EventHeader:     "approval_requested",
		webhook.DeliveryHeader:  fmt.Sprint(jobID),
		webhook.SignatureHeader: webhook.Sign([]byte(secret), parseUnix(t, h.Get(webhook.TimestampHeader)), r.body),
	} {
		if got := h.Get(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if ts := parseUnix(t, h.Get(webhook.TimestampHeader)); ts.Before(sentAfter.Truncate(time.Second)) || ts.After(time.Now()) {
		t.Errorf("timestamp %s is not the time of sending", ts)
	}
	var p webhook.Payload
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("body: %v", err)
	}
	want := notice(webhook.EventApprovalRequested)
	if p.Text != webhook.Text(want) || !strings.Contains(p.Text, "`rexec-cli approve "+runID+"`") {
		t.Errorf("text = %q, want %q", p.Text, webhook.Text(want))
	}
	n := p.Rexec
	if n.Tenant != "acme" || n.RunID != runID || n.Event != webhook.EventApprovalRequested || n.Submitter != "alice" ||
		n.Command != "systemctl restart nginx" || n.NodeCount != 12 || strings.Join(n.Nodes, ",") != "web-1,web-2,web-3" ||
		n.Reason != "deploy hotfix 42" || n.ApprovalsRequired != 2 || n.ApprovalsGiven != 0 ||
		strings.Join(n.ApproverRoles, ",") != "approver,admin" || n.Approve != "rexec-cli approve "+runID ||
		n.Deny != "rexec-cli deny "+runID || !n.Time.Equal(want.Time) {
		t.Errorf("rexec = %+v", n)
	}
	if bytes.Contains(r.body, []byte(secret)) {
		t.Error("the body holds the secret")
	}
}

func parseUnix(t *testing.T, s string) time.Time {
	t.Helper()
	var sec int64
	if _, err := fmt.Sscan(s, &sec); err != nil {
		t.Fatalf("timestamp %q: %v", s, err)
	}
	return time.Unix(sec, 0)
}

func TestDeliverNoWebhook(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, []int{200})
	b := setup(t, targets{tenantID: rcv.srv.URL})
	job := b.send(t, tenantID+1, 3) // a tenant without a webhook
	if job.State != rivertype.JobStateCompleted {
		t.Errorf("job state %s, want completed", job.State)
	}
	if n := len(rcv.got()); n != 0 {
		t.Errorf("%d requests sent", n)
	}
	if ds := b.rec.deliveries(); len(ds) != 0 {
		t.Errorf("deliveries recorded: %+v", ds)
	}
}

// TestDeliverKeepsURLSecret sends to webhook URLs whose path and query are
// secrets, as a Slack hook's path is, and searches every log line, recorded
// delivery and stored job error for them and for the signing secret.
func TestDeliverKeepsURLSecret(t *testing.T) {
	t.Parallel()
	const (
		secretPath  = "/services/T0SECRETPATH/B0SECRETPATH/xoxSECRETPATH"
		secretQuery = "token=SECRETQUERY"
	)
	for _, tc := range []struct {
		note     string
		statuses []int // nil: nothing listens
		echo     bool
		state    rivertype.JobState
	}{
		{note: "delivered", statuses: []int{200}, state: rivertype.JobStateCompleted},
		{note: "retried then final", statuses: []int{503}, state: rivertype.JobStateDiscarded},
		{note: "permanent", statuses: []int{404}, state: rivertype.JobStateCancelled},
		{note: "the receiver quotes the URL", statuses: []int{404}, echo: true, state: rivertype.JobStateCancelled},
		{note: "down", state: rivertype.JobStateDiscarded},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			base := closedURL(t)
			if tc.statuses != nil {
				rcv := newReceiver(t, tc.statuses, func(r *receiver) { r.echo = tc.echo })
				base = rcv.srv.URL
			}
			b := setup(t, targets{tenantID: base + secretPath + "?" + secretQuery})
			job := b.send(t, tenantID, 2)
			if job.State != tc.state {
				t.Errorf("job state %s, want %s", job.State, tc.state)
			}

			var stored []string
			for _, e := range job.Errors {
				stored = append(stored, e.Error)
			}
			for _, d := range b.rec.deliveries() {
				stored = append(stored, fmt.Sprintf("%+v", d))
			}
			logs := b.logs.String()
			if !strings.Contains(logs, base) {
				t.Errorf("the logs do not name %s", base)
			}
			for _, s := range []string{"SECRETPATH", "SECRETQUERY", secret} {
				if strings.Contains(logs, s) {
					t.Errorf("the logs hold %q", s)
				}
				for _, e := range stored {
					if strings.Contains(e, s) {
						t.Errorf("%q holds %q", e, s)
					}
				}
			}
		})
	}
}

// TestDeliverRecordFails: a delivery that cannot be recorded is sent again,
// with the same delivery ID, so that the audit log has it.
func TestDeliverRecordFails(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, []int{200})
	b := setup(t, targets{tenantID: rcv.srv.URL})
	b.rec.fail.Store(1)
	job := b.send(t, tenantID, 3)
	if job.State != rivertype.JobStateCompleted {
		t.Errorf("job state %s, want completed", job.State)
	}
	ds := b.rec.deliveries()
	if len(ds) != 1 || ds[0].Attempt != 2 || !ds[0].Delivered {
		t.Errorf("deliveries %+v, want the second attempt's, delivered", ds)
	}
	reqs := rcv.got()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want 2", len(reqs))
	}
	if a, b := reqs[0].header.Get(webhook.DeliveryHeader), reqs[1].header.Get(webhook.DeliveryHeader); a == "" || a != b {
		t.Errorf("delivery IDs %q and %q, want the same", a, b)
	}
}

// fixedTarget is a TargetSource that gives every tenant the same webhook.
type fixedTarget struct {
	url    string
	secret []byte
}

func (f fixedTarget) WebhookTarget(context.Context, int64) (string, []byte, error) {
	return f.url, f.secret, nil
}

// TestDeliverMisconfigured: a webhook that cannot be used fails at once,
// recorded as final, without a request and without quoting the URL.
func TestDeliverMisconfigured(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, []int{200})
	// After the parallel subtests, which run once this function returns.
	t.Cleanup(func() {
		if n := len(rcv.got()); n != 0 {
			t.Errorf("%d requests sent", n)
		}
	})
	for _, tc := range []struct {
		note   string
		target fixedTarget
		want   string // in the recorded error
	}{
		{note: "no secret", target: fixedTarget{url: rcv.srv.URL + "/hookSECRET"}, want: "empty secret"},
		{note: "not http", target: fixedTarget{url: "ftp://127.0.0.1/hookSECRET", secret: []byte(secret)}, want: "must be http or https"},
		{note: "no host", target: fixedTarget{url: "http:///hookSECRET", secret: []byte(secret)}, want: "has no host"},
		{note: "does not parse", target: fixedTarget{url: "http://[::1/hookSECRET", secret: []byte(secret)}, want: "does not parse"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tc.target)
			job := b.send(t, tenantID, 3)
			if job.State != rivertype.JobStateCancelled {
				t.Errorf("job state %s, want cancelled", job.State)
			}
			ds := b.rec.deliveries()
			if len(ds) != 1 || !ds[0].Final || ds[0].Delivered || !strings.Contains(ds[0].Error, tc.want) {
				t.Errorf("deliveries %+v, want one final failure saying %q", ds, tc.want)
			}
			if strings.Contains(fmt.Sprintf("%+v", ds), "hookSECRET") || strings.Contains(b.logs.String(), "hookSECRET") {
				t.Error("the URL was quoted")
			}
		})
	}
}

// failingTargets is a TargetSource whose database is away.
type failingTargets struct{ calls atomic.Int64 }

func (f *failingTargets) WebhookTarget(context.Context, int64) (string, []byte, error) {
	f.calls.Add(1)
	return "", nil, errors.New("database is away")
}

// TestDeliverTargetLookupFails: a failing look-up is an attempt like any
// other, retried and recorded, without a request.
func TestDeliverTargetLookupFails(t *testing.T) {
	t.Parallel()
	tg := &failingTargets{}
	b := setup(t, tg)
	job := b.send(t, tenantID, 2)
	if job.State != rivertype.JobStateDiscarded {
		t.Errorf("job state %s, want discarded", job.State)
	}
	ds := b.rec.deliveries()
	if len(ds) != 2 || ds[0].Final || !ds[1].Final || ds[1].Status != 0 || ds[1].Target != "" ||
		!strings.Contains(ds[1].Error, "database is away") {
		t.Errorf("deliveries %+v, want two failures, the second final", ds)
	}
	if n := tg.calls.Load(); n != 2 {
		t.Errorf("%d look-ups, want 2", n)
	}
}

func TestNewWorker(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		note string
		cfg  webhook.Config
		want string // in the error; empty for none
	}{
		{note: "complete", cfg: webhook.Config{Targets: targets{}, Recorder: &recorder{}}},
		{note: "no targets", cfg: webhook.Config{Recorder: &recorder{}}, want: "Targets is required"},
		{note: "no recorder", cfg: webhook.Config{Targets: targets{}}, want: "Recorder is required"},
		{note: "a zero delay", cfg: webhook.Config{Targets: targets{}, Recorder: &recorder{}, RetrySchedule: []time.Duration{time.Second, 0}},
			want: "RetrySchedule[1] must be positive"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			_, err := webhook.NewWorker(tc.cfg)
			if (err != nil) != (tc.want != "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("NewWorker: %v, want %q", err, tc.want)
			}
		})
	}
}

func TestNextRetry(t *testing.T) {
	t.Parallel()
	w, err := webhook.NewWorker(webhook.Config{Targets: targets{}, Recorder: &recorder{}})
	if err != nil {
		t.Fatal(err)
	}
	for attempt, want := range map[int]time.Duration{
		1: time.Second, 2: 5 * time.Second, 3: 30 * time.Second, 4: 2 * time.Minute,
		5: 10 * time.Minute, 6: 30 * time.Minute, 7: time.Hour, 8: time.Hour, 20: time.Hour,
	} {
		before := time.Now()
		got := w.NextRetry(&river.Job[webhook.DeliverArgs]{JobRow: &rivertype.JobRow{Attempt: attempt}})
		if d := got.Sub(before); d < want || d > want+time.Second {
			t.Errorf("after attempt %d: retry in %s, want %s", attempt, d, want)
		}
	}
}
