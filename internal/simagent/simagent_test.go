package simagent_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/simagent"
	"github.com/rexec/rexec/internal/testenv"
)

// TestEngineOnVirtualNodes runs a real rexec engine on 50 virtual nodes and
// on the 4 real agents with the same command, and checks that both end the
// same way: every node exited with the command's code and output, and
// the engine needed about as many Consul requests per node.
func TestEngineOnVirtualNodes(t *testing.T) {
	ctx := ctxT(t, 3*time.Minute)
	const code = 3
	// Output over two chunks, to see sequence numbers at work.
	body := func(node string) string { return node + "\n" + strings.Repeat("x", simagent.ChunkSize) + "\n" }
	sim := startSim(t, ctx, simagent.Config{
		Nodes: virtualNodes("sim", 50),
		Command: func(node string, job simagent.Job) simagent.Reply {
			return simagent.Reply{Output: []byte(body(node)), ExitCode: code}
		},
	})

	prefix := testenv.Prefix(t)
	real := fmt.Sprintf(`n=$(basename $PWD); printf '%%s\n%%s\n' "$n" "$(head -c %d /dev/zero | tr '\0' x)"; exit %d`, simagent.ChunkSize, code)
	tests := []struct {
		note  string
		spec  consul.Spec
		nodes int
	}{
		{"real agents", consul.Spec{Argv: []string{real}, NodeFilter: "^real-", Prefix: prefix}, 4},
		{"virtual nodes", consul.Spec{Argv: []string{"simulated"}, NodeFilter: "^sim-", Prefix: prefix}, 50},
		{"virtual nodes by service and tag", consul.Spec{Argv: []string{"simulated"}, NodeFilter: "^sim-", ServiceFilter: "^web$", TagFilter: "^v1$", Prefix: prefix}, 25},
	}
	for _, tc := range tests {
		t.Run(tc.note, func(t *testing.T) {
			cnt := testenv.NewHTTPCounter()
			c := engine(t, cnt)
			targets, err := c.Resolve(ctx, tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if len(targets) != tc.nodes {
				t.Fatalf("resolved %d targets, want %d", len(targets), tc.nodes)
			}
			col := &collector{}
			start := time.Now()
			res, err := c.Run(ctx, tc.spec, targets, col.handle)
			if err != nil {
				t.Fatal(err)
			}
			if res.Outcome != consul.OutcomeCompleted {
				t.Fatalf("outcome %s, want completed", res.Outcome)
			}
			for _, n := range res.Nodes {
				if n.State != consul.NodeExited || n.ExitCode != code {
					t.Errorf("%s: %s, exit %d; want exited %d", n.Node, n.State, n.ExitCode, code)
				}
				if got := col.output(n.Node); got != body(n.Node) {
					t.Errorf("%s: output %q..., want %q...", n.Node, got[:min(len(got), 20)], body(n.Node)[:20])
				}
			}
			t.Logf("%s: %d nodes in %v, %d events, %d requests (%.1f per node), %d bytes read",
				tc.note, len(res.Nodes), time.Since(start).Round(time.Millisecond), res.Events,
				cnt.Requests.Load(), float64(cnt.Requests.Load())/float64(tc.nodes), cnt.Bytes.Load())
		})
	}
	st := sim.Stats()
	if st.Acks != 75 || st.Exits != 75 || st.Chunks != 150 || st.SpecMissing != 0 || st.WriteFailed != 0 {
		t.Errorf("simulator stats %+v, want 75 acks and exits, 150 chunks, nothing missing or failed", st)
	}
	t.Logf("simulator: %+v", st)
}
