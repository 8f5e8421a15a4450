package deliver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/grouphook/grouphook/metrics"
)

// Defaults of DispatcherConfig.
const (
	DefaultWorkers       = 64
	DefaultTimeout       = 10 * time.Second
	DefaultRetryBase     = time.Second
	DefaultRetryMax      = time.Minute
	DefaultRetryJitter   = 0.2
	DefaultRetryAfterMax = 10 * time.Minute
	DefaultParkAfter     = 10 * time.Second
	DefaultUserAgent     = "grouphook"
)

// DispatcherConfig configures a Dispatcher. Zero fields take the defaults
// above; NewDispatcher fills them in.
type DispatcherConfig struct {
	// Workers is the number of concurrent attempts (default 64).
	Workers int
	// Timeout bounds one attempt, connection to last response byte read
	// (GROUPHOOK_DELIVERY_TIMEOUT, default 10s).
	Timeout time.Duration
	// A failed attempt is retried after RetryBase, doubling per failure up
	// to RetryMax, each delay varied by ±RetryJitter (a fraction; 0 means
	// the default 0.2, negative means none).
	RetryBase   time.Duration
	RetryMax    time.Duration
	RetryJitter float64
	// RetryAfterMax caps a receiver's Retry-After on 429 and 503 (default
	// 10m). A Retry-After below RetryBase waits RetryBase.
	RetryAfterMax time.Duration
	// TenantRouting routes by tenant (GROUPHOOK_TENANT_COLUMN is set); see
	// Router.
	TenantRouting bool
	// UserAgent is sent on every attempt; main sets "grouphook/<version>".
	UserAgent string
	// Parker, when set, takes over deliveries that have failed for
	// ParkAfter (default 10s), so they stop holding the replication slot.
	// Nil (today) retries in memory forever.
	Parker    Parker
	ParkAfter time.Duration
}

