package service

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/consul"
)

func TestSubmissionSpec(t *testing.T) {
	t.Parallel()
	const tenant = "_rexec/team"
	for _, tc := range []struct {
		note     string
		sub      Submission
		wantKind error  // nil for success
		wantMsg  string // part of the message
	}{
		{note: "defaults", sub: Submission{Argv: []string{"true"}, Shell: true}},
		{note: "prefix under the tenant's", sub: Submission{Argv: []string{"true"}, Prefix: tenant + "/sub"}},
		{note: "reason in UTF-8", sub: Submission{Argv: []string{"true"}, Reason: "déploiement ✓"}},
		{note: "NUL in reason", sub: Submission{Argv: []string{"true"}, Reason: "why\x00"}, wantKind: ErrInvalid, wantMsg: "reason contains a NUL byte"},
		{note: "invalid UTF-8 in reason", sub: Submission{Argv: []string{"true"}, Reason: "\xff"}, wantKind: ErrInvalid, wantMsg: "reason is not valid UTF-8"},
		{note: "NUL in prefix is a bad request, not a foreign prefix", sub: Submission{Argv: []string{"true"}, Prefix: "\x00"}, wantKind: ErrInvalid, wantMsg: "prefix contains a NUL byte"},
		{note: "invalid UTF-8 in prefix", sub: Submission{Argv: []string{"true"}, Prefix: tenant + "/\xc3"}, wantKind: ErrInvalid, wantMsg: "prefix is not valid UTF-8"},
		{note: "foreign prefix", sub: Submission{Argv: []string{"true"}, Prefix: "_rexec"}, wantKind: ErrForbidden, wantMsg: "outside the tenant's prefix"},
		{note: "reason too long", sub: Submission{Argv: []string{"true"}, Reason: strings.Repeat("r", MaxReason+1)}, wantKind: ErrInvalid, wantMsg: "reason is longer"},
		{note: "negative wait", sub: Submission{Argv: []string{"true"}, Wait: -time.Second}, wantKind: ErrInvalid, wantMsg: "wait must be between"},
		{note: "timeout too long", sub: Submission{Argv: []string{"true"}, Timeout: MaxTimeout + 1}, wantKind: ErrInvalid, wantMsg: "timeout must be between"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			spec, err := tc.sub.Spec(tenant)
			if tc.wantKind == nil {
				if err != nil {
					t.Fatalf("Spec: %v", err)
				}
				if !strings.HasPrefix(spec.Prefix, tenant) || spec.Wait == 0 || spec.NoShell == tc.sub.Shell {
					t.Errorf("spec %+v", spec)
				}
				return
			}
			if !errors.Is(err, tc.wantKind) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("Spec: %v, want %v with %q", err, tc.wantKind, tc.wantMsg)
			}
		})
	}
}

// TestPlanError: the engine's refusals map to the statuses the API
// documents: 400 for a bad request, 413 for one too large for Consul, 422
// for targets that cannot be run on.
func TestPlanError(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want error
	}{
		{&consul.TextError{Field: "argv[0]", Problem: "contains a NUL byte"}, ErrInvalid},
		{&consul.FilterError{Filter: "node", Expr: "(", Err: errors.New("missing )")}, ErrInvalid},
		{consul.ErrTagWithoutService, ErrInvalid},
		{&consul.SpecTooLargeError{Size: 2000, Limit: 1024}, ErrTooLarge},
		{&consul.EventTooLargeError{Size: 600, Limit: 512}, ErrTooLarge},
		{&consul.EventTooLargeError{Node: "n", Size: 600, Limit: 512}, ErrUnprocessable},
		{fmt.Errorf("wrapped: %w", &consul.EventTooLargeError{Node: "n", Size: 600, Limit: 512}), ErrUnprocessable},
		{consul.ErrNoTargets, ErrUnprocessable},
		{&consul.TooManyEventsError{Targets: 60000, Events: 300, Limit: 128}, ErrUnprocessable},
		{errors.New("duplicate target node"), ErrInvalid},
	} {
		got := planError(tc.err)
		if !errors.Is(got, tc.want) || got.Error() != tc.err.Error() {
			t.Errorf("planError(%v) = %v (%v), want kind %v", tc.err, got, errors.Unwrap(got), tc.want)
		}
	}
}

func TestCheckTargets(t *testing.T) {
	t.Parallel()
	node := func(edit func(*consul.Node)) []consul.Node {
		n := consul.Node{Name: "web-1", Address: "10.0.0.1", Services: []consul.Service{{ID: "web", Name: "web", Tags: []string{"v1"}}}}
		edit(&n)
		return []consul.Node{{Name: "db-1"}, n}
	}
	for _, tc := range []struct {
		note    string
		targets []consul.Node
		wantErr bool
	}{
		{note: "plain", targets: node(func(*consul.Node) {})},
		{note: "UTF-8 names", targets: node(func(n *consul.Node) { n.Name, n.Services[0].Tags = "nœud", []string{"étiquette"} })},
		{note: "NUL in a node name", targets: node(func(n *consul.Node) { n.Name = "web\x00" }), wantErr: true},
		{note: "NUL in an address", targets: node(func(n *consul.Node) { n.Address = "\x00" }), wantErr: true},
		{note: "NUL in a service ID", targets: node(func(n *consul.Node) { n.Services[0].ID = "w\x00" }), wantErr: true},
		{note: "invalid UTF-8 in a service name", targets: node(func(n *consul.Node) { n.Services[0].Name = "\xff" }), wantErr: true},
		{note: "NUL in a tag", targets: node(func(n *consul.Node) { n.Services[0].Tags = []string{"ok", "\x00"} }), wantErr: true},
	} {
		t.Run(tc.note, func(t *testing.T) {
			err := checkTargets(tc.targets)
			if tc.wantErr != (err != nil) || (err != nil && !errors.Is(err, ErrUnprocessable)) {
				t.Errorf("checkTargets: %v, want an error: %t", err, tc.wantErr)
			}
		})
	}
}
