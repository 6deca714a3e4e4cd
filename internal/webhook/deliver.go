package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/hashicorp/go-cleanhttp"
	"github.com/riverqueue/river"
)

// Defaults.
const (
	// Queue is the River queue of webhook jobs: a queue of their own, so
	// that slow receivers never hold the slots that runs execute in.
	Queue = "webhook"
	// Kind is the River job kind of DeliverArgs.
	Kind = "rexec_webhook"
	// MaxAttemptsDefault is how many times a notice is tried; with the
	// default retry schedule the last try is about 1h43m after the first.
	// A caller inserting a job may pass other river.InsertOpts.MaxAttempts.
	MaxAttemptsDefault = 8
	// QueueMaxWorkersDefault is QueueConfig's concurrency.
	QueueMaxWorkersDefault = 10
	// HTTPTimeoutDefault bounds one request of the default HTTP client.
	HTTPTimeoutDefault = 10 * time.Second
	// AttemptTimeout bounds a whole attempt (look-up, request, record)
	// whatever the River client's JobTimeout, which rexec's clients turn
	// off for runs.
	AttemptTimeout = time.Minute
)

// recordTimeout bounds recording an attempt. The record is written even
// when the attempt's context has ended (a timeout, a shutdown): the attempt
// happened, and the audit log should say so.
const recordTimeout = 10 * time.Second

// retryScheduleDefault is gentler than River's default backoff early on (a
// receiver that blipped is tried again within seconds, while the approver
// still cares) and gives up in hours rather than weeks.
var retryScheduleDefault = []time.Duration{
	time.Second, 5 * time.Second, 30 * time.Second, 2 * time.Minute,
	10 * time.Minute, 30 * time.Minute, time.Hour,
}

// Response bodies are read this far: enough for an error like Slack's
// "invalid_payload", and for the connection to be reused.
const (
	maxErrorBody = 200
	maxDrain     = 64 << 10
)

// DeliverArgs is the River job that sends one notice to a tenant's webhook.
type DeliverArgs struct {
	TenantID int64  `json:"tenant_id"`
	RunID    string `json:"run_id"`
	Event    Event  `json:"event"`
	Notice   Notice `json:"notice"`
}

// Kind implements river.JobArgs.
func (DeliverArgs) Kind() string { return Kind }

// InsertOpts implements river.JobArgsWithInsertOpts.
func (DeliverArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: Queue, MaxAttempts: MaxAttemptsDefault}
}

// QueueConfig is the suggested configuration of Queue in a River client.
func QueueConfig() river.QueueConfig {
	return river.QueueConfig{MaxWorkers: QueueMaxWorkersDefault}
}

// TargetSource finds a tenant's webhook.
type TargetSource interface {
	// WebhookTarget returns the tenant's webhook URL (http or https) and
	// signing secret. An empty URL means the tenant has no webhook: the
	// notice is dropped. A secret must not be empty when the URL is set.
	// Its errors are retried, and recorded: they must not hold the URL or
	// the secret.
	WebhookTarget(ctx context.Context, tenantID int64) (url string, secret []byte, err error)
}

// Recorder records the outcome of every delivery attempt (for the audit
// log). An error fails the attempt, so the notice is sent again: delivery
// is at least once, and receivers drop repeats by DeliveryHeader.
type Recorder interface {
	RecordDelivery(ctx context.Context, d Delivery) error
}

// Delivery is the outcome of one attempt to send a notice.
type Delivery struct {
	TenantID int64
	RunID    string
	Event    Event
	// Attempt counts from 1.
	Attempt int
	// Target is the webhook's scheme://host, never its path or query,
	// which can be secret. Empty when no request was made.
	Target string
	// Status is the receiver's HTTP status; 0 if none came back.
	Status int
	// Error says why the attempt failed; empty when Delivered.
	Error string
	// Final is set on a failure that will not be tried again: a permanent
	// one, or the last attempt's.
	Final bool
	// Delivered is set when the receiver answered 2xx.
	Delivered bool
}

