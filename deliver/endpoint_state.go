package deliver

import (
	"context"
	"strconv"
	"time"

	"github.com/grouphook/grouphook/metrics"
)

// stateQuery reads every endpoint's id and enabled flag; the registry's own
// query reads only the enabled ones.
const stateQuery = `SELECT id, enabled FROM grouphook.endpoints`

// minStateInterval bounds how often RunStateMetrics reads the table.
const minStateInterval = 5 * time.Second

// RunStateMetrics exports grouphook_endpoint_state, one series per row of
// grouphook.endpoints labelled with its state (enabled, disabled, invalid),
// now and then every interval (at least 5s) until ctx is cancelled. A failed
// read keeps the last values; the registry's own reload reports outages.
func (r *Registry) RunStateMetrics(ctx context.Context, interval time.Duration) {
	interval = max(interval, minStateInterval)
	t := time.NewTicker(interval)
	defer t.Stop()
	shown := map[int64]string{}
	for {
		rctx, cancel := context.WithTimeout(ctx, interval)
		if states, err := r.readStates(rctx); err == nil {
			r.exportStates(shown, states)
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// readStates maps every endpoint id to its state.
func (r *Registry) readStates(ctx context.Context) (map[int64]string, error) {
	rows, err := r.pool.Query(ctx, stateQuery)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	states := map[int64]string{}
	for rows.Next() {
		var id int64
		var enabled bool
		if err := rows.Scan(&id, &enabled); err != nil {
			return nil, err
		}
		states[id] = metrics.EndpointDisabled
		if enabled {
			states[id] = metrics.EndpointEnabled
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	for id := range r.invalid {
		if states[id] == metrics.EndpointEnabled {
			states[id] = metrics.EndpointInvalid
		}
	}
	r.mu.Unlock()
	return states, nil
}

// exportStates sets one series per endpoint and deletes the series of
// endpoints whose state changed or whose row is gone; shown is what the
// previous call exported, and is updated.
func (r *Registry) exportStates(shown, states map[int64]string) {
	g := r.m.EndpointState
	for id, old := range shown {
		if states[id] != old {
			g.DeleteLabelValues(strconv.FormatInt(id, 10), old)
			delete(shown, id)
		}
	}
	for id, st := range states {
		g.WithLabelValues(strconv.FormatInt(id, 10), st).Set(1)
		shown[id] = st
	}
}
