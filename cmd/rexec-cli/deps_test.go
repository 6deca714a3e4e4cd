package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestCLICarriesNoServer: rexec-cli is built from the client and the API's
// JSON bodies alone. The server's packages (the service, its database,
// policy engine, queue and metrics) once came in through the API package
// and made every invocation start in 36 ms rather than 20 here, which a
// trivial run end to end pays twice (exec, then its stream).
func TestCLICarriesNoServer(t *testing.T) {
	// go test puts its own go command first on the PATH.
	out, err := exec.Command("go", "list", "-deps", "github.com/rexec/rexec/cmd/rexec-cli").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	forbidden := []string{
		"github.com/rexec/rexec/internal/api", "github.com/rexec/rexec/internal/service",
		"github.com/rexec/rexec/internal/store", "github.com/rexec/rexec/internal/jobs",
		"github.com/rexec/rexec/internal/policy", "github.com/rexec/rexec/internal/consul",
		"github.com/rexec/rexec/internal/metrics",
		"github.com/open-policy-agent/", "github.com/riverqueue/", "github.com/prometheus/",
		"github.com/hashicorp/consul/",
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if dep == f || strings.HasSuffix(f, "/") && strings.HasPrefix(dep, f) {
				t.Errorf("rexec-cli depends on %s", dep)
			}
		}
	}
}
