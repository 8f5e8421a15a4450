package deliver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
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

// received is one request a receiver got.
type received struct {
	Endpoint  string // receiver name
	ID        string // webhook-id
	Timestamp string
	Body      []byte
	Group     string // group.g in the body
	Seq       int    // group.seq in the body
	Status    int    // what the receiver answered
	At        time.Time
}

// receiver is a real HTTP server that verifies both signatures over the
// raw body, like a careful client would, and records what it got.
type receiver struct {
	t      testing.TB
	name   string
	secret string
	srv    *httptest.Server
	// answer decides the status (default 200); it may block.
	answer func(r received, h http.Header) int

	mu       sync.Mutex
	got      []received
	inFlight int
	maxIn    int
}

func newReceiver(t testing.TB, name, secret string, answer func(r received, h http.Header) int) *receiver {
	rc := &receiver{t: t, name: name, secret: secret, answer: answer}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		rc.t.Errorf("%s: read body: %v", rc.name, err)
		return
	}
	if !VerifyHashedKey(rc.secret, body, req.Header.Get("x-hashed-key")) {
		rc.t.Errorf("%s: x-hashed-key does not verify for %s", rc.name, body)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if err := VerifyWebhook(rc.secret, req.Header, body, time.Now(), 0); err != nil {
		rc.t.Errorf("%s: webhook-signature: %v", rc.name, err)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if ct := req.Header.Get("content-type"); ct != "application/json" {
		rc.t.Errorf("%s: content-type %q", rc.name, ct)
	}
	var parsed struct {
		ID    string `json:"id"`
		Group struct {
			G   string `json:"g"`
			Seq int    `json:"seq"`
		} `json:"group"`
	}
	if err := json.Unmarshal(body, &parsed); err != nil {
		rc.t.Errorf("%s: body %s: %v", rc.name, body, err)
	}
	if parsed.ID != req.Header.Get("webhook-id") {
		rc.t.Errorf("%s: body id %q, webhook-id %q", rc.name, parsed.ID, req.Header.Get("webhook-id"))
	}
	r := received{Endpoint: rc.name, ID: parsed.ID, Timestamp: req.Header.Get("webhook-timestamp"),
		Body: body, Group: parsed.Group.G, Seq: parsed.Group.Seq, Status: http.StatusOK, At: time.Now()}
	rc.mu.Lock()
	rc.inFlight++
	rc.maxIn = max(rc.maxIn, rc.inFlight)
	rc.mu.Unlock()
	if rc.answer != nil {
		r.Status = rc.answer(r, w.Header())
	}
	rc.mu.Lock()
	rc.inFlight--
	rc.got = append(rc.got, r)
	rc.mu.Unlock()
	w.WriteHeader(r.Status)
}

// all returns every request so far; ok only the 2xx ones.
func (rc *receiver) all() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.got)
}

func (rc *receiver) ok() []received {
	var out []received
	for _, r := range rc.all() {
		if r.Status < 300 {
			out = append(out, r)
		}
	}
	return out
}

func (rc *receiver) has(id string) bool {
	for _, r := range rc.ok() {
		if r.ID == id {
			return true
		}
	}
	return false
}

type harness struct {
	pool *pgxpool.Pool
	reg  *Registry
	d    *Dispatcher
	m    *metrics.Metrics
	logs *syncBuffer
}