func (c *DispatcherConfig) setDefaults() {
	if c.Workers <= 0 {
		c.Workers = DefaultWorkers
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.RetryBase <= 0 {
		c.RetryBase = DefaultRetryBase
	}
	if c.RetryMax <= 0 {
		c.RetryMax = DefaultRetryMax
	}
	c.RetryMax = max(c.RetryMax, c.RetryBase)
	if c.RetryJitter == 0 {
		c.RetryJitter = DefaultRetryJitter
	}
	c.RetryJitter = min(max(c.RetryJitter, 0), 1)
	if c.RetryAfterMax <= 0 {
		c.RetryAfterMax = DefaultRetryAfterMax
	}
	if c.UserAgent == "" {
		c.UserAgent = DefaultUserAgent
	}
	if c.ParkAfter <= 0 {
		c.ParkAfter = DefaultParkAfter
	}
}

// Parker is the seam for the durable queue (issue 4). A Dispatcher with a
// Parker hands it a lane's whole backlog, in order, once the lane's head
// has failed for ParkAfter, or at once when it got a non-retryable answer
// (410 Gone); a parked delivery is finished as far as the caller's done
// function is concerned. Later deliveries of a parked lane
// go to the Parker too, so per-group order holds across the queue.
type Parker interface {
	// Park stores ds durably, in order, or returns an error (the lane is
	// then retried with backoff). All ds share an endpoint and group.
	Park(ctx context.Context, ds []Parked) error
	// Holds reports whether the Parker still has queued deliveries for
	// (endpoint, group), so a new delivery must queue behind them. It is
	// called with the dispatcher's lock held and must not block.
	Holds(endpointID int64, groupKey string) bool
}

// SuccessObserver is an optional interface of a Parker: the dispatcher
// reports every successful attempt, so that an endpoint which recovers on
// the in-memory path is not taken for one that keeps failing. It is called
// without the dispatcher's lock and must not block.
type SuccessObserver interface {
	Succeeded(endpointID int64)
}

// Parked is one delivery handed to a Parker.
type Parked struct {
	Event        *Event // shared; must not be modified
	EndpointID   int64
	Attempts     int
	FirstFailure time.Time // zero when never attempted
	LastError    error
}

// Dispatcher delivers events: it routes each one to its endpoints and runs
// one FIFO lane per (endpoint, group), with at most one attempt of a lane
// in flight, so an endpoint gets one group's events in submit order while
// different lanes run in parallel on a fixed pool of workers.
type Dispatcher struct {
	cfg       DispatcherConfig
	reg       *Registry
	router    Router
	client    *http.Client
	rt        http.RoundTripper // client's, used directly; nil: use client.Do
	logger    *slog.Logger
	m         *metrics.Metrics
	userAgent []string
	now       func() time.Time // attempt timestamps; tests replace it

	// deliveries caches DeliveriesTotal's children; attemptOK and
	// attemptFailed are AttemptDuration's (nil without metrics).
	deliveries               counterCache
	attemptOK, attemptFailed prometheus.Observer

	started atomic.Bool

	mu       sync.Mutex
	cond     sync.Cond // signalled when ready gets a lane or stopping is set
	lanes    map[laneKey]*lane
	ready    []*lane // runnable lanes, FIFO
	pending  int     // deliveries not finished
	idle     []chan struct{}
	stopping bool
}

type laneKey struct {
	endpoint int64
	group    string
}

type laneState uint8

const (
	laneIdle    laneState = iota // not queued (only while being created)
	laneReady                    // in d.ready
	laneRunning                  // a worker has it
	laneWaiting                  // a retry timer will make it ready
)

type lane struct {
	key    laneKey
	queue  []*delivery // head is the one being (re)tried
	state  laneState
	timer  *time.Timer
	parked bool // deliveries go to the Parker
}

type delivery struct {
	ev           *eventState
	attempts     int
	firstFailure time.Time
	lastErr      error
}

// eventState is one submitted event, shared by its deliveries.
type eventState struct {
	ev        Event
	bodies    bodies
	remaining atomic.Int32
	done      func()
}

func (e *eventState) finish() {
	if e.remaining.Add(-1) == 0 && e.done != nil {
		e.done()
	}
}

// NewDispatcher returns a dispatcher that reads endpoints from reg. client
// may be nil for NewHTTPClient with one idle connection per worker; a
// given client is copied and never follows redirects. logger may be nil.
func NewDispatcher(cfg DispatcherConfig, reg *Registry, client *http.Client, logger *slog.Logger, m *metrics.Metrics) *Dispatcher {
	cfg.setDefaults()
	if client == nil {
		client = NewHTTPClient(HTTPOptions{MaxIdleConnsPerHost: cfg.Workers})
	}
	c := *client
	c.CheckRedirect = noRedirects
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	d := &Dispatcher{
		cfg:       cfg,
		reg:       reg,
		router:    Router{TenantRouting: cfg.TenantRouting},
		client:    &c,
		logger:    logger,
		m:         m,
		userAgent: []string{cfg.UserAgent},
		now:       time.Now,
		lanes:     make(map[laneKey]*lane),
	}
	if m != nil {
		d.attemptOK = m.AttemptDuration.WithLabelValues(metrics.OutcomeSuccess)
		d.attemptFailed = m.AttemptDuration.WithLabelValues(metrics.OutcomeFailure)
	}
	if c.Timeout == 0 && c.Jar == nil {
		// Nothing of http.Client applies: send on its RoundTripper.
		d.rt = c.Transport
		if d.rt == nil {
			d.rt = http.DefaultTransport
		}
	}
	d.cond.L = &d.mu
	return d
}

// Config returns the configuration in use, defaults filled in.
func (d *Dispatcher) Config() DispatcherConfig { return d.cfg }

// Submit routes ev to its endpoints with the registry's current snapshot
// and queues one delivery per endpoint. It never blocks on the network.
// done (may be nil) is called exactly once, from another goroutine or,
// when no endpoint matches, before Submit returns: when every delivery of
// ev has finished, that is succeeded, been dropped because its endpoint was
// disabled or deleted meanwhile, or been parked. Deliveries submitted after
// Run has returned are never attempted. Submit returns the number of
// deliveries queued, which the caller may use to bound the memory they take.
func (d *Dispatcher) Submit(ev Event, done func()) int {
	var buf [16]*Endpoint
	eps := d.router.Route(d.reg.Snapshot(), &ev, buf[:0])
	if len(eps) == 0 {
		if EventBit(ev.Type) == 0 {
			d.logger.Error("event has an unknown type and goes to no endpoint", "event_id", ev.ID, "type", ev.Type)
		}
		if done != nil {
			done()
		}
		return 0
	}
	es := &eventState{ev: ev, done: done}
	es.remaining.Store(int32(len(eps)))
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ep := range eps {
		key := laneKey{endpoint: ep.ID, group: ev.GroupKey}
		l := d.lanes[key]
		if l == nil {
			l = &lane{key: key}
			l.parked = d.cfg.Parker != nil && d.cfg.Parker.Holds(ep.ID, ev.GroupKey)
			d.lanes[key] = l
		}
		l.queue = append(l.queue, &delivery{ev: es})
		d.pending++
		if l.state == laneIdle {
			d.pushReady(l)
		}
	}
	return len(eps)
}

// RecheckParked asks the Parker again, for every lane that is not parked,
// whether it holds queued deliveries of that lane; those lanes park their
// backlog at their next step. Call it after the Parker learnt of lanes that
// another process queued (when this process takes over the replication
// slot), so that no in-memory lane overtakes them.
func (d *Dispatcher) RecheckParked() {
	if d.cfg.Parker == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.lanes {
		if !l.parked && d.cfg.Parker.Holds(l.key.endpoint, l.key.group) {
			l.parked = true
		}
	}
}

// pushReady queues l for a worker. d.mu is held.
func (d *Dispatcher) pushReady(l *lane) {
	l.state = laneReady
	d.ready = append(d.ready, l)
	d.cond.Signal()
}

// Pending returns the number of deliveries not finished yet.
func (d *Dispatcher) Pending() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pending
}

