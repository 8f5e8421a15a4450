package deliver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/grouphook/grouphook/metrics"
)

// queued is one claimed row of grouphook.deliveries.
type queued struct {
	id         int64
	eventID    string
	endpointID int64
	groupKey   string
	typ, table string
	occurredAt time.Time
	row, key   *string
	previous   *string
	tenant     *string
	attempts   int
	retries    int
}

const queuedColumns = `id, event_id, endpoint_id, group_key, event_type, table_name, occurred_at,
	row_json, key_json, previous_json, tenant, attempts, retries`

func scanQueued(row pgx.Row) (*queued, error) {
	var r queued
	var attempts, retries int32
	err := row.Scan(&r.id, &r.eventID, &r.endpointID, &r.groupKey, &r.typ, &r.table, &r.occurredAt,
		&r.row, &r.key, &r.previous, &r.tenant, &attempts, &retries)
	r.attempts, r.retries = int(attempts), int(retries)
	return &r, err
}

// event rebuilds the Event, so the body is byte for byte the one the
// in-memory path would have sent.
func (r *queued) event() Event {
	ev := Event{
		ID:         r.eventID,
		Type:       r.typ,
		Table:      r.table,
		OccurredAt: r.occurredAt,
		Row:        bytesOf(r.row),
		Key:        bytesOf(r.key),
		Previous:   bytesOf(r.previous),
		GroupKey:   r.groupKey,
		TenantNull: r.tenant == nil,
	}
	if r.tenant != nil {
		ev.Tenant = *r.tenant
	}
	return ev
}

func (r *queued) lane() laneKey { return laneKey{endpoint: r.endpointID, group: r.groupKey} }

// lease returns the lease length for a dispatcher timeout.
func (q *Queue) lease(timeout time.Duration) time.Duration {
	if q.cfg.Lease > 0 {
		return q.cfg.Lease
	}
	return timeout + DefaultLeaseMargin
}

// Run is the queue workers and the maintenance of this process, until ctx
// is cancelled; then it lets the attempts in flight finish (each within the
// dispatcher's Timeout), records them and returns nil. Every replica runs
// it, streaming or standing by. d provides the endpoints, the HTTP client
// and the signing; it must be the dispatcher that parks into q (or, in a
// process that never streams, any dispatcher on the same registry). Run may
// be called once, after d's registry has loaded.
func (q *Queue) Run(ctx context.Context, d *Dispatcher) error {
	if !d.reg.Snapshot().Loaded() {
		return errors.New("deliver: the endpoint registry is not loaded; call Registry.Load before Queue.Run")
	}
	if q.started.Swap(true) {
		return errors.New("deliver: Queue.Run called twice")
	}
	var wg sync.WaitGroup
	wg.Go(func() { q.maintain(ctx) })
	q.claimLoop(ctx, d)
	wg.Wait()
	return nil
}