// start loads the registry and runs it (every reload) and the dispatcher
// until the test ends. before, if set, adjusts the dispatcher first.
func start(t *testing.T, pool *pgxpool.Pool, cfg DispatcherConfig, reload time.Duration, before func(*Dispatcher)) *harness {
	t.Helper()
	h := &harness{pool: pool, logs: &syncBuffer{}}
	h.m, _ = newMetrics()
	logger := testLogger(t, h.logs)
	h.reg = NewRegistry(pool, logger, h.m)
	if err := h.reg.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	if cfg.RetryBase == 0 {
		cfg.RetryBase, cfg.RetryMax = 10*time.Millisecond, 50*time.Millisecond
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	cfg.UserAgent = "grouphook/test"
	h.d = NewDispatcher(cfg, h.reg, nil, logger, h.m)
	if before != nil {
		before(h.d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := h.reg.Run(ctx, reload); err != nil {
			t.Errorf("registry Run: %v", err)
		}
	})
	wg.Go(func() {
		if err := h.d.Run(ctx); err != nil {
			t.Errorf("dispatcher Run: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return h
}

func (h *harness) outcome(id int64, outcome string) float64 {
	return testutil.ToFloat64(h.m.DeliveriesTotal.WithLabelValues(itoa(id), outcome))
}

// doneCounter counts done calls per event id.
type doneCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *doneCounter) fn(id string, check func()) func() {
	return func() {
		if check != nil {
			check()
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.n == nil {
			c.n = map[string]int{}
		}
		c.n[id]++
	}
}

func (c *doneCounter) count(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[id]
}

func (c *doneCounter) total() (events, calls int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.n {
		events++
		calls += n
	}
	return events, calls
}

var evSeq atomic.Int64

func groupEvent(group string, seq int) Event {
	return Event{
		ID:         fmt.Sprintf("0000000000%06X-%d", evSeq.Add(1), seq),
		Type:       TypeUpdate,
		Table:      "public.groups",
		OccurredAt: time.Now(),
		Row:        fmt.Appendf(nil, `{"g":%q,"seq":%d,"name":"<b>&</b>"}`, group, seq),
		Key:        fmt.Appendf(nil, `{"g":%q}`, group),
		Previous:   []byte(`{"name":"old"}`),
		GroupKey:   group,
		TenantNull: true,
	}
}

func TestDispatchHeadersAndBodies(t *testing.T) {
	pool := newDB(t)
	var ua []string
	var uaMu sync.Mutex
	full := newReceiver(t, "full", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", func(r received, h http.Header) int { return 204 })
	thin := newReceiver(t, "thin", "It's a Secret to Everybody", nil)
	addEndpoint(t, pool, endpointRow{URL: full.srv.URL + "/hook", Secret: full.secret})
	addEndpoint(t, pool, endpointRow{URL: thin.srv.URL + "/hook?x=1", Secret: thin.secret, NoData: true})
	spy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uaMu.Lock()
		ua = append(ua, r.Header.Get("User-Agent"))
		uaMu.Unlock()
	}))
	defer spy.Close()
	addEndpoint(t, pool, endpointRow{URL: spy.URL, Secret: "s"})
	h := start(t, pool, DispatcherConfig{}, time.Second, nil)

	ev := groupEvent("g1", 0)
	var dc doneCounter
	h.d.Submit(ev, dc.fn(ev.ID, nil))
	eventually(t, 5*time.Second, "done", func() bool { return dc.count(ev.ID) == 1 })
	if got := full.ok(); len(got) != 1 || string(got[0].Body) != string(AppendBody(nil, &ev, true)) {
		t.Errorf("full body = %+v", got)
	}
	if got := thin.ok(); len(got) != 1 || string(got[0].Body) != string(AppendBody(nil, &ev, false)) {
		t.Errorf("thin body = %+v", got)
	}
	if got := full.ok()[0].Body; !strings.Contains(string(got), `"name":"<b>&</b>"`) || !strings.Contains(string(got), `"previous":{"name":"old"}`) {
		t.Errorf("full body escaped or incomplete: %s", got)
	}
	uaMu.Lock()
	defer uaMu.Unlock()
	if len(ua) != 1 || ua[0] != "grouphook/test" {
		t.Errorf("user-agent %q", ua)
	}
}

// Many groups, random delays and random failures: each endpoint gets each
// group's events exactly in submit order, and lanes run in parallel.
func TestDispatchOrderPerGroup(t *testing.T) {
	pool := newDB(t)
	answer := func(r received, h http.Header) int {
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
		if rand.IntN(10) == 0 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}
	var rcs []*receiver
	for i := range 3 {
		rc := newReceiver(t, fmt.Sprintf("r%d", i), fmt.Sprintf("secret-%d", i), answer)
		addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: rc.secret})
		rcs = append(rcs, rc)
	}
	h := start(t, pool, DispatcherConfig{Workers: 16, RetryBase: time.Millisecond, RetryMax: 5 * time.Millisecond}, time.Second, nil)

	const groups, perGroup = 40, 25
	var dc doneCounter
	var ids []string
	for seq := range perGroup {
		for g := range groups {
			ev := groupEvent(fmt.Sprintf("g%02d", g), seq)
			ids = append(ids, ev.ID)
			h.d.Submit(ev, dc.fn(ev.ID, nil))
		}
	}
	eventually(t, 60*time.Second, "every event done", func() bool { n, _ := dc.total(); return n == len(ids) })
	if _, calls := dc.total(); calls != len(ids) {
		t.Fatalf("done called %d times for %d events", calls, len(ids))
	}
	failures := 0
	for _, rc := range rcs {
		seqs := map[string][]int{}
		for _, r := range rc.ok() {
			seqs[r.Group] = append(seqs[r.Group], r.Seq)
		}
		if len(seqs) != groups {
			t.Fatalf("%s got %d groups", rc.name, len(seqs))
		}
		for g, s := range seqs {
			for i, v := range s {
				if v != i {
					t.Fatalf("%s group %s got seq %v, want 0..%d in order", rc.name, g, s, perGroup-1)
				}
			}
		}
		failures += len(rc.all()) - len(rc.ok())
		if rc.maxIn < 2 {
			t.Errorf("%s never had two requests at once", rc.name)
		}
	}
	if failures == 0 {
		t.Error("no failures injected; the test proves less than it should")
	}
	if h.d.Pending() != 0 {
		t.Errorf("pending = %d", h.d.Pending())
	}
	h.d.mu.Lock()
	defer h.d.mu.Unlock()
	if len(h.d.lanes) != 0 {
		t.Errorf("%d lanes left", len(h.d.lanes))
	}
}

// A receiver that blocks one group holds back only that group.
func TestDispatchGroupsInParallel(t *testing.T) {
	pool := newDB(t)
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	rc := newReceiver(t, "r", "s", func(r received, h http.Header) int {
		if r.Group == "slow" {
			<-release
		}
		return 200
	})
	addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: "s"})
	h := start(t, pool, DispatcherConfig{Workers: 4}, time.Second, nil)
	t.Cleanup(unblock) // runs before the dispatcher stops, so a failure cannot hang

	var dc doneCounter
	slow1, slow2 := groupEvent("slow", 0), groupEvent("slow", 1)
	h.d.Submit(slow1, dc.fn(slow1.ID, nil))
	h.d.Submit(slow2, dc.fn(slow2.ID, nil))
	var fast []Event
	for i := range 20 {
		ev := groupEvent(fmt.Sprintf("fast%d", i), 0)
		fast = append(fast, ev)
		h.d.Submit(ev, dc.fn(ev.ID, nil))
	}
	eventually(t, 5*time.Second, "fast groups delivered while slow blocks", func() bool {
		for _, ev := range fast {
			if dc.count(ev.ID) != 1 {
				return false
			}
		}
		return true
	})
	time.Sleep(50 * time.Millisecond)
	if dc.count(slow1.ID) != 0 || dc.count(slow2.ID) != 0 {
		t.Fatal("slow group finished while its receiver blocks")
	}
	rc.mu.Lock()
	inFlight := rc.inFlight
	rc.mu.Unlock()
	if inFlight != 1 {
		t.Fatalf("%d requests of the slow group in flight, want 1 (one per lane)", inFlight)
	}
	unblock()
	eventually(t, 5*time.Second, "slow group done", func() bool { return dc.count(slow2.ID) == 1 })
	if got := rc.ok(); got[len(got)-1].ID != slow2.ID {
		t.Errorf("second slow event not last")
	}
}

