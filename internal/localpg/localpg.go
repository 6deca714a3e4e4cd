// Package localpg runs a throw-away PostgreSQL server for tests and
// `rexec-svc dev`: initdb into a temporary directory, a free loopback port,
// fsync off. As root it runs the server as the `postgres` user, since
// Postgres refuses to run as root.
package localpg

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rexec/rexec/internal/childproc"
)

// Defaults.
const (
	BinDirDefault       = "/usr/lib/postgresql/15/bin"
	StartTimeoutDefault = 30 * time.Second
)

// BinDirEnv overrides where the PostgreSQL server binaries are.
const BinDirEnv = "REXEC_PG_BIN"

// Config describes the server.
type Config struct {
	// BinDir holds initdb and postgres. Default: $REXEC_PG_BIN, then
	// BinDirDefault, then the directory of pg_config --bindir.
	BinDir string
	// StartTimeout bounds the wait for the server to accept connections.
	StartTimeout time.Duration
	// Logger receives progress messages. Default: discard.
	Logger *slog.Logger
}

// Server is a running ephemeral PostgreSQL.
type Server struct {
	dir  string
	port int
	proc *childproc.Process
}

func (c Config) withDefaults() Config {
	if c.BinDir == "" {
		c.BinDir = os.Getenv(BinDirEnv)
	}
	if c.BinDir == "" {
		c.BinDir = BinDirDefault
		if _, err := os.Stat(filepath.Join(c.BinDir, "postgres")); err != nil {
			if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
				c.BinDir = strings.TrimSpace(string(out))
			}
		}
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = StartTimeoutDefault
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Start initialises and starts a new server. On error nothing is left behind.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	for _, b := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, b)); err != nil {
			return nil, fmt.Errorf("localpg: PostgreSQL server binaries not found in %s (set %s): %w", cfg.BinDir, BinDirEnv, err)
		}
	}
	dir, err := os.MkdirTemp("", "rexec-pg-")
	if err != nil {
		return nil, fmt.Errorf("localpg: %w", err)
	}
	s := &Server{dir: dir}
	if err := s.start(ctx, cfg); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Server) start(ctx context.Context, cfg Config) error {
	cred, err := credential()
	if err != nil {
		return err
	}
	data := filepath.Join(s.dir, "data")
	if cred != nil {
		if err := os.Chown(s.dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return fmt.Errorf("localpg: %w", err)
		}
	}
	initdb := exec.CommandContext(ctx, filepath.Join(cfg.BinDir, "initdb"),
		"-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("localpg: initdb: %w\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	s.port = port
	s.proc, err = childproc.Start(filepath.Join(cfg.BinDir, "postgres"), []string{
		"-D", data, "-p", strconv.Itoa(port), "-k", s.dir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=300", "-c", "shared_buffers=128MB",
	}, childproc.Options{LogPath: filepath.Join(s.dir, "postgres.log"), Credential: cred})
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	cfg.Logger.InfoContext(ctx, "starting postgres", slog.Int("port", port))
	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, s.URL("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		if exited, werr := s.proc.Exited(); exited {
			log, _ := os.ReadFile(filepath.Join(s.dir, "postgres.log"))
			return fmt.Errorf("localpg: postgres exited: %v\n%s", werr, log)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("localpg: postgres not ready: %w (last: %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// credential returns the postgres user's credential when running as root.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("localpg: running as root needs a postgres user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("localpg: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// URL returns a connection URL for database db as the superuser.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// Stop stops the server and removes its data.
func (s *Server) Stop() {
	if s.proc != nil {
		// SIGQUIT: immediate shutdown; the data is thrown away anyway.
		s.proc.Stop(syscall.SIGQUIT, 5*time.Second)
	}
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}
