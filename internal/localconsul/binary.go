package localconsul

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// BinaryEnv names the environment variable that points at a Consul agent
// binary to use instead of the project's own build.
const BinaryEnv = "REXEC_CONSUL_BIN"

// moduleLine identifies the project's root go.mod while walking up from the
// working directory.
const moduleLine = "module github.com/rexec/rexec\n"

// FindBinary returns the path of the Consul agent binary: $REXEC_CONSUL_BIN,
// then the cached build in <repo>/bin/consul, then consul on PATH. When none
// exists and the repository can be found, it builds bin/consul from the pinned
// tools/consul module (a few minutes, once).
func FindBinary(ctx context.Context) (string, error) {
	if p := os.Getenv(BinaryEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", BinaryEnv, p, err)
		}
		return p, nil
	}
	root, rootErr := RepoRoot()
	if rootErr == nil {
		cached := filepath.Join(root, "bin", "consul")
		if _, err := os.Stat(cached); err == nil {
			return cached, nil
		}
	}
	if p, err := exec.LookPath("consul"); err == nil {
		return p, nil
	}
	if rootErr != nil {
		return "", fmt.Errorf("no consul binary: set %s or put consul on PATH (%v)", BinaryEnv, rootErr)
	}
	return BuildBinary(ctx, root)
}

// BuildBinary builds <root>/bin/consul from the tools/consul module. Concurrent
// callers (test packages run in parallel) serialise on a lock file, and the
// second one finds the binary already built.
func BuildBinary(ctx context.Context, root string) (string, error) {
	out := filepath.Join(root, "bin", "consul")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", fmt.Errorf("build consul: %w", err)
	}
	lock, err := os.OpenFile(out+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("build consul: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("build consul: lock: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck // released on close anyway
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	tmp := out + ".tmp"
	cmd := exec.CommandContext(ctx, "go", "build", "-o", tmp, "github.com/hashicorp/consul")
	cmd.Dir = filepath.Join(root, "tools", "consul")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build consul in %s: %w\n%s", cmd.Dir, err, b)
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", fmt.Errorf("build consul: %w", err)
	}
	return out, nil
}

// RepoRoot walks up from the working directory to the project's go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(b), moduleLine) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("rexec repository root not found above the working directory")
		}
		dir = parent
	}
}
