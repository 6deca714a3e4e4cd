// Package childproc starts the helper servers that tests and dev mode run
// (Consul agents, PostgreSQL) so that none of them outlives its owner.
//
// Each child gets its own process group, so stopping it also stops whatever
// it started (a Consul agent's remote-exec commands, Postgres' backends), and
// a parent-death signal, so that a test binary killed by a timeout does not
// leave servers behind.
package childproc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Options configures a child process.
type Options struct {
	// Dir is the working directory; empty means the caller's.
	Dir string
	// Env is appended to the caller's environment.
	Env []string
	// LogPath receives stdout and stderr; empty discards them.
	LogPath string
	// Credential runs the child as another user (Postgres refuses root).
	Credential *syscall.Credential
}

// Process is a running child.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	log  *os.File
}

// Start runs name with args.
func Start(name string, args []string, opts Options) (*Process, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = opts.Dir
	cmd.Env = append(os.Environ(), opts.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: opts.Credential,
	}
	var logFile *os.File
	if opts.LogPath != "" {
		f, err := os.OpenFile(opts.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("open log: %w", err)
		}
		if opts.Credential != nil {
			_ = f.Chown(int(opts.Credential.Uid), int(opts.Credential.Gid))
		}
		logFile = f
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		if logFile != nil {
			logFile.Close()
		}
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{}), log: logFile}
	go func() {
		p.err = cmd.Wait()
		if p.log != nil {
			p.log.Close()
		}
		close(p.done)
	}()
	return p, nil
}

// Pid is the child's process ID (and its process group's).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the child has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the child has exited, and its wait error.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends sig to the child's process group and waits up to grace for it
// to exit, then kills the group. It always returns with the child gone.
func (p *Process) Stop(sig syscall.Signal, grace time.Duration) {
	_ = syscall.Kill(-p.Pid(), sig)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
	}
	p.Kill()
}

// Signal sends sig to the child's process group (SIGSTOP and SIGCONT
// freeze and thaw it, as a stalled machine would be).
func (p *Process) Signal(sig syscall.Signal) error {
	if err := syscall.Kill(-p.Pid(), sig); err != nil {
		return fmt.Errorf("signal %s: %w", sig, err)
	}
	return nil
}

// Kill kills the child's whole process group at once and waits for the child.
func (p *Process) Kill() {
	if err := syscall.Kill(-p.Pid(), syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		_ = p.cmd.Process.Kill()
	}
	<-p.done
}
