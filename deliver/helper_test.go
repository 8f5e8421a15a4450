package deliver

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/grouphook/grouphook/metrics"
	gsql "github.com/grouphook/grouphook/sql"
)

// newDB returns a pool on a fresh, migrated database with public.groups.
func newDB(t testing.TB) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url := cluster.NewDatabase(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	mustExec(t, conn, `CREATE TABLE public.groups (id bigint PRIMARY KEY, name text)`)
	if _, err := gsql.Migrate(ctx, conn, gsql.Options{Table: "public.groups", Publication: "grouphook", ReplicaIdentityFull: true}); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// execer is a *pgx.Conn or a *pgxpool.Pool.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

func mustExec(t testing.TB, c execer, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// endpointRow is a row to insert into grouphook.endpoints.
type endpointRow struct {
	URL, Secret string
	Client      *string
	Events      []string
	NoData      bool
	Disabled    bool
}

func addEndpoint(t testing.TB, pool *pgxpool.Pool, r endpointRow) int64 {
	t.Helper()
	if r.Secret == "" {
		r.Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	}
	if r.Events == nil {
		r.Events = []string{"CREATE", "UPDATE", "DELETE"}
	}
	var id int64
	err := pool.QueryRow(context.Background(),
		`INSERT INTO grouphook.endpoints (client_id, url, secret_key, events, include_data, enabled)
		 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`,
		r.Client, r.URL, r.Secret, r.Events, !r.NoData, !r.Disabled).Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func newMetrics() (*metrics.Metrics, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	return metrics.New(reg), reg
}

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testLogger logs to the test output and, when buf is not nil, to buf.
func testLogger(t testing.TB, buf *syncBuffer) *slog.Logger {
	var w io.Writer = t.Output()
	if buf != nil {
		w = io.MultiWriter(w, buf)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// eventually polls cond every 10ms until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ptr[T any](v T) *T { return &v }
