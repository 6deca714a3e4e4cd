package consul

import (
	"strings"
)

// sessionPlaceholder stands for the session ID in the event payload before
// the session exists: every session ID is a 36-byte UUID, so the events'
// sizes are known before anything is written.
var sessionPlaceholder = strings.Repeat("0", 36)

// CheckSpec checks spec (after defaults) as far as it can be before its
// targets are known, with this client's limits: what Spec.Validate checks
// against the KV value limit, and that the prefix and the service and tag
// filters leave room in the user event for a node filter. A caller checks
// with it before asking the catalog, and with CheckPlan once it has the
// targets.
func (c *Client) CheckSpec(spec Spec) error {
	_, err := c.plan(spec, nil)
	return err
}

// CheckPlan checks, without contacting Consul, everything Prepare checks
// before it writes anything: the spec with this client's KV value limit,
// the target set, and that the anchored node filters pinning the targets fit
// this client's user event size limit. A run that passes it can only fail
// later for reasons that lie in Consul itself (unreachable, refused, a
// changed limit), so a caller that stores runs for later can refuse
// everything else at submission.
//
// Errors: those of Spec.Validate, ErrNoTargets, *EventTooLargeError when an
// event cannot fit, *TooManyEventsError when the targets need more than
// MaxPinnedEvents events, and plain errors for a malformed target set.
func (c *Client) CheckPlan(spec Spec, targets []Node) error {
	if len(targets) == 0 {
		return ErrNoTargets
	}
	_, err := c.plan(spec, targets)
	return err
}

// plan returns the pinned node filters of spec on targets, after Prepare's
// checks. With no targets it checks the spec alone and returns no filters.
func (c *Client) plan(spec Spec, targets []Node) ([]string, error) {
	spec = spec.WithDefaults()
	if err := spec.Validate(c.cfg.KVMaxValueSize); err != nil {
		return nil, err
	}
	var names []string
	if len(targets) > 0 {
		var err error
		if names, err = targetNames(targets); err != nil {
			return nil, err
		}
	}
	return pinnedFilters(names, encodePayload(spec.Prefix, sessionPlaceholder),
		spec.ServiceFilter, spec.TagFilter, c.cfg.EventSizeLimit)
}
