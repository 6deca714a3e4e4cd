package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/jackc/pgx/v5"

	"github.com/rexec/rexec/internal/childproc"
	"github.com/rexec/rexec/internal/localconsul"
	"github.com/rexec/rexec/internal/testenv"
)

// bins holds the rexec binaries, built once for the package.
var bins struct{ svc, cli, consul string }

// auditKey is the package's audit signing key (a file) and its public key:
// every rexec-svc signs with it, every rexec-cli verifies with it.
var auditKey struct{ file, pub string }

// The cluster: five clients, one of which never acknowledges.
var agents = []localconsul.AgentConfig{
	{Name: "web-1", Services: []localconsul.Service{{Name: "web", Tags: []string{"v1", "blue"}}}},
	{Name: "web-2", Services: []localconsul.Service{{Name: "web", Tags: []string{"v2"}}}},
	{Name: "db-1", Services: []localconsul.Service{{Name: "db", Tags: []string{"primary"}}}},
	{Name: "app-1", Services: []localconsul.Service{{Name: "app"}}},
	{Name: "noexec-1", DisableRemoteExec: true, Services: []localconsul.Service{{Name: "batch"}}},
}

// execNodes selects every node with remote exec on.
const execNodes = "^(consul-server|web-1|web-2|db-1|app-1)$"

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "rexec-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := localconsul.RepoRoot()
	if err == nil {
		cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/rexec-svc", "./cmd/rexec-cli")
		cmd.Dir = root
		var out []byte
		out, err = cmd.CombinedOutput()
		if err != nil {
			err = fmt.Errorf("build: %v\n%s", err, out)
		}
	}
	if err == nil {
		bins.consul, err = localconsul.FindBinary(context.Background())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	bins.svc, bins.cli = filepath.Join(dir, "rexec-svc"), filepath.Join(dir, "rexec-cli")
	auditKey.file = filepath.Join(dir, "audit.key")
	out, err := exec.Command(bins.svc, "audit", "keygen", "-name", "rexec-e2e", "-out", auditKey.file).Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: audit keygen:", err)
		return 1
	}
	auditKey.pub = strings.TrimSpace(string(out))
	return testenv.Run(m, testenv.Options{Postgres: true, Consul: &localconsul.Config{Clients: agents}})
}

// env is one test's rexec: its own database, tenant, token and server.
type env struct {
	t testing.TB
	// db is reached as two roles: `rexec-svc migrate` and the test's own
	// handle (conn) connect as the owner, every other rexec-svc command as
	// the service role.
	db      testenv.DB
	addr    string // http://host:port, or https:// when serve has TLS
	token   string
	svcLog  string // log file of the last serve or worker started
	prefix  string
	cluster *localconsul.Cluster
	consul  *api.Client
	// serveProc is the serve process (for signals), once started.
	serveProc *childproc.Process
}

type envOpts struct {
	workers  int    // workers in the serve process; -1 for none (API only)
	tenant   string // default "acme"
	leaseTTL time.Duration
	// db (the owner's URL) and cluster replace the package's (a test that
	// stops them has its own); tenantAgent names the agent the tenant talks
	// to (default web-1).
	db          string
	cluster     *localconsul.Cluster
	tenantAgent string
	// serveArgs are added to the serve command.
	serveArgs []string
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	cl := o.cluster
	if cl == nil {
		cl = testenv.Cluster(t)
	}
	db := testenv.DBFor(o.db)
	if o.db == "" {
		db = testenv.NewDB(t)
	}
	if o.tenantAgent == "" {
		o.tenantAgent = "web-1"
	}
	e := &env{t: t, db: db, cluster: cl, prefix: "_rexec/" + strings.ReplaceAll(testenv.Prefix(t), "/", "-")}
	ca, err := api.NewClient(&api.Config{Address: cl.Agent(o.tenantAgent).HTTPAddr()})
	if err != nil {
		t.Fatal(err)
	}
	e.consul = ca
	if o.tenant == "" {
		o.tenant = "acme"
	}
	e.svc("migrate")
	e.svc("tenant", "create", o.tenant, "-consul-addr", cl.Agent(o.tenantAgent).HTTPAddr(), "-prefix", e.prefix)
	e.token = e.newToken(o.tenant, "alice", "submitter,auditor")
	workers := 4
	if o.workers < 0 {
		workers = 0
	} else if o.workers > 0 {
		workers = o.workers
	}
	args := append([]string{"serve", "-listen", "127.0.0.1:0", "-workers", strconv.Itoa(workers), "-worker-id", "serve", "-lease-ttl", cmpDur(o.leaseTTL)}, o.serveArgs...)
	e.addr = e.start(args...)
	return e
}

func cmpDur(d time.Duration) string {
	if d == 0 {
		return "10s"
	}
	return d.String()
}

// svc runs a rexec-svc command to completion and returns its stdout.
func (e *env) svc(args ...string) string {
	e.t.Helper()
	cmd := e.svcCmd(args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		e.t.Fatalf("rexec-svc %v: %v\n%s", args, err, stderr.String())
	}
	return stdout.String()
}

// svcCmd is a rexec-svc command on the test's database, not yet run.
func (e *env) svcCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(bins.svc, args...)
	cmd.Env = append(os.Environ(), "REXEC_DATABASE_URL="+e.dbURL(args[0]))
	return cmd
}

