package deliver

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/grouphook/grouphook/metrics"
)

// queueHarness is a dispatcher parking into a Queue, both running.
type queueHarness struct {
	*harness
	q  *Queue
	qm *metrics.Metrics
}

// startQueue runs a Queue (with qcfg; fast intervals unless set) and a
// dispatcher that parks into it after parkAfter, until the test ends.
func startQueue(t *testing.T, pool *pgxpool.Pool, qcfg QueueConfig, parkAfter time.Duration) *queueHarness {
	t.Helper()
	if qcfg.PollInterval == 0 {
		qcfg.PollInterval = 50 * time.Millisecond
	}
	if qcfg.RefreshInterval == 0 {
		qcfg.RefreshInterval = 200 * time.Millisecond
	}
	qm, _ := newMetrics()
	q := NewQueue(qcfg, pool, testLogger(t, nil), qm)
	if err := q.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	h := start(t, pool, DispatcherConfig{Parker: q, ParkAfter: parkAfter}, 100*time.Millisecond, nil)
	runQueue(t, q, h.d)
	return &queueHarness{harness: h, q: q, qm: qm}
}

// runQueue runs q.Run until the test ends.
func runQueue(t *testing.T, q *Queue, d *Dispatcher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx, d) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("queue Run: %v", err)
		}
	})
}

