package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
)

// Outcome is what a policy decided.
type Outcome string

// The outcomes a policy may give.
const (
	// Allow lets the action proceed.
	Allow Outcome = "allow"
	// Deny refuses it, with reasons.
	Deny Outcome = "deny"
	// RequireApproval holds a submitted run until Decision.Approvals
	// distinct principals holding one of Decision.ApproverRoles approve it.
	RequireApproval Outcome = "require_approval"
)

// Decision is a policy's answer for one Input.
type Decision struct {
	// Outcome is allow, deny or require_approval.
	Outcome Outcome `json:"outcome"`
	// Reasons explain a deny, or why approval is needed; they are shown to
	// the principal and stored with the run. Never nil; may be empty.
	Reasons []string `json:"reasons"`
	// Approvals is the number of distinct approvals a require_approval
	// outcome needs (at least 1); 0 otherwise.
	Approvals int `json:"approvals"`
	// ApproverRoles are the roles whose holders may approve (at least one
	// for require_approval); nil otherwise.
	ApproverRoles []string `json:"approver_roles"`
	// Revision identifies the policy that decided (Engine.Revision).
	Revision string `json:"revision"`
}

// ErrInvalidDecision means the policy's result was missing or not a
// decision document. Decide returns it wrapped; callers must treat it, like
// every error from Decide, as a denial.
var ErrInvalidDecision = errors.New("policy gave no valid decision")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidDecision, fmt.Sprintf(format, args...))
}

// parseDecision reads the value of data.rexec.decision strictly: a typo in
// a policy's field name must not turn into a silent default.
func parseDecision(v any) (Decision, error) {
	obj, ok := v.(map[string]any)
	if !ok {
		return Decision{}, invalid("%s is %s, not an object", Query, typeName(v))
	}
	var d Decision
	for k, v := range obj {
		var err error
		switch k {
		case "outcome":
			var s string
			s, err = stringOf(v)
			d.Outcome = Outcome(s)
		case "reasons":
			d.Reasons, err = stringsOf(v)
		case "approvals":
			d.Approvals, err = intOf(v)
		case "approver_roles":
			d.ApproverRoles, err = stringsOf(v)
		default:
			return Decision{}, invalid("unknown field %q in %s", k, Query)
		}
		if err != nil {
			return Decision{}, invalid("%s.%s: %v", Query, k, err)
		}
	}
	switch d.Outcome {
	case Allow, Deny:
	case RequireApproval:
		if d.Approvals < 1 {
			return Decision{}, invalid("require_approval needs approvals of at least 1, got %d", d.Approvals)
		}
		if len(d.ApproverRoles) == 0 {
			return Decision{}, invalid("require_approval needs at least one approver role")
		}
	case "":
		return Decision{}, invalid("%s has no outcome", Query)
	default:
		return Decision{}, invalid("unknown outcome %q (want allow, deny or require_approval)", d.Outcome)
	}
	if d.Outcome != RequireApproval {
		// Not an error: a policy may build every decision from one template.
		d.Approvals, d.ApproverRoles = 0, nil
	}
	if d.Reasons == nil {
		d.Reasons = []string{}
	}
	return d, nil
}

func stringOf(v any) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("want a string, got %s", typeName(v))
	}
	return s, nil
}

func stringsOf(v any) ([]string, error) {
	arr, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("want an array of strings, got %s", typeName(v))
	}
	out := make([]string, len(arr))
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("element %d: want a string, got %s", i, typeName(e))
		}
		out[i] = s
	}
	return out, nil
}

func intOf(v any) (int, error) {
	n, ok := v.(json.Number)
	if !ok {
		return 0, fmt.Errorf("want a number, got %s", typeName(v))
	}
	i, err := n.Int64()
	if err != nil || i < 0 || i > math.MaxInt32 {
		return 0, fmt.Errorf("want a non-negative integer, got %s", n)
	}
	return int(i), nil
}

// typeName names a JSON value's type as Rego authors know them.
func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
