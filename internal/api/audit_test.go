package api

import (
	"errors"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/service"
)

func TestDecodeAuditQuery(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 6, 15, 12, 0, 0, 0, time.UTC)
	code := func(n int) *int { return &n }
	for _, tc := range []struct {
		note    string
		query   string
		want    audit.Filter
		wantErr string // part of the message; "" for success
	}{
		{note: "nothing", query: "", want: audit.Filter{}},
		{note: "days before now", query: "since=7d", want: audit.Filter{Since: now.Add(-7 * 24 * time.Hour)}},
		{note: "hours, minutes, seconds", query: "since=12h&until=30m", want: audit.Filter{Since: now.Add(-12 * time.Hour), Until: now.Add(-30 * time.Minute)}},
		{note: "a Go duration", query: "since=1h30m", want: audit.Filter{Since: now.Add(-90 * time.Minute)}},
		{note: "RFC 3339", query: "since=2026-01-02T03:04:05Z&until=2026-01-03T00:00:00.5%2B02:00",
			want: audit.Filter{Since: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Until: time.Date(2026, 1, 2, 22, 0, 0, 5e8, time.UTC)}},
		{note: "every filter", query: "principal=alice&node=web-1&service=web&command=rm+-rf&state=failed&exit_code=-1&approver=bob&run=r&limit=1000&cursor=c",
			want: audit.Filter{Principal: "alice", Node: "web-1", Service: "web", Command: "rm -rf", State: "failed", ExitCode: code(-1),
				Approver: "bob", RunID: "r", Limit: 1000, Cursor: "c"}},
		{note: "types as a list and repeated", query: "type=run.submitted,+node.exited&type=run.finished&type=",
			want: audit.Filter{Types: []string{"run.submitted", "node.exited", "run.finished"}}},
		{note: "exit code 0", query: "exit_code=0", want: audit.Filter{ExitCode: code(0)}},
		{note: "bad relative time", query: "since=7w", wantErr: `since: "7w" is neither an RFC 3339 time (2006-01-02T15:04:05Z) nor a duration before now (7d, 12h, 30m)`},
		{note: "a negative duration", query: "since=-1h", wantErr: `since: "-1h" is neither`},
		{note: "zero", query: "until=0d", wantErr: `until: "0d" is neither`},
		{note: "a date without a time", query: "since=2026-01-02", wantErr: `since: "2026-01-02" is neither`},
		{note: "too many days", query: "since=99999999999d", wantErr: `is neither`},
		{note: "exit code not a number", query: "exit_code=one", wantErr: `exit_code must be an integer, not "one"`},
		{note: "exit code out of range", query: "exit_code=4294967296", wantErr: `exit_code must be an integer`},
		{note: "limit 0", query: "limit=0", wantErr: "limit must be between 1 and 1000"},
		{note: "limit too large", query: "limit=1001", wantErr: "limit must be between 1 and 1000"},
		{note: "limit not a number", query: "limit=ten", wantErr: "limit must be between 1 and 1000"},
		{note: "unknown parameter", query: "princpal=alice", wantErr: `unknown query parameter "princpal"`},
		{note: "a filter twice", query: "node=a&node=b", wantErr: "node is given 2 times; give it once"},
		{note: "NUL", query: "principal=a%00", wantErr: "principal contains a NUL byte"},
		{note: "invalid UTF-8 in a type", query: "type=%ff", wantErr: "type is not valid UTF-8"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			q, err := url.ParseQuery(tc.query)
			if err != nil {
				t.Fatal(err)
			}
			f, err := decodeAuditQuery(q, now)
			if tc.wantErr != "" {
				if !errors.Is(err, service.ErrInvalid) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("got %v, want an invalid request saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !f.Since.Equal(tc.want.Since) || !f.Until.Equal(tc.want.Until) {
				t.Errorf("since %v until %v, want %v and %v", f.Since, f.Until, tc.want.Since, tc.want.Until)
			}
			f.Since, f.Until, tc.want.Since, tc.want.Until = time.Time{}, time.Time{}, time.Time{}, time.Time{}
			if !reflect.DeepEqual(f, tc.want) {
				t.Errorf("got  %+v\nwant %+v", f, tc.want)
			}
		})
	}
}
