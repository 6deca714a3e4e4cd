package auditlog_test

import (
	"encoding/json"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/rexec/rexec/internal/auditproof"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func checkRecord(p tlog.RecordProof, cp auditproof.Checkpoint, l auditproof.Leaf) error {
	return tlog.CheckRecord(p, cp.Size, cp.Root, l.Index, auditproof.LeafHash(l.Body))
}