// Drain waits until every submitted delivery has finished (Pending is 0)
// or ctx is done. For a graceful shutdown: stop submitting, Drain with the
// grace period, then cancel Run's context.
func (d *Dispatcher) Drain(ctx context.Context) error {
	d.mu.Lock()
	if d.pending == 0 {
		d.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	d.idle = append(d.idle, ch)
	d.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%d deliveries still pending: %w", d.Pending(), ctx.Err())
	}
}

// Run works on the lanes with cfg.Workers workers until ctx is cancelled.
// Then it stops starting attempts and retry timers, waits for the attempts
// in flight (each ends within cfg.Timeout) and returns nil. Deliveries not
// finished by then never call their done function, so their events are not
// confirmed and come again after a restart. Run may be called once, and
// only after the registry has loaded.
func (d *Dispatcher) Run(ctx context.Context) error {
	if !d.reg.Snapshot().Loaded() {
		return errors.New("deliver: the endpoint registry is not loaded; call Registry.Load before Dispatcher.Run")
	}
	if d.started.Swap(true) {
		return errors.New("deliver: Dispatcher.Run called twice")
	}
	var wg sync.WaitGroup
	for range d.cfg.Workers {
		wg.Go(func() { d.work(ctx) })
	}
	<-ctx.Done()
	d.mu.Lock()
	d.stopping = true
	for _, l := range d.lanes {
		if l.timer != nil {
			l.timer.Stop()
		}
	}
	d.cond.Broadcast()
	d.mu.Unlock()
	wg.Wait()
	return nil
}

func (d *Dispatcher) work(ctx context.Context) {
	// Attempts in flight at shutdown may finish: their deadline is
	// cfg.Timeout, not ctx.
	actx := context.WithoutCancel(ctx)
	for {
		d.mu.Lock()
		for len(d.ready) == 0 && !d.stopping {
			d.cond.Wait()
		}
		if d.stopping {
			d.mu.Unlock()
			return
		}
		l := d.ready[0]
		d.ready[0] = nil
		d.ready = d.ready[1:]
		l.state = laneRunning
		dl, parked := l.queue[0], l.parked
		d.mu.Unlock()

		d.step(actx, l, dl, parked)
	}
}

// step handles the head delivery dl of lane l, which the calling worker
// owns until it calls complete or retryLater.
func (d *Dispatcher) step(ctx context.Context, l *lane, dl *delivery, parked bool) {
	ev := &dl.ev.ev
	ep, ok := d.reg.Snapshot().Endpoint(l.key.endpoint)
	if !ok || !d.router.Matches(ep, ev) {
		reason := "the endpoint was disabled or deleted"
		if ok {
			reason = "the endpoint no longer subscribes to this event (its events or client_id changed)"
		}
		d.delivered(l.key.endpoint, metrics.OutcomeDropped).Inc()
		d.logger.Warn("delivery dropped: "+reason, "endpoint", l.key.endpoint, "event_id", ev.ID, "attempts", dl.attempts)
		d.complete(l, 1)
		return
	}
	if parked {
		d.park(ctx, l)
		return
	}

	body := dl.ev.bodies.get(ev, ep.IncludeData)
	actx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	start := time.Now()
	err := d.send(actx, ep, ev, body)
	dur := time.Since(start)
	cancel()
	if err == nil {
		d.delivered(ep.ID, metrics.OutcomeSuccess).Inc()
		d.attemptOK.Observe(dur.Seconds())
		d.m.DeliveryLatency.Observe(time.Since(ev.OccurredAt).Seconds())
		if dl.attempts > 0 {
			d.logger.Info("delivery succeeded after retries", "endpoint", ep.ID, "event_id", ev.ID, "attempts", dl.attempts+1)
		}
		if o, ok := d.cfg.Parker.(SuccessObserver); ok {
			o.Succeeded(ep.ID)
		}
		d.complete(l, 1)
		return
	}
	d.delivered(ep.ID, metrics.OutcomeFailure).Inc()
	d.attemptFailed.Observe(dur.Seconds())
	now := time.Now()
	dl.attempts++
	dl.lastErr = err
	if dl.firstFailure.IsZero() {
		dl.firstFailure = now
	}
	// 410 Gone is parked at once: the Parker disables the endpoint and
	// keeps the lane's deliveries as dead.
	if d.cfg.Parker != nil && (now.Sub(dl.firstFailure) >= d.cfg.ParkAfter || !IsRetryable(err)) {
		d.park(ctx, l)
		return
	}
	delay := d.backoff(dl.attempts)
	var ae *AttemptError
	if errors.As(err, &ae) && ae.RetryAfter > 0 {
		delay = min(max(ae.RetryAfter, d.cfg.RetryBase), d.cfg.RetryAfterMax)
	}
	if d.cfg.Parker != nil {
		// Try once more right when the delivery is due to be parked.
		delay = max(min(delay, dl.firstFailure.Add(d.cfg.ParkAfter).Sub(now)), 0)
	}
	level := slog.LevelDebug
	if dl.attempts&(dl.attempts-1) == 0 { // 1, 2, 4, 8, …: keep logs readable during an outage
		level = slog.LevelWarn
	}
	d.logger.Log(ctx, level, "delivery attempt failed; will retry", "endpoint", ep.ID, "event_id", ev.ID,
		"attempt", dl.attempts, "status", StatusCode(err), "err", err, "retry_in", delay.Round(time.Millisecond))
	d.retryLater(l, delay)
}

