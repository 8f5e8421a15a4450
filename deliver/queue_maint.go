package deliver

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/grouphook/grouphook/metrics"
)

// retentionBatch is how many dead rows one DELETE removes, so the cleanup
// never holds many row locks or a long transaction.
const retentionBatch = 1000

// maintain runs until ctx is cancelled: every RefreshInterval it re-reads
// the held lanes and failing endpoints and refreshes the queue gauges;
// every MaintenanceInterval (and at start) it deletes dead rows past
// DeadRetention and disables endpoints failing for DisableAfter; and it
// clears failing_since of endpoints that succeeded in memory.
func (q *Queue) maintain(ctx context.Context) {
	refresh := time.NewTicker(q.cfg.RefreshInterval)
	defer refresh.Stop()
	housekeeping := time.NewTicker(q.cfg.MaintenanceInterval)
	defer housekeeping.Stop()
	q.refreshGauges(ctx)
	q.housekeep(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-refresh.C:
			rctx, cancel := context.WithTimeout(ctx, max(10*time.Second, q.cfg.RefreshInterval))
			err := q.Resync(rctx)
			cancel()
			if ctx.Err() == nil {
				q.logFailure("re-read the queued lanes", err)
			}
			q.refreshGauges(ctx)
		case <-housekeeping.C:
			q.housekeep(ctx)
		case id := <-q.clearCh:
			q.clearFailing(ctx, id)
		}
	}
}

// refreshGauges sets the queue depth and the age of the oldest pending row:
// one aggregate query every RefreshInterval, never per event.
func (q *Queue) refreshGauges(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var pending, dead int64
	var oldest float64
	err := q.pool.QueryRow(rctx, `SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'dead'),
		coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending')), 0)::float8
		FROM grouphook.deliveries`).Scan(&pending, &dead, &oldest)
	if ctx.Err() != nil {
		return
	}
	q.logFailure("count the queued deliveries", err)
	if err != nil {
		return
	}
	q.m.QueueDeliveries.WithLabelValues("pending").Set(float64(pending))
	q.m.QueueDeliveries.WithLabelValues("dead").Set(float64(dead))
	q.m.QueueOldestPending.Set(max(oldest, 0))
}

// housekeep disables endpoints that failed without a success for
// DisableAfter (their pending rows die) and deletes dead rows older than
// DeadRetention. One replica at a time does it (an advisory lock); the
// others skip the round.
func (q *Queue) housekeep(ctx context.Context) {
	hctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	at := q.tick()
	type disabledEndpoint struct {
		id     int64
		killed int64
	}
	var disabled []disabledEndpoint
	var got bool
	err := q.inTx(hctx, func(tx pgx.Tx) error {
		disabled = nil
		if err := tx.QueryRow(hctx, `SELECT pg_try_advisory_xact_lock($1, $2)`, queueLockClass, maintenanceLock).Scan(&got); err != nil || !got {
			return err
		}
		ids, err := queryInt64s(hctx, tx, `
			UPDATE grouphook.endpoints SET enabled = false, disabled_at = now(), failing_since = NULL,
				disabled_reason = 'no successful delivery since ' ||
					to_char(failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') ||
					' (GROUPHOOK_DISABLE_AFTER ' || $2 || ')'
			WHERE enabled AND failing_since <= now() - $1 * interval '1 second'
			RETURNING id`, q.cfg.DisableAfter.Seconds(), q.cfg.DisableAfter.String())
		if err != nil {
			return err
		}
		for _, id := range ids {
			tag, err := tx.Exec(hctx, `UPDATE grouphook.deliveries SET status = 'dead', head = false, dead_at = now(),
				dead_reason = (SELECT disabled_reason FROM grouphook.endpoints WHERE id = $1), updated_at = now()
				WHERE endpoint_id = $1 AND status = 'pending'`, id)
			if err != nil {
				return err
			}
			disabled = append(disabled, disabledEndpoint{id, tag.RowsAffected()})
		}
		return nil
	})
	if ctx.Err() != nil {
		return
	}
	q.logFailure("disable failing endpoints", err)
	if err != nil || !got {
		return
	}
	for _, e := range disabled {
		q.releaseEndpoint(e.id, at)
		q.setFailing(e.id, false)
		q.m.EndpointsDisabledTotal.WithLabelValues(metrics.ReasonFailing).Inc()
		q.m.DeadDeliveriesTotal.WithLabelValues(metrics.ReasonFailing).Add(float64(e.killed))
		q.logger.Warn("endpoint disabled: no successful delivery for GROUPHOOK_DISABLE_AFTER; its queued deliveries are dead",
			"endpoint", e.id, "disable_after", q.cfg.DisableAfter.String(), "dead", e.killed)
	}

	q.repairHeadless(hctx)

	var removed int64
	for {
		tag, err := q.pool.Exec(hctx, `DELETE FROM grouphook.deliveries WHERE id IN (
			SELECT id FROM grouphook.deliveries WHERE status = 'dead' AND dead_at < now() - $1 * interval '1 second'
			ORDER BY dead_at LIMIT $2)`, q.cfg.DeadRetention.Seconds(), retentionBatch)
		if ctx.Err() != nil {
			return
		}
		q.logFailure("delete expired dead deliveries", err)
		if err != nil {
			return
		}
		removed += tag.RowsAffected()
		if tag.RowsAffected() < retentionBatch {
			break
		}
	}
	if removed > 0 {
		q.logger.Info("deleted dead deliveries past GROUPHOOK_DEAD_RETENTION", "deleted", removed,
			"retention", q.cfg.DeadRetention.String())
	}
}

