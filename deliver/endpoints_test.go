package deliver

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRegistryLoadMissingTable(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, cluster.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	m, _ := newMetrics()
	r := NewRegistry(pool, testLogger(t, nil), m)
	err = r.Load(ctx)
	if err == nil || !strings.Contains(err.Error(), "run grouphook migrate") {
		t.Fatalf("Load on an unmigrated database: %v, want an error naming grouphook migrate", err)
	}
	if r.Snapshot().Loaded() {
		t.Fatal("snapshot marked loaded after a failed load")
	}
}

func TestRegistryLoad(t *testing.T) {
	ctx := context.Background()
	pool := newDB(t)
	a := addEndpoint(t, pool, endpointRow{URL: "https://a.example/hook", Secret: "sa"})
	b := addEndpoint(t, pool, endpointRow{URL: "https://b.example/hook", Secret: "sb", Client: ptr("acme"), Events: []string{"DELETE"}, NoData: true})
	addEndpoint(t, pool, endpointRow{URL: "https://c.example/hook", Disabled: true})
	m, _ := newMetrics()
	r := NewRegistry(pool, testLogger(t, nil), m)
	if err := r.Load(ctx); err != nil {
		t.Fatal(err)
	}
	s := r.Snapshot()
	if !s.Loaded() || s.Len() != 2 {
		t.Fatalf("snapshot has %d endpoints, want 2", s.Len())
	}
	ea, _ := s.Endpoint(a)
	eb, _ := s.Endpoint(b)
	if ea == nil || eb == nil {
		t.Fatal("endpoint missing")
	}
	if ea.HasClient || ea.Events != AllEvents || !ea.IncludeData || ea.Secret != "sa" || ea.URL != "https://a.example/hook" {
		t.Errorf("endpoint a = %+v", ea)
	}
	if !eb.HasClient || eb.ClientID != "acme" || eb.Events != EventDelete || eb.IncludeData {
		t.Errorf("endpoint b = %+v", eb)
	}
	if got := testutil.ToFloat64(m.Endpoints); got != 2 {
		t.Errorf("endpoints gauge = %v", got)
	}
	if s := fmt.Sprintf("%v %+v", ea, eb); strings.Contains(s, "sa") || strings.Contains(s, "sb") || strings.Contains(s, "example") {
		t.Errorf("formatting an endpoint shows its secret or url: %s", s)
	}
	// An unchanged endpoint keeps its identity (and signer) across reloads.
	if err := r.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if ea2, _ := r.Snapshot().Endpoint(a); ea2 != ea {
		t.Error("unchanged endpoint rebuilt")
	}
	mustExec(t, pool, `UPDATE grouphook.endpoints SET secret_key = 'new' WHERE id = $1`, a)
	if err := r.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if ea2, _ := r.Snapshot().Endpoint(a); ea2 == ea || ea2.Secret != "new" {
		t.Error("changed secret not picked up")
	}
}

