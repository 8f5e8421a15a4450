package cdc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grouphook/grouphook/metrics"
	"github.com/grouphook/grouphook/sql"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// stEnv is one test's database with a groups table (in the publication),
// an unpublished table "other", and a slot name of its own.
type stEnv struct {
	url, origURL string
	pool         *pgxpool.Pool
	slot         string
	m            *metrics.Metrics
}

var stSeq atomic.Int64

var stUnsafe = regexp.MustCompile(`[^a-z0-9_]+`)

// newStEnv creates the database; migrate runs sql.Migrate (publication
// "grouphook", replica identity full). The slot is dropped at cleanup.
func newStEnv(t *testing.T, migrate bool) *stEnv {
	t.Helper()
	ctx := context.Background()
	u := cluster.NewDatabase(t)
	pool, err := pgxpool.New(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	name := stUnsafe.ReplaceAllString(strings.ToLower(t.Name()), "_")
	name = fmt.Sprintf("st%d_%s", stSeq.Add(1), name)
	if len(name) > 50 {
		name = name[:50]
	}
	env := &stEnv{url: u, origURL: u, pool: pool, slot: name, m: metrics.New(prometheus.NewRegistry())}
	t.Cleanup(func() {
		// Runs after the streams' cleanups (LIFO): the slot is free.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = pool.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", name)
		pool.Close()
	})
	env.exec(t, `CREATE TABLE public.groups (id bigint PRIMARY KEY, name text NOT NULL, client_id text)`)
	env.exec(t, `CREATE TABLE public.other (id bigserial PRIMARY KEY, v text)`)
	if migrate {
		conn, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
		if _, err := sql.Migrate(ctx, conn.Conn(), sql.Options{Table: "public.groups", Publication: "grouphook", ReplicaIdentityFull: true}); err != nil {
			t.Fatal(err)
		}
	}
	return env
}

func (env *stEnv) exec(t *testing.T, q string, args ...any) {
	t.Helper()
	if _, err := env.pool.Exec(context.Background(), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func (env *stEnv) lsn(t *testing.T, q string, args ...any) pglogrepl.LSN {
	t.Helper()
	var l *pglogrepl.LSN
	if err := env.pool.QueryRow(context.Background(), q, args...).Scan(&l); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	if l == nil {
		return 0
	}
	return *l
}

// slotConfirmed is the slot's confirmed_flush_lsn as the server has it.
func (env *stEnv) slotConfirmed(t *testing.T) pglogrepl.LSN {
	return env.lsn(t, "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1", env.slot)
}

func (env *stEnv) activePID(t *testing.T) int {
	t.Helper()
	var pid *int
	err := env.pool.QueryRow(context.Background(), "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", env.slot).Scan(&pid)
	if err != nil {
		t.Fatal(err)
	}
	if pid == nil {
		return 0
	}
	return *pid
}

func (env *stEnv) slotExists(t *testing.T) bool {
	t.Helper()
	var n int
	if err := env.pool.QueryRow(context.Background(), "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", env.slot).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

func (env *stEnv) config() Config {
	return Config{
		DatabaseURL:     env.url,
		Slot:            env.slot,
		Publication:     "grouphook",
		Decoder:         DecoderConfig{Schema: "public", Table: "groups"},
		StatusInterval:  time.Second,
		ShutdownTimeout: 5 * time.Second,
		Metrics:         env.m,
	}
}

// newStream builds a stream with the test's logger; mod may change the
// config.
func (env *stEnv) newStream(t *testing.T, mod func(*Config)) *Stream {
	t.Helper()
	cfg := env.config()
	cfg.Logger = slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if mod != nil {
		mod(&cfg)
	}
	s, err := NewStream(cfg, env.pool)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// start runs Preflight and Run in the background; stop cancels Run and
// returns its error. Cleanup stops it too.
func (env *stEnv) start(t *testing.T, s *Stream, sink Sink) (stop func() error) {
	t.Helper()
	if err := s.Preflight(context.Background()); err != nil {
		t.Fatalf("Preflight: %v", err)
	}
	return env.run(t, s, sink)
}

func (env *stEnv) run(t *testing.T, s *Stream, sink Sink) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx, sink) }()
	stop = sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-errc:
			return err
		case <-time.After(30 * time.Second):
			return errors.New("Run did not return within 30s of cancel")
		}
	})
	t.Cleanup(func() { _ = stop() })
	return stop
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// recSink records every change. Changes for which hold returns true keep
// their done func until release; others are done at once.
type recSink struct {
	mu      sync.Mutex
	changes []Change
	held    []func()
	hold    func(Change) bool
}

