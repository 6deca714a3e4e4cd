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
// A test's database is reached as two roles, as in production: the owner
// (the server's superuser here), which migrates and which tests use to
// inspect and tamper, and ServiceRole, which the code under test uses
// (Migrated, NewDB).
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
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rexec/rexec/internal/localconsul"
	"github.com/rexec/rexec/internal/localpg"
)

// DatabaseURLEnv names an existing PostgreSQL server (a URL to a database
// the tests may use to CREATE DATABASE, and CREATE ROLE unless ServiceRole
// exists) to use instead of starting one. ServiceRole must be able to log
// in to it without a password.
const DatabaseURLEnv = "REXEC_TEST_DATABASE_URL"

// ServiceRole is the role the code under test connects as: the default of
// `rexec-svc migrate -service-role` (store.ServiceRoleDefault, which
// store's tests check it equals). Roles are the server's, so every test
// database shares it.
const ServiceRole = "rexec_service"

// MigrateFunc migrates the database pool is connected to as its owner and
// grants serviceRole the service's privileges: store.MigrateAndGrant
// (testenv cannot import store, whose own tests use testenv).
type MigrateFunc func(ctx context.Context, pool *pgxpool.Pool, serviceRole string, logger *slog.Logger) error

// Options says what a test package needs.
type Options struct {
	// Postgres starts (or connects to) a PostgreSQL server.
	Postgres bool
	// Consul, when set, starts a cluster with this configuration.
	Consul *localconsul.Config
	// Migrate is how Migrated migrates (store.MigrateAndGrant).
	Migrate MigrateFunc
}

var (
	env struct {
		pgURL   string // admin URL of the server
		cluster *localconsul.Cluster
		migrate MigrateFunc
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
	env.migrate = opts.Migrate
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

// Database creates an empty database for this test and returns its URL as
// the server's superuser; it is dropped when the test ends.
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

// DB is a test's database as each of rexec's two roles reaches it.
type DB struct {
	// Owner is its URL as the owner of its tables (the server's
	// superuser): what migrates, and what a test that acts as the DBA
	// (inspecting, tampering) connects as.
	Owner string
	// Service is its URL as ServiceRole: what rexec's service, workers
	// and admin commands connect as, once the database is migrated.
	Service string
}

// DBFor returns the URLs of the database ownerURL names.
func DBFor(ownerURL string) DB {
	return DB{Owner: ownerURL, Service: AsRole(ownerURL, ServiceRole)}
}

// NewDB creates an empty database for this test (Database); migrate it as
// Owner (`rexec-svc migrate`) before connecting as Service.
func NewDB(t testing.TB) DB {
	t.Helper()
	return DBFor(Database(t))
}

// Migrated creates a database for this test, migrates it as its owner and
// grants ServiceRole the service's privileges (Options.Migrate), and
// returns its URLs: the code under test connects to Service.
func Migrated(t testing.TB) DB {
	t.Helper()
	if env.migrate == nil {
		t.Fatal("testenv: no Options.Migrate in TestMain (store.MigrateAndGrant)")
	}
	db := NewDB(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, db.Owner)
	if err != nil {
		t.Fatalf("testenv: connect: %v", err)
	}
	defer pool.Close()
	if err := env.migrate(ctx, pool, ServiceRole, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("testenv: migrate: %v", err)
	}
	return db
}

// AsRole returns a postgres:// URL for the same server and database as
// rawURL, as role, without a password.
func AsRole(rawURL, role string) string {
	return rewriteURL(rawURL, url.User(role), "")
}

// withDatabase replaces the database of a postgres:// URL.
func withDatabase(rawURL, db string) string {
	return rewriteURL(rawURL, nil, db)
}

// rewriteURL rebuilds a database URL with another user (unless nil) and
// database (unless empty), keeping its query.
func rewriteURL(rawURL string, user *url.Userinfo, db string) string {
	cfg, err := pgx.ParseConfig(rawURL)
	if err != nil {
		return rawURL
	}
	q := ""
	if i := strings.Index(rawURL, "?"); i >= 0 {
		q = rawURL[i:]
	}
	if user == nil {
		user = url.User(cfg.User)
		if cfg.Password != "" {
			user = url.UserPassword(cfg.User, cfg.Password)
		}
	}
	if db == "" {
		db = cfg.Database
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
