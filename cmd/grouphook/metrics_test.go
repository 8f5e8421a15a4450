package main

// The metrics a running daemon exports at /metrics: each exists with help
// text, passes promlint, and moves when it should.

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// sample is one line of the Prometheus text format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

var (
	sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$`)
	labelPair  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// parseExposition reads the samples of a /metrics page (text format).
func parseExposition(t testing.TB, text string) []sample {
	t.Helper()
	var out []sample
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := sampleLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("not a sample line: %q", line)
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		s := sample{name: m[1], labels: map[string]string{}, value: v}
		for _, p := range labelPair.FindAllStringSubmatch(m[2], -1) {
			s.labels[p[1]] = p[2]
		}
		out = append(out, s)
	}
	return out
}

// scrape fetches a /metrics page.
func scrape(t testing.TB, httpAddr string) string {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// seriesValue returns the value of the series name with (at least) the
// given label pairs ("k", "v", ...), and whether there is one.
func seriesValue(t testing.TB, text, name string, labels ...string) (float64, bool) {
	t.Helper()
	for _, s := range parseExposition(t, text) {
		if s.name != name {
			continue
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if s.labels[labels[i]] != labels[i+1] {
				match = false
			}
		}
		if match {
			return s.value, true
		}
	}
	return 0, false
}

// mustSeries is seriesValue that fails the test when the series is absent.
func mustSeries(t testing.TB, text, name string, labels ...string) float64 {
	t.Helper()
	v, ok := seriesValue(t, text, name, labels...)
	if !ok {
		t.Fatalf("/metrics has no %s%v:\n%s", name, labels, grepLines(text, name))
	}
	return v
}

// waitSeries scrapes until cond holds for the series' value.
func waitSeries(t testing.TB, httpAddr, name string, cond func(float64) bool, labels ...string) float64 {
	t.Helper()
	var last float64
	var text string
	eventually(t, waitLong, func() bool {
		text = scrape(t, httpAddr)
		v, ok := seriesValue(t, text, name, labels...)
		last = v
		return ok && cond(v)
	}, func() string {
		return fmt.Sprintf("%s%v to move (last %v):\n%s", name, labels, last, grepLines(text, name))
	})
	return last
}

// lintExposition runs promlint over a /metrics page.
func lintExposition(t testing.TB, text string) {
	t.Helper()
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// TestMetricsExportedAndMove runs the daemon against a receiver and checks,
// on its /metrics, every grouphook metric of the issue: events by type,
// deliveries by endpoint and outcome, attempt duration, commit-to-delivery
// latency, events in flight, received and confirmed LSN, lag, slot
// wal_status and lag, max_slot_wal_keep_size, the active-streamer gauge,
// heartbeats, endpoint state and build info; and that promlint is clean.
func TestMetricsExportedAndMove(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, groupsDDL, `CREATE TABLE other (id bigserial PRIMARY KEY, v text)`)
	db.migrate(t, nil)
	secret := randomSecret(t, false)
	r := newReceiver(t, "metrics", secret)
	var (
		mu       sync.Mutex
		hold     = make(chan struct{})
		failed   bool
		released bool
	)
	release := func() {
		mu.Lock()
		defer mu.Unlock()
		if !released {
			released = true
			close(hold)
		}
	}
	t.Cleanup(release)
	r.setRespond(func(d *delivery) int {
		switch groupKey(d) {
		case "2": // held until the test lets it go
			<-hold
		case "3": // fails once
			mu.Lock()
			defer mu.Unlock()
			if !failed {
				failed = true
				return http.StatusServiceUnavailable
			}
		}
		return http.StatusOK
	})
	ep := strconv.FormatInt(db.addEndpoint(t, endpoint{URL: r.URL(), Secret: secret}), 10)
	d := startDaemon(t, db, map[string]string{
		"GROUPHOOK_HEARTBEAT_INTERVAL":  "200ms",
		"GROUPHOOK_SLOT_CHECK_INTERVAL": "200ms",
	})
	addr := d.HTTPAddr
	// The walsender holds the slot a moment before the stream marks itself
	// streaming.
	waitSeries(t, addr, "grouphook_replication_streaming", func(v float64) bool { return v == 1 })

	text := scrape(t, addr)
	lintExposition(t, text)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"grouphook_build_info", []string{"version", version, "goversion", runtime.Version()}, 1},
		{"grouphook_replication_streaming", nil, 1},
		{"grouphook_endpoints", nil, 1},
		{"grouphook_events_in_flight", nil, 0},
	} {
		if v := mustSeries(t, text, c.name, c.labels...); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	waitSeries(t, addr, "grouphook_replication_slot_wal_status", func(v float64) bool { return v == 1 }, "wal_status", "reserved")
	waitSeries(t, addr, "grouphook_replication_max_slot_wal_keep_size_bytes", func(v float64) bool { return v == -1 })
	waitSeries(t, addr, "grouphook_endpoint_state", func(v float64) bool { return v == 1 }, "endpoint", ep, "state", "enabled")
	hb := waitSeries(t, addr, "grouphook_replication_heartbeats_total", func(v float64) bool { return v >= 1 })
	waitSeries(t, addr, "grouphook_replication_heartbeats_total", func(v float64) bool { return v > hb })

	// One event of each type.
	psql(t, db.URL, `INSERT INTO groups (id, name) VALUES (1, 'one')`)
	psql(t, db.URL, `UPDATE groups SET name = 'uno' WHERE id = 1`)
	psql(t, db.URL, `DELETE FROM groups WHERE id = 1`)
	r.waitOK(t, 3, waitLong)
	end := db.walInsertLSN(t)
	text = scrape(t, addr)
	for _, typ := range []string{"CREATE", "UPDATE", "DELETE"} {
		if v := mustSeries(t, text, "grouphook_events_total", "type", typ); v != 1 {
			t.Errorf("events_total{type=%s} = %v, want 1", typ, v)
		}
	}
	if v := mustSeries(t, text, "grouphook_deliveries_total", "endpoint", ep, "outcome", "success"); v != 3 {
		t.Errorf("deliveries_total{outcome=success} = %v, want 3", v)
	}
	if v := mustSeries(t, text, "grouphook_transactions_total"); v < 3 {
		t.Errorf("transactions_total = %v, want >= 3", v)
	}
	if v := mustSeries(t, text, "grouphook_delivery_attempt_duration_seconds_count", "outcome", "success"); v != 3 {
		t.Errorf("delivery_attempt_duration_seconds_count{outcome=success} = %v, want 3", v)
	}
	if v := mustSeries(t, text, "grouphook_delivery_latency_seconds_count"); v != 3 {
		t.Errorf("delivery_latency_seconds_count = %v, want 3", v)
	}
	if v := mustSeries(t, text, "grouphook_delivery_latency_seconds_bucket", "le", "+Inf"); v != 3 {
		t.Errorf("delivery_latency_seconds_bucket{le=+Inf} = %v, want 3", v)
	}
	waitSeries(t, addr, "grouphook_replication_received_lsn", func(v float64) bool { return v >= float64(end)-1024 })
	waitSeries(t, addr, "grouphook_replication_confirmed_lsn", func(v float64) bool { return v >= float64(end) })

	// A held delivery: one event in flight; the confirmed position stops
	// while other tables write, so both lags grow.
	psql(t, db.URL, `INSERT INTO groups (id, name) VALUES (2, 'held')`)
	waitSeries(t, addr, "grouphook_events_in_flight", func(v float64) bool { return v == 1 })
	psql(t, db.URL, `INSERT INTO other (v) SELECT md5(g::text) FROM generate_series(1, 3000) g`)
	const big = 100_000
	waitSeries(t, addr, "grouphook_replication_lag_bytes", func(v float64) bool { return v > big })
	waitSeries(t, addr, "grouphook_replication_slot_lag_bytes", func(v float64) bool { return v > big })
	release()
	waitSeries(t, addr, "grouphook_events_in_flight", func(v float64) bool { return v == 0 })
	waitSeries(t, addr, "grouphook_replication_lag_bytes", func(v float64) bool { return v < big })
	waitSeries(t, addr, "grouphook_replication_slot_lag_bytes", func(v float64) bool { return v < big })

	// A failed attempt, then its retry.
	psql(t, db.URL, `INSERT INTO groups (id, name) VALUES (3, 'flaky')`)
	waitSeries(t, addr, "grouphook_deliveries_total", func(v float64) bool { return v == 1 }, "endpoint", ep, "outcome", "failure")
	waitSeries(t, addr, "grouphook_delivery_attempt_duration_seconds_count", func(v float64) bool { return v == 1 }, "outcome", "failure")
	waitSeries(t, addr, "grouphook_deliveries_total", func(v float64) bool { return v == 5 }, "endpoint", ep, "outcome", "success")

	// The endpoint is disabled: its state follows and it is no longer loaded.
	db.exec(t, `UPDATE grouphook.endpoints SET enabled = false WHERE id = $1`, ep)
	waitSeries(t, addr, "grouphook_endpoint_state", func(v float64) bool { return v == 1 }, "endpoint", ep, "state", "disabled")
	waitSeries(t, addr, "grouphook_endpoints", func(v float64) bool { return v == 0 })
	text = scrape(t, addr)
	if _, ok := seriesValue(t, text, "grouphook_endpoint_state", "endpoint", ep, "state", "enabled"); ok {
		t.Errorf("endpoint %s is still exported as enabled after it was disabled:\n%s", ep, grepLines(text, "endpoint_state"))
	}
	lintExposition(t, text)

	// Every grouphook family has help text.
	help := map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		if f := strings.Fields(line); len(f) > 3 && f[0] == "#" && f[1] == "HELP" {
			help[f[2]] = true
		}
	}
	var missing []string
	for _, s := range parseExposition(t, text) {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(s.name, "_bucket"), "_count"), "_sum")
		if strings.HasPrefix(s.name, "grouphook_") && !help[s.name] && !help[base] {
			missing = append(missing, s.name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("no HELP for %v", missing)
	}
}
