package e2e_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/client"
	"github.com/rexec/rexec/internal/testcert"
)

// answer is a raw HTTP answer.
type answer struct {
	status int
	header http.Header
	body   string
	proto  string
}

// errorBody decodes the API's JSON error, failing the test if the answer
// is not one.
func (a answer) errorBody(t *testing.T) apitype.ErrorBody {
	t.Helper()
	var eb apitype.ErrorBody
	if a.header.Get("Content-Type") != "application/json" || json.Unmarshal([]byte(a.body), &eb) != nil || eb.Error == "" || eb.Code == "" {
		t.Errorf("answer %d %q is not the API's {error, code}", a.status, a.body)
	}
	return eb
}

// request is a raw HTTP request for the tests that send what the client
// never would.
type request struct {
	method, url string
	token       string // sent as "Bearer <token>" unless empty
	header      map[string]string
	body        io.Reader
	chunked     bool // no Content-Length
}

func send(t *testing.T, c *http.Client, r request) answer {
	t.Helper()
	if r.method == "" {
		r.method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctxT(t, time.Minute), r.method, r.url, r.body)
	if err != nil {
		t.Fatal(err)
	}
	if r.chunked {
		req.ContentLength = -1
	}
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	for k, v := range r.header {
		req.Header.Set(k, v)
	}
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", r.method, head(r.url, 200), err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: string(b), proto: resp.Proto}
}

// cliEnv runs rexec-cli against the test's server with extra environment
// variables (later ones win).
func (e *env) cliEnv(vars []string, args ...string) cliResult {
	e.t.Helper()
	cmd := exec.Command(bins.cli, args...)
	cmd.Env = append(append(os.Environ(), "REXEC_ADDR="+e.addr, "REXEC_TOKEN="+e.token, "REXEC_CACERT="), vars...)
	return e.runCmd(cmd, nil)
}