// park hands the lane's backlog to the Parker.
func (d *Dispatcher) park(ctx context.Context, l *lane) {
	d.mu.Lock()
	backlog := make([]Parked, len(l.queue))
	for i, dl := range l.queue {
		backlog[i] = Parked{Event: &dl.ev.ev, EndpointID: l.key.endpoint, Attempts: dl.attempts,
			FirstFailure: dl.firstFailure, LastError: dl.lastErr}
	}
	d.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	err := d.cfg.Parker.Park(pctx, backlog)
	cancel()
	if err != nil {
		d.logger.Error("cannot park deliveries in the durable queue; will retry", "endpoint", l.key.endpoint,
			"group", l.key.group, "deliveries", len(backlog), "err", err)
		d.retryLater(l, d.backoff(1))
		return
	}
	d.delivered(l.key.endpoint, metrics.OutcomeParked).Add(float64(len(backlog)))
	d.mu.Lock()
	l.parked = true
	d.mu.Unlock()
	d.complete(l, len(backlog))
}

// complete finishes the first n deliveries of l and releases the lane.
func (d *Dispatcher) complete(l *lane, n int) {
	d.mu.Lock()
	done := make([]*eventState, n)
	for i := range n {
		done[i] = l.queue[i].ev
		l.queue[i] = nil
	}
	l.queue = l.queue[n:]
	switch {
	case len(l.queue) == 0:
		l.state = laneIdle
		delete(d.lanes, l.key)
	case d.stopping:
		l.state = laneIdle
	default:
		d.pushReady(l)
	}
	d.mu.Unlock()
	// The done functions run before the deliveries stop counting as
	// pending, so Pending() == 0 and Drain mean every one was reported.
	for _, es := range done {
		es.finish()
	}
	d.mu.Lock()
	d.pending -= n
	var idle []chan struct{}
	if d.pending == 0 {
		idle, d.idle = d.idle, nil
	}
	d.mu.Unlock()
	for _, ch := range idle {
		close(ch)
	}
}

// retryLater makes l ready again after delay, without holding a worker.
func (d *Dispatcher) retryLater(l *lane, delay time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		l.state = laneIdle
		return
	}
	l.state = laneWaiting
	l.timer = time.AfterFunc(delay, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if !d.stopping && l.state == laneWaiting {
			l.timer = nil
			d.pushReady(l)
		}
	})
}

// backoff returns the delay after the given number of failed attempts:
// RetryBase doubling per attempt, capped at RetryMax, ±RetryJitter.
func (d *Dispatcher) backoff(attempts int) time.Duration {
	delay := d.cfg.RetryMax
	if shift := attempts - 1; shift < 62 && d.cfg.RetryBase <= d.cfg.RetryMax>>shift {
		delay = d.cfg.RetryBase << shift
	}
	return jitter(delay, d.cfg.RetryJitter)
}

// jitter varies d by up to ±j (a fraction), so retries of many deliveries
// that failed together do not arrive together.
func jitter(d time.Duration, j float64) time.Duration {
	if j <= 0 {
		return d
	}
	return time.Duration(float64(d) * (1 + j*(2*rand.Float64()-1)))
}
