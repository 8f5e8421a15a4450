package pgcluster

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// RunTests is for TestMain: it gives the package one shared cluster in *c,
// started on first use (so tests that need none, and fuzz workers, start
// none), runs the tests and removes the cluster.
//
//	var cluster *pgcluster.Cluster
//	func TestMain(m *testing.M) { os.Exit(pgcluster.RunTests(m, &cluster)) }
func RunTests(m *testing.M, c **Cluster) int {
	cl := &Cluster{lazy: &lazyStart{}}
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
	if err := c.start(); err != nil {
		t.Fatal(err)
	}
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

type lazyStart struct {
	once sync.Once
	done atomic.Bool
	err  error
}

func (l *lazyStart) started() bool { return l.done.Load() && l.err == nil }

// start starts a lazy cluster once; it is a no-op for one made by Start.
func (c *Cluster) start() error {
	if c.lazy == nil {
		return nil
	}
	c.lazy.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		started, err := Start(ctx, Options{})
		if err == nil {
			c.dir, c.bin, c.port, c.runAs, c.logf = started.dir, started.bin, started.port, started.runAs, started.logf
		}
		c.lazy.err = err
		c.lazy.done.Store(true)
	})
	if c.lazy.err != nil {
		return fmt.Errorf("start throwaway PostgreSQL: %w", c.lazy.err)
	}
	return nil
}

func (c *Cluster) mustStart() {
	if err := c.start(); err != nil {
		panic(err)
	}
}