func (k *recSink) Submit(c Change, done func()) int {
	k.mu.Lock()
	k.changes = append(k.changes, c)
	if k.hold != nil && k.hold(c) {
		k.held = append(k.held, done)
		k.mu.Unlock()
		return 1
	}
	k.mu.Unlock()
	done()
	return 1
}

// release calls every held done func, from other goroutines, and makes
// later changes done at once.
func (k *recSink) release() {
	k.mu.Lock()
	held := k.held
	k.held, k.hold = nil, nil
	k.mu.Unlock()
	var wg sync.WaitGroup
	for _, d := range held {
		wg.Go(d)
	}
	wg.Wait()
}

// releaseHeld calls the done funcs held so far, keeping the hold rule.
func (k *recSink) releaseHeld() int {
	k.mu.Lock()
	held := k.held
	k.held = nil
	k.mu.Unlock()
	for _, d := range held {
		d()
	}
	return len(held)
}

func (k *recSink) got() []Change {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]Change(nil), k.changes...)
}

func (k *recSink) waitN(t *testing.T, n int, timeout time.Duration) []Change {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%d changes", n), func() bool { return len(k.got()) >= n })
	return k.got()
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkOnce fails when a change id was submitted more than once.
func checkOnce(t *testing.T, changes []Change) {
	t.Helper()
	seen := map[string]int{}
	for _, c := range changes {
		seen[c.ID]++
	}
	for id, n := range seen {
		if n > 1 {
			t.Errorf("change %s submitted %d times", id, n)
		}
	}
}

func TestStreamDeliversInCommitOrderAndConfirms(t *testing.T) {
	t.Parallel()
	env := newStEnv(t, true)
	sink := &recSink{}
	s := env.newStream(t, nil)
	stop := env.start(t, s, sink)

	env.exec(t, "INSERT INTO groups VALUES (1, 'a', 'c1')")
	env.exec(t, "INSERT INTO groups VALUES (2, 'b', 'c1'), (3, 'c', 'c2')")
	env.exec(t, "UPDATE groups SET name = 'bb' WHERE id = 2")
	env.exec(t, "UPDATE groups SET client_id = client_id WHERE id = 3") // changes nothing: skipped
	env.exec(t, "DELETE FROM groups WHERE id = 1")
	env.exec(t, "INSERT INTO other (v) VALUES ('not ours')")
	got := sink.waitN(t, 5, 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	got = sink.got()

	want := []struct {
		op  Op
		pos int
	}{{OpInsert, 0}, {OpInsert, 0}, {OpInsert, 1}, {OpUpdate, 0}, {OpDelete, 0}}
	if len(got) != len(want) {
		t.Fatalf("got %d changes, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		if got[i].Op != w.op || got[i].Position != w.pos {
			t.Errorf("change %d: %s at %d, want %s at %d", i, got[i].Op, got[i].Position, w.op, w.pos)
		}
		if i > 0 && got[i].CommitLSN < got[i-1].CommitLSN {
			t.Errorf("change %d: commit LSN %s before %s", i, got[i].CommitLSN, got[i-1].CommitLSN)
		}
	}
	last := got[len(got)-1].CommitLSN
	waitFor(t, 3*time.Second, "confirmed_flush_lsn past the last delivered commit", func() bool {
		return env.slotConfirmed(t) > last
	})
	if !s.Streaming() {
		t.Error("Streaming() is false while streaming")
	}

	if err := stop(); err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
	if s.Streaming() {
		t.Error("Streaming() is true after Run returned")
	}
	for typ, n := range map[string]float64{"CREATE": 3, "UPDATE": 1, "DELETE": 1} {
		if v := testutil.ToFloat64(env.m.EventsTotal.WithLabelValues(typ)); v != n {
			t.Errorf("events_total{type=%s} = %v, want %v", typ, v, n)
		}
	}
	if v := testutil.ToFloat64(env.m.ChangesSkippedTotal); v != 1 {
		t.Errorf("changes_skipped_total = %v, want 1", v)
	}
	if v := testutil.ToFloat64(env.m.TransactionsTotal); v != 5 {
		t.Errorf("transactions_total = %v, want 5", v)
	}
	if v := testutil.ToFloat64(env.m.EventsInFlight); v != 0 {
		t.Errorf("events_in_flight = %v, want 0", v)
	}
	if v := testutil.ToFloat64(env.m.ConfirmedLSN); pglogrepl.LSN(v) <= last {
		t.Errorf("confirmed_lsn gauge %v, want > %d", v, last)
	}
	if v := testutil.ToFloat64(env.m.Streaming); v != 0 {
		t.Errorf("streaming gauge = %v after Run returned", v)
	}
}

// TestStreamNeverConfirmsUndelivered holds one transaction's delivery while
// later ones are delivered: the slot must stay at or before the held one.
func TestStreamNeverConfirmsUndelivered(t *testing.T) {
	t.Parallel()
	env := newStEnv(t, true)
	sink := &recSink{hold: func(c Change) bool { return strings.Contains(string(c.Row), "held") }}
	s := env.newStream(t, func(c *Config) { c.StatusInterval = 500 * time.Millisecond })
	env.start(t, s, sink)

	env.exec(t, "INSERT INTO groups VALUES (1, 'before', NULL)")
	sink.waitN(t, 1, 10*time.Second)
	env.exec(t, "INSERT INTO groups VALUES (2, 'held', NULL)")
	env.exec(t, "INSERT INTO groups VALUES (3, 'after', NULL)")
	env.exec(t, "INSERT INTO groups VALUES (4, 'after too', NULL)")
	env.exec(t, "INSERT INTO other (v) SELECT 'x' FROM generate_series(1, 100)")
	got := sink.waitN(t, 4, 10*time.Second)
	held := got[1]
	if !strings.Contains(string(held.Row), "held") {
		t.Fatalf("second change is %s, want the held one", held.Row)
	}

	// For a few status intervals, neither the stream nor the slot may
	// pass the held transaction.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if c := env.slotConfirmed(t); c > held.CommitLSN {
			t.Fatalf("confirmed_flush_lsn %s passed the undelivered transaction at %s", c, held.CommitLSN)
		}
		if c := s.Confirmed(); c > held.CommitLSN {
			t.Fatalf("Confirmed() %s passed the undelivered transaction at %s", c, held.CommitLSN)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if c := env.slotConfirmed(t); c <= got[0].CommitLSN {
		t.Errorf("confirmed_flush_lsn %s did not reach the delivered transaction before the held one (%s)", c, got[0].CommitLSN)
	}

	sink.release()
	last := got[3].CommitLSN
	waitFor(t, 3*time.Second, "confirmed_flush_lsn past the last transaction after release", func() bool {
		return env.slotConfirmed(t) > last
	})
}

// TestStreamIdleConfirmsWALEnd writes only to a table outside the
// publication: the slot must follow the WAL end, not hold it.
func TestStreamIdleConfirmsWALEnd(t *testing.T) {
	t.Parallel()
	env := newStEnv(t, true)
	sink := &recSink{}
	s := env.newStream(t, nil)
	env.start(t, s, sink)
	waitFor(t, 5*time.Second, "streaming", s.Streaming)

	// Commit synchronously, so that pg_current_wal_lsn() (the write
	// position) covers the commits; the cluster runs with
	// synchronous_commit off.
	ctx := context.Background()
	conn, err := env.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	before := env.slotConfirmed(t)
	for i, q := range []string{"SET synchronous_commit = on", "INSERT INTO other (v) VALUES ('1')", "INSERT INTO other (v) VALUES ('2')",
		"INSERT INTO other (v) SELECT 'x' FROM generate_series(1, 1000)", "RESET synchronous_commit"} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("statement %d: %v", i, err)
		}
	}
	target := env.lsn(t, "SELECT pg_current_wal_lsn()")
	if target <= before {
		t.Fatalf("WAL did not move: %s then %s", before, target)
	}
	waitFor(t, 5*time.Second, fmt.Sprintf("confirmed_flush_lsn to reach the WAL end %s", target), func() bool {
		return env.slotConfirmed(t) >= target
	})
	if n := len(sink.got()); n != 0 {
		t.Errorf("got %d changes from writes to another table", n)
	}
	if v := testutil.ToFloat64(env.m.LagBytes); v < 0 {
		t.Errorf("lag_bytes = %v", v)
	}
}