func TestDispatchRetrySameIDFreshTimestamp(t *testing.T) {
	pool := newDB(t)
	var calls atomic.Int32
	rc := newReceiver(t, "r", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", func(r received, h http.Header) int {
		if calls.Add(1) <= 2 {
			return 500
		}
		return 200
	})
	id := addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: rc.secret})
	base := time.Now()
	var tick atomic.Int64
	h := start(t, pool, DispatcherConfig{}, time.Second, func(d *Dispatcher) {
		d.now = func() time.Time { return base.Add(time.Duration(tick.Add(1)) * time.Second) }
	})
	ev := groupEvent("g", 0)
	var dc doneCounter
	h.d.Submit(ev, dc.fn(ev.ID, func() {
		if len(rc.ok()) != 1 {
			t.Error("done before the successful attempt")
		}
	}))
	eventually(t, 5*time.Second, "done after retries", func() bool { return dc.count(ev.ID) == 1 })
	got := rc.all()
	if len(got) != 3 {
		t.Fatalf("%d attempts, want 3", len(got))
	}
	stamps := map[string]bool{}
	for _, r := range got {
		if r.ID != ev.ID {
			t.Errorf("webhook-id %q changed on retry, want %q", r.ID, ev.ID)
		}
		stamps[r.Timestamp] = true
	}
	if len(stamps) != 3 {
		t.Errorf("timestamps %v not fresh per attempt", stamps)
	}
	if h.outcome(id, "failure") != 2 || h.outcome(id, "success") != 1 {
		t.Errorf("metrics: failure %v success %v", h.outcome(id, "failure"), h.outcome(id, "success"))
	}
	if n := testutil.CollectAndCount(h.m.DeliveryLatency); n != 1 {
		t.Errorf("latency series = %d", n)
	}
}