// dbURL is the URL a rexec-svc command connects with: migrate as the
// owner, everything else (serve, worker, tenant, token) as the service
// role, as the README says.
func (e *env) dbURL(command string) string {
	if command == "migrate" {
		return e.db.Owner
	}
	return e.db.Service
}

func (e *env) newToken(tenant, principal, roles string) string {
	e.t.Helper()
	out := strings.TrimSpace(e.svc("token", "create", "-tenant", tenant, "-principal", principal, "-roles", roles))
	return out[strings.LastIndex(out, "\n")+1:]
}

var listening = regexp.MustCompile(`msg=listening addr=(\S+)(?: scheme=(https?))?`)

// start runs a long-lived rexec-svc command (serve or worker), stopped at
// the end of the test; for serve it returns the API's address.
func (e *env) start(args ...string) string {
	e.t.Helper()
	p, logPath := e.startProc(args...)
	e.svcLog = logPath
	if args[0] != "serve" {
		return ""
	}
	e.serveProc = p
	ctx := ctxT(e.t, 30*time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		if m := listening.FindSubmatch(b); m != nil {
			if len(m[2]) > 0 {
				return string(m[2]) + "://" + string(m[1])
			}
			return "http://" + string(m[1])
		}
		if exited, err := p.Exited(); exited {
			e.t.Fatalf("rexec-svc %v exited: %v\n%s", args, err, b)
		}
		if ctx.Err() != nil {
			e.t.Fatalf("rexec-svc %v did not start listening:\n%s", args, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) startProc(args ...string) (*childproc.Process, string) {
	e.t.Helper()
	return e.startProcEnv(nil, args...)
}

// startProcEnv is startProc with extra environment variables.
func (e *env) startProcEnv(env []string, args ...string) (*childproc.Process, string) {
	e.t.Helper()
	logPath := filepath.Join(e.t.TempDir(), "svc.log")
	p, err := childproc.Start(bins.svc, args, childproc.Options{
		// Metrics on a port of their own: a worker's default port would
		// be taken by the test's other workers.
		Env: append([]string{"REXEC_DATABASE_URL=" + e.dbURL(args[0]), "REXEC_LOG_LEVEL=debug",
			"REXEC_AUDIT_KEY_FILE=" + auditKey.file, "REXEC_AUDIT_INTERVAL=200ms", "REXEC_METRICS_LISTEN=127.0.0.1:0"}, env...),
		LogPath: logPath,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		p.Stop(syscall.SIGTERM, 15*time.Second)
		if e.t.Failed() {
			b, _ := os.ReadFile(logPath)
			e.t.Logf("rexec-svc %v log:\n%s", args, tail(string(b), 60))
		}
	})
	return p, logPath
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// cliResult is what a rexec-cli invocation printed and its exit code.
type cliResult struct {
	stdout, stderr string
	code           int
}

func (e *env) cli(stdin []byte, args ...string) cliResult {
	e.t.Helper()
	return e.cliAs(e.token, stdin, args...)
}

func (e *env) cliAs(token string, stdin []byte, args ...string) cliResult {
	e.t.Helper()
	cmd := exec.Command(bins.cli, args...)
	cmd.Env = append(os.Environ(), "REXEC_ADDR="+e.addr, "REXEC_TOKEN="+token, "REXEC_AUDIT_PUBKEY="+auditKey.pub)
	return e.runCmd(cmd, stdin)
}

// runCmd runs cmd with stdin and returns what it printed and its exit code.
func (e *env) runCmd(cmd *exec.Cmd, stdin []byte) cliResult {
	e.t.Helper()
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		e.t.Fatalf("%s: %v", cmd.Path, err)
	}
	return res
}

// consulExec runs the real consul exec on the same agent and prefix.
func (e *env) consulExec(stdin []byte, args ...string) cliResult {
	e.t.Helper()
	cmd := exec.Command(bins.consul, append([]string{"exec", "-http-addr=" + e.cluster.Agent("web-1").HTTPAddr(), "-prefix", e.prefix}, args...)...)
	return e.runCmd(cmd, stdin)
}

// report is exec-format output parsed per node.
type report struct {
	lines map[string][]string
	exits map[string]int
	other []string
}

var (
	outLine  = regexp.MustCompile(`^(    |==> )([^:]+):(?: (.*))?$`)
	exitText = regexp.MustCompile(`^finished with exit code (-?\d+)$`)
)

func parseReport(s string) report {
	r := report{lines: map[string][]string{}, exits: map[string]int{}}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		m := outLine.FindStringSubmatch(sc.Text())
		switch {
		case m == nil:
			r.other = append(r.other, sc.Text())
		case m[1] == "    ":
			r.lines[m[2]] = append(r.lines[m[2]], m[3])
		default:
			if em := exitText.FindStringSubmatch(m[3]); em != nil {
				r.exits[m[2]], _ = strconv.Atoi(em[1])
			} else {
				r.other = append(r.other, sc.Text())
			}
		}
	}
	return r
}

// conn connects to the test's database as its owner, to inspect and
// tamper, for the rest of the test.
func (e *env) conn() *pgx.Conn {
	e.t.Helper()
	conn, err := pgx.Connect(context.Background(), e.db.Owner)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// kvKeys lists what is left under the test's prefix.
func (e *env) kvKeys() []string {
	e.t.Helper()
	keys, _, err := e.consul.KV().Keys(e.prefix+"/", "", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return keys
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