func count(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// switchable answers 503 (or what down says) until up is set.
type switchable struct {
	up   atomic.Bool
	down int
}

func (s *switchable) answer(r received, h http.Header) int {
	if s.up.Load() {
		return http.StatusOK
	}
	if s.down != 0 {
		return s.down
	}
	return http.StatusServiceUnavailable
}

// checkOrder fails unless the 2xx deliveries of each group arrive in seq
// order, each seq exactly once, 0..n-1.
func checkOrder(t *testing.T, got []received, groups []string, n int) {
	t.Helper()
	per := map[string][]int{}
	for _, r := range got {
		per[r.Group] = append(per[r.Group], r.Seq)
	}
	for _, g := range groups {
		want := make([]int, n)
		for i := range want {
			want[i] = i
		}
		if !slices.Equal(per[g], want) {
			t.Errorf("group %s got seqs %v, want %v", g, per[g], want)
		}
	}
}

// A failing endpoint's lanes move to the queue in order, later events of
// those lanes queue behind them, and when it recovers every event arrives
// once, per group in order; drained lanes are no longer held.
func TestQueueParkDrainInOrder(t *testing.T) {
	pool := newDB(t)
	sw := &switchable{}
	rc := newReceiver(t, "flaky", "s", sw.answer)
	id := addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: "s"})
	h := startQueue(t, pool, QueueConfig{Schedule: []time.Duration{100 * time.Millisecond, 300 * time.Millisecond, time.Second,
		time.Second, time.Second, time.Second, time.Second, time.Second}}, 300*time.Millisecond)

	groups := []string{"a", "b", "c"}
	var dc doneCounter
	for i := range 4 {
		for _, g := range groups {
			ev := groupEvent(g, i)
			h.d.Submit(ev, dc.fn(ev.ID, nil))
		}
	}
	eventually(t, 10*time.Second, "all parked", func() bool { n, _ := dc.total(); return n == 12 })
	for _, g := range groups {
		if !h.q.Holds(id, g) {
			t.Errorf("lane %s not held after parking", g)
		}
	}
	if n := count(t, pool, `SELECT count(*) FROM grouphook.deliveries WHERE status = 'pending'`); n != 12 {
		t.Fatalf("%d pending rows, want 12", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM grouphook.deliveries WHERE head`); n != 3 {
		t.Errorf("%d heads, want one per lane", n)
	}
	// A later event of a held lane goes behind the queued ones, at once.
	for _, g := range groups {
		ev := groupEvent(g, 4)
		h.d.Submit(ev, dc.fn(ev.ID, nil))
	}
	eventually(t, 5*time.Second, "later events parked behind", func() bool { n, _ := dc.total(); return n == 15 })
	var failing *time.Time
	if err := pool.QueryRow(context.Background(), `SELECT failing_since FROM grouphook.endpoints WHERE id = $1`, id).Scan(&failing); err != nil || failing == nil {
		t.Errorf("failing_since = %v, %v; want set", failing, err)
	}

	sw.up.Store(true)
	eventually(t, 20*time.Second, "queue drained", func() bool {
		return count(t, pool, `SELECT count(*) FROM grouphook.deliveries`) == 0
	})
	checkOrder(t, rc.ok(), groups, 5)
	eventually(t, 5*time.Second, "lanes released", func() bool {
		return !h.q.Holds(id, "a") && !h.q.Holds(id, "b") && !h.q.Holds(id, "c")
	})
	// Back to the in-memory path: nothing is written.
	ev := groupEvent("a", 5)
	h.d.Submit(ev, dc.fn(ev.ID, nil))
	eventually(t, 5*time.Second, "in-memory delivery", func() bool { return rc.has(ev.ID) })
	if n := count(t, pool, `SELECT count(*) FROM grouphook.deliveries`); n != 0 {
		t.Errorf("%d rows after an in-memory delivery", n)
	}
	if err := pool.QueryRow(context.Background(), `SELECT failing_since FROM grouphook.endpoints WHERE id = $1`, id).Scan(&failing); err != nil || failing != nil {
		t.Errorf("failing_since = %v, %v after recovery; want NULL", failing, err)
	}
	if got := testutil.ToFloat64(h.qm.QueueAttemptsTotal.WithLabelValues(metrics.OutcomeSuccess)); got != 15 {
		t.Errorf("queue successes = %v, want 15", got)
	}
}

// The body of a queued delivery is byte for byte the in-memory one.
func TestQueueBodyRoundTrip(t *testing.T) {
	pool := newDB(t)
	sw := &switchable{}
	rc := newReceiver(t, "r", "s", sw.answer)
	thin := newReceiver(t, "thin", "s", sw.answer)
	addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: "s"})
	addEndpoint(t, pool, endpointRow{URL: thin.srv.URL, Secret: "s", NoData: true})
	h := startQueue(t, pool, QueueConfig{Schedule: []time.Duration{50 * time.Millisecond, time.Second, time.Second}}, 100*time.Millisecond)
	evs := []Event{groupEvent("x", 0), groupEvent("x", 1), groupEvent("x", 2)}
	evs[0].Row = []byte(`{"g":"x","seq":0,"name":"Zoë \u2028 \"q\" <b>&</b>","n":12345678901234567890}`)
	evs[0].OccurredAt = time.Date(2026, 3, 4, 5, 6, 7, 123456789, time.UTC)
	evs[1].Previous = nil
	evs[2].Previous = []byte{}
	evs[2].Tenant, evs[2].TenantNull = "acme", false
	var dc doneCounter
	for _, ev := range evs {
		h.d.Submit(ev, dc.fn(ev.ID, nil))
	}
	eventually(t, 10*time.Second, "parked", func() bool { n, _ := dc.total(); return n == 3 })
	sw.up.Store(true)
	eventually(t, 10*time.Second, "delivered", func() bool { return len(rc.ok()) == 3 && len(thin.ok()) == 3 })
	for i, r := range rc.ok() {
		if want := AppendBody(nil, &evs[i], true); string(r.Body) != string(want) {
			t.Errorf("full body %d\n got %s\nwant %s", i, r.Body, want)
		}
	}
	for i, r := range thin.ok() {
		if want := AppendBody(nil, &evs[i], false); string(r.Body) != string(want) {
			t.Errorf("thin body %d\n got %s\nwant %s", i, r.Body, want)
		}
	}
}

// 410 Gone on the in-memory path disables the endpoint at once, stores the
// lane's deliveries dead and kills what was queued.
func TestQueueGoneInMemory(t *testing.T) {
	pool := newDB(t)
	var gone atomic.Bool
	rc := newReceiver(t, "gone", "s", func(r received, h http.Header) int {
		if gone.Load() {
			return http.StatusGone
		}
		return http.StatusServiceUnavailable
	})
	other := newReceiver(t, "other", "s", nil)
	id := addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: "s"})
	addEndpoint(t, pool, endpointRow{URL: other.srv.URL, Secret: "s"})
	h := startQueue(t, pool, QueueConfig{}, 200*time.Millisecond)
	var dc doneCounter
	first := groupEvent("q", 0) // parked after failing with 503
	h.d.Submit(first, dc.fn(first.ID, nil))
	eventually(t, 10*time.Second, "parked", func() bool { return dc.count(first.ID) == 1 })

	gone.Store(true)
	ev := groupEvent("m", 0)
	h.d.Submit(ev, dc.fn(ev.ID, nil))
	eventually(t, 10*time.Second, "410 handled", func() bool { return dc.count(ev.ID) == 1 })
	var (
		enabled bool
		reason  *string
		at      *time.Time
	)
	if err := pool.QueryRow(context.Background(), `SELECT enabled, disabled_reason, disabled_at FROM grouphook.endpoints WHERE id = $1`, id).
		Scan(&enabled, &reason, &at); err != nil {
		t.Fatal(err)
	}
	if enabled || reason == nil || !strings.Contains(*reason, "410") || at == nil {
		t.Errorf("endpoint after 410: enabled=%v reason=%v at=%v", enabled, reason, at)
	}
	if n := count(t, pool, `SELECT count(*) FROM grouphook.deliveries WHERE status = 'dead' AND endpoint_id = $1`, id); n != 2 {
		t.Errorf("%d dead deliveries, want 2 (the queued one and the one that got 410)", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM grouphook.deliveries WHERE status = 'pending'`); n != 0 {
		t.Errorf("%d pending deliveries left", n)
	}
	if h.q.Holds(id, "q") {
		t.Error("lane of a disabled endpoint still held")
	}
	if n := count(t, pool, `SELECT count(*) FROM grouphook.delivery_attempts a JOIN grouphook.deliveries d ON d.id = a.delivery_id
		WHERE d.event_id = $1 AND a.status_code = 410`, ev.ID); n != 1 {
		t.Errorf("%d attempts with status 410 recorded, want 1", n)
	}
	if got := testutil.ToFloat64(h.qm.EndpointsDisabledTotal.WithLabelValues(metrics.ReasonGone)); got != 1 {
		t.Errorf("endpoints disabled (gone) = %v", got)
	}
	if got := testutil.ToFloat64(h.qm.DeadDeliveriesTotal.WithLabelValues(metrics.ReasonGone)); got != 2 {
		t.Errorf("dead deliveries (gone) = %v", got)
	}
	if len(other.ok()) != 2 {
		t.Errorf("the other endpoint got %d events, want 2", len(other.ok()))
	}
}