func TestDispatchRetryAfter(t *testing.T) {
	pool := newDB(t)
	var calls atomic.Int32
	rc := newReceiver(t, "r", "s", func(r received, h http.Header) int {
		if calls.Add(1) == 1 {
			h.Set("Retry-After", "1")
			return http.StatusTooManyRequests
		}
		return 200
	})
	addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: "s"})
	h := start(t, pool, DispatcherConfig{}, time.Second, nil)
	ev := groupEvent("g", 0)
	var dc doneCounter
	h.d.Submit(ev, dc.fn(ev.ID, nil))
	eventually(t, 5*time.Second, "done", func() bool { return dc.count(ev.ID) == 1 })
	got := rc.all()
	if gap := got[1].At.Sub(got[0].At); gap < 900*time.Millisecond {
		t.Fatalf("retried after %s despite Retry-After: 1", gap)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		v    string
		want time.Duration
	}{
		{"", 0}, {"0", 0}, {"-3", 0}, {"soon", 0}, {"120", 2 * time.Minute},
		{"99999999", 24 * time.Hour},
		{now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.v, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", tt.v, got, tt.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	d := NewDispatcher(DispatcherConfig{RetryBase: time.Second, RetryMax: time.Minute}, NewRegistry(nil, nil, nil), nil, nil, nil)
	for attempts, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 4: 8 * time.Second, 7: time.Minute, 100: time.Minute} {
		for range 50 {
			got := d.backoff(attempts)
			if got < want*8/10 || got > want*12/10 {
				t.Fatalf("backoff(%d) = %s, want %s ±20%%", attempts, got, want)
			}
		}
	}
}

// 3xx is a failure and the redirect is not followed.
func TestDispatchRedirectNotFollowed(t *testing.T) {
	pool := newDB(t)
	target := newReceiver(t, "target", "s", nil)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.srv.URL, http.StatusFound)
	}))
	defer redirector.Close()
	id := addEndpoint(t, pool, endpointRow{URL: redirector.URL, Secret: "s"})
	h := start(t, pool, DispatcherConfig{}, time.Second, nil)
	ev := groupEvent("g", 0)
	var dc doneCounter
	h.d.Submit(ev, dc.fn(ev.ID, nil))
	eventually(t, 5*time.Second, "redirect counted as failure", func() bool { return h.outcome(id, "failure") >= 2 })
	if n := len(target.all()); n != 0 {
		t.Fatalf("redirect target got %d requests", n)
	}
	if dc.count(ev.ID) != 0 {
		t.Fatal("done called for a redirected delivery")
	}
	if !strings.Contains(h.logs.String(), "302 Found (redirects are not followed") {
		t.Errorf("log does not explain the redirect:\n%s", h.logs.String())
	}
	if strings.Contains(h.logs.String(), redirector.URL) {
		t.Error("log repeats the endpoint URL")
	}
}