// Config configures a DeliverWorker.
type Config struct {
	// Targets finds tenants' webhooks (required).
	Targets TargetSource
	// Recorder records every attempt (required).
	Recorder Recorder
	// HTTPClient sends the requests. It should not follow redirects: the
	// request would then go to a host the tenant did not name. Default: a
	// client with a 10s timeout that follows no redirect.
	HTTPClient *http.Client
	// Logger receives a line per attempt. Default: discard.
	Logger *slog.Logger
	// RetrySchedule is the wait after each failed attempt: the first entry
	// after attempt 1, and so on, the last entry repeating.
	// Default: 1s, 5s, 30s, 2m, 10m, 30m, 1h.
	RetrySchedule []time.Duration
}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{
			Transport: cleanhttp.DefaultPooledTransport(),
			Timeout:   HTTPTimeoutDefault,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if len(c.RetrySchedule) == 0 {
		c.RetrySchedule = retryScheduleDefault
	}
	return c
}

func (c Config) validate() error {
	if c.Targets == nil {
		return errors.New("Targets is required")
	}
	if c.Recorder == nil {
		return errors.New("Recorder is required")
	}
	for i, d := range c.RetrySchedule {
		if d <= 0 {
			return fmt.Errorf("RetrySchedule[%d] must be positive", i)
		}
	}
	return nil
}

// DeliverWorker works DeliverArgs jobs.
type DeliverWorker struct {
	river.WorkerDefaults[DeliverArgs]
	cfg Config
	log *slog.Logger
}

// NewWorker returns a worker configured by cfg.
func NewWorker(cfg Config) (*DeliverWorker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("webhook config: %w", err)
	}
	return &DeliverWorker{cfg: cfg, log: cfg.Logger}, nil
}

// AddWorkers registers the webhook worker; the client also needs Queue in
// its queues (QueueConfig is a suggestion).
func AddWorkers(workers *river.Workers, cfg Config) error {
	w, err := NewWorker(cfg)
	if err != nil {
		return err
	}
	if err := river.AddWorkerSafely(workers, w); err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	return nil
}

// NextRetry implements river.Worker with Config.RetrySchedule.
func (w *DeliverWorker) NextRetry(job *river.Job[DeliverArgs]) time.Time {
	s := w.cfg.RetrySchedule
	i := min(max(job.Attempt-1, 0), len(s)-1)
	return time.Now().Add(s[i])
}

// Timeout implements river.Worker.
func (w *DeliverWorker) Timeout(*river.Job[DeliverArgs]) time.Duration { return AttemptTimeout }

// Work implements river.Worker: one attempt at sending the notice.
func (w *DeliverWorker) Work(ctx context.Context, job *river.Job[DeliverArgs]) error {
	a := job.Args
	d := Delivery{TenantID: a.TenantID, RunID: a.RunID, Event: a.Event, Attempt: job.Attempt}
	log := w.log.With(
		slog.Int64("tenant_id", a.TenantID), slog.String("run_id", a.RunID), slog.String("event", string(a.Event)),
		slog.Int("attempt", job.Attempt), slog.Int("max_attempts", job.MaxAttempts))

	rawURL, secret, err := w.cfg.Targets.WebhookTarget(ctx, a.TenantID)
	if err != nil {
		return w.failed(ctx, log, job, d, fmt.Errorf("look up webhook: %w", err), false)
	}
	if rawURL == "" {
		log.DebugContext(ctx, "no webhook configured; notice dropped")
		return nil
	}
	red := redactorFor(rawURL, secret)
	target, err := parseTarget(rawURL)
	if err != nil {
		// Not echoed: a URL that fails to parse may still be a secret.
		return w.failed(ctx, log, job, d, err, true)
	}
	d.Target = origin(target)
	log = log.With(slog.String("target", d.Target))
	if len(secret) == 0 {
		return w.failed(ctx, log, job, d, fmt.Errorf("webhook of tenant %d: %w", a.TenantID, ErrNoSecret), true)
	}

	n := a.Notice
	n.RunID, n.Event = a.RunID, a.Event
	if n.Time.IsZero() {
		n.Time = job.CreatedAt
	}
	body, err := Body(n)
	if err != nil {
		return w.failed(ctx, log, job, d, err, true)
	}

	status, err := w.post(ctx, target, secret, body, a.Event, job.ID)
	d.Status = status
	if err != nil {
		err = red.error(err)
		return w.failed(ctx, log, job, d, err, status != 0 && !retryable(status))
	}
	d.Delivered = true
	if err := w.record(ctx, d); err != nil {
		log.ErrorContext(ctx, "webhook delivered but not recorded; failing the attempt", slog.Int("status", status), slog.Any("error", err))
		return err
	}
	log.InfoContext(ctx, "webhook delivered", slog.Int("status", status))
	return nil
}

