package api

import (
	"encoding/json"
	"testing"

	"github.com/rexec/rexec/internal/consul"
)

// TestTargetsAsStored: a submission's answer shows its targets as GET
// shows them later, decoded from the JSON the run stores (consul.Node's):
// apitype.Target must encode to the same bytes.
func TestTargetsAsStored(t *testing.T) {
	t.Parallel()
	for _, nodes := range [][]consul.Node{
		nil,
		{{Name: "web-1", Address: "10.0.0.1"}},
		{{Name: "web-1", Address: "10.0.0.1", Services: []consul.Service{}}},
		{{Name: "db-1", Address: "10.0.0.2", Services: []consul.Service{
			{ID: "db", Name: "db", Tags: []string{"primary", "v2"}}, {ID: "exporter", Name: "metrics"}}}},
	} {
		stored, err := json.Marshal(nodes)
		if err != nil {
			t.Fatal(err)
		}
		shown, err := json.Marshal(targetsJSON(nodes))
		if err != nil {
			t.Fatal(err)
		}
		if nodes == nil {
			stored = []byte("[]") // no targets: an empty list, omitted from the run
		}
		if string(shown) != string(stored) {
			t.Errorf("shown %s, stored %s", shown, stored)
		}
	}
}