// repairHeadless gives a head to any lane with pending rows and none. The
// queue's own transactions never leave such a lane (see Queue, Order); a
// hand-made change to grouphook.deliveries could, and the lane would never
// be attempted again.
func (q *Queue) repairHeadless(ctx context.Context) {
	rows, err := q.pool.Query(ctx, `SELECT DISTINCT endpoint_id, group_key FROM grouphook.deliveries d
		WHERE status = 'pending' AND NOT EXISTS (SELECT 1 FROM grouphook.deliveries h
			WHERE h.endpoint_id = d.endpoint_id AND h.group_key = d.group_key AND h.status = 'pending' AND h.head)
		LIMIT 1000`)
	if err != nil {
		if ctx.Err() == nil {
			q.logFailure("look for lanes without a head", err)
		}
		return
	}
	lanes, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (laneKey, error) {
		var k laneKey
		err := r.Scan(&k.endpoint, &k.group)
		return k, err
	})
	if err != nil {
		return
	}
	for _, k := range lanes {
		var repaired bool
		err := q.inTx(ctx, func(tx pgx.Tx) error {
			if err := lockLane(ctx, tx, k.endpoint, k.group); err != nil {
				return err
			}
			tag, err := tx.Exec(ctx, `UPDATE grouphook.deliveries SET head = true, next_attempt_at = now(), updated_at = now()
				WHERE id = (SELECT id FROM grouphook.deliveries WHERE endpoint_id = $1 AND group_key = $2 AND status = 'pending' ORDER BY id LIMIT 1)
				AND NOT EXISTS (SELECT 1 FROM grouphook.deliveries WHERE endpoint_id = $1 AND group_key = $2 AND status = 'pending' AND head)`,
				k.endpoint, k.group)
			repaired = err == nil && tag.RowsAffected() > 0
			return err
		})
		if err != nil {
			q.logFailure("repair a lane without a head", err)
			return
		}
		if repaired {
			q.logger.Warn("durable queue: a lane had pending deliveries but no head (was grouphook.deliveries changed by hand?); its oldest delivery is its head again",
				"endpoint", k.endpoint)
			q.nudge()
		}
	}
}

// clearFailing records that an endpoint the queue took for failing
// succeeded in memory.
func (q *Queue) clearFailing(ctx context.Context, endpointID int64) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := q.pool.Exec(cctx, `UPDATE grouphook.endpoints SET failing_since = NULL, last_success_at = now()
		WHERE id = $1 AND failing_since IS NOT NULL`, endpointID)
	q.fmu.Lock()
	delete(q.clearing, endpointID)
	if err == nil {
		delete(q.failing, endpointID)
	}
	q.fmu.Unlock()
	if ctx.Err() == nil {
		q.logFailure("record an endpoint's recovery", err)
	}
}