// A response far over 64 KiB, on success and on failure, does not stall.
func TestDispatchLargeResponse(t *testing.T) {
	pool := newDB(t)
	big := strings.Repeat("x", 4<<20)
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1)%3 == 1 {
			w.WriteHeader(500)
		}
		_, _ = io.WriteString(w, big)
	}))
	defer srv.Close()
	addEndpoint(t, pool, endpointRow{URL: srv.URL, Secret: "s"})
	h := start(t, pool, DispatcherConfig{Workers: 2}, time.Second, nil)
	var dc doneCounter
	for i := range 10 {
		ev := groupEvent(fmt.Sprintf("g%d", i%2), i)
		h.d.Submit(ev, dc.fn(ev.ID, nil))
	}
	eventually(t, 10*time.Second, "all done", func() bool { n, _ := dc.total(); return n == 10 })
}

func TestAttemptError(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusGone)
		_, _ = io.WriteString(w, strings.Repeat("y", 100<<10))
	}))
	defer srv.Close()
	d := NewDispatcher(DispatcherConfig{}, NewRegistry(nil, nil, nil), nil, nil, nil)
	ep := &Endpoint{ID: 1, URL: srv.URL, Secret: "s"}
	ev := groupEvent("g", 0)
	err := d.send(context.Background(), ep, &ev, []byte(`{}`))
	var ae *AttemptError
	if !errors.As(err, &ae) || ae.StatusCode != 410 || len(ae.Body) != ErrorBodyBytes {
		t.Fatalf("send = %#v", err)
	}
	if IsRetryable(err) || StatusCode(fmt.Errorf("wrapped: %w", err)) != 410 {
		t.Error("410 inspection wrong")
	}
	ep.URL = "http://127.0.0.1:1/secret-token"
	err = d.send(context.Background(), ep, &ev, []byte(`{}`))
	if !IsRetryable(err) || StatusCode(err) != 0 || strings.Contains(err.Error(), "secret-token") {
		t.Errorf("connection error: %v", err)
	}
}

// done is called once per event, and only when every endpoint has it.
func TestDispatchDoneAfterAllEndpoints(t *testing.T) {
	pool := newDB(t)
	var rcs []*receiver
	for i := range 3 {
		var calls atomic.Int32
		rc := newReceiver(t, fmt.Sprintf("r%d", i), "s", func(r received, h http.Header) int {
			if i == 2 && calls.Add(1)%4 != 0 { // the third endpoint fails three times out of four
				return 503
			}
			return 200
		})
		addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: "s"})
		rcs = append(rcs, rc)
	}
	h := start(t, pool, DispatcherConfig{}, time.Second, nil)
	var dc doneCounter
	var evs []Event
	for i := range 20 {
		ev := groupEvent(fmt.Sprintf("g%d", i%5), i)
		evs = append(evs, ev)
		h.d.Submit(ev, dc.fn(ev.ID, func() {
			for _, rc := range rcs {
				if !rc.has(ev.ID) {
					t.Errorf("done for %s before %s got it", ev.ID, rc.name)
				}
			}
		}))
	}
	eventually(t, 20*time.Second, "all done", func() bool { n, _ := dc.total(); return n == len(evs) })
	time.Sleep(100 * time.Millisecond)
	for _, ev := range evs {
		if n := dc.count(ev.ID); n != 1 {
			t.Errorf("done called %d times for %s", n, ev.ID)
		}
	}
	// An event no endpoint wants is done at once.
	none := groupEvent("g", 0)
	none.Type = TypeCreate
	mustExec(t, pool, `UPDATE grouphook.endpoints SET events = '{DELETE}'`)
	if err := h.reg.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	called := false
	h.d.Submit(none, func() { called = true })
	if !called {
		t.Error("done not called at once for an unrouted event")
	}
}