// post sends one request; a nil error means the receiver answered 2xx.
func (w *DeliverWorker) post(ctx context.Context, target *url.URL, secret, body []byte, ev Event, jobID int64) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target.String(), bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("build request: %w", err)
	}
	now := time.Now()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", UserAgent)
	req.Header.Set(TimestampHeader, strconv.FormatInt(now.Unix(), 10))
	req.Header.Set(SignatureHeader, Sign(secret, now, body))
	req.Header.Set(EventHeader, string(ev))
	req.Header.Set(DeliveryHeader, strconv.FormatInt(jobID, 10))

	resp, err := w.cfg.HTTPClient.Do(req)
	if err != nil {
		// url.Error quotes the whole URL; keep only what it wraps.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return 0, fmt.Errorf("POST %s: %w", origin(target), err)
	}
	defer resp.Body.Close()
	head, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp.StatusCode, nil
	}
	msg := fmt.Sprintf("receiver answered %s", resp.Status)
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		msg += " (redirects are not followed)"
	}
	if s := printable(head); s != "" {
		msg += ": " + s
	}
	return resp.StatusCode, errors.New(msg)
}

// retryable reports whether a receiver's non-2xx status may change if the
// request is tried again: server errors, timeouts and rate limits may; other
// client errors (a revoked Slack hook answers 403, 404 or 410) and
// redirects will not.
func retryable(status int) bool {
	switch {
	case status == http.StatusRequestTimeout, status == http.StatusTooManyRequests:
		return true
	case status >= 300 && status < 500:
		return false
	}
	return true
}

// failed records a failed attempt and returns what River should do with the
// job: cancel it when the failure is permanent, retry it otherwise.
func (w *DeliverWorker) failed(ctx context.Context, log *slog.Logger, job *river.Job[DeliverArgs], d Delivery, err error, permanent bool) error {
	d.Final = permanent || job.Attempt >= job.MaxAttempts
	d.Error = err.Error()
	attrs := []any{slog.Int("status", d.Status), slog.String("error", d.Error)}
	switch {
	case permanent:
		log.ErrorContext(ctx, "webhook failed; not retrying", attrs...)
	case d.Final:
		log.ErrorContext(ctx, "webhook failed on the last attempt; giving up", attrs...)
	default:
		log.WarnContext(ctx, "webhook failed; will retry", attrs...)
	}
	if rerr := w.record(ctx, d); rerr != nil {
		// Retried even if permanent: the next attempt is recorded instead
		// (and fails the same way).
		log.ErrorContext(ctx, "webhook attempt not recorded", slog.Any("error", rerr))
		return errors.Join(err, rerr)
	}
	if permanent {
		return river.JobCancel(err)
	}
	return err
}

func (w *DeliverWorker) record(ctx context.Context, d Delivery) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	if err := w.cfg.Recorder.RecordDelivery(ctx, d); err != nil {
		return fmt.Errorf("record delivery: %w", err)
	}
	return nil
}

// parseTarget checks a webhook URL without ever quoting it.
func parseTarget(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return nil, errors.New("webhook URL does not parse")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errors.New("webhook URL must be http or https")
	case u.Host == "":
		return nil, errors.New("webhook URL has no host")
	}
	return u, nil
}

// origin is what may be said of a webhook URL: scheme://host. Not the user
// information, path or query, any of which can be the secret.
func origin(u *url.URL) string {
	return u.Scheme + "://" + u.Host
}

// redactor removes a webhook's secret parts from messages that come from
// elsewhere (the HTTP stack, a TLS error, the receiver's answer), in case
// one of them quotes them.
type redactor struct{ r *strings.Replacer }

func redactorFor(rawURL string, secret []byte) redactor {
	var pairs []string
	add := func(s string) {
		if len(s) > 1 {
			pairs = append(pairs, s, "[redacted]")
		}
	}
	// Longest first: the whole URL before its parts.
	add(rawURL)
	if u, err := url.Parse(rawURL); err == nil {
		add(u.RawQuery)
		add(u.EscapedPath())
		add(u.Path)
		if p, ok := u.User.Password(); ok {
			add(p)
		}
	}
	add(string(secret))
	return redactor{strings.NewReplacer(pairs...)}
}

func (r redactor) error(err error) error {
	msg := r.r.Replace(err.Error())
	if msg == err.Error() {
		return err
	}
	return errors.New(msg)
}

// printable is a receiver's answer fit for a log line: one line of
// printable text.
func printable(b []byte) string {
	s := strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, strings.ToValidUTF8(string(b), ""))
	return strings.Join(strings.Fields(s), " ")
}