func TestRegistryInvalidURL(t *testing.T) {
	ctx := context.Background()
	pool := newDB(t)
	good := addEndpoint(t, pool, endpointRow{URL: "https://good.example/"})
	const secret = "whsec_c2VjcmV0LXRoYXQtbXVzdC1ub3QtbGVhaw=="
	bad := map[string]int64{}
	for _, u := range []string{"ftp://example.com/", "not a url", "http://user:hunter2@example.com/", "http:///nohost"} {
		bad[u] = addEndpoint(t, pool, endpointRow{URL: u, Secret: secret})
	}
	var logs syncBuffer
	m, reg := newMetrics()
	r := NewRegistry(pool, testLogger(t, &logs), m)
	for range 3 {
		if err := r.Load(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if s := r.Snapshot(); s.Len() != 1 || s.Endpoints()[0].ID != good {
		t.Fatalf("snapshot = %d endpoints, want only %d", s.Len(), good)
	}
	for u, id := range bad {
		label := itoa(id)
		if got := testutil.ToFloat64(m.EndpointConfigErrors.WithLabelValues(label)); got != 1 {
			t.Errorf("config errors of %d (%s) = %v, want 1", id, u, got)
		}
		if n := strings.Count(logs.String(), "webhook endpoint "+label+" is skipped"); n != 1 {
			t.Errorf("endpoint %d logged %d times, want once", id, n)
		}
	}
	out := logs.String()
	for _, leak := range []string{secret, "hunter2"} {
		if strings.Contains(out, leak) {
			t.Errorf("log contains %q:\n%s", leak, out)
		}
	}
	if !strings.Contains(out, "UPDATE grouphook.endpoints SET url") {
		t.Errorf("log does not say how to fix it:\n%s", out)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}

	// Another bad URL is reported again; a fixed one comes back.
	id := bad["ftp://example.com/"]
	mustExec(t, pool, `UPDATE grouphook.endpoints SET url = 'gopher://x/' WHERE id = $1`, id)
	if err := r.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.EndpointConfigErrors.WithLabelValues(itoa(id))); got != 2 {
		t.Errorf("config errors after a second bad url = %v, want 2", got)
	}
	mustExec(t, pool, `UPDATE grouphook.endpoints SET url = 'https://fixed.example/' WHERE id = $1`, id)
	if err := r.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Snapshot().Endpoint(id); !ok {
		t.Error("fixed endpoint not loaded")
	}
	if got := testutil.ToFloat64(m.Endpoints); got != 2 {
		t.Errorf("endpoints gauge = %v, want 2", got)
	}
}

func TestRegistryReloadFailureKeepsSnapshot(t *testing.T) {
	pool := newDB(t)
	id := addEndpoint(t, pool, endpointRow{URL: "https://a.example/"})
	var logs syncBuffer
	m, _ := newMetrics()
	r := NewRegistry(pool, testLogger(t, &logs), m)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := r.Load(ctx); err != nil {
		t.Fatal(err)
	}
	mustExec(t, pool, `ALTER TABLE grouphook.endpoints RENAME TO endpoints_gone`)
	r.tick(ctx, time.Second)
	r.tick(ctx, time.Second)
	if got := testutil.ToFloat64(m.EndpointReloadFailures); got != 2 {
		t.Errorf("reload failures = %v, want 2", got)
	}
	if _, ok := r.Snapshot().Endpoint(id); !ok {
		t.Fatal("last good snapshot dropped after a failed reload")
	}
	if n := strings.Count(logs.String(), "cannot reload webhook endpoints"); n != 1 {
		t.Errorf("failure logged %d times, want once per outage", n)
	}
	if !strings.Contains(logs.String(), "run grouphook migrate") {
		t.Errorf("failure log does not name the fix:\n%s", logs.String())
	}
	mustExec(t, pool, `ALTER TABLE grouphook.endpoints_gone RENAME TO endpoints`)
	mustExec(t, pool, `UPDATE grouphook.endpoints SET enabled = false`)
	r.tick(ctx, time.Second)
	if r.Snapshot().Len() != 0 || !strings.Contains(logs.String(), "works again") {
		t.Fatal("registry did not recover")
	}
}

func TestRegistryRunPicksUpChanges(t *testing.T) {
	pool := newDB(t)
	m, _ := newMetrics()
	r := NewRegistry(pool, testLogger(t, nil), m)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error)
	go func() { stopped <- r.Run(ctx, 100*time.Millisecond) }()
	eventually(t, 2*time.Second, "first load", func() bool { return r.Snapshot().Loaded() })
	id := addEndpoint(t, pool, endpointRow{URL: "https://a.example/"})
	eventually(t, 2*time.Second, "insert seen", func() bool { _, ok := r.Snapshot().Endpoint(id); return ok })
	mustExec(t, pool, `DELETE FROM grouphook.endpoints WHERE id = $1`, id)
	eventually(t, 2*time.Second, "delete seen", func() bool { return r.Snapshot().Len() == 0 })
	cancel()
	if err := <-stopped; err != nil {
		t.Fatalf("Run = %v, want nil after cancel", err)
	}
}

func itoa(id int64) string { return strconv.FormatInt(id, 10) }
