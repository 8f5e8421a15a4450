package cdc

import (
	"os"
	"testing"

	"github.com/grouphook/grouphook/sql/pgcluster"
)

// cluster is this package's throwaway PostgreSQL; tests take a fresh
// database each with cluster.NewDatabase(t).
var cluster *pgcluster.Cluster

func TestMain(m *testing.M) { os.Exit(pgcluster.RunTests(m, &cluster)) }
