package cdc

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// OnStreaming runs each time the slot is taken, before any change of that
// session is submitted; an error ends the session, which is retried, and
// nothing is submitted until the hook succeeds.
func TestStreamOnStreamingHook(t *testing.T) {
	t.Parallel()
	env := newStEnv(t, true)
	sink := &recSink{}
	var (
		mu     sync.Mutex
		calls  []int // changes submitted when the hook ran
		failed int
	)
	s := env.newStream(t, func(c *Config) {
		c.OnStreaming = func(ctx context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			calls = append(calls, len(sink.got()))
			if failed < 2 {
				failed++
				return errors.New("not ready")
			}
			return nil
		}
	})
	env.start(t, s, sink)
	env.exec(t, "INSERT INTO groups VALUES (1, 'one', NULL)")
	sink.waitN(t, 1, 20*time.Second)
	mu.Lock()
	if len(calls) != 3 || calls[0] != 0 || calls[1] != 0 || calls[2] != 0 {
		t.Errorf("hook calls saw %v changes submitted, want [0 0 0]: two failures, then success, before the first change", calls)
	}
	mu.Unlock()

	// A new session (the connection is lost) runs the hook again, before
	// the changes committed meanwhile.
	pid := env.activePID(t)
	env.exec(t, "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots WHERE slot_name = $1", env.slot)
	env.exec(t, "INSERT INTO groups VALUES (2, 'two', NULL)")
	waitFor(t, 20*time.Second, "a new replication connection", func() bool {
		p := env.activePID(t)
		return p != 0 && p != pid
	})
	sink.waitN(t, 2, 20*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 4 || calls[3] != 1 {
		t.Errorf("hook calls saw %v changes submitted, want a fourth call after the first change and before the second", calls)
	}
}
