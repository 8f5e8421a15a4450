package cdc

import (
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestTrackerWeight: MaxInFlight counts the units changes hold, a change
// heavier than the limit goes alone, and done releases every unit.
func TestTrackerWeight(t *testing.T) {
	tr := newTracker(10, 1, nil)
	e := tr.open(100)
	h1, ok := tr.tryHold(e)
	if !ok || !tr.tryGrow(h1, 4) {
		t.Fatal("first change of weight 5 refused under max 10")
	}
	h2, ok := tr.tryHold(e)
	if !ok || !tr.tryGrow(h2, 4) {
		t.Fatal("second change of weight 5 refused under max 10")
	}
	if n := tr.Units(); n != 10 {
		t.Fatalf("units = %d, want 10", n)
	}
	if _, ok := tr.tryHold(e); ok {
		t.Fatal("a third change was taken with 10 of 10 units held")
	}
	h1.done(tr)()
	if n, c := tr.Units(), tr.InFlight(); n != 5 || c != 1 {
		t.Fatalf("after one done: units = %d, in flight = %d, want 5 and 1", n, c)
	}
	h3, ok := tr.tryHold(e)
	if !ok {
		t.Fatal("no unit free after a done")
	}
	if tr.tryGrow(h3, 5) {
		t.Fatal("grew past max while another change is in flight")
	}
	h2.done(tr)()
	// h3 is alone now: a weight over max is taken.
	if !tr.tryGrow(h3, 14) || tr.Units() != 15 {
		t.Fatalf("a heavy change alone was refused (units %d)", tr.Units())
	}
	if _, ok := tr.tryHold(e); ok {
		t.Fatal("a change was taken beside one over max")
	}
	d3 := h3.done(tr)
	d3()
	d3() // ignored
	if n := tr.Units(); n != 0 || tr.doubleDone.Load() != 1 {
		t.Fatalf("units = %d, double done = %d after the last done", n, tr.doubleDone.Load())
	}
	// Done before its weight is held (a sink that finishes at once): grow
	// then holds nothing.
	h4, _ := tr.tryHold(e)
	h4.done(tr)()
	if !tr.tryGrow(h4, 50) || tr.Units() != 0 {
		t.Fatalf("grow after done held units: %d", tr.Units())
	}
	tr.seal(e, 200)
	if c := tr.Confirmed(); c != 200 {
		t.Fatalf("confirmed = %s, want 0/C8", c)
	}
}

// weightSink gives each change a weight and holds its done func.
type weightSink struct {
	weight int
	mu     sync.Mutex
	n      int
	held   []func()
}

func (k *weightSink) Submit(c Change, done func()) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.n++
	k.held = append(k.held, done)
	return k.weight
}

func (k *weightSink) count() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.n
}

func (k *weightSink) releaseAll() {
	k.mu.Lock()
	held := k.held
	k.held = nil
	k.mu.Unlock()
	for _, d := range held {
		d()
	}
}

// TestStreamMaxInFlightCountsWeight: with MaxInFlight 10 and changes that
// each become 4 deliveries, the stream takes 3 changes (the third while 8
// units are held; it then waits for room for the rest of its weight) and
// reads no further until deliveries finish, instead of taking 10 changes
// (40 deliveries).
func TestStreamMaxInFlightCountsWeight(t *testing.T) {
	t.Parallel()
	env := newStEnv(t, true)
	sink := &weightSink{weight: 4}
	s := env.newStream(t, func(c *Config) {
		c.MaxInFlight = 10
		c.StatusInterval = 500 * time.Millisecond
	})
	env.start(t, s, sink)
	for i := 1; i <= 20; i++ {
		env.exec(t, "INSERT INTO groups VALUES ($1, 'x', NULL)", i)
	}
	waitFor(t, 10*time.Second, "3 changes", func() bool { return sink.count() >= 3 })
	time.Sleep(1500 * time.Millisecond) // three status intervals: the stream stays blocked
	if n := sink.count(); n != 3 {
		t.Fatalf("%d changes of weight 4 submitted with MaxInFlight 10, want 3", n)
	}
	if u := s.tracker.Units(); u != 9 {
		t.Errorf("units held = %d, want 9 (4+4+1, the third waiting for 3 more)", u)
	}
	if v := testutil.ToFloat64(env.m.EventsInFlight); v != 3 {
		t.Errorf("events_in_flight = %v, want 3", v)
	}
	if v := testutil.ToFloat64(env.m.ReconnectsTotal); v != 0 {
		t.Errorf("reconnects_total = %v, want 0", v)
	}
	waitFor(t, 15*time.Second, "20 changes", func() bool {
		sink.releaseAll()
		return sink.count() >= 20
	})
	sink.releaseAll()
	waitFor(t, 5*time.Second, "nothing in flight", func() bool { return s.tracker.Units() == 0 })
}