// TestStreamReconnectResumes kills the walsender while some transactions
// are delivered but not confirmed: after the reconnect nothing is lost and
// nothing already submitted is submitted again.
func TestStreamReconnectResumes(t *testing.T) {
	t.Parallel()
	env := newStEnv(t, true)
	sink := &recSink{hold: func(Change) bool { return true }}
	s := env.newStream(t, func(c *Config) { c.StatusInterval = 500 * time.Millisecond })
	env.start(t, s, sink)

	for i := 1; i <= 3; i++ {
		env.exec(t, "INSERT INTO groups VALUES ($1, 'first', NULL)", i)
	}
	sink.waitN(t, 3, 10*time.Second)
	pid := env.activePID(t)
	env.exec(t, "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots WHERE slot_name = $1", env.slot)
	for i := 4; i <= 6; i++ {
		env.exec(t, "INSERT INTO groups VALUES ($1, 'second', NULL)", i)
	}
	waitFor(t, 10*time.Second, "a new replication connection", func() bool {
		p := env.activePID(t)
		return p != 0 && p != pid && s.Streaming()
	})
	sink.waitN(t, 6, 10*time.Second)
	time.Sleep(time.Second) // room for duplicates to show up
	got := sink.got()
	checkOnce(t, got)
	if len(got) != 6 {
		t.Errorf("got %d changes, want 6", len(got))
	}
	if v := testutil.ToFloat64(env.m.ReconnectsTotal); v < 1 {
		t.Errorf("reconnects_total = %v, want >= 1", v)
	}

	sink.release()
	last := got[len(got)-1].CommitLSN
	waitFor(t, 3*time.Second, "confirmed_flush_lsn past the last transaction", func() bool {
		return env.slotConfirmed(t) > last
	})
}

