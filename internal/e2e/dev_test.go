package e2e_test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/childproc"
)

var (
	exportLine = regexp.MustCompile(`(?m)^export (REXEC_ADDR|REXEC_TOKEN|CONSUL_HTTP_ADDR|REXEC_AUDIT_PUBKEY)=(\S+)$`)
	devDBLine  = regexp.MustCompile(`database postgres://[^@]+@([^/]+)/`)
)

// TestDevMode runs the README's `rexec-svc dev`: it prints the export lines,
// rexec-cli works with them, and Ctrl-C leaves nothing running.
func TestDevMode(t *testing.T) {
	t.Parallel()
	logPath := filepath.Join(t.TempDir(), "dev.log")
	p, err := childproc.Start(bins.svc, []string{"dev", "-listen", "127.0.0.1:0"}, childproc.Options{LogPath: logPath})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	ctx := ctxT(t, 2*time.Minute)
	vars := map[string]string{}
	var log []byte
	for len(vars) < 4 {
		log, _ = os.ReadFile(logPath)
		for _, m := range exportLine.FindAllSubmatch(log, -1) {
			vars[string(m[1])] = string(m[2])
		}
		if exited, err := p.Exited(); exited || ctx.Err() != nil {
			t.Fatalf("dev mode did not come up (exited %t: %v):\n%s", exited, err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	db := devDBLine.FindSubmatch(log)
	if db == nil {
		t.Fatalf("no database address in:\n%s", log)
	}

	cmd := exec.Command(bins.cli, "exec", "echo hello; basename $PWD")
	cmd.Env = append(os.Environ(), "REXEC_ADDR="+vars["REXEC_ADDR"], "REXEC_TOKEN="+vars["REXEC_TOKEN"])
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("rexec-cli exec in dev mode: %v\n%s", err, out)
	}
	for _, node := range []string{"consul-server", "web-1", "web-2", "db-1"} {
		if !strings.Contains(string(out), "    "+node+": "+node+"\n") {
			t.Errorf("no output from %s:\n%s", node, out)
		}
	}
	if !strings.HasSuffix(string(out), "4 / 4 node(s) completed / acknowledged\n") {
		t.Errorf("closing line:\n%s", out)
	}

	// The dev key signs the audit log, and the printed public key checks it.
	for {
		cmd := exec.Command(bins.cli, "audit", "verify")
		cmd.Env = append(os.Environ(), "REXEC_ADDR="+vars["REXEC_ADDR"], "REXEC_TOKEN="+vars["REXEC_TOKEN"], "REXEC_AUDIT_PUBKEY="+vars["REXEC_AUDIT_PUBKEY"])
		out, err := cmd.CombinedOutput()
		if err == nil && strings.Contains(string(out), "audit log rexec-dev/tenant/dev verified") {
			break
		}
		// The run's events are logged about half a second after they commit.
		if ctx.Err() != nil {
			t.Fatalf("audit verify in dev mode: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Ctrl-C: everything stops, and nothing answers any more.
	p.Stop(syscall.SIGINT, 30*time.Second)
	if exited, err := p.Exited(); !exited || err != nil {
		t.Errorf("dev mode after SIGINT: exited %t, %v", exited, err)
	}
	for _, addr := range []string{strings.TrimPrefix(vars["REXEC_ADDR"], "http://"), vars["CONSUL_HTTP_ADDR"], string(db[1])} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still answers after Ctrl-C", addr)
		}
	}
}
