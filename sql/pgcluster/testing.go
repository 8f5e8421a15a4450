package pgcluster

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// RunTests is for TestMain: it starts one cluster for the package, stores it
// in *c, runs the tests and removes the cluster.
//
//	var cluster *pgcluster.Cluster
//	func TestMain(m *testing.M) { os.Exit(pgcluster.RunTests(m, &cluster)) }
func RunTests(m *testing.M, c **Cluster) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cl, err := Start(ctx, Options{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start throwaway PostgreSQL:", err)
		return 1
	}
	*c = cl
	code := m.Run()
	if code != 0 && os.Getenv("PGCLUSTER_LOG") != "" {
		fmt.Fprintln(os.Stderr, cl.ServerLog())
	}
	if err := cl.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop throwaway PostgreSQL:", err)
	}
	return code
}

var dbSeq atomic.Int64

var unsafeName = regexp.MustCompile(`[^a-z0-9_]+`)

// NewDatabase creates a fresh database for one test and returns its URL.
// Its name derives from the test's, so slots and logs are easy to match.
func (c *Cluster) NewDatabase(t testing.TB) string {
	t.Helper()
	name := unsafeName.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(name) > 40 {
		name = name[:40]
	}
	name = fmt.Sprintf("t%d_%s", dbSeq.Add(1), name)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url, err := c.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return url
}
