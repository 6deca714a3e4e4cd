// Command rexec-cli submits runs to rexec-svc and reads them back. Its exec
// command takes the options of `consul exec` and prints in its format.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/rexec/rexec/internal/client"
)

const usage = `Usage: rexec-cli <command> [flags]

Commands:
  exec [options] [-|command...]   run a command on Consul nodes (the options of consul exec)
  jobs list                       list runs
  jobs show ID                    show a run and its nodes
  jobs logs ID [-node N]          print a run's archived output
  jobs wait ID                    wait for a run to end; exit as exec would have
  jobs cancel ID                  cancel a run
  approve ID [-comment C]         approve a run pending approval
  deny ID [-comment C]            refuse a run pending approval (it ends denied)
  audit [filters] [-format F]     query the audit log (-since 7d -principal P -node N -exit-code 1 ...;
                                  -format table|json|csv|ndjson; -all for every page)
  audit checkpoint                print the audit log's latest signed checkpoint (keep it)
  audit verify [-since-checkpoint FILE]
                                  recompute the audit log and check it against its signed
                                  checkpoints (and a kept one); exit 1 names the first bad event
  audit prove RUN                 write a run's events with inclusion proofs (JSON) to stdout
  audit verify-bundle FILE        check a proof bundle offline; no server needed

jobs list takes the filters of audit: -since -until -principal -node -service -command
-state -exit-code -approver. "rexec-cli <command> -h" lists a command's flags.

The server and token come from -addr and -token, or REXEC_ADDR and REXEC_TOKEN;
for an https:// server, -ca-file or REXEC_CACERT adds a PEM bundle of CAs to trust.
Exit codes: 0 every expected node exited 0; 2 some node exited non-zero, was lost,
never acknowledged or was cancelled; 1 an error.
`

// exitError carries an exit code without a message.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit %d", int(e)) }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

func exitCode(err error, stderr io.Writer) int {
	var ee exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return int(ee)
	case errors.Is(err, flag.ErrHelp):
		return 1
	}
	fmt.Fprintln(stderr, "rexec-cli:", err)
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) {
		fmt.Fprintln(stderr, "rexec-cli: the server's certificate is not trusted here: give the CA that signed it with -ca-file or REXEC_CACERT")
	}
	return 1
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitError(1)
	}
	switch args[0] {
	case "exec":
		return cmdExec(ctx, args[1:], stdin, stdout, stderr)
	case "jobs":
		if len(args) < 2 {
			fmt.Fprint(stderr, usage)
			return exitError(1)
		}
		return cmdJobs(ctx, args[1], args[2:], stdout, stderr)
	case "approve", "deny":
		return cmdVerdict(ctx, args[0] == "approve", args[1:], stdout, stderr)
	case "audit":
		return cmdAudit(ctx, args[1:], stdin, stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// connFlags adds -addr, -token and -ca-file to fs.
type connFlags struct{ addr, token, caFile *string }

// The environment is read after parsing, not used as the flags' defaults:
// a default shows in -h and usage output, and the token is a secret.
func addConnFlags(fs *flag.FlagSet) connFlags {
	return connFlags{
		addr:   fs.String("addr", "", "rexec-svc address, http://host:port or https://host:port (default $REXEC_ADDR)"),
		token:  fs.String("token", "", "API token (default $REXEC_TOKEN)"),
		caFile: fs.String("ca-file", "", "PEM bundle of CAs to trust for an https address, besides the system's (default $REXEC_CACERT)"),
	}
}

func (c connFlags) client() (*client.Client, error) {
	if *c.addr == "" {
		*c.addr = os.Getenv("REXEC_ADDR")
	}
	if *c.token == "" {
		*c.token = os.Getenv("REXEC_TOKEN")
	}
	if *c.caFile == "" {
		*c.caFile = os.Getenv("REXEC_CACERT")
	}
	if *c.token == "" {
		return nil, errors.New("no API token: set REXEC_TOKEN or -token")
	}
	return client.NewWithConfig(client.Config{Addr: *c.addr, Token: *c.token, CAFile: *c.caFile})
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}
