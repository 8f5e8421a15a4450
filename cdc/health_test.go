package cdc

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/grouphook/grouphook/metrics"
)

// logBuf collects a stream's log lines from many goroutines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), sub)
}

// withLog makes a stream log to the test and to buf, with its own metrics.
func withLog(t *testing.T, buf *logBuf, m *metrics.Metrics) func(*Config) {
	return func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(tWriter{t}, buf), &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.Metrics = m
	}
}

// TestHeartbeatOnlyWhileStreaming: the heartbeat is written only by the
// replica that streams, and the stream confirms past it although nothing
// else is written: the confirmed position of an idle database moves on.
func TestHeartbeatOnlyWhileStreaming(t *testing.T) {
	t.Parallel()
	env := newStEnv(t, true)
	m1, m2 := metrics.New(prometheus.NewRegistry()), metrics.New(prometheus.NewRegistry())
	s1 := env.newStream(t, withLog(t, &logBuf{}, m1))
	if err := s1.Preflight(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() { s1.Heartbeat(ctx, 100*time.Millisecond) })

	// Not streaming yet: no heartbeat.
	time.Sleep(600 * time.Millisecond)
	if n := testutil.ToFloat64(m1.HeartbeatsTotal); n != 0 {
		t.Fatalf("%v heartbeats before streaming, want 0", n)
	}

	env.run(t, s1, &recSink{})
	waitFor(t, 15*time.Second, "streaming", s1.Streaming)
	waitFor(t, 15*time.Second, "two heartbeats", func() bool { return testutil.ToFloat64(m1.HeartbeatsTotal) >= 2 })
	target := env.lsn(t, "SELECT pg_current_wal_insert_lsn()")
	waitFor(t, 20*time.Second, "confirmed_flush_lsn past the heartbeats", func() bool { return env.slotConfirmed(t) >= target })

	// A stand-by replica of the same slot writes none.
	s2 := env.newStream(t, withLog(t, &logBuf{}, m2))
	env.run(t, s2, &recSink{})
	wg.Go(func() { s2.Heartbeat(ctx, 100*time.Millisecond) })
	time.Sleep(time.Second)
	if s2.Streaming() {
		t.Fatal("test bug: the second stream streams")
	}
	if n := testutil.ToFloat64(m2.HeartbeatsTotal); n != 0 {
		t.Errorf("the stand-by wrote %v heartbeats, want 0", n)
	}

	// Disabled: returns at once.
	done := make(chan struct{})
	go func() { s2.Heartbeat(ctx, 0); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("Heartbeat(0) did not return")
	}
}

// TestWatchSlot checks the metrics and the log of the periodic slot check:
// wal_status reserved, the unlimited max_slot_wal_keep_size reported once,
// the lag growing while nobody streams, and a dropped slot reported once
// as missing.
func TestWatchSlot(t *testing.T) {
	t.Parallel()
	env := newStEnv(t, true)
	m := metrics.New(prometheus.NewRegistry())
	var logs logBuf
	s := env.newStream(t, withLog(t, &logs, m))
	if err := s.Preflight(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.WatchSlot(ctx, 100*time.Millisecond); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	status := func(v string) float64 { return testutil.ToFloat64(m.SlotWALStatus.WithLabelValues(v)) }

	waitFor(t, 10*time.Second, "wal_status reserved", func() bool { return status("reserved") == 1 })
	if got := testutil.ToFloat64(m.MaxSlotWALKeepSizeBytes); got != -1 {
		t.Errorf("max_slot_wal_keep_size_bytes = %v, want -1 (the test cluster's default)", got)
	}
	start := testutil.ToFloat64(m.SlotLagBytes)
	env.exec(t, "INSERT INTO other (v) SELECT md5(g::text) FROM generate_series(1, 2000) g")
	waitFor(t, 10*time.Second, "slot_lag_bytes to grow", func() bool { return testutil.ToFloat64(m.SlotLagBytes) > start+10000 })
	if n := logs.count("max_slot_wal_keep_size is -1"); n != 1 {
		t.Errorf("the unlimited max_slot_wal_keep_size was logged %d times, want once", n)
	}

	env.exec(t, "SELECT pg_drop_replication_slot($1)", env.slot)
	waitFor(t, 10*time.Second, "wal_status missing", func() bool { return status("missing") == 1 })
	time.Sleep(500 * time.Millisecond) // several more checks
	if n := logs.count("replication slot is missing"); n != 1 {
		t.Errorf("the missing slot was logged %d times, want once", n)
	}
	if !strings.Contains(logs.b.String(), "start grouphook again to create it") {
		t.Error("the missing-slot error does not name the fix")
	}
	for _, v := range []string{"reserved", "extended", "unreserved", "lost"} {
		if status(v) != 0 {
			t.Errorf("wal_status %s = 1 while the slot is missing", v)
		}
	}
	if n := testutil.ToFloat64(m.SlotCheckErrorsTotal); n != 0 {
		t.Errorf("%v slot check errors", n)
	}
}

// TestSlotWatchReport: each state is logged once when it begins, at the
// right level, with the fix.
func TestSlotWatchReport(t *testing.T) {
	var logs logBuf
	s := &Stream{cfg: Config{Slot: "gh"}, log: slog.New(slog.NewTextHandler(&logs, nil))}
	w := slotWatch{s: s}
	lost := s.checkSlot(&slotInfo{SlotName: "gh", SlotType: "logical", Plugin: ptr("pgoutput"), sameDatabase: true, WALStatus: ptr("lost")})
	steps := []SlotHealth{
		{Exists: true, WALStatus: "reserved", MaxSlotWALKeepSize: 1 << 30},
		{Exists: true, WALStatus: "reserved", MaxSlotWALKeepSize: 1 << 30},
		{Exists: true, WALStatus: "unreserved", MaxSlotWALKeepSize: 1 << 30},
		{Exists: true, WALStatus: "unreserved", MaxSlotWALKeepSize: 1 << 30},
		{Exists: true, WALStatus: "lost", MaxSlotWALKeepSize: 1 << 30, Problem: lost},
		{Exists: true, WALStatus: "lost", MaxSlotWALKeepSize: 1 << 30, Problem: lost},
	}
	for _, h := range steps {
		w.report(h, nil)
	}
	for sub, want := range map[string]int{
		"level=WARN msg=\"replication slot is about to lose WAL": 1,
		"raise max_slot_wal_keep_size":                           1,
		"level=ERROR msg=\"replication slot was invalidated":     1,
		"pg_drop_replication_slot('gh')":                         1,
		"max_slot_wal_keep_size is -1":                           0,
	} {
		if n := logs.count(sub); n != want {
			t.Errorf("%q logged %d times, want %d\n%s", sub, n, want, logs.b.String())
		}
	}
	w.report(SlotHealth{}, context.DeadlineExceeded)
	w.report(SlotHealth{}, context.DeadlineExceeded)
	if n := logs.count("cannot check the replication slot"); n != 1 {
		t.Errorf("a failing check was logged %d times, want once", n)
	}
}

func ptr[T any](v T) *T { return &v }
