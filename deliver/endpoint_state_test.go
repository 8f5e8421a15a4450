package deliver

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/grouphook/grouphook/metrics"
)

// TestEndpointStateMetric: grouphook_endpoint_state has one series per row,
// labelled enabled, disabled or invalid, and follows changes: a state change
// replaces the series and a deleted row loses it.
func TestEndpointStateMetric(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	m, reg := newMetrics()
	ok := addEndpoint(t, pool, endpointRow{URL: "https://a.example/hook"})
	off := addEndpoint(t, pool, endpointRow{URL: "https://b.example/hook", Disabled: true})
	bad := addEndpoint(t, pool, endpointRow{URL: "not a url"})
	r := NewRegistry(pool, testLogger(t, nil), m)
	ctx := context.Background()
	if err := r.Load(ctx); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { r.RunStateMetrics(ctx, time.Hour); close(done) }() // exports once at start
	value := func(id int64, state string) float64 {
		return testutil.ToFloat64(m.EndpointState.WithLabelValues(strconv.FormatInt(id, 10), state))
	}
	eventually(t, 10*time.Second, "three endpoint_state series", func() bool {
		return testutil.CollectAndCount(m.EndpointState) == 3
	})
	cancel()
	<-done
	for _, c := range []struct {
		id    int64
		state string
	}{{ok, metrics.EndpointEnabled}, {off, metrics.EndpointDisabled}, {bad, metrics.EndpointInvalid}} {
		if v := value(c.id, c.state); v != 1 {
			t.Errorf("endpoint %d state %s = %v, want 1", c.id, c.state, v)
		}
	}

	// grouphook (or an operator) disables one, another is deleted.
	mustExec(t, pool, "UPDATE grouphook.endpoints SET enabled = false WHERE id = $1", ok)
	mustExec(t, pool, "DELETE FROM grouphook.endpoints WHERE id = $1", off)
	shown := map[int64]string{ok: metrics.EndpointEnabled, off: metrics.EndpointDisabled, bad: metrics.EndpointInvalid}
	states, err := r.readStates(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r.exportStates(shown, states)
	if n := testutil.CollectAndCount(m.EndpointState); n != 2 {
		t.Errorf("%d endpoint_state series after the changes, want 2", n)
	}
	if v := value(ok, metrics.EndpointDisabled); v != 1 {
		t.Errorf("disabled endpoint %d: state disabled = %v, want 1", ok, v)
	}
	if problems, err := testutil.GatherAndLint(reg, "grouphook_endpoint_state"); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}