// 410 Gone from the queue disables the endpoint and kills every pending
// delivery of it.
func TestQueueGoneFromQueue(t *testing.T) {
	pool := newDB(t)
	sw := &switchable{}
	rc := newReceiver(t, "r", "s", sw.answer)
	id := addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: "s"})
	h := startQueue(t, pool, QueueConfig{Schedule: []time.Duration{200 * time.Millisecond, time.Second, time.Second}}, 100*time.Millisecond)
	var dc doneCounter
	for i := range 3 {
		for _, g := range []string{"a", "b"} {
			ev := groupEvent(g, i)
			h.d.Submit(ev, dc.fn(ev.ID, nil))
		}
	}
	eventually(t, 10*time.Second, "parked", func() bool { n, _ := dc.total(); return n == 6 })
	sw.down = http.StatusGone
	eventually(t, 10*time.Second, "disabled", func() bool {
		return count(t, pool, `SELECT count(*) FROM grouphook.endpoints WHERE id = $1 AND NOT enabled AND disabled_reason LIKE '%410%'`, id) == 1
	})
	eventually(t, 5*time.Second, "all dead", func() bool {
		return count(t, pool, `SELECT count(*) FROM grouphook.deliveries WHERE status = 'dead'`) == 6
	})
	if h.q.Holds(id, "a") || h.q.Holds(id, "b") {
		t.Error("lanes still held")
	}
}

