package policy

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestExamplesShareTheDefaultRoles: the examples differ from the default
// policy in submit.rego only, so that a fix to who may do what reaches
// them too.
func TestExamplesShareTheDefaultRoles(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{"examples/allowlist", "examples/business-hours"} {
		for _, name := range []string{"rexec.rego", "rexec_test.rego"} {
			want, err := os.ReadFile(filepath.Join("default", name))
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s/%s differs from default/%s: copy it again", dir, name, name)
			}
		}
	}
}

func TestBusinessHoursExample(t *testing.T) {
	t.Parallel()
	e := newEngine(t, "examples/business-hours")
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		note      string
		at        time.Time
		zone      string
		want      Outcome
		approvals int
	}{
		{note: "Monday 10:00 in Berlin", at: time.Date(2025, 6, 2, 10, 0, 0, 0, berlin), zone: "Europe/Berlin", want: Allow},
		// The same instant is 08:00 in UTC, before opening: the tenant's
		// zone decides, not the zone the time was given in.
		{note: "the same instant in a UTC tenant", at: time.Date(2025, 6, 2, 10, 0, 0, 0, berlin), zone: "", want: RequireApproval, approvals: 2},
		{note: "Saturday", at: time.Date(2025, 6, 7, 11, 0, 0, 0, time.UTC), zone: "UTC", want: RequireApproval, approvals: 2},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			in := submitInput("alice", []string{"submitter"}, "maintenance")
			in.Time, in.Tenant.TimeZone = tc.at, tc.zone
			d, err := e.Decide(context.Background(), in)
			if err != nil {
				t.Fatal(err)
			}
			if d.Outcome != tc.want || d.Approvals != tc.approvals {
				t.Errorf("%+v, want %s with %d approvals", d, tc.want, tc.approvals)
			}
		})
	}

	// A typo in a tenant's zone must not make every hour a business hour.
	in := submitInput("alice", []string{"submitter"}, "maintenance")
	in.Tenant.TimeZone = "Europe/Berln"
	if d, err := e.Decide(context.Background(), in); err == nil {
		t.Errorf("decided %+v with an unknown time zone", d)
	}
}

func TestAllowlistExample(t *testing.T) {
	t.Parallel()
	e := newEngine(t, "examples/allowlist")
	for _, tc := range []struct {
		note   string
		argv   []string
		shell  bool
		script []byte
		want   Outcome
	}{
		{note: "listed", argv: []string{"uptime"}, shell: true, want: Allow},
		{note: "listed with arguments", argv: []string{"systemctl", "status", "nginx"}, shell: true, want: Allow},
		{note: "listed, then a second command", argv: []string{"uptime;", "reboot"}, shell: true, want: Deny},
		{note: "not listed", argv: []string{"reboot"}, want: Deny},
		{note: "script", script: []byte("#!/bin/sh\nreboot\n"), shell: true, want: RequireApproval},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			in := submitInput("alice", []string{"submitter"}, "INC-3")
			in.Request.SetArgv(tc.argv)
			in.Request.Shell = tc.shell
			in.Request.SetScript(tc.script)
			d, err := e.Decide(context.Background(), in)
			if err != nil {
				t.Fatal(err)
			}
			if d.Outcome != tc.want {
				t.Errorf("%+v, want %s", d, tc.want)
			}
		})
	}
}