// metric reads one sample of the server's /metrics; 0 if absent.
func (e *env) metric(t *testing.T, c *http.Client, sample *regexp.Regexp) int {
	t.Helper()
	a := send(t, c, request{url: e.addr + "/metrics"})
	m := sample.FindStringSubmatch(a.body)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

var (
	streamsInFlight = regexp.MustCompile(`(?m)^rexec_http_in_flight\{kind="stream"\} (\d+)$`)
	streams429      = regexp.MustCompile(`(?m)^rexec_http_requests_total\{code="429",route="GET /v1/runs/\{id\}/stream"\} (\d+)$`)
)

// TestTLS: serve with a certificate speaks HTTPS only, TLS 1.2 at least;
// rexec-cli trusts the server's CA given by -ca-file or REXEC_CACERT and
// says what to do without it; the CLI's long polls outlive a write timeout
// shorter than the command, over the HTTP/2 it negotiates.
func TestTLS(t *testing.T) {
	t.Parallel()
	f := testcert.Write(t)
	e := newEnv(t, envOpts{serveArgs: []string{"-tls-cert-file", f.Cert, "-tls-key-file", f.Key, "-read-timeout", "2s", "-write-timeout", "2s"}})
	hostPort, ok := strings.CutPrefix(e.addr, "https://")
	if !ok {
		t.Fatalf("serve with a certificate listens on %s", e.addr)
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)

	t.Run("exec with -ca-file", func(t *testing.T) {
		start := time.Now()
		res := e.cliEnv(nil, "exec", "-ca-file", f.CA, "-node", "^web-1$", "sleep 3; echo over-tls")
		rep := parseReport(res.stdout)
		if res.code != 0 || strings.Join(rep.lines["web-1"], "|") != "over-tls|" || rep.exits["web-1"] != 0 {
			t.Fatalf("exit %d\n%s%s", res.code, res.stdout, res.stderr)
		}
		if took := time.Since(start); took < 3*time.Second {
			t.Errorf("took %s: the command did not outlast the 2s write timeout", took)
		}
	})
	t.Run("REXEC_CACERT", func(t *testing.T) {
		if res := e.cliEnv([]string{"REXEC_CACERT=" + f.CA}, "jobs", "list"); res.code != 0 || !strings.Contains(res.stdout, "completed") {
			t.Errorf("exit %d\n%s%s", res.code, res.stdout, res.stderr)
		}
	})
	t.Run("without the CA", func(t *testing.T) {
		res := e.cliEnv(nil, "jobs", "list")
		if res.code != 1 || !strings.Contains(res.stderr, "x509: certificate signed by unknown authority") ||
			!strings.Contains(res.stderr, "give the CA that signed it with -ca-file or REXEC_CACERT") {
			t.Errorf("exit %d, stderr %q; want 1 and the x509 error with its way out", res.code, res.stderr)
		}
	})
	t.Run("a CA file without a certificate", func(t *testing.T) {
		res := e.cliEnv(nil, "jobs", "list", "-ca-file", f.Key)
		if res.code != 1 || !strings.Contains(res.stderr, "no PEM certificate in it") {
			t.Errorf("exit %d, stderr %q", res.code, res.stderr)
		}
	})
	t.Run("plain HTTP on the TLS port", func(t *testing.T) {
		// net/http answers plain HTTP on a TLS port with a bare 400 and
		// closes: no API behind it, authenticated or not.
		for _, path := range []string{"/v1/runs", "/healthz"} {
			a := send(t, nil, request{url: "http://" + hostPort + path, token: e.token})
			if a.status != 400 || !strings.Contains(a.body, "Client sent an HTTP request to an HTTPS server") || strings.Contains(a.body, "{") {
				t.Errorf("GET http://…%s: %d %q; want net/http's 400", path, a.status, a.body)
			}
		}
		res := e.cliEnv([]string{"REXEC_ADDR=http://" + hostPort}, "jobs", "list")
		if res.code != 1 || !strings.Contains(res.stderr, "speaks HTTPS only: use https://") {
			t.Errorf("CLI over http://: exit %d, stderr %q", res.code, res.stderr)
		}
	})
	t.Run("TLS 1.1 refused", func(t *testing.T) {
		conn, err := tls.Dial("tcp", hostPort, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
		if err == nil {
			conn.Close()
			t.Fatal("a TLS 1.1 handshake succeeded")
		}
		if !strings.Contains(err.Error(), "protocol version") {
			t.Errorf("handshake: %v, want a protocol version alert", err)
		}
	})
	t.Run("HTTP/2 and HTTP/1.1", func(t *testing.T) {
		for _, h2 := range []bool{true, false} {
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: h2}
			if !h2 {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			}
			a := send(t, &http.Client{Transport: tr}, request{url: e.addr + "/v1/runs?limit=1", token: e.token})
			if want := map[bool]string{true: "HTTP/2.0", false: "HTTP/1.1"}[h2]; a.status != 200 || a.proto != want {
				t.Errorf("%d over %s, want 200 over %s: %s", a.status, a.proto, want, a.body)
			}
		}
	})
}

// TestServerTimeouts: over plain HTTP/1.1, a long poll outlives read and
// write timeouts shorter than its wait, while a client that trickles its
// body is cut off at them and an idle kept-alive connection is closed.
func TestServerTimeouts(t *testing.T) {
	t.Parallel()
	// API only: the run stays queued, so a long poll waits its full wait.
	e := newEnv(t, envOpts{workers: -1, serveArgs: []string{"-read-timeout", "1s", "-write-timeout", "1s", "-idle-timeout", "1s"}})
	c, err := client.New(e.addr, e.token)
	if err != nil {
		t.Fatal(err)
	}
	run, err := c.Submit(ctxT(t, time.Minute), apitype.SubmitRequest{Argv: []string{"true"}, Node: "^web-1$"})
	if err != nil {
		t.Fatal(err)
	}
	hostPort := strings.TrimPrefix(e.addr, "http://")

	t.Run("a long poll outlives the timeouts", func(t *testing.T) {
		start := time.Now()
		page, err := c.Stream(ctxT(t, time.Minute), run.ID, 0, 3*time.Second)
		if err != nil || page.Done || page.Run.State != "queued" {
			t.Fatalf("stream: %+v, %v", page, err)
		}
		if took := time.Since(start); took < 2900*time.Millisecond {
			t.Errorf("the poll answered after %s, before its 3s wait", took)
		}
	})
	t.Run("a trickled body is cut at the read timeout", func(t *testing.T) {
		conn, err := net.Dial("tcp", hostPort)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		_, err = io.WriteString(conn, "POST /v1/runs HTTP/1.1\r\nHost: rexec\r\nAuthorization: Bearer "+e.token+
			"\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"argv\": [")
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(conn) // until the server closes
		took := time.Since(start)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("the server still held the connection after %s", took)
		}
		if took < 900*time.Millisecond || took > 5*time.Second || bytes.Contains(got, []byte(" 201 ")) {
			t.Errorf("closed after %s with %q; want closed at the 1s read timeout, nothing created", took, got)
		}
		if page, err := c.List(ctxT(t, time.Minute), "", 10, ""); err != nil || len(page.Runs) != 1 {
			t.Errorf("%d runs (%v), want only the first", len(page.Runs), err)
		}
	})
	t.Run("an idle connection is closed", func(t *testing.T) {
		conn, err := net.Dial("tcp", hostPort)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: rexec\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 || resp.Close {
			t.Fatalf("healthz: %v %v", resp, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		start := time.Now()
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = br.ReadByte()
		if took := time.Since(start); !errors.Is(err, io.EOF) || took < 900*time.Millisecond || took > 5*time.Second {
			t.Errorf("idle connection: %v after %s; want EOF at the 1s idle timeout", err, took)
		}
	})
}

// TestStreamBounds: a principal's stream requests in flight beyond its
// bound get 429, and beyond the server's bound 503, both the API's JSON
// error with Retry-After; the bounds free as polls end; and rexec-cli
// rides a 429 out instead of failing while its run goes on.
func TestStreamBounds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{serveArgs: []string{"-max-streams-per-principal", "2", "-max-streams", "3"}})
	bob := e.newToken("acme", "bob", "submitter,auditor")
	// A run that writes nothing for a while: polls on it wait their wait.
	res := e.cli(nil, "exec", "-detach", "-node", "^web-1$", "sleep 25")
	id := strings.TrimSpace(res.stdout)
	if res.code != 0 || id == "" {
		t.Fatalf("exec -detach: %d %s", res.code, res.stderr)
	}
	t.Cleanup(func() { e.cli(nil, "jobs", "cancel", id) })
	poll := func(token, wait string) answer {
		return send(t, nil, request{url: e.addr + "/v1/runs/" + id + "/stream?wait=" + wait, token: token})
	}
	hold := func(token, wait string) <-chan answer {
		ch := make(chan answer, 1)
		go func() { ch <- poll(token, wait) }()
		return ch
	}
	awaitStreams := func(n int) {
		t.Helper()
		await(t, 10*time.Second, strconv.Itoa(n)+" streams in flight", func() bool { return e.metric(t, nil, streamsInFlight) == n })
	}

	held := []<-chan answer{hold(e.token, "6s"), hold(e.token, "6s"), hold(bob, "6s")}
	awaitStreams(3)
	for _, tc := range []struct {
		note   string
		token  string
		status int
		code   string
		msg    string
	}{
		{note: "alice past her bound", token: e.token, status: 429, code: "too_many_requests", msg: "principal alice has 2 stream requests in flight"},
		{note: "bob past the server's bound", token: bob, status: 503, code: "overloaded", msg: "the server has 3 stream requests in flight"},
	} {
		a := poll(tc.token, "0s")
		if eb := a.errorBody(t); a.status != tc.status || eb.Code != tc.code || !strings.Contains(eb.Error, tc.msg) || a.header.Get("Retry-After") != "1" {
			t.Errorf("%s: %d %v %q", tc.note, a.status, a.header, a.body)
		}
	}
	for i, ch := range held {
		if a := <-ch; a.status != 200 {
			t.Errorf("held poll %d: %d %s", i, a.status, a.body)
		}
	}
	awaitStreams(0)
	if a := poll(e.token, "0s"); a.status != 200 {
		t.Errorf("after the polls ended: %d %s", a.status, a.body)
	}

	t.Run("rexec-cli rides a 429 out", func(t *testing.T) {
		refused := e.metric(t, nil, streams429)
		held := []<-chan answer{hold(e.token, "4s"), hold(e.token, "4s")}
		awaitStreams(2)
		res := e.cli(nil, "exec", "-node", "^web-2$", "echo through")
		if rep := parseReport(res.stdout); res.code != 0 || strings.Join(rep.lines["web-2"], "|") != "through|" {
			t.Errorf("exit %d\n%s%s", res.code, res.stdout, res.stderr)
		}
		for _, ch := range held {
			<-ch
		}
		if now := e.metric(t, nil, streams429); now <= refused {
			t.Errorf("no stream request was refused while alice's bound was full (429s: %d, then %d)", refused, now)
		}
	})
}