// An exhausted schedule makes a delivery dead with its attempt history;
// replay sends it again with its original id. Bad replay input changes
// nothing.
func TestQueueDeadAndReplay(t *testing.T) {
	pool := newDB(t)
	sw := &switchable{}
	rc := newReceiver(t, "r", "s", sw.answer)
	id := addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: "s"})
	h := startQueue(t, pool, QueueConfig{Schedule: []time.Duration{100 * time.Millisecond, 200 * time.Millisecond}}, 200*time.Millisecond)
	var dc doneCounter
	var evs []Event
	for i := range 3 {
		ev := groupEvent("d", i)
		evs = append(evs, ev)
		h.d.Submit(ev, dc.fn(ev.ID, nil))
	}
	eventually(t, 20*time.Second, "all dead", func() bool {
		return count(t, pool, `SELECT count(*) FROM grouphook.deliveries WHERE status = 'dead'`) == 3
	})
	ctx := context.Background()
	list, err := ListDeliveries(ctx, pool, ListFilter{EndpointID: id, Status: "dead"})
	if err != nil || len(list) != 3 {
		t.Fatalf("list = %v, %v", list, err)
	}
	for i, d := range list {
		if d.EventID != evs[i].ID || d.DeadAt == nil || !strings.Contains(d.DeadReason, "schedule") {
			t.Errorf("dead delivery %d = %+v", i, d)
		}
	}
	// Every delivery waits each delay of the schedule once. The parked
	// head: a summary of its in-memory attempts (which used the first
	// delay), then one queued attempt per delay; the others: one attempt,
	// then one per delay.
	d0, ev0, attempts, err := GetDelivery(ctx, pool, list[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if string(AppendBody(nil, &ev0, true)) != string(AppendBody(nil, &evs[0], true)) {
		t.Errorf("stored event differs:\n%s\n%s", AppendBody(nil, &ev0, true), AppendBody(nil, &evs[0], true))
	}
	if len(attempts) != 3 || attempts[0].Duration != nil || !strings.Contains(attempts[0].Error, "in memory") ||
		attempts[1].StatusCode != 503 || attempts[1].Duration == nil || d0.Attempts < 3 {
		t.Errorf("head: %+v, attempts %+v", d0, attempts)
	}
	_, _, attempts, _ = GetDelivery(ctx, pool, list[2].ID)
	if len(attempts) != 3 {
		t.Errorf("last delivery has %d attempts, want 3 (one plus one per delay)", len(attempts))
	}

	// Bad input: nothing changes.
	before := count(t, pool, `SELECT count(*) FROM grouphook.deliveries WHERE status = 'dead'`)
	for _, sel := range []ReplaySelector{
		{IDs: []int64{list[0].ID, 999999}},
		{EndpointID: 424242},
		{},
		{IDs: []int64{list[0].ID}, EndpointID: id},
	} {
		if _, err := ReplayDeliveries(ctx, pool, sel); err == nil {
			t.Errorf("replay %+v succeeded", sel)
		} else if _, ok := err.(*InputError); !ok {
			t.Errorf("replay %+v: %v is not an InputError", sel, err)
		}
	}
	if _, _, _, err := GetDelivery(ctx, pool, 999999); err == nil {
		t.Error("GetDelivery of an unknown id succeeded")
	}
	if _, err := ListDeliveries(ctx, pool, ListFilter{Status: "stuck"}); err == nil {
		t.Error("list with a bad status succeeded")
	}
	if after := count(t, pool, `SELECT count(*) FROM grouphook.deliveries WHERE status = 'dead'`); after != before {
		t.Fatalf("bad replays changed the queue: %d dead before, %d after", before, after)
	}

	sw.up.Store(true)
	res, err := ReplayDeliveries(ctx, pool, ReplaySelector{EndpointID: id})
	if err != nil || res.Replayed != 3 {
		t.Fatalf("replay = %+v, %v", res, err)
	}
	eventually(t, 10*time.Second, "replayed deliveries arrive", func() bool { return len(rc.ok()) == 3 })
	for i, r := range rc.ok() {
		if r.ID != evs[i].ID {
			t.Errorf("replayed %d has id %s, want %s", i, r.ID, evs[i].ID)
		}
	}
	// A pending id cannot be replayed.
	sw.up.Store(false)
	ev := groupEvent("p", 0)
	h.d.Submit(ev, dc.fn(ev.ID, nil))
	eventually(t, 10*time.Second, "parked", func() bool { return dc.count(ev.ID) == 1 })
	var pid int64
	if err := pool.QueryRow(ctx, `SELECT id FROM grouphook.deliveries WHERE event_id = $1`, ev.ID).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := ReplayDeliveries(ctx, pool, ReplaySelector{IDs: []int64{pid}}); err == nil || !strings.Contains(err.Error(), "pending") {
		t.Errorf("replay of a pending delivery: %v", err)
	}
}

// Housekeeping disables an endpoint failing for DisableAfter and deletes
// dead rows past DeadRetention; an in-memory success clears failing_since.
func TestQueueHousekeeping(t *testing.T) {
	pool := newDB(t)
	rc := newReceiver(t, "r", "s", nil)
	failing := addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: "s"})
	healthy := addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: "s"})
	insertRows(t, pool, failing, 3, 2, "pending")
	insertRows(t, pool, healthy, 2, 1, "dead")
	ctx := context.Background()
	mustExec(t, pool, `UPDATE grouphook.deliveries SET dead_at = now() - interval '2 hours' WHERE endpoint_id = $1 AND id = (SELECT min(id) FROM grouphook.deliveries WHERE endpoint_id = $1)`, healthy)
	mustExec(t, pool, `UPDATE grouphook.endpoints SET failing_since = now() - interval '2 hours' WHERE id = $1`, failing)
	mustExec(t, pool, `UPDATE grouphook.endpoints SET failing_since = now() - interval '2 hours' WHERE id = $1`, healthy)
	qm, _ := newMetrics()
	q := NewQueue(QueueConfig{DisableAfter: time.Hour, DeadRetention: time.Hour}, pool, testLogger(t, nil), qm)
	if err := q.Load(ctx); err != nil {
		t.Fatal(err)
	}
	// healthy succeeds in memory before the housekeeping runs.
	q.Succeeded(healthy)
	q.clearFailing(ctx, <-q.clearCh)
	q.housekeep(ctx)
	var enabled bool
	var reason *string
	if err := pool.QueryRow(ctx, `SELECT enabled, disabled_reason FROM grouphook.endpoints WHERE id = $1`, failing).Scan(&enabled, &reason); err != nil {
		t.Fatal(err)
	}
	if enabled || reason == nil || !strings.Contains(*reason, "GROUPHOOK_DISABLE_AFTER") {
		t.Errorf("failing endpoint: enabled=%v reason=%v", enabled, reason)
	}
	if n := count(t, pool, `SELECT count(*) FROM grouphook.deliveries WHERE endpoint_id = $1 AND status = 'pending'`, failing); n != 0 {
		t.Errorf("%d pending deliveries of the disabled endpoint", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM grouphook.endpoints WHERE id = $1 AND enabled AND failing_since IS NULL AND last_success_at IS NOT NULL`, healthy); n != 1 {
		t.Error("the endpoint that succeeded in memory was disabled or is still failing")
	}
	if n := count(t, pool, `SELECT count(*) FROM grouphook.deliveries WHERE endpoint_id = $1`, healthy); n != 1 {
		t.Errorf("%d dead rows of the healthy endpoint left, want 1 (the other was past retention)", n)
	}
	if got := testutil.ToFloat64(qm.EndpointsDisabledTotal.WithLabelValues(metrics.ReasonFailing)); got != 1 {
		t.Errorf("endpoints disabled (failing) = %v", got)
	}
	// A lane left without a head (by hand) gets one back.
	insertRows(t, pool, healthy, 1, 3, "pending")
	mustExec(t, pool, `UPDATE grouphook.deliveries SET head = false WHERE endpoint_id = $1`, healthy)
	q.housekeep(ctx)
	if n := count(t, pool, `SELECT count(*) FROM grouphook.deliveries WHERE endpoint_id = $1 AND head
		AND id = (SELECT min(id) FROM grouphook.deliveries WHERE endpoint_id = $1 AND status = 'pending')`, healthy); n != 1 {
		t.Error("the headless lane did not get its oldest row as head")
	}
	// Re-enabling clears the reason; it does not resurrect dead rows.
	mustExec(t, pool, `UPDATE grouphook.endpoints SET enabled = true WHERE id = $1`, failing)
	if n := count(t, pool, `SELECT count(*) FROM grouphook.endpoints WHERE id = $1 AND disabled_reason IS NULL AND disabled_at IS NULL`, failing); n != 1 {
		t.Error("re-enabling kept the disable reason")
	}
	if n := count(t, pool, `SELECT count(*) FROM grouphook.deliveries WHERE endpoint_id = $1 AND status = 'dead'`, failing); n != 6 {
		t.Errorf("%d dead rows after re-enabling, want 6", n)
	}
}

// insertRows queues perLane rows in each of lanes lanes of endpoint
// directly, as Park would (the first of each lane is its head).
func insertRows(t testing.TB, pool *pgxpool.Pool, endpoint int64, lanes, perLane int, status string) {
	t.Helper()
	mustExec(t, pool, `INSERT INTO grouphook.deliveries (event_id, endpoint_id, group_key, event_type, table_name, occurred_at,
			row_json, key_json, status, head, dead_at)
		SELECT format('evt_%s_%s_%s', $1::bigint, l, s), $1, 'g' || l, 'UPDATE', 'public.groups', now(),
			format('{"g":"g%s","seq":%s}', l, s), format('{"g":"g%s"}', l), $4, $4 = 'pending' AND s = 0,
			CASE WHEN $4 = 'dead' THEN now() END
		FROM generate_series(0, $2 - 1) l, generate_series(0, $3 - 1) s
		ORDER BY l, s`, endpoint, lanes, perLane, status)
}

// Two workers (as on two replicas) drain one queue together: both do
// work, per-group order holds, and no delivery is ever sent twice at once.
func TestQueueTwoWorkersDrainTogether(t *testing.T) {
	pool := newDB(t)
	var (
		mu       sync.Mutex
		inFlight = map[string]int{} // webhook-id -> attempts in flight
		lanes    = map[string]int{} // group -> attempts in flight
		problems []string
	)
	rc := newReceiver(t, "r", "s", func(r received, h http.Header) int {
		mu.Lock()
		inFlight[r.ID]++
		lanes[r.Group]++
		if inFlight[r.ID] > 1 {
			problems = append(problems, "delivery "+r.ID+" sent twice at once")
		}
		if lanes[r.Group] > 1 {
			problems = append(problems, "two deliveries of group "+r.Group+" at once")
		}
		mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		mu.Lock()
		inFlight[r.ID]--
		lanes[r.Group]--
		mu.Unlock()
		return http.StatusOK
	})
	id := addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: "s"})
	const nLanes, perLane = 20, 10
	insertRows(t, pool, id, nLanes, perLane, "pending")

	var qs []*Queue
	var ms []*metrics.Metrics
	for i := range 2 {
		qm, _ := newMetrics()
		q := NewQueue(QueueConfig{Workers: 4, PollInterval: 20 * time.Millisecond, Owner: fmt.Sprintf("replica-%d", i)}, pool, testLogger(t, nil), qm)
		if err := q.Load(context.Background()); err != nil {
			t.Fatal(err)
		}
		h := start(t, pool, DispatcherConfig{Parker: q}, time.Second, nil)
		qs, ms = append(qs, q), append(ms, qm)
		runQueue(t, q, h.d)
	}
	eventually(t, 30*time.Second, "queue drained", func() bool {
		return count(t, pool, `SELECT count(*) FROM grouphook.deliveries`) == 0
	})
	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Error(p)
	}
	groups := make([]string, nLanes)
	for i := range groups {
		groups[i] = fmt.Sprintf("g%d", i)
	}
	checkOrder(t, rc.ok(), groups, perLane)
	for i, qm := range ms {
		n := testutil.ToFloat64(qm.QueueAttemptsTotal.WithLabelValues(metrics.OutcomeSuccess))
		t.Logf("replica %d delivered %v", i, n)
		if n == 0 {
			t.Errorf("replica %d delivered nothing", i)
		}
	}
}

// With 100,000 queued deliveries, the workers claim at most as many rows
// as they have idle workers, and the heap does not grow with the queue.
// What this proves: nothing in the worker, the held set or the gauges
// loads the queue into memory. It does not measure the database's cost.
func TestQueueMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("inserts 100,000 rows")
	}
	pool := newDB(t)
	rc := newReceiver(t, "r", "s", func(r received, h http.Header) int { return http.StatusServiceUnavailable })
	id := addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: "s"})
	const nLanes, perLane = 1000, 100
	insertRows(t, pool, id, nLanes, perLane, "pending")
	mustExec(t, pool, `ANALYZE grouphook.deliveries`)

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	const workers = 8
	qm, _ := newMetrics()
	q := NewQueue(QueueConfig{Workers: workers, PollInterval: 20 * time.Millisecond, RefreshInterval: 200 * time.Millisecond,
		Schedule: []time.Duration{10 * time.Millisecond, 10 * time.Millisecond, 10 * time.Millisecond, time.Hour}, Jitter: -1},
		pool, testLogger(t, nil), qm)
	start := time.Now()
	if err := q.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("loaded %d held lanes in %s", len(q.held), time.Since(start))
	h := startQueueWith(t, pool, q)
	_ = h
	var peak uint64
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapAlloc)
		time.Sleep(100 * time.Millisecond)
	}
	attempts := len(rc.all())
	t.Logf("%d attempts in 4s; heap before %d MiB, peak %d MiB; largest claim %d", attempts,
		before.HeapAlloc>>20, peak>>20, q.maxClaim.Load())
	if attempts < 100 {
		t.Errorf("only %d attempts in 4s", attempts)
	}
	if c := q.maxClaim.Load(); c > workers || c == 0 {
		t.Errorf("largest claim %d, want 1..%d", c, workers)
	}
	// 1000 held lanes and 8 rows in flight are well under a megabyte; the
	// 100,000 rows (about 15 MB as Go values) must never be in memory.
	if grow := int64(peak) - int64(before.HeapAlloc); grow > 12<<20 {
		t.Errorf("heap grew by %d MiB with 100,000 queued rows", grow>>20)
	}
	eventually(t, 10*time.Second, "gauges", func() bool {
		return testutil.ToFloat64(qm.QueueDeliveries.WithLabelValues("pending")) == nLanes*perLane
	})
	if age := testutil.ToFloat64(qm.QueueOldestPending); age <= 0 {
		t.Errorf("oldest pending age = %v", age)
	}
}

// startQueueWith runs a dispatcher parking into q, and q, until the test
// ends.
func startQueueWith(t *testing.T, pool *pgxpool.Pool, q *Queue) *harness {
	h := start(t, pool, DispatcherConfig{Parker: q}, time.Second, nil)
	runQueue(t, q, h.d)
	return h
}

func TestParseSchedule(t *testing.T) {
	got, err := ParseSchedule(DefaultScheduleText)
	if err != nil || !slices.Equal(got, DefaultSchedule) {
		t.Errorf("default: %v, %v", got, err)
	}
	if got, err := ParseSchedule(" 100ms, 2s "); err != nil || !slices.Equal(got, []time.Duration{100 * time.Millisecond, 2 * time.Second}) {
		t.Errorf("spaces: %v, %v", got, err)
	}
	for _, tt := range []struct{ in, want string }{
		{"", "empty"},
		{"5s,,5m", "entry 2 is empty"},
		{"5s,-5m", `entry 2 ("-5m") is not positive`},
		{"0s", `entry 1 ("0s") is not positive`},
		{"5s,soon", `entry 2 ("soon") is not a duration`},
	} {
		if _, err := ParseSchedule(tt.in); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseSchedule(%q) = %v, want %q", tt.in, err, tt.want)
		}
	}
}

// The held set never forgets a lane that may have pending rows: a lane
// marked after a Resync's query or a worker's emptiness check began stays.
func TestQueueHeldSet(t *testing.T) {
	qm, _ := newMetrics()
	q := NewQueue(QueueConfig{}, nil, nil, qm)
	a, b, c := laneKey{1, "a"}, laneKey{1, "b"}, laneKey{2, "c"}

	q.mark(a)
	if !q.Holds(1, "a") || q.Holds(1, "b") {
		t.Fatal("mark")
	}
	// A worker saw lane a empty in a transaction that began after the mark.
	q.release(a, q.tick())
	if q.Holds(1, "a") {
		t.Error("release after the mark kept the lane")
	}
	// A park of lane a commits while a worker's transaction runs: the
	// worker's "empty" is older than the mark.
	w := q.tick()
	q.mark(a)
	q.release(a, w)
	if !q.Holds(1, "a") {
		t.Error("a lane marked after the worker began was released")
	}
	// A Resync whose query began before b was parked does not see b, and
	// must keep it; a, not seen and not marked since, goes; c, seen, comes.
	at := q.tick()
	q.mark(b)
	q.install(at, map[laneKey]uint64{c: at})
	if q.Holds(1, "a") || !q.Holds(1, "b") || !q.Holds(2, "c") {
		t.Errorf("after install: a=%v b=%v c=%v, want false true true", q.Holds(1, "a"), q.Holds(1, "b"), q.Holds(2, "c"))
	}
	// c, known since the resync, is released by a worker that began after
	// it, but not by one that began before it.
	q.release(c, at-1)
	if !q.Holds(2, "c") {
		t.Error("released by an older emptiness check")
	}
	q.releaseEndpoint(2, q.tick())
	if q.Holds(2, "c") {
		t.Error("releaseEndpoint kept the lane")
	}
	if got := testutil.ToFloat64(qm.QueueHeldLanes); got != 1 {
		t.Errorf("held lanes gauge = %v, want 1", got)
	}
}

// The delay after a failure: the schedule's step with jitter, or a longer
// Retry-After, capped.
func TestQueueDelay(t *testing.T) {
	qm, _ := newMetrics()
	q := NewQueue(QueueConfig{Schedule: []time.Duration{time.Second, time.Minute}, RetryAfterMax: 10 * time.Minute}, nil, nil, qm)
	for range 100 {
		if d := q.delay(0, nil); d < 800*time.Millisecond || d > 1200*time.Millisecond {
			t.Fatalf("delay(0) = %s, want 1s ±20%%", d)
		}
		if d := q.delay(1, nil); d < 48*time.Second || d > 72*time.Second {
			t.Fatalf("delay(1) = %s, want 1m ±20%%", d)
		}
	}
	if d := q.delay(0, &AttemptError{StatusCode: 503, RetryAfter: 5 * time.Minute}); d != 5*time.Minute {
		t.Errorf("Retry-After 5m: delay %s", d)
	}
	if d := q.delay(0, &AttemptError{StatusCode: 429, RetryAfter: 24 * time.Hour}); d != 10*time.Minute {
		t.Errorf("Retry-After 24h: delay %s, want the 10m cap", d)
	}
	if d := q.delay(1, &AttemptError{StatusCode: 503, RetryAfter: 2 * time.Second}); d < 48*time.Second {
		t.Errorf("a short Retry-After shortened the schedule: %s", d)
	}
}