// An endpoint disabled or deleted while its delivery retries lets go.
func TestDispatchEndpointRemovedWhileRetrying(t *testing.T) {
	for _, tt := range []struct{ name, change string }{
		{"disabled", `UPDATE grouphook.endpoints SET enabled = false WHERE id = $1`},
		{"deleted", `DELETE FROM grouphook.endpoints WHERE id = $1`},
		{"unsubscribed", `UPDATE grouphook.endpoints SET events = '{CREATE}' WHERE id = $1`},
	} {
		change := tt.change
		t.Run(tt.name, func(t *testing.T) {
			pool := newDB(t)
			rc := newReceiver(t, "down", "s", func(r received, h http.Header) int { return 500 })
			ok := newReceiver(t, "up", "s", nil)
			down := addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: "s"})
			addEndpoint(t, pool, endpointRow{URL: ok.srv.URL, Secret: "s"})
			h := start(t, pool, DispatcherConfig{RetryBase: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond}, time.Second, nil)
			var dc doneCounter
			evs := []Event{groupEvent("g", 0), groupEvent("g", 1)}
			for _, ev := range evs {
				h.d.Submit(ev, dc.fn(ev.ID, nil))
			}
			eventually(t, 5*time.Second, "failing", func() bool { return h.outcome(down, "failure") >= 3 })
			if dc.count(evs[0].ID) != 0 {
				t.Fatal("done while an endpoint fails")
			}
			mustExec(t, pool, change, down)
			changed := time.Now()
			eventually(t, 3*time.Second, "done after the endpoint went away", func() bool {
				return dc.count(evs[0].ID) == 1 && dc.count(evs[1].ID) == 1
			})
			if took := time.Since(changed); took > 2500*time.Millisecond {
				t.Errorf("took %s", took)
			}
			if got := h.outcome(down, "dropped"); got != 2 {
				t.Errorf("dropped = %v, want 2", got)
			}
			if len(ok.ok()) != 2 {
				t.Errorf("healthy endpoint got %d", len(ok.ok()))
			}
		})
	}
}

