// Command rexec-svc is rexec's server: the HTTP API, the workers that carry
// runs out, and the administrative commands around them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/rexec/rexec/internal/store"
)

const usage = `Usage: rexec-svc <command> [flags]

Commands:
  migrate        apply River's and rexec's database migrations as the tables' owner and
                 grant the service's database role its privileges (safe to repeat)
  serve          run the HTTP API and workers
  worker         run workers only
  tenant create  create a tenant
  token create   create an API token for a principal (printed alone on the last line)
  token revoke   revoke an API token by its ID
  dev            run everything on this machine for a first look
  policy test    run a policy directory's Rego tests (default: the embedded policy)
  audit keygen   make the key that signs the audit log's checkpoints

Every flag has an environment fallback, named in its help (rexec-svc <command> -h).
`

// gcPercentDefault is the garbage collector's target (GOGC) unless the
// environment sets GOGC. rexec-svc's live heap is small — tens of MiB with
// hundreds of runs in flight — and at Go's default of 100 the collector
// ran so often that it took about a fifth of the API's CPU at 500
// submissions a second (BenchmarkSubmit: 1.55 ms of CPU a submission at
// 100, 1.2 ms at 400). The price is a heap that may grow to five times
// what is live instead of twice.
const gcPercentDefault = 400

func main() {
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(gcPercentDefault)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "rexec-svc:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	cmd, rest := args[0], args[1:]
	switch {
	case cmd == "migrate":
		return cmdMigrate(ctx, rest, stderr)
	case cmd == "serve":
		return cmdServe(ctx, rest, stderr, true)
	case cmd == "worker":
		return cmdServe(ctx, rest, stderr, false)
	case cmd == "tenant" && len(rest) > 0 && rest[0] == "create":
		return cmdTenantCreate(ctx, rest[1:], stdout, stderr)
	case cmd == "token" && len(rest) > 0 && rest[0] == "create":
		return cmdTokenCreate(ctx, rest[1:], stdout, stderr)
	case cmd == "token" && len(rest) > 0 && rest[0] == "revoke":
		return cmdTokenRevoke(ctx, rest[1:], stdout, stderr)
	case cmd == "dev":
		return cmdDev(ctx, rest, stdout, stderr)
	case cmd == "policy" && len(rest) > 0 && rest[0] == "test":
		return cmdPolicyTest(ctx, rest[1:], stdout, stderr)
	case cmd == "audit" && len(rest) > 0 && rest[0] == "keygen":
		return cmdAuditKeygen(ctx, rest[1:], stdout, stderr)
	case cmd == "-h" || cmd == "--help" || cmd == "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", strings.Join(args[:min(2, len(args))], " "))
}

// flagSet is a flag.FlagSet whose flags fall back to environment variables.
type flagSet struct {
	*flag.FlagSet
	env map[string]string // flag name -> variable
}

func newFlagSet(name string, stderr io.Writer) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return &flagSet{FlagSet: fs, env: map[string]string{}}
}

// String defines a string flag with an environment fallback.
func (f *flagSet) String(name, env, def, help string) *string {
	f.env[name] = env
	return f.FlagSet.String(name, def, help+" ($"+env+")")
}

// Int defines an int flag with an environment fallback.
func (f *flagSet) Int(name, env string, def int, help string) *int {
	f.env[name] = env
	return f.FlagSet.Int(name, def, help+" ($"+env+")")
}

// Duration defines a duration flag with an environment fallback.
func (f *flagSet) Duration(name, env string, def time.Duration, help string) *time.Duration {
	f.env[name] = env
	return f.FlagSet.Duration(name, def, help+" ($"+env+")")
}

// Parse parses args, then fills flags not given from the environment.
func (f *flagSet) Parse(args []string) error {
	if err := f.FlagSet.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	for name, env := range f.env {
		if v, ok := os.LookupEnv(env); ok && !given[name] {
			if err := f.Set(name, v); err != nil {
				return fmt.Errorf("$%s: %w", env, err)
			}
		}
	}
	return nil
}

func (f *flagSet) databaseURL() *string {
	return f.String("database-url", "REXEC_DATABASE_URL", "", "PostgreSQL URL")
}

func (f *flagSet) logLevel() *string {
	return f.String("log-level", "REXEC_LOG_LEVEL", "info", "log level: debug, info, warn, error")
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// openStore connects to the database that -database-url names.
func openStore(ctx context.Context, url string) (*store.Store, error) {
	if url == "" {
		return nil, errors.New("no database: set -database-url or REXEC_DATABASE_URL")
	}
	return store.Open(ctx, url)
}