// claimLoop claims due lane heads, at most as many as there are idle
// workers, so a claimed row never waits for a worker (its lease runs), and
// memory holds at most Workers rows whatever the queue's size.
func (q *Queue) claimLoop(ctx context.Context, d *Dispatcher) {
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, q.cfg.Workers)
	// Attempts and their bookkeeping may finish after ctx: their deadline
	// is the dispatcher's Timeout.
	actx := context.WithoutCancel(ctx)
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for ctx.Err() == nil {
		free := cap(sem) - len(sem) // only this goroutine adds to sem
		if free == 0 {
			select {
			case <-ctx.Done():
			case <-q.freed:
			}
			continue
		}
		rows, err := q.claim(ctx, d, free)
		if ctx.Err() != nil && len(rows) == 0 {
			return
		}
		q.logFailure("claim queued deliveries", err)
		for _, r := range rows {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() {
					<-sem
					select {
					case q.freed <- struct{}{}:
					default:
					}
				}()
				q.work(actx, ctx, d, r)
			})
		}
		if err == nil && len(rows) == free {
			continue // there may be more due
		}
		timer.Reset(q.cfg.PollInterval)
		select {
		case <-ctx.Done():
		case <-q.wake:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// claim leases up to n due lane heads of the endpoints in the registry's
// snapshot, in one short statement (FOR UPDATE SKIP LOCKED, so replicas
// never claim the same row).
func (q *Queue) claim(ctx context.Context, d *Dispatcher, n int) ([]*queued, error) {
	snap := d.reg.Snapshot()
	if snap.Len() == 0 {
		return nil, nil
	}
	ids := make([]int64, 0, snap.Len())
	for _, e := range snap.Endpoints() {
		ids = append(ids, e.ID)
	}
	// Not cancelled by shutdown: a claim that committed is attempted, so
	// no lease is left behind by a graceful stop.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(10*time.Second, 2*q.cfg.PollInterval))
	defer cancel()
	rows, err := q.pool.Query(cctx, `
		WITH c AS (
			SELECT id FROM grouphook.deliveries
			WHERE status = 'pending' AND head AND next_attempt_at <= now()
				AND (locked_until IS NULL OR locked_until <= now())
				AND endpoint_id = ANY($1)
			ORDER BY next_attempt_at
			LIMIT $2
			FOR UPDATE SKIP LOCKED)
		UPDATE grouphook.deliveries d
		SET locked_until = now() + $3 * interval '1 second', locked_by = $4, updated_at = now()
		FROM c WHERE d.id = c.id
		RETURNING `+columns("d."),
		ids, n, q.lease(d.cfg.Timeout).Seconds(), q.cfg.Owner)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*queued
	for rows.Next() {
		r, err := scanQueued(rows)
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	if int64(len(out)) > q.maxClaim.Load() {
		q.maxClaim.Store(int64(len(out)))
	}
	return out, rows.Err()
}

// columns lists queuedColumns, each with prefix.
func columns(prefix string) string {
	parts := strings.Split(queuedColumns, ",")
	for i, c := range parts {
		parts[i] = prefix + strings.TrimSpace(c)
	}
	return strings.Join(parts, ", ")
}

// work attempts r and, while the lane's next row is handed over in the
// same transaction, that one too, until the lane is empty, blocked or
// stop is done.
func (q *Queue) work(ctx, stop context.Context, d *Dispatcher, r *queued) {
	for r != nil {
		r = q.attempt(ctx, d, r, stop.Err() == nil)
	}
}

// attempt makes one attempt of r and records it. It returns the lane's next
// row when it was claimed for this worker (takeNext and success).
func (q *Queue) attempt(ctx context.Context, d *Dispatcher, r *queued, takeNext bool) *queued {
	ep, ok := d.reg.Snapshot().Endpoint(r.endpointID)
	if !ok {
		// Disabled (by hand), deleted or unusable meanwhile: leave the
		// row pending; a disabled endpoint's queue waits for it.
		q.record(ctx, "release a claimed delivery", func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `UPDATE grouphook.deliveries SET locked_until = NULL, locked_by = NULL
				WHERE id = $1 AND locked_by = $2`, r.id, q.cfg.Owner)
			return err
		})
		return nil
	}
	ev := r.event()
	id := itoa64(ep.ID)
	if !d.router.Matches(ep, &ev) {
		d.m.DeliveriesTotal.WithLabelValues(id, metrics.OutcomeDropped).Inc()
		q.m.QueueAttemptsTotal.WithLabelValues(metrics.OutcomeDropped).Inc()
		q.logger.Warn("queued delivery dropped: the endpoint no longer subscribes to this event (its events or client_id changed)",
			"endpoint", ep.ID, "event_id", ev.ID, "delivery", r.id)
		return q.succeed(ctx, d, r, takeNext)
	}
	body := AppendBody(make([]byte, 0, bodyLen(&ev, ep.IncludeData)), &ev, ep.IncludeData)
	actx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	start := time.Now()
	err := d.send(actx, ep, &ev, body)
	dur := time.Since(start)
	cancel()
	if err == nil {
		d.m.DeliveriesTotal.WithLabelValues(id, metrics.OutcomeSuccess).Inc()
		d.m.AttemptDuration.WithLabelValues(metrics.OutcomeSuccess).Observe(dur.Seconds())
		d.m.DeliveryLatency.Observe(time.Since(ev.OccurredAt).Seconds())
		q.m.QueueAttemptsTotal.WithLabelValues(metrics.OutcomeSuccess).Inc()
		q.logger.Debug("queued delivery succeeded", "endpoint", ep.ID, "event_id", ev.ID, "delivery", r.id, "attempts", r.attempts+1)
		return q.succeed(ctx, d, r, takeNext)
	}
	d.m.DeliveriesTotal.WithLabelValues(id, metrics.OutcomeFailure).Inc()
	d.m.AttemptDuration.WithLabelValues(metrics.OutcomeFailure).Observe(dur.Seconds())
	q.m.QueueAttemptsTotal.WithLabelValues(metrics.OutcomeFailure).Inc()
	if !IsRetryable(err) {
		q.gone(ctx, r, err, dur)
		return nil
	}
	q.fail(ctx, r, err, dur)
	return nil
}

