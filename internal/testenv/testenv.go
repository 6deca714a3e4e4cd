// Package testenv is the shared environment of rexec's integration tests: a
// real PostgreSQL and a real Consul cluster, started once per test package
// from TestMain and torn down on every exit path, with per-test isolation (a
// database of its own, a KV prefix of its own).
//
// A package opts in with
//
//	func TestMain(m *testing.M) {
//		testenv.Main(m, testenv.Options{Postgres: true, Consul: &localconsul.Config{...}})
//	}
//
// Nothing here skips: a missing dependency fails the package.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rexec/rexec/internal/localconsul"
	"github.com/rexec/rexec/internal/localpg"
)

// DatabaseURLEnv names an existing PostgreSQL server (a URL to a database
// the tests may use to CREATE DATABASE) to use instead of starting one.
const DatabaseURLEnv = "REXEC_TEST_DATABASE_URL"

// Options says what a test package needs.
type Options struct {
	// Postgres starts (or connects to) a PostgreSQL server.
	Postgres bool
	// Consul, when set, starts a cluster with this configuration.
	Consul *localconsul.Config
}

var (
	env struct {
		pgURL   string // admin URL of the server
		cluster *localconsul.Cluster
	}
	counter atomic.Int64
	runID   = randomHex(4)
)

// Main starts what opts asks for, runs the tests, stops everything and exits.
func Main(m *testing.M, opts Options) {
	os.Exit(Run(m, opts))
}

// Run is Main for a TestMain that has its own clean-up to do before it
// exits: it returns the exit code instead of exiting.
func Run(m *testing.M, opts Options) int {
	// A `go test -fuzz` worker process runs nothing but inputs of one fuzz
	// target, and fuzz targets here are pure logic: a Postgres and a
	// Consul cluster per worker would only cost a gigabyte and a minute
	// each. The coordinating process still starts them for its tests.
	flag.Parse()
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var stops []func()
	stopAll := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
		stops = nil
	}
	defer stopAll()

	// An interrupted run still tears down; children also die with us
	// through their parent-death signal if we are killed outright.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	go func() {
		if _, ok := <-sig; ok {
			stopAll()
			os.Exit(1)
		}
	}()

	if opts.Postgres {
		if url := os.Getenv(DatabaseURLEnv); url != "" {
			env.pgURL = url
		} else {
			srv, err := localpg.Start(ctx, localpg.Config{})
			if err != nil {
				fmt.Fprintln(os.Stderr, "testenv:", err)
				return 1
			}
			stops = append(stops, srv.Stop)
			env.pgURL = srv.URL("postgres")
		}
	}
	if opts.Consul != nil {
		cfg := *opts.Consul
		if cfg.Logger == nil {
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		}
		c, err := localconsul.Start(ctx, cfg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testenv:", err)
			return 1
		}
		stops = append(stops, c.Stop)
		env.cluster = c
	}
	cancel()
	return m.Run()
}

// Cluster returns the package's Consul cluster.
func Cluster(t testing.TB) *localconsul.Cluster {
	t.Helper()
	if env.cluster == nil {
		t.Fatal("testenv: no Consul cluster; set Options.Consul in TestMain")
	}
	return env.cluster
}

// Database creates an empty database for this test and returns its URL; it
// is dropped when the test ends.
func Database(t testing.TB) string {
	t.Helper()
	if env.pgURL == "" {
		t.Fatal("testenv: no PostgreSQL; set Options.Postgres in TestMain")
	}
	name := fmt.Sprintf("rexec_test_%s_%d", runID, counter.Add(1))
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, env.pgURL)
	if err != nil {
		t.Fatalf("testenv: connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("testenv: create database: %v", err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, env.pgURL)
		if err != nil {
			t.Errorf("testenv: connect: %v", err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("testenv: drop database: %v", err)
		}
	})
	return withDatabase(env.pgURL, name)
}

// withDatabase replaces the database of a postgres:// URL.
func withDatabase(url, db string) string {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return url
	}
	q := ""
	if i := strings.Index(url, "?"); i >= 0 {
		q = url[i:]
	}
	user := cfg.User
	if cfg.Password != "" {
		user += ":" + cfg.Password
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s%s", user, cfg.Host, cfg.Port, db, q)
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// Prefix returns a KV prefix that no other test uses.
func Prefix(t testing.TB) string {
	name := unsafeChars.ReplaceAllString(t.Name(), "-")
	if len(name) > 40 {
		name = name[:40]
	}
	return fmt.Sprintf("rexec-test/%s-%s-%d", name, runID, counter.Add(1))
}

// Logger returns a logger that writes through t.Log.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