// Inserting, disabling, deleting and editing endpoint rows takes effect
// within 2 seconds with the production reload interval.
func TestDispatchLiveEndpointChanges(t *testing.T) {
	pool := newDB(t)
	a := newReceiver(t, "a", "sa", nil)
	b := newReceiver(t, "b", "sb", nil)
	c := newReceiver(t, "c", "sc", nil)
	idA := addEndpoint(t, pool, endpointRow{URL: a.srv.URL, Secret: "sa"})
	h := start(t, pool, DispatcherConfig{}, DefaultReloadInterval, nil)

	// Submit a stream of events; report when one submitted after t0
	// reaches (or stops reaching) a receiver.
	var mu sync.Mutex
	submitted := map[string]time.Time{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for i := 0; ctx.Err() == nil; i++ {
			ev := groupEvent(fmt.Sprintf("g%d", i%4), i)
			mu.Lock()
			submitted[ev.ID] = time.Now()
			mu.Unlock()
			h.d.Submit(ev, nil)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	firstAfter := func(rc *receiver, t0 time.Time) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range rc.ok() {
			if submitted[r.ID].After(t0) {
				return true
			}
		}
		return false
	}
	within := 2*time.Second + 300*time.Millisecond // reload interval + delivery slack

	// Insert.
	t0 := time.Now()
	idB := addEndpoint(t, pool, endpointRow{URL: b.srv.URL, Secret: "sb"})
	eventually(t, within, "new endpoint receives", func() bool { return firstAfter(b, t0) })
	t.Logf("insert took effect after %s", time.Since(t0))

	// Disable: after 2 s, no event submitted later reaches a.
	mustExec(t, pool, `UPDATE grouphook.endpoints SET enabled = false WHERE id = $1`, idA)
	t1 := time.Now()
	eventually(t, within, "disable seen", func() bool { _, ok := h.reg.Snapshot().Endpoint(idA); return !ok })
	time.Sleep(300 * time.Millisecond)
	if firstAfter(a, t1.Add(2*time.Second)) {
		t.Error("disabled endpoint still receives 2 s later")
	}

	// Edit: b's URL and secret move to receiver c.
	t2 := time.Now()
	mustExec(t, pool, `UPDATE grouphook.endpoints SET url = $2, secret_key = 'sc' WHERE id = $1`, idB, c.srv.URL)
	eventually(t, within, "edited endpoint receives at its new url", func() bool { return firstAfter(c, t2) })

	// Delete.
	mustExec(t, pool, `DELETE FROM grouphook.endpoints WHERE id = $1`, idB)
	t3 := time.Now()
	eventually(t, within, "delete seen", func() bool { return h.reg.Snapshot().Len() == 0 })
	time.Sleep(300 * time.Millisecond)
	if firstAfter(c, t3.Add(2*time.Second)) {
		t.Error("deleted endpoint still receives 2 s later")
	}
}

// A row with a malformed URL is skipped and counted; others still receive.
func TestDispatchMalformedURLRow(t *testing.T) {
	pool := newDB(t)
	good := newReceiver(t, "good", "s", nil)
	addEndpoint(t, pool, endpointRow{URL: good.srv.URL, Secret: "s"})
	bad := addEndpoint(t, pool, endpointRow{URL: "htp//broken", Secret: "s"})
	h := start(t, pool, DispatcherConfig{}, 100*time.Millisecond, nil)
	var dc doneCounter
	for i := range 5 {
		ev := groupEvent("g", i)
		h.d.Submit(ev, dc.fn(ev.ID, nil))
	}
	eventually(t, 5*time.Second, "good endpoint receives", func() bool { n, _ := dc.total(); return n == 5 })
	time.Sleep(300 * time.Millisecond) // a few reloads
	if len(good.ok()) != 5 {
		t.Errorf("good endpoint got %d", len(good.ok()))
	}
	if got := testutil.ToFloat64(h.m.EndpointConfigErrors.WithLabelValues(itoa(bad))); got != 1 {
		t.Errorf("config errors = %v, want 1", got)
	}
	if n := strings.Count(h.logs.String(), fmt.Sprintf("webhook endpoint %d is skipped", bad)); n != 1 {
		t.Errorf("logged %d times", n)
	}
}

// With tenant routing, clients only get their own tenant's groups.
func TestDispatchTenantIsolation(t *testing.T) {
	pool := newDB(t)
	clients := []string{"acme", "globex", "initech"}
	rcs := map[string]*receiver{}
	for _, c := range append(clients, "shared") {
		rc := newReceiver(t, c, "s-"+c, nil)
		var client *string
		if c != "shared" {
			client = ptr(c)
		}
		addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: rc.secret, Client: client})
		rcs[c] = rc
	}
	h := start(t, pool, DispatcherConfig{TenantRouting: true}, time.Second, nil)
	var dc doneCounter
	owner := map[string]string{}
	for i := range 90 {
		ev := groupEvent(fmt.Sprintf("g%d", i%9), i)
		ev.Tenant, ev.TenantNull = clients[i%9%3], i%9 == 8
		owner[ev.ID] = ev.Tenant
		if ev.TenantNull {
			owner[ev.ID] = ""
		}
		h.d.Submit(ev, dc.fn(ev.ID, nil))
	}
	eventually(t, 10*time.Second, "all done", func() bool { n, _ := dc.total(); return n == 90 })
	if n := len(rcs["shared"].ok()); n != 90 {
		t.Errorf("shared endpoint got %d of 90", n)
	}
	for _, c := range clients {
		got := rcs[c].ok()
		if len(got) == 0 {
			t.Errorf("%s got nothing", c)
		}
		for _, r := range got {
			if owner[r.ID] != c {
				t.Fatalf("%s got an event of tenant %q", c, owner[r.ID])
			}
		}
	}
}

// fakeParker records parked deliveries in memory.
type fakeParker struct {
	mu     sync.Mutex
	parked []Parked
	fail   int // fail this many Park calls first
}