// TestStreamReconnectMidTransaction cuts a transaction off after part of it
// was submitted (MaxInFlight stops the reading inside it): after the
// reconnect the rest follows into the same transaction, without repeats.
func TestStreamReconnectMidTransaction(t *testing.T) {
	t.Parallel()
	env := newStEnv(t, true)
	sink := &recSink{hold: func(Change) bool { return true }}
	s := env.newStream(t, func(c *Config) {
		c.MaxInFlight = 3
		c.StatusInterval = 300 * time.Millisecond
	})
	env.start(t, s, sink)

	env.exec(t, "INSERT INTO groups SELECT g, 'bulk', NULL FROM generate_series(1, 8) g")
	sink.waitN(t, 3, 10*time.Second)
	pid := env.activePID(t)
	env.exec(t, "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots WHERE slot_name = $1", env.slot)
	waitFor(t, 15*time.Second, "a new replication connection", func() bool {
		p := env.activePID(t)
		return p != 0 && p != pid && s.Streaming()
	})
	time.Sleep(500 * time.Millisecond)
	if n := len(sink.got()); n != 3 {
		t.Fatalf("after the reconnect, with 3 in flight: %d changes submitted, want 3", n)
	}
	// Deliver as they come, until all 8 are in.
	waitFor(t, 15*time.Second, "8 changes", func() bool {
		sink.releaseHeld()
		return len(sink.got()) >= 8
	})
	time.Sleep(500 * time.Millisecond)
	sink.release()
	got := sink.got()
	checkOnce(t, got)
	if len(got) != 8 {
		t.Fatalf("got %d changes, want 8", len(got))
	}
	for i, c := range got {
		if c.Position != i || c.CommitLSN != got[0].CommitLSN {
			t.Errorf("change %d: position %d of %s, want %d of %s", i, c.Position, c.CommitLSN, i, got[0].CommitLSN)
		}
	}
	waitFor(t, 3*time.Second, "confirmed_flush_lsn past the transaction", func() bool {
		return env.slotConfirmed(t) > got[0].CommitLSN
	})
}

