package main

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/apitype"
)

var testEvents = []apitype.AuditEvent{
	{ID: 9, Time: time.Date(2026, 3, 1, 10, 0, 0, 123456000, time.UTC), Type: "run.submitted", Actor: "alice", Run: "11111111-1111-4111-8111-111111111111",
		RequestID: "req-1", ClientAddr: "192.0.2.1:5000",
		Data: json.RawMessage(`{"argv":["sh","-c","echo \"a,b\"\nx"],"node":"","reason":"<why>","targets":["web-1","web-2"]}`), Body: `{"actor":"alice"}`},
	{ID: 7, Time: time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC), Type: "node.exited", Actor: "worker:w1", Run: "11111111-1111-4111-8111-111111111111",
		Node: "web-1", Data: json.RawMessage(`{"exit_code":1,"node":"web-1"}`), Body: `{}`},
	{ID: 3, Time: time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC), Type: "token.created", Actor: "admin", OSUser: "root", Data: json.RawMessage(`{}`), Body: `{}`},
}

func writeEvents(t *testing.T, format string, events []apitype.AuditEvent) string {
	t.Helper()
	var b bytes.Buffer
	w, err := newEventWriter(format, &b)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if err := w.write(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestAuditFormats(t *testing.T) {
	t.Parallel()
	t.Run("csv", func(t *testing.T) {
		recs, err := csv.NewReader(strings.NewReader(writeEvents(t, "csv", testEvents))).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		want := [][]string{csvHeader,
			{"9", "2026-03-01T10:00:00.123456Z", "run.submitted", "alice", "11111111-1111-4111-8111-111111111111", "", "req-1", "192.0.2.1:5000", "", string(testEvents[0].Data)},
			{"7", "2026-03-01T09:00:00Z", "node.exited", "worker:w1", "11111111-1111-4111-8111-111111111111", "web-1", "", "", "", `{"exit_code":1,"node":"web-1"}`},
			{"3", "2026-03-01T08:00:00Z", "token.created", "admin", "", "", "", "", "root", "{}"},
		}
		if !slices.EqualFunc(recs, want, slices.Equal) {
			t.Errorf("got  %q\nwant %q", recs, want)
		}
	})
	t.Run("json", func(t *testing.T) {
		for n := range len(testEvents) + 1 {
			var got []apitype.AuditEvent
			out := writeEvents(t, "json", testEvents[:n])
			if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != n {
				t.Fatalf("%d events: %v, %d decoded from %q", n, err, len(got), out)
			}
			for i := range got {
				if got[i].ID != testEvents[i].ID || string(got[i].Data) != string(testEvents[i].Data) || !got[i].Time.Equal(testEvents[i].Time) {
					t.Errorf("event %d: %+v", i, got[i])
				}
			}
			if n == 0 && out != "[]\n" || strings.Contains(out, `\u003c`) {
				t.Errorf("output %q", out)
			}
		}
	})
	t.Run("ndjson", func(t *testing.T) {
		sc := bufio.NewScanner(strings.NewReader(writeEvents(t, "ndjson", testEvents)))
		var ids []int64
		for sc.Scan() {
			var e apitype.AuditEvent
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, e.ID)
		}
		if !slices.Equal(ids, []int64{9, 7, 3}) {
			t.Errorf("ids %v", ids)
		}
	})
	t.Run("table", func(t *testing.T) {
		lines := strings.Split(strings.TrimSuffix(writeEvents(t, "table", testEvents), "\n"), "\n")
		if len(lines) != 4 || !strings.HasPrefix(lines[0], "TIME") {
			t.Fatalf("table %q", lines)
		}
		for i, want := range []string{
			`run.submitted  alice      11111111-1111-4111-8111-111111111111  -      argv="sh -c echo \"a,b\"\nx" reason=<why> targets="web-1 web-2"`,
			`node.exited    worker:w1  11111111-1111-4111-8111-111111111111  web-1  exit_code=1`,
			`token.created  admin      -                                     -      `,
		} {
			if !strings.HasSuffix(lines[i+1], want) {
				t.Errorf("line %d: %q, want it to end in %q", i+1, lines[i+1], want)
			}
		}
	})
	if _, err := newEventWriter("xml", nil); err == nil || err.Error() != `unknown -format "xml": table, json, csv or ndjson` {
		t.Errorf("unknown format: %v", err)
	}
}

func TestSummaryBounded(t *testing.T) {
	t.Parallel()
	s := summary(apitype.AuditEvent{Data: json.RawMessage(`{"reason":"` + strings.Repeat("é", 300) + `"}`)})
	if n := len([]rune(s)); n != summaryMax || !strings.HasSuffix(s, "…") {
		t.Errorf("summary of %d runes: %q", n, s)
	}
}
