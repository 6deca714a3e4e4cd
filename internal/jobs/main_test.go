package jobs

import (
	"testing"

	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.Main(m, testenv.Options{Postgres: true, Migrate: store.MigrateAndGrant})
}
