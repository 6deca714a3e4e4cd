package api

import (
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Query parameters: each given at most once, none unknown, as text the
// database can hold; shared by the runs' and the audit log's endpoints.

// filters are the filters that runs and audit events share.
type filters struct {
	since, until                                       time.Time
	principal, node, service, command, state, approver string
	exitCode                                           *int
	limit                                              int
}

// filters reads the shared filters; limit is 1 to limitMax, 0 when not
// given.
func (p params) filters(limitMax int) (filters, error) {
	var f filters
	var err error
	for _, t := range []struct {
		name string
		dst  *string
	}{
		{"principal", &f.principal}, {"node", &f.node}, {"service", &f.service}, {"command", &f.command},
		{"state", &f.state}, {"approver", &f.approver},
	} {
		if *t.dst, err = p.text(t.name); err != nil {
			return filters{}, err
		}
	}
	if f.since, err = p.time("since"); err != nil {
		return filters{}, err
	}
	if f.until, err = p.time("until"); err != nil {
		return filters{}, err
	}
	if f.exitCode, err = p.exitCode(); err != nil {
		return filters{}, err
	}
	if f.limit, err = p.limit(limitMax); err != nil {
		return filters{}, err
	}
	return f, nil
}

// params reads filter parameters of a query, each given at most once.
type params struct {
	q   url.Values
	now time.Time
}

// only refuses a parameter not in names: a misspelt filter would
// otherwise be dropped, and the answer hold everything.
func (p params) only(names []string) error {
	for k := range p.q {
		if !slices.Contains(names, k) {
			return invalid("unknown query parameter %q (known: %s)", k, strings.Join(names, ", "))
		}
	}
	return nil
}

// text returns a parameter given at most once, as text the database can
// hold.
func (p params) text(name string) (string, error) {
	vs := p.q[name]
	if len(vs) > 1 {
		return "", invalid("%s is given %d times; give it once", name, len(vs))
	}
	if len(vs) == 0 {
		return "", nil
	}
	return vs[0], checkQueryText(name, vs[0])
}

// relative is a duration before now: a number and a unit, d for days.
var relative = regexp.MustCompile(`^([0-9]+)([dhms])$`)

// time reads an RFC 3339 time, or a duration before now such as 7d, 12h,
// 30m or a Go duration (1h30m).
func (p params) time(name string) (time.Time, error) {
	v, err := p.text(name)
	if err != nil || v == "" {
		return time.Time{}, err
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	var d time.Duration
	if m := relative.FindStringSubmatch(v); m != nil {
		n, err := strconv.ParseInt(m[1], 10, 32)
		if err == nil && n <= 100*365 {
			unit := map[string]time.Duration{"d": 24 * time.Hour, "h": time.Hour, "m": time.Minute, "s": time.Second}[m[2]]
			d = time.Duration(n) * unit
		}
	} else if gd, err := time.ParseDuration(v); err == nil && gd > 0 {
		d = gd
	}
	if d <= 0 {
		return time.Time{}, invalid("%s: %q is neither an RFC 3339 time (2006-01-02T15:04:05Z) nor a duration before now (7d, 12h, 30m)", name, v)
	}
	return p.now.Add(-d), nil
}

// exitCode reads exit_code, an integer.
func (p params) exitCode() (*int, error) {
	v, err := p.text("exit_code")
	if err != nil || v == "" {
		return nil, err
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		return nil, invalid("exit_code must be an integer, not %q", v)
	}
	code := int(n)
	return &code, nil
}

// limit reads limit, 1 to most; 0 when not given.
func (p params) limit(most int) (int, error) {
	v, err := p.text("limit")
	if err != nil || v == "" {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > most {
		return 0, invalid("limit must be between 1 and %d", most)
	}
	return n, nil
}

// int reads a non-negative integer parameter, def when absent.
func (p params) int(name string, def int64) (int64, error) {
	v, err := p.text(name)
	if err != nil || v == "" {
		return def, err
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, invalid("%s must be a non-negative number", name)
	}
	return n, nil
}

// bool reads a true/false parameter, false when absent.
func (p params) bool(name string) (bool, error) {
	v, err := p.text(name)
	if err != nil || v == "" {
		return false, err
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, invalid("%s must be true or false", name)
	}
	return b, nil
}