// TestHTTPBadInput: bodies and query parameters the API refuses, each with
// a 4xx, and nothing stored. The JSON-level refusals (malformed JSON, an
// unknown field) are in TestBadInput too; here beside the transport-level
// ones.
func TestHTTPBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{workers: -1})
	conn := e.conn()
	counts := func() (n [3]int) {
		err := conn.QueryRow(ctxT(t, 10*time.Second), `SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM river_job WHERE kind = 'rexec_exec'),
			(SELECT count(*) FROM audit_events)`).Scan(&n[0], &n[1], &n[2])
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	dryRun := `{"argv": ["true"], "node": "^web-1$", "dry_run": true}`
	huge := func() io.Reader {
		return io.MultiReader(strings.NewReader(`{"reason": "`), bytes.NewReader(bytes.Repeat([]byte("x"), 3<<20)), strings.NewReader(`"}`))
	}
	const someRun = "/v1/runs/00000000-0000-0000-0000-000000000000"
	for _, tc := range []struct {
		note    string
		req     request
		status  int
		code    string // "" for net/http's own plain-text answers
		msg     string
		noStore bool
	}{
		// Content-Type: JSON, or none; anything else is 415.
		{note: "no Content-Type is taken as JSON", req: request{method: "POST", url: "/v1/runs", body: strings.NewReader(dryRun)}, status: 200},
		{note: "JSON with a charset", req: request{method: "POST", url: "/v1/runs", header: map[string]string{"Content-Type": "application/json; charset=utf-8"}, body: strings.NewReader(dryRun)}, status: 200},
		{note: "a form, as curl -d sends", req: request{method: "POST", url: "/v1/runs", header: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, body: strings.NewReader(dryRun)},
			status: 415, code: "unsupported_media_type", msg: "Content-Type: application/json, not application/x-www-form-urlencoded"},
		{note: "text", req: request{method: "POST", url: "/v1/runs", header: map[string]string{"Content-Type": "text/plain"}, body: strings.NewReader(dryRun)},
			status: 415, code: "unsupported_media_type", msg: "not text/plain"},
		// The body.
		{note: "malformed JSON", req: request{method: "POST", url: "/v1/runs", body: strings.NewReader(`{"argv": ["true"`)}, status: 400, code: "invalid", msg: "malformed JSON body"},
		{note: "an unknown field", req: request{method: "POST", url: "/v1/runs", body: strings.NewReader(`{"argv": ["true"], "nodes": "^web-1$"}`)},
			status: 400, code: "invalid", msg: `unknown field "nodes"`},
		{note: "a body over the limit", req: request{method: "POST", url: "/v1/runs", body: huge()}, status: 413, code: "too_large", msg: "request body over 2097152 bytes"},
		{note: "a chunked body over the limit", req: request{method: "POST", url: "/v1/runs", body: huge(), chunked: true}, status: 413, code: "too_large", msg: "request body over 2097152 bytes"},
		// Query parameters.
		{note: "limit 0", req: request{url: "/v1/runs?limit=0"}, status: 400, code: "invalid", msg: "limit must be between 1 and 500"},
		{note: "limit 501", req: request{url: "/v1/runs?limit=501"}, status: 400, code: "invalid", msg: "limit must be between 1 and 500"},
		{note: "limit not a number", req: request{url: "/v1/runs?limit=ten"}, status: 400, code: "invalid", msg: "limit must be between 1 and 500"},
		{note: "a malformed cursor", req: request{url: "/v1/runs?before=yesterday"}, status: 400, code: "invalid", msg: "malformed before cursor"},
		{note: "a negative stream cursor", req: request{url: someRun + "/stream?cursor=-1"}, status: 400, code: "invalid", msg: "cursor must be a non-negative number"},
		{note: "a stream wait that is no duration", req: request{url: someRun + "/stream?wait=soon"}, status: 400, code: "invalid", msg: "wait:"},
		// Over-long requests: net/http's 431, before any handler.
		{note: "an over-long header", req: request{url: "/v1/runs", header: map[string]string{"X-Padding": strings.Repeat("p", 100<<10)}}, status: 431},
		{note: "an over-long URL", req: request{url: "/v1/runs?state=" + strings.Repeat("q", 100<<10)}, status: 431},
	} {
		t.Run(tc.note, func(t *testing.T) {
			before := counts()
			tc.req.url, tc.req.token = e.addr+tc.req.url, e.token
			a := send(t, nil, tc.req)
			if a.status != tc.status {
				t.Fatalf("%d %q, want %d", a.status, head(a.body, 300), tc.status)
			}
			if tc.code != "" {
				if eb := a.errorBody(t); eb.Code != tc.code || !strings.Contains(eb.Error, tc.msg) {
					t.Errorf("error %+v, want %s with %q", eb, tc.code, tc.msg)
				}
			}
			if after := counts(); after != before {
				t.Errorf("rows (runs, jobs, audit) went from %v to %v", before, after)
			}
		})
	}
}