// record runs f in a transaction with a deadline, logging a failure. The
// row's lease then expires and the attempt is repeated: a duplicate, not a
// loss.
func (q *Queue) record(ctx context.Context, op string, f func(pgx.Tx) error) bool {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := q.inTx(rctx, f)
	if err != nil {
		q.logger.Error("durable queue: cannot "+op+"; the lease expires and the delivery is attempted again", "err", err)
		return false
	}
	return true
}

// succeed deletes the delivered (or dropped) row r and promotes the lane's
// next row; with takeNext, the new head is leased to this worker and
// returned.
func (q *Queue) succeed(ctx context.Context, d *Dispatcher, r *queued, takeNext bool) *queued {
	at := q.tick()
	var (
		next  *queued
		empty bool
	)
	ok := q.record(ctx, "record a delivered queued delivery", func(tx pgx.Tx) error {
		next, empty = nil, false
		if err := lockLane(ctx, tx, r.endpointID, r.groupKey); err != nil {
			return err
		}
		// The endpoint first, so that no row lock is held while waiting
		// for the endpoint's (see disableEndpoint).
		if _, err := tx.Exec(ctx, `UPDATE grouphook.endpoints SET last_success_at = now(), failing_since = NULL
			WHERE id = $1 AND (failing_since IS NOT NULL OR last_success_at IS NULL OR last_success_at < now() - interval '1 minute')`,
			r.endpointID); err != nil {
			return err
		}
		var wasHead bool
		err := tx.QueryRow(ctx, `DELETE FROM grouphook.deliveries WHERE id = $1 AND locked_by = $2 RETURNING head`,
			r.id, q.cfg.Owner).Scan(&wasHead)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // our lease ran out and another worker has the row
		}
		if err != nil {
			return err
		}
		if !wasHead {
			return nil // killed meanwhile (410, disabled): not part of the lane any more
		}
		next, empty, err = q.promote(ctx, tx, r.endpointID, r.groupKey, takeNext, d.cfg.Timeout)
		return err
	})
	if !ok {
		return nil
	}
	q.setFailing(r.endpointID, false)
	if empty {
		q.release(r.lane(), at)
	}
	if next == nil && !empty {
		q.nudge() // a new head is due
	}
	return next
}

// promote makes the lane's oldest pending row its head, due now; with
// take, leased to this worker and returned. It reports an empty lane. The
// lane's lock is held.
func (q *Queue) promote(ctx context.Context, tx pgx.Tx, endpointID int64, group string, take bool, timeout time.Duration) (*queued, bool, error) {
	next, err := scanQueued(tx.QueryRow(ctx, `
		UPDATE grouphook.deliveries SET head = true, next_attempt_at = now(), updated_at = now(),
			locked_until = CASE WHEN $3 THEN now() + $4 * interval '1 second' END,
			locked_by = CASE WHEN $3 THEN $5 END
		WHERE id = (SELECT id FROM grouphook.deliveries
			WHERE endpoint_id = $1 AND group_key = $2 AND status = 'pending' ORDER BY id LIMIT 1)
		RETURNING `+queuedColumns,
		endpointID, group, take, q.lease(timeout).Seconds(), q.cfg.Owner))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, true, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("promote the lane's next delivery: %w", err)
	}
	if !take {
		return nil, false, nil
	}
	return next, false, nil
}

