package e2e_test

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/rexec/rexec/internal/testenv"
)

// TestDatabaseRoles: the harness as the README has it: `rexec-svc migrate`
// connects as the owner and may run again; serve, its workers and the
// admin commands connect as the service role alone; migrate refuses the
// service role as its own connection, and a bad -service-role.
func TestDatabaseRoles(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	if res := e.cli(nil, "exec", "-node", "^web-1$", "true"); res.code != 0 {
		t.Fatalf("exec: %d %s", res.code, res.stderr)
	}
	var users []string
	rows, err := e.conn().Query(context.Background(),
		`SELECT DISTINCT usename::text FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			t.Fatal(err)
		}
		users = append(users, u)
	}
	if !slices.Equal(users, []string{testenv.ServiceRole}) {
		t.Errorf("serve connects as %v, want only %s", users, testenv.ServiceRole)
	}

	e.svc("migrate") // again: safe to repeat
	for _, tc := range []struct {
		url  string
		args []string
		want string
	}{
		{e.db.Service, nil, `the service role "rexec_service" is the user this connects as`},
		{e.db.Owner, []string{"-service-role", "Rexec"}, `service role "Rexec": use 1 to 63 lower-case letters`},
	} {
		cmd := exec.Command(bins.svc, append([]string{"migrate"}, tc.args...)...)
		cmd.Env = append(cmd.Environ(), "REXEC_DATABASE_URL="+tc.url)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("migrate %v as %s: %v, want a refusal saying %q:\n%s", tc.args, tc.url, err, tc.want, out)
		}
	}
	if res := e.cli(nil, "exec", "-node", "^web-1$", "true"); res.code != 0 {
		t.Errorf("exec after the migrations: %d %s", res.code, res.stderr)
	}
}