func (p *fakeParker) Park(ctx context.Context, ds []Parked) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail > 0 {
		p.fail--
		return fmt.Errorf("queue unavailable")
	}
	p.parked = append(p.parked, ds...)
	return nil
}

func (p *fakeParker) Holds(endpoint int64, group string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range p.parked {
		if d.EndpointID == endpoint && d.Event.GroupKey == group {
			return true
		}
	}
	return false
}

func TestDispatchParker(t *testing.T) {
	pool := newDB(t)
	rc := newReceiver(t, "down", "s", func(r received, h http.Header) int { return 503 })
	id := addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: "s"})
	p := &fakeParker{fail: 1}
	h := start(t, pool, DispatcherConfig{Parker: p, ParkAfter: 150 * time.Millisecond}, time.Second, nil)
	var dc doneCounter
	var evs []Event
	for i := range 3 {
		ev := groupEvent("g", i)
		evs = append(evs, ev)
		h.d.Submit(ev, dc.fn(ev.ID, nil))
	}
	eventually(t, 5*time.Second, "parked", func() bool { n, _ := dc.total(); return n == 3 })
	later := groupEvent("g", 3)
	evs = append(evs, later)
	h.d.Submit(later, dc.fn(later.ID, nil))
	eventually(t, 5*time.Second, "later delivery parked behind", func() bool { return dc.count(later.ID) == 1 })
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.parked) != 4 {
		t.Fatalf("parked %d deliveries, want 4", len(p.parked))
	}
	for i, d := range p.parked {
		if d.Event.ID != evs[i].ID || d.EndpointID != id {
			t.Fatalf("parked[%d] = %s, want %s (in order)", i, d.Event.ID, evs[i].ID)
		}
	}
	if p.parked[0].Attempts < 2 || p.parked[0].LastError == nil || p.parked[1].Attempts != 0 {
		t.Errorf("attempt history: %+v", p.parked[:2])
	}
	if got := h.outcome(id, metrics.OutcomeParked); got != 4 {
		t.Errorf("parked outcome = %v", got)
	}
}

// Cancelling Run lets the attempt in flight finish; Drain waits for
// everything pending.
func TestDispatchShutdown(t *testing.T) {
	pool := newDB(t)
	started := make(chan struct{}, 10)
	rc := newReceiver(t, "r", "s", func(r received, h http.Header) int {
		started <- struct{}{}
		time.Sleep(300 * time.Millisecond)
		return 200
	})
	addEndpoint(t, pool, endpointRow{URL: rc.srv.URL, Secret: "s"})
	m, _ := newMetrics()
	reg := NewRegistry(pool, testLogger(t, nil), m)
	d := NewDispatcher(DispatcherConfig{Workers: 2}, reg, nil, testLogger(t, nil), m)
	if err := d.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "Registry.Load") {
		t.Fatalf("Run before Load = %v", err)
	}
	if err := reg.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- d.Run(ctx) }()

	var dc doneCounter
	first := groupEvent("a", 0)
	d.Submit(first, dc.fn(first.ID, nil))
	dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
	if err := d.Drain(dctx); err != nil || dc.count(first.ID) != 1 {
		t.Fatalf("Drain = %v, done %d", err, dc.count(first.ID))
	}
	dcancel()
	<-started

	inflight, queued := groupEvent("b", 0), groupEvent("b", 1)
	d.Submit(inflight, dc.fn(inflight.ID, nil))
	d.Submit(queued, dc.fn(queued.ID, nil))
	<-started
	short, scancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	if err := d.Drain(short); err == nil {
		t.Error("Drain returned nil with deliveries pending")
	}
	scancel()
	cancel()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	if dc.count(inflight.ID) != 1 {
		t.Error("attempt in flight at shutdown did not finish")
	}
	if dc.count(queued.ID) != 0 || len(rc.all()) != 2 {
		t.Error("an attempt started after shutdown")
	}
	if d.Pending() != 1 {
		t.Errorf("pending = %d, want 1", d.Pending())
	}
}
