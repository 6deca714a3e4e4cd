// Package localpg runs a throw-away PostgreSQL server for tests and
// `rexec-svc dev`: initdb into a temporary directory, a free loopback port,
// fsync off (the machine does not crash under a test) but commits written
// to the kernel before they return, so that a server killed at once
// (Kill, as in `pg_ctl stop -m immediate`) keeps every committed
// transaction. As root it runs the server as the `postgres` user, since
// Postgres refuses to run as root.
package localpg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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
	cfg  Config
	dir  string
	port int
	mu   sync.Mutex // guards proc
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
	s := &Server{cfg: cfg, dir: dir}
	if err := s.init(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Server) init(ctx context.Context) error {
	cfg := s.cfg
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
	return s.run(ctx)
}

// run starts the server on its data directory and port and waits until it
// accepts connections.
func (s *Server) run(ctx context.Context) error {
	cfg, port, data := s.cfg, s.port, filepath.Join(s.dir, "data")
	cred, err := credential()
	if err != nil {
		return err
	}
	proc, err := childproc.Start(filepath.Join(cfg.BinDir, "postgres"), []string{
		"-D", data, "-p", strconv.Itoa(port), "-k", s.dir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "full_page_writes=off",
		"-c", "max_connections=300", "-c", "shared_buffers=128MB",
	}, childproc.Options{LogPath: filepath.Join(s.dir, "postgres.log"), Credential: cred})
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	s.mu.Lock()
	s.proc = proc
	s.mu.Unlock()
	cfg.Logger.InfoContext(ctx, "starting postgres", slog.Int("port", port))
	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, s.URL("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		if exited, werr := proc.Exited(); exited {
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
	return s.URLAs("postgres", db)
}

// URLAs returns a connection URL for database db as user, without a
// password: the server trusts every local connection.
func (s *Server) URLAs(user, db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", user, s.port, db)
}

// Kill shuts the server down at once, as `pg_ctl stop -m immediate` does
// (SIGQUIT: no checkpoint, clients cut off), keeping its data for Restart.
func (s *Server) Kill() {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p != nil {
		p.Stop(syscall.SIGQUIT, 5*time.Second)
	}
}

// Restart starts a killed server again on the same data and port; it
// recovers from its WAL as after a crash.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	running := s.proc != nil
	s.mu.Unlock()
	if running {
		return errors.New("localpg: server is running")
	}
	return s.run(ctx)
}

// Stop stops the server and removes its data.
func (s *Server) Stop() {
	s.Kill()
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}