// TestStreamStandbyTakesOver runs two streams on one slot: the second
// stands by until the first stops, then continues where it confirmed.
func TestStreamStandbyTakesOver(t *testing.T) {
	t.Parallel()
	env := newStEnv(t, true)
	sinkA, sinkB := &recSink{}, &recSink{}
	a := env.newStream(t, nil)
	stopA := env.start(t, a, sinkA)
	waitFor(t, 5*time.Second, "the first stream to stream", a.Streaming)

	b := env.newStream(t, nil)
	env.start(t, b, sinkB)
	env.exec(t, "INSERT INTO groups VALUES (1, 'for a', NULL)")
	first := sinkA.waitN(t, 1, 10*time.Second)
	time.Sleep(2500 * time.Millisecond)
	if b.Streaming() {
		t.Fatal("the second stream streams while the first holds the slot")
	}
	if n := len(sinkB.got()); n != 0 {
		t.Fatalf("the stand-by got %d changes", n)
	}

	if err := stopA(); err != nil {
		t.Fatalf("first Run: %v", err)
	}
	if c := env.slotConfirmed(t); c <= first[0].CommitLSN {
		t.Errorf("after a graceful stop confirmed_flush_lsn is %s, want past the delivered %s", c, first[0].CommitLSN)
	}
	waitFor(t, 6*time.Second, "the stand-by to take over", b.Streaming)
	env.exec(t, "INSERT INTO groups VALUES (2, 'for b', NULL)")
	got := sinkB.waitN(t, 1, 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	got = sinkB.got()
	if len(got) != 1 || !strings.Contains(string(got[0].Row), "for b") {
		t.Errorf("the stand-by got %d changes (%v), want only the one after the take-over", len(got), got)
	}
}

// TestStreamBackpressureKeepsConnection fills MaxInFlight and keeps it full
// for longer than the server's wal_sender_timeout (lowered for this
// connection only): the status updates must keep the connection alive.
func TestStreamBackpressureKeepsConnection(t *testing.T) {
	t.Parallel()
	env := newStEnv(t, true)
	u, err := url.Parse(env.url)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("wal_sender_timeout", "2s")
	u.RawQuery = q.Encode()
	sink := &recSink{hold: func(Change) bool { return true }}
	s := env.newStream(t, func(c *Config) {
		c.DatabaseURL = u.String()
		c.MaxInFlight = 2
		c.StatusInterval = 500 * time.Millisecond
	})
	env.start(t, s, sink)

	for i := 1; i <= 10; i++ {
		env.exec(t, "INSERT INTO groups VALUES ($1, 'x', NULL)", i)
	}
	sink.waitN(t, 2, 10*time.Second)
	pid := env.activePID(t)
	replyTime := func() time.Time {
		var rt *time.Time
		err := env.pool.QueryRow(context.Background(), "SELECT reply_time FROM pg_stat_replication WHERE pid = $1", pid).Scan(&rt)
		if err != nil || rt == nil {
			t.Fatalf("reply_time of walsender %d: %v", pid, err)
		}
		return *rt
	}
	r0 := replyTime()
	time.Sleep(5 * time.Second) // 2.5 x wal_sender_timeout
	if p := env.activePID(t); p != pid {
		t.Fatalf("walsender changed from %d to %d while the stream was full: the connection timed out", pid, p)
	}
	if r1 := replyTime(); !r1.After(r0) {
		t.Errorf("reply_time did not advance while full: %s then %s", r0, r1)
	}
	if n := len(sink.got()); n != 2 {
		t.Errorf("%d changes submitted with MaxInFlight 2", n)
	}
	if v := testutil.ToFloat64(env.m.ReconnectsTotal); v != 0 {
		t.Errorf("reconnects_total = %v, want 0", v)
	}
	if v := testutil.ToFloat64(env.m.EventsInFlight); v != 2 {
		t.Errorf("events_in_flight = %v, want 2", v)
	}
	waitFor(t, 15*time.Second, "10 changes", func() bool {
		sink.releaseHeld()
		return len(sink.got()) >= 10
	})
	sink.release()
	got := sink.got()
	checkOnce(t, got)
	waitFor(t, 3*time.Second, "confirmed_flush_lsn past the last transaction", func() bool {
		return env.slotConfirmed(t) > got[len(got)-1].CommitLSN
	})
}

// TestStreamShutdownConfirmsDelivered stops while one change is held past
// ShutdownTimeout: what was delivered is confirmed, the held one is not and
// comes again, with the same id, to the next stream.
func TestStreamShutdownConfirmsDelivered(t *testing.T) {
	t.Parallel()
	env := newStEnv(t, true)
	sink := &recSink{hold: func(c Change) bool { return strings.Contains(string(c.Row), "held") }}
	s := env.newStream(t, func(c *Config) { c.ShutdownTimeout = time.Second })
	stop := env.start(t, s, sink)

	env.exec(t, "INSERT INTO groups VALUES (1, 'delivered', NULL)")
	env.exec(t, "INSERT INTO groups VALUES (2, 'held', NULL)")
	got := sink.waitN(t, 2, 10*time.Second)
	begin := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if d := time.Since(begin); d > 3*time.Second {
		t.Errorf("shutdown took %s with a 1s ShutdownTimeout", d)
	}
	c := env.slotConfirmed(t)
	if c <= got[0].CommitLSN || c > got[1].CommitLSN {
		t.Errorf("after shutdown confirmed_flush_lsn is %s, want past %s and not past %s", c, got[0].CommitLSN, got[1].CommitLSN)
	}

	sink2 := &recSink{}
	s2 := env.newStream(t, nil)
	env.start(t, s2, sink2)
	again := sink2.waitN(t, 1, 10*time.Second)
	if again[0].ID != got[1].ID {
		t.Errorf("after restart got %s, want the held change %s again", again[0].ID, got[1].ID)
	}
	sink.release() // the first stream is gone; its done must be harmless
}

// TestStreamSlotDropped drops the slot while the stream is disconnected:
// Run must stop with ErrSlotMissing instead of retrying forever.
func TestStreamSlotDropped(t *testing.T) {
	t.Parallel()
	env := newStEnv(t, true)
	s := env.newStream(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s.Preflight(ctx); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx, &recSink{}) }()
	waitFor(t, 5*time.Second, "streaming", s.Streaming)

	deadline := time.Now().Add(10 * time.Second)
	for {
		env.exec(t, "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots WHERE slot_name = $1 AND active", env.slot)
		_, err := env.pool.Exec(ctx, "SELECT pg_drop_replication_slot($1)", env.slot)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("could not drop the slot: %v", err)
		}
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrSlotMissing) {
			t.Errorf("Run = %v, want ErrSlotMissing", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not stop after the slot was dropped")
	}
}