// fail records a retryable failure of r: the next attempt after the next
// delay of the schedule, or dead when it is used up (and the lane's next
// row becomes head).
func (q *Queue) fail(ctx context.Context, r *queued, attemptErr error, dur time.Duration) {
	at := q.tick()
	var (
		dead, empty bool
		delay       time.Duration
	)
	ok := q.record(ctx, "record a failed queued attempt", func(tx pgx.Tx) error {
		dead, empty = false, false
		if err := lockLane(ctx, tx, r.endpointID, r.groupKey); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE grouphook.endpoints SET failing_since = now()
			WHERE id = $1 AND failing_since IS NULL AND enabled`, r.endpointID); err != nil {
			return err
		}
		var retries int32
		err := tx.QueryRow(ctx, `SELECT retries FROM grouphook.deliveries
			WHERE id = $1 AND locked_by = $2 AND status = 'pending' FOR UPDATE`, r.id, q.cfg.Owner).Scan(&retries)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // lease lost, or killed meanwhile
		}
		if err != nil {
			return err
		}
		dead = int(retries) >= len(q.cfg.Schedule)
		msg := errorText(attemptErr)
		if dead {
			reason := fmt.Sprintf("the retry schedule is used up (%d delays); last: %s", len(q.cfg.Schedule), msg)
			_, err = tx.Exec(ctx, `UPDATE grouphook.deliveries SET status = 'dead', head = false, dead_at = now(), dead_reason = $2,
				attempts = attempts + 1, last_error = $3, first_failure_at = coalesce(first_failure_at, now()),
				locked_until = NULL, locked_by = NULL, updated_at = now() WHERE id = $1`, r.id, reason, msg)
		} else {
			delay = q.delay(int(retries), attemptErr)
			_, err = tx.Exec(ctx, `UPDATE grouphook.deliveries SET attempts = attempts + 1, retries = retries + 1,
				next_attempt_at = now() + $2 * interval '1 second', last_error = $3,
				first_failure_at = coalesce(first_failure_at, now()),
				locked_until = NULL, locked_by = NULL, updated_at = now() WHERE id = $1`, r.id, delay.Seconds(), msg)
		}
		if err != nil {
			return err
		}
		if err := insertAttempt(ctx, tx, r.id, attemptErr, &dur, ""); err != nil {
			return err
		}
		if dead {
			_, empty, err = q.promote(ctx, tx, r.endpointID, r.groupKey, false, 0)
		}
		return err
	})
	if !ok {
		return
	}
	q.setFailing(r.endpointID, true)
	if !dead {
		q.logger.Log(ctx, levelForAttempt(r.attempts+1), "queued delivery attempt failed; will retry", "endpoint", r.endpointID,
			"event_id", r.eventID, "delivery", r.id, "attempt", r.attempts+1, "status", StatusCode(attemptErr), "err", attemptErr,
			"retry_in", delay.Round(time.Millisecond))
		return
	}
	q.m.DeadDeliveriesTotal.WithLabelValues(metrics.ReasonExhausted).Inc()
	q.logger.Warn("queued delivery is dead: its retry schedule is used up (see grouphook deliveries show; replay with grouphook deliveries replay)",
		"endpoint", r.endpointID, "event_id", r.eventID, "delivery", r.id, "attempts", r.attempts+1, "err", attemptErr)
	if empty {
		q.release(r.lane(), at)
	} else {
		q.nudge()
	}
}

// gone handles 410 Gone from the queue: the endpoint is disabled and its
// pending deliveries, r included, die.
func (q *Queue) gone(ctx context.Context, r *queued, attemptErr error, dur time.Duration) {
	var (
		disabled bool
		killed   int64
	)
	reason := goneReason(attemptErr)
	ok := q.record(ctx, "disable an endpoint that answered 410 Gone", func(tx pgx.Tx) error {
		if err := lockLane(ctx, tx, r.endpointID, r.groupKey); err != nil {
			return err
		}
		var err error
		if disabled, killed, err = disableEndpoint(ctx, tx, r.endpointID, reason); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE grouphook.deliveries SET attempts = attempts + 1, last_error = $2,
			first_failure_at = coalesce(first_failure_at, now()), locked_until = NULL, locked_by = NULL, updated_at = now()
			WHERE id = $1`, r.id, errorText(attemptErr))
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		return insertAttempt(ctx, tx, r.id, attemptErr, &dur, "")
	})
	if !ok {
		return
	}
	q.releaseEndpoint(r.endpointID, q.tick())
	q.setFailing(r.endpointID, false)
	q.m.DeadDeliveriesTotal.WithLabelValues(metrics.ReasonGone).Add(float64(killed))
	if disabled {
		q.m.EndpointsDisabledTotal.WithLabelValues(metrics.ReasonGone).Inc()
		q.logger.Warn("endpoint disabled: it answered 410 Gone; its queued deliveries are dead (re-enable it and run grouphook deliveries replay --endpoint to resend them)",
			"endpoint", r.endpointID, "event_id", r.eventID, "dead", killed)
	}
}

// levelForAttempt logs attempts 1, 2, 4, 8, … as warnings, the rest as
// debug, to keep logs readable during an outage.
func levelForAttempt(n int) slog.Level {
	if n&(n-1) == 0 {
		return slog.LevelWarn
	}
	return slog.LevelDebug
}
