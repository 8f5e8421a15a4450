package main

import (
	"os"
	"testing"

	"github.com/grouphook/grouphook/sql/pgcluster"
)

// cluster is this package's throwaway PostgreSQL (wal_level=logical). Each
// test takes a fresh database with newTestDB, and a slot named after it.
var cluster *pgcluster.Cluster

func TestMain(m *testing.M) {
	code := pgcluster.RunTests(m, &cluster)
	removeBinary()
	os.Exit(code)
}
