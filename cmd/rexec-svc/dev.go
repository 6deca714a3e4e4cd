package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"

	"golang.org/x/mod/sumdb/note"

	"github.com/rexec/rexec/internal/localconsul"
	"github.com/rexec/rexec/internal/localpg"
	"github.com/rexec/rexec/internal/store"
)

// devAgents is the dev cluster: three clients with services and tags to
// filter on, besides the server.
var devAgents = []localconsul.AgentConfig{
	{Name: "web-1", Services: []localconsul.Service{{Name: "web", Tags: []string{"v1", "canary"}}}},
	{Name: "web-2", Services: []localconsul.Service{{Name: "web", Tags: []string{"v2"}}}},
	{Name: "db-1", Services: []localconsul.Service{{Name: "db", Tags: []string{"primary"}}}},
}

func cmdDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dev", stderr)
	listen := fs.String("listen", "REXEC_LISTEN", "127.0.0.1:8080", "HTTP listen address")
	level := fs.logLevel()
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w (choose another with -listen)", err)
	}
	defer l.Close()

	fmt.Fprintln(stderr, "==> starting PostgreSQL")
	pg, err := localpg.Start(ctx, localpg.Config{Logger: log})
	if err != nil {
		return err
	}
	defer pg.Stop()
	fmt.Fprintln(stderr, "==> starting a Consul cluster (the first run builds bin/consul, a few minutes)")
	cluster, err := localconsul.Start(ctx, localconsul.Config{Clients: devAgents, Logger: log})
	if err != nil {
		return err
	}
	defer cluster.Stop()

	// Migrated as the server's superuser, served as the service role, as
	// in production (README, Database roles).
	if err := migrateAs(ctx, pg.URL("postgres"), store.ServiceRoleDefault, log); err != nil {
		return err
	}
	st, err := store.Open(ctx, pg.URLAs(store.ServiceRoleDefault, "postgres"))
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := st.CreateTenant(ctx, store.Tenant{Name: "dev", ConsulAddr: cluster.Agent("web-1").HTTPAddr(),
		Prefix: "_rexec", OutputCap: 1 << 20}); err != nil {
		return err
	}
	_, token, err := createToken(ctx, st, "dev", "dev", []string{"submitter", "approver", "auditor", "admin"}, false)
	if err != nil {
		return err
	}
	pol, err := loadPolicy(ctx, st, log, "")
	if err != nil {
		return err
	}
	// A key of dev's own, gone when dev stops, like everything else here.
	skey, vkey, err := note.GenerateKey(rand.Reader, "rexec-dev")
	if err != nil {
		return err
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		return err
	}
	return serve(ctx, st, log, serveOptions{listener: l, workers: 4, workerID: "dev", policy: pol, auditSigner: signer, ready: func(addr string) {
		fmt.Fprintf(stderr, "==> rexec is running: tenant dev, Consul nodes %v, database %s (the service connects as %s)\n",
			cluster.Names(), pg.URL("postgres"), store.ServiceRoleDefault)
		fmt.Fprintf(stderr, "==> Prometheus metrics at http://%s/metrics (docs/metrics.md)\n", addr)
		fmt.Fprintln(stderr, "==> paste these lines, then try: rexec-cli exec uptime   (Ctrl-C stops everything)")
		fmt.Fprintf(stdout, "export REXEC_ADDR=http://%s\nexport REXEC_TOKEN=%s\nexport CONSUL_HTTP_ADDR=%s\nexport REXEC_AUDIT_PUBKEY=%s\n",
			addr, token, cluster.Agent("web-1").HTTPAddr(), vkey)
	}})
}