// TestStreamSlotLost lets the server invalidate the slot while a delivery
// is held (max_slot_wal_keep_size lowered for the cluster, so this test does
// not run in parallel): Run must stop with ErrSlotLost, naming the fix.
func TestStreamSlotLost(t *testing.T) {
	env := newStEnv(t, true)
	t.Cleanup(func() {
		ctx := context.Background()
		_, _ = env.pool.Exec(ctx, "ALTER SYSTEM RESET max_slot_wal_keep_size")
		_, _ = env.pool.Exec(ctx, "SELECT pg_reload_conf()")
	})
	sink := &recSink{hold: func(Change) bool { return true }}
	s := env.newStream(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s.Preflight(ctx); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx, sink) }()
	env.exec(t, "INSERT INTO groups VALUES (1, 'held', NULL)")
	sink.waitN(t, 1, 10*time.Second)

	env.exec(t, "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
	env.exec(t, "SELECT pg_reload_conf()")
	deadline := time.Now().Add(30 * time.Second)
	for {
		var status *string
		if err := env.pool.QueryRow(ctx, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", env.slot).Scan(&status); err != nil {
			t.Fatal(err)
		}
		if status != nil && *status == "lost" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not invalidated; wal_status %v", status)
		}
		env.exec(t, "INSERT INTO other (v) SELECT repeat('x', 500) FROM generate_series(1, 20000)")
		env.exec(t, "SELECT pg_switch_wal()")
		env.exec(t, "CHECKPOINT")
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrSlotLost) {
			t.Fatalf("Run = %v, want ErrSlotLost", err)
		}
		if !strings.Contains(err.Error(), "pg_drop_replication_slot('"+env.slot+"')") {
			t.Errorf("message %q does not say how to drop the slot", err)
		}
		t.Log(err)
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not stop after the slot was invalidated")
	}
	sink.release()

	s2 := env.newStream(t, nil)
	if err := s2.Preflight(ctx); !errors.Is(err, ErrSlotLost) {
		t.Errorf("Preflight on a lost slot = %v, want ErrSlotLost", err)
	}

	// The periodic slot check reports it as metrics (cdc/health.go).
	h, err := s2.CheckSlot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.WALStatus != "lost" || !errors.Is(h.Problem, ErrSlotLost) || h.MaxSlotWALKeepSize != 1<<20 {
		t.Errorf("CheckSlot = %+v, want wal_status lost, ErrSlotLost and max_slot_wal_keep_size 1MB", h)
	}
	if v := testutil.ToFloat64(env.m.SlotWALStatus.WithLabelValues("lost")); v != 1 {
		t.Errorf("grouphook_replication_slot_wal_status{wal_status=\"lost\"} = %v, want 1", v)
	}
	if v := testutil.ToFloat64(env.m.MaxSlotWALKeepSizeBytes); v != 1<<20 {
		t.Errorf("grouphook_replication_max_slot_wal_keep_size_bytes = %v, want 1MiB", v)
	}
}

// TestStreamQuotedPublication streams through a publication whose name
// needs quoting both as an identifier and inside the option string.
func TestStreamQuotedPublication(t *testing.T) {
	t.Parallel()
	env := newStEnv(t, false)
	const pub = `Odd'Pub "x", y`
	env.exec(t, `CREATE PUBLICATION "Odd'Pub ""x"", y" FOR TABLE groups`)
	sink := &recSink{}
	s := env.newStream(t, func(c *Config) { c.Publication = pub })
	env.start(t, s, sink)
	env.exec(t, "INSERT INTO groups VALUES (1, 'quoted', NULL)")
	got := sink.waitN(t, 1, 10*time.Second)
	if !strings.Contains(string(got[0].Row), "quoted") {
		t.Errorf("got %s", got[0].Row)
	}
}
