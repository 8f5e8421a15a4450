package deliver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grouphook/grouphook/metrics"
)

// Defaults of QueueConfig.
const (
	DefaultScheduleText            = "5s,5m,30m,2h,5h,10h,10h"
	DefaultQueueWorkers            = 8
	DefaultQueuePollInterval       = time.Second
	DefaultQueueRefresh            = 5 * time.Second
	DefaultQueueMaintenance        = time.Minute
	DefaultDeadRetention           = 14 * 24 * time.Hour
	DefaultDisableAfter            = 5 * 24 * time.Hour
	DefaultLeaseMargin             = 15 * time.Second
	DefaultScheduleJitter          = 0.2
	DeliveriesTable                = "grouphook.deliveries"
	queueLockClass           int32 = 0x67687131 // "ghq1": pg_advisory_xact_lock(class, hashtext(lane))
	maintenanceLock          int32 = 0          // second key of the maintenance lock in class queueLockClass
)

// DefaultSchedule is GROUPHOOK_RETRY_SCHEDULE's default, as Svix retries.
var DefaultSchedule = []time.Duration{5 * time.Second, 5 * time.Minute, 30 * time.Minute,
	2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour}

// ParseSchedule parses a retry schedule: a comma list of positive Go
// durations, such as "5s,5m,30m". The error says which entry is wrong.
func ParseSchedule(s string) ([]time.Duration, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("it is empty")
	}
	parts := strings.Split(s, ",")
	out := make([]time.Duration, 0, len(parts))
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			return nil, fmt.Errorf("entry %d is empty", i+1)
		}
		d, err := time.ParseDuration(p)
		if err != nil {
			return nil, fmt.Errorf("entry %d (%q) is not a duration", i+1, p)
		}
		if d <= 0 {
			return nil, fmt.Errorf("entry %d (%q) is not positive", i+1, p)
		}
		out = append(out, d)
	}
	return out, nil
}

// QueueConfig configures a Queue. Zero fields take the defaults above.
type QueueConfig struct {
	// Schedule is the delays between attempts of a queued delivery
	// (GROUPHOOK_RETRY_SCHEDULE): a delivery parked after failing waits
	// Schedule[0], and each further failure waits the next delay; when a
	// failure finds the schedule used up, the delivery is dead. A delivery
	// first attempted from the queue (it was parked behind others) gets
	// the whole schedule as well.
	Schedule []time.Duration
	// Jitter varies each delay by ±Jitter (a fraction; 0 means 0.2,
	// negative means none).
	Jitter float64
	// RetryAfterMax caps a receiver's Retry-After on 429 and 503: the
	// delay is the longer of the scheduled delay and the capped
	// Retry-After (default DefaultRetryAfterMax).
	RetryAfterMax time.Duration
	// Workers is how many queued deliveries this process attempts at once
	// (GROUPHOOK_QUEUE_WORKERS).
	Workers int
	// PollInterval is how often an idle worker pool looks for due
	// deliveries (GROUPHOOK_QUEUE_POLL_INTERVAL).
	PollInterval time.Duration
	// RefreshInterval is how often the held lanes and the queue gauges are
	// re-read from the database.
	RefreshInterval time.Duration
	// MaintenanceInterval is how often dead deliveries older than
	// DeadRetention are deleted and endpoints failing for DisableAfter are
	// disabled.
	MaintenanceInterval time.Duration
	DeadRetention       time.Duration // GROUPHOOK_DEAD_RETENTION
	DisableAfter        time.Duration // GROUPHOOK_DISABLE_AFTER
	// Lease is how long a claimed delivery is reserved for the worker that
	// claimed it; 0 means the dispatcher's Timeout plus DefaultLeaseMargin.
	// It must outlast one attempt: a worker that died holding a lease
	// delays that lane by at most Lease.
	Lease time.Duration
	// Owner names this process in locked_by; default host:pid:random.
	Owner string
}

func (c *QueueConfig) setDefaults() {
	if len(c.Schedule) == 0 {
		c.Schedule = DefaultSchedule
	}
	if c.Jitter == 0 {
		c.Jitter = DefaultScheduleJitter
	}
	c.Jitter = min(max(c.Jitter, 0), 1)
	if c.RetryAfterMax <= 0 {
		c.RetryAfterMax = DefaultRetryAfterMax
	}
	if c.Workers <= 0 {
		c.Workers = DefaultQueueWorkers
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultQueuePollInterval
	}
	if c.RefreshInterval <= 0 {
		c.RefreshInterval = DefaultQueueRefresh
	}
	if c.MaintenanceInterval <= 0 {
		c.MaintenanceInterval = DefaultQueueMaintenance
	}
	if c.DeadRetention <= 0 {
		c.DeadRetention = DefaultDeadRetention
	}
	if c.DisableAfter <= 0 {
		c.DisableAfter = DefaultDisableAfter
	}
	if c.Owner == "" {
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		c.Owner = fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
}

// Queue is the durable delivery queue in grouphook.deliveries. It is the
// Dispatcher's Parker, and its Run loop is the queue workers and the
// maintenance that every replica runs.
//
// # Order
//
// A lane is the pending rows of one (endpoint, group), in id order. Park
// inserts a lane's backlog in one transaction, in order; only the lane's
// head (deliveries.head, at most one per lane by a unique index) can be
// claimed, and a lane's next row becomes head in the same transaction that
// deletes (delivered) or kills (dead) the head. Every transaction that adds
// to a lane, promotes a head or reads "is this lane empty" first takes the
// lane's advisory lock, so no row is ever left behind without a head. Per
// lane there is thus at most one attempt in flight across all replicas, in
// id order, which is commit order.
//
// # Holds
//
// The dispatcher asks Holds for a new in-memory lane: true sends the
// delivery to the queue behind the rows already there. Holds answers from
// an in-memory set of lanes with pending rows. A false "held" only costs a
// trip through the queue; a false "not held" would let an event overtake
// queued ones, so every removal is proven safe:
//
//   - Each entry carries the sequence number at which it was last known to
//     be held. Park adds its lane after its transaction committed, with a
//     fresh number. A Resync takes a number before its query and, on
//     install, keeps lanes the query saw (stamped with that number) and
//     lanes marked after that number; a lane it did not see and that was
//     not marked since is dropped. Since this process's Park marks after
//     commit, a Park the query could miss was marked after the number.
//   - A queue worker of this process that finds a lane empty, inside the
//     lane-locked transaction that deleted its head, takes a number before
//     that transaction and removes the lane only if its entry is not newer:
//     a Park that committed before the worker's transaction took the lock
//     was seen by it, and one after it marked a newer number.
//   - Only the replica that streams parks new lanes. When this process takes
//     over the slot, cdc calls the OnStreaming hook before the first change
//     of the session, and Resync runs then: everything the previous holder
//     parked and confirmed committed before it let go of the slot, so it is
//     seen. (What a former holder parks after losing the slot was never
//     confirmed and comes again from the slot: duplicates, not disorder.)
//
// Lanes queued by "grouphook deliveries replay" become known at the next
// refresh (RefreshInterval); replayed events are old ones sent again, and
// are not ordered against events delivered since.
//
// # Crashes
//
// Park commits before the dispatcher calls done, and done comes before the
// stream confirms. A crash before the commit leaves the events unconfirmed:
// they come again from the slot. A crash after it but before the
// confirmation queues them twice, so they may be delivered twice, with the
// same webhook-id: at most the deliveries that were in flight, never a
// loss. A worker that dies after sending and before its update leaves its
// lease; the row is sent again after the lease expires.
type Queue struct {
	cfg    QueueConfig
	pool   *pgxpool.Pool
	logger *slog.Logger
	m      *metrics.Metrics

	mu   sync.Mutex
	seq  uint64
	held map[laneKey]uint64 // lane -> seq at which it was last known held

	fmu      sync.Mutex
	failing  map[int64]bool // endpoints with failing_since set, as last seen
	clearing map[int64]bool // endpoints whose failing_since is being cleared
	clearCh  chan int64

	wake    chan struct{} // cap 1: due work may be waiting
	freed   chan struct{} // cap 1: a worker finished
	started atomic.Bool

	maxClaim atomic.Int64 // largest batch claimed, for tests
	failOnce sync.Mutex
	failed   map[string]bool // operations whose failure was logged, until they work again
}

// NewQueue returns a queue on pool. Call Load before the dispatcher that
// parks into it starts, and Run to work on it.
func NewQueue(cfg QueueConfig, pool *pgxpool.Pool, logger *slog.Logger, m *metrics.Metrics) *Queue {
	cfg.setDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Queue{
		cfg:      cfg,
		pool:     pool,
		logger:   logger,
		m:        m,
		held:     make(map[laneKey]uint64),
		failing:  make(map[int64]bool),
		clearing: make(map[int64]bool),
		clearCh:  make(chan int64, 64),
		wake:     make(chan struct{}, 1),
		freed:    make(chan struct{}, 1),
		failed:   make(map[string]bool),
	}
}

// Config returns the configuration in use, defaults filled in.
func (q *Queue) Config() QueueConfig { return q.cfg }

// Load reads the held lanes and failing endpoints. An error at startup is
// fatal; a missing table says to run grouphook migrate.
func (q *Queue) Load(ctx context.Context) error {
	if err := q.Resync(ctx); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "42703") {
			return fmt.Errorf("table %s is missing or old: run grouphook migrate: %w", DeliveriesTable, err)
		}
		return err
	}
	return nil
}

// Holds implements Parker: whether (endpoint, group) has pending rows as far
// as this process knows. It never blocks on the database.
func (q *Queue) Holds(endpointID int64, groupKey string) bool {
	q.mu.Lock()
	_, ok := q.held[laneKey{endpoint: endpointID, group: groupKey}]
	q.mu.Unlock()
	return ok
}

// tick returns a fresh sequence number; see Queue's Holds section.
func (q *Queue) tick() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.seq++
	return q.seq
}

// mark records that k has pending rows (after the rows committed).
func (q *Queue) mark(k laneKey) {
	q.mu.Lock()
	q.seq++
	q.held[k] = q.seq
	n := len(q.held)
	q.mu.Unlock()
	q.m.QueueHeldLanes.Set(float64(n))
}

// release forgets k if nothing marked it after at.
func (q *Queue) release(k laneKey, at uint64) {
	q.mu.Lock()
	if v, ok := q.held[k]; ok && v <= at {
		delete(q.held, k)
	}
	n := len(q.held)
	q.mu.Unlock()
	q.m.QueueHeldLanes.Set(float64(n))
}

// releaseEndpoint forgets every lane of an endpoint not marked after at
// (its pending rows were all killed).
func (q *Queue) releaseEndpoint(endpointID int64, at uint64) {
	q.mu.Lock()
	for k, v := range q.held {
		if k.endpoint == endpointID && v <= at {
			delete(q.held, k)
		}
	}
	n := len(q.held)
	q.mu.Unlock()
	q.m.QueueHeldLanes.Set(float64(n))
}

// Resync re-reads which lanes have pending rows, and which endpoints are
// failing. The daemon calls it at start, whenever this process takes over
// the replication slot (before it reads a change), and every
// RefreshInterval.
func (q *Queue) Resync(ctx context.Context) error {
	at := q.tick()
	rows, err := q.pool.Query(ctx, `SELECT DISTINCT endpoint_id, group_key FROM grouphook.deliveries WHERE status = 'pending'`)
	if err != nil {
		return fmt.Errorf("read queued lanes from %s: %w", DeliveriesTable, err)
	}
	fresh := make(map[laneKey]uint64)
	for rows.Next() {
		var k laneKey
		if err := rows.Scan(&k.endpoint, &k.group); err != nil {
			rows.Close()
			return fmt.Errorf("read queued lanes from %s: %w", DeliveriesTable, err)
		}
		fresh[k] = at
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read queued lanes from %s: %w", DeliveriesTable, err)
	}
	q.install(at, fresh)

	ids, err := queryInt64s(ctx, q.pool, `SELECT id FROM grouphook.endpoints WHERE failing_since IS NOT NULL`)
	if err != nil {
		return fmt.Errorf("read failing endpoints: %w", err)
	}
	failing := make(map[int64]bool, len(ids))
	for _, id := range ids {
		failing[id] = true
	}
	q.fmu.Lock()
	q.failing = failing
	q.fmu.Unlock()
	return nil
}

// install replaces the held lanes with fresh, read by a query that
// started after the sequence number at, keeping the lanes marked after at
// (their rows may have committed after the query's snapshot).
func (q *Queue) install(at uint64, fresh map[laneKey]uint64) {
	q.mu.Lock()
	for k, v := range q.held {
		if v > at {
			fresh[k] = v
		}
	}
	q.held = fresh
	n := len(fresh)
	q.mu.Unlock()
	q.m.QueueHeldLanes.Set(float64(n))
}

// Succeeded implements SuccessObserver: an in-memory success of an endpoint
// the queue takes for failing clears its failing_since (asynchronously),
// so it is not disabled for failing.
func (q *Queue) Succeeded(endpointID int64) {
	q.fmu.Lock()
	send := q.failing[endpointID] && !q.clearing[endpointID]
	if send {
		q.clearing[endpointID] = true
	}
	q.fmu.Unlock()
	if !send {
		return
	}
	select {
	case q.clearCh <- endpointID:
	default:
		q.fmu.Lock()
		delete(q.clearing, endpointID)
		q.fmu.Unlock()
	}
}

func (q *Queue) setFailing(endpointID int64, on bool) {
	q.fmu.Lock()
	if on {
		q.failing[endpointID] = true
	} else {
		delete(q.failing, endpointID)
	}
	q.fmu.Unlock()
}

// nudge wakes the claim loop: due work may be waiting.
func (q *Queue) nudge() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// delay is the wait after a failure that used up step-1 delays of the
// schedule: Schedule[step] with jitter, or a longer Retry-After (capped).
func (q *Queue) delay(step int, err error) time.Duration {
	d := jitter(q.cfg.Schedule[min(step, len(q.cfg.Schedule)-1)], q.cfg.Jitter)
	var ae *AttemptError
	if errors.As(err, &ae) && ae.RetryAfter > 0 {
		d = max(d, min(ae.RetryAfter, q.cfg.RetryAfterMax))
	}
	return d
}

// lockLane takes the lane's advisory lock until the end of tx.
func lockLane(ctx context.Context, tx pgx.Tx, endpointID int64, group string) error {
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2::bigint::text || '/' || $3))`, queueLockClass, endpointID, group)
	if err != nil {
		return fmt.Errorf("lock lane: %w", err)
	}
	return nil
}

// inTx runs f in a transaction, again (at most twice) on a deadlock or a
// serialization failure.
func (q *Queue) inTx(ctx context.Context, f func(pgx.Tx) error) error {
	for attempt := 0; ; attempt++ {
		err := pgx.BeginFunc(ctx, q.pool, f)
		var pgErr *pgconn.PgError
		if err == nil || attempt == 2 || !errors.As(err, &pgErr) || (pgErr.Code != "40P01" && pgErr.Code != "40001") {
			return err
		}
	}
}

func textOrNil(b []byte) *string {
	if b == nil {
		return nil
	}
	s := string(b)
	return &s
}

func bytesOf(s *string) []byte {
	if s == nil {
		return nil
	}
	return []byte(*s)
}

// errorText describes a failed attempt for last_error and the history.
func errorText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// goneReason is disabled_reason for an endpoint that answered 410.
func goneReason(err error) string {
	return "the endpoint answered 410 Gone (" + errorText(err) + ")"
}

// Park implements Parker: it inserts ds, a lane's backlog in order, in one
// transaction. The first row becomes the lane's head when the lane has no
// pending row. When ds[0] failed with 410 Gone, the endpoint is disabled in
// the same transaction, its pending rows die and ds are stored dead; rows
// parked for an endpoint that is disabled are stored dead as well. Rows of
// an endpoint deleted meanwhile are dropped.
func (q *Queue) Park(ctx context.Context, ds []Parked) error {
	if len(ds) == 0 {
		return nil
	}
	head := ds[0]
	key := laneKey{endpoint: head.EndpointID, group: head.Event.GroupKey}
	gone := head.Attempts > 0 && head.LastError != nil && !IsRetryable(head.LastError)

	n := len(ds)
	var (
		eventIDs, types, tables, lastErrs []string
		rowJ, keyJ, prevJ, tenants        []*string
		occurred                          []time.Time
		firstFail                         []*time.Time
		attempts, retries                 []int32
		delays                            []float64
	)
	eventIDs, types, tables, lastErrs = make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	rowJ, keyJ, prevJ, tenants = make([]*string, n), make([]*string, n), make([]*string, n), make([]*string, n)
	occurred, firstFail = make([]time.Time, n), make([]*time.Time, n)
	attempts, retries, delays = make([]int32, n), make([]int32, n), make([]float64, n)
	for i, p := range ds {
		ev := p.Event
		if p.EndpointID != key.endpoint || ev.GroupKey != key.group {
			return errors.New("deliver: Park got deliveries of more than one lane")
		}
		eventIDs[i], types[i], tables[i], occurred[i] = ev.ID, ev.Type, ev.Table, ev.OccurredAt
		rowJ[i], keyJ[i], prevJ[i] = textOrNil(ev.Row), textOrNil(ev.Key), textOrNil(ev.Previous)
		if !ev.TenantNull {
			tenants[i] = &ev.Tenant
		}
		attempts[i] = int32(p.Attempts)
		if p.Attempts > 0 {
			// The in-memory attempts used the schedule's first delay.
			retries[i] = 1
			delays[i] = q.delay(0, p.LastError).Seconds()
			lastErrs[i] = errorText(p.LastError)
			if !p.FirstFailure.IsZero() {
				ff := p.FirstFailure
				firstFail[i] = &ff
			}
		}
	}

	var (
		deleted, dead, madeHead bool
		reason, metricReason    string
		killed                  int64
		disabled                bool
	)
	err := q.inTx(ctx, func(tx pgx.Tx) error {
		deleted, dead, madeHead, reason, metricReason, killed, disabled = false, false, false, "", "", 0, false
		if err := lockLane(ctx, tx, key.endpoint, key.group); err != nil {
			return err
		}
		if head.Attempts > 0 && !gone {
			// Before the row lock below, so two parks of one endpoint
			// never both wait to upgrade a share lock.
			if _, err := tx.Exec(ctx, `UPDATE grouphook.endpoints SET failing_since = $2
				WHERE id = $1 AND failing_since IS NULL AND enabled`, key.endpoint, firstFailureOr(head.FirstFailure)); err != nil {
				return fmt.Errorf("mark endpoint failing: %w", err)
			}
		}
		lock := "FOR SHARE" // a disable waits for this park, or this park sees it
		if gone {
			lock = "FOR NO KEY UPDATE"
		}
		var enabled bool
		err := tx.QueryRow(ctx, `SELECT enabled FROM grouphook.endpoints WHERE id = $1 `+lock, key.endpoint).Scan(&enabled)
		if errors.Is(err, pgx.ErrNoRows) {
			deleted = true
			return nil
		}
		if err != nil {
			return fmt.Errorf("read endpoint: %w", err)
		}
		switch {
		case gone:
			reason, metricReason, dead = goneReason(head.LastError), metrics.ReasonGone, true
			if disabled, killed, err = disableEndpoint(ctx, tx, key.endpoint, reason); err != nil {
				return err
			}
		case !enabled:
			reason, metricReason, dead = "the endpoint was disabled when the delivery was queued", metrics.ReasonDisabled, true
		}
		status := "pending"
		if dead {
			status = "dead"
		} else {
			var busy bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM grouphook.deliveries
				WHERE endpoint_id = $1 AND group_key = $2 AND status = 'pending')`, key.endpoint, key.group).Scan(&busy); err != nil {
				return fmt.Errorf("look up the lane: %w", err)
			}
			madeHead = !busy
		}
		var deadReason *string
		if dead {
			deadReason = &reason
		}
		var headID int64
		err = tx.QueryRow(ctx, `
			WITH ins AS (
				INSERT INTO grouphook.deliveries (event_id, endpoint_id, group_key, event_type, table_name, occurred_at,
					row_json, key_json, previous_json, tenant, status, head, attempts, retries, next_attempt_at,
					first_failure_at, last_error, dead_at, dead_reason)
				SELECT u.event_id, $1, $2, u.event_type, u.table_name, u.occurred_at,
					u.row_json, u.key_json, u.previous_json, u.tenant, $3, $4 AND u.ord = 1, u.attempts, u.retries,
					now() + u.delay * interval '1 second', u.first_failure, NULLIF(u.last_error, ''),
					CASE WHEN $3 = 'dead' THEN now() END, $5
				FROM unnest($6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::text[], $11::text[], $12::text[],
					$13::text[], $14::int[], $15::int[], $16::float8[], $17::timestamptz[], $18::text[])
					WITH ORDINALITY AS u(event_id, event_type, table_name, occurred_at, row_json, key_json, previous_json,
						tenant, attempts, retries, delay, first_failure, last_error, ord)
				ORDER BY u.ord
				RETURNING id)
			SELECT min(id) FROM ins`,
			key.endpoint, key.group, status, madeHead, deadReason,
			eventIDs, types, tables, occurred, rowJ, keyJ, prevJ, tenants, attempts, retries, delays, firstFail, lastErrs,
		).Scan(&headID)
		if err != nil {
			return fmt.Errorf("insert into %s: %w", DeliveriesTable, err)
		}
		if head.Attempts > 0 {
			summary := fmt.Sprintf("%d attempt(s) in memory", head.Attempts)
			if !head.FirstFailure.IsZero() {
				summary += " since " + head.FirstFailure.UTC().Format(time.RFC3339)
			}
			summary += "; last: " + errorText(head.LastError)
			if err := insertAttempt(ctx, tx, headID, head.LastError, nil, summary); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	switch {
	case deleted:
		q.logger.Warn("deliveries not queued: their endpoint was deleted", "endpoint", key.endpoint, "deliveries", n)
		return nil
	case dead:
		q.m.DeadDeliveriesTotal.WithLabelValues(metricReason).Add(float64(int64(n) + killed))
		if disabled {
			q.m.EndpointsDisabledTotal.WithLabelValues(metrics.ReasonGone).Inc()
			q.releaseEndpoint(key.endpoint, q.tick())
			q.logger.Warn("endpoint disabled: it answered 410 Gone; its queued deliveries are dead (re-enable it and run grouphook deliveries replay --endpoint to resend them)",
				"endpoint", key.endpoint, "event_id", head.Event.ID, "dead", int64(n)+killed)
		} else {
			q.logger.Warn("deliveries stored dead: "+reason, "endpoint", key.endpoint, "deliveries", n)
		}
		return nil
	}
	q.mark(key)
	if head.Attempts > 0 {
		q.setFailing(key.endpoint, true)
	}
	if madeHead && head.Attempts == 0 {
		q.nudge() // due now
	}
	if head.Attempts > 0 {
		q.logger.Info("deliveries moved to the durable queue after failing for GROUPHOOK_PARK_AFTER", "endpoint", key.endpoint,
			"deliveries", n, "event_id", head.Event.ID, "attempts", head.Attempts, "err", head.LastError)
	} else {
		// Queued behind earlier ones of their lane: one per event during
		// an outage, so not at info.
		q.logger.Debug("deliveries queued behind their lane", "endpoint", key.endpoint, "deliveries", n, "event_id", head.Event.ID)
	}
	return nil
}

func firstFailureOr(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now()
	}
	return t
}

// disableEndpoint sets enabled = false with a reason and kills the
// endpoint's pending rows. It reports whether the endpoint was enabled and
// how many rows died. Leases are left alone: a worker holding one may still
// delete its row as delivered.
func disableEndpoint(ctx context.Context, tx pgx.Tx, endpointID int64, reason string) (bool, int64, error) {
	tag, err := tx.Exec(ctx, `UPDATE grouphook.endpoints SET enabled = false, disabled_reason = $2, disabled_at = now(),
		failing_since = NULL WHERE id = $1 AND enabled`, endpointID, reason)
	if err != nil {
		return false, 0, fmt.Errorf("disable endpoint %d: %w", endpointID, err)
	}
	killed, err := tx.Exec(ctx, `UPDATE grouphook.deliveries SET status = 'dead', head = false, dead_at = now(),
		dead_reason = $2, updated_at = now() WHERE endpoint_id = $1 AND status = 'pending'`, endpointID, reason)
	if err != nil {
		return false, 0, fmt.Errorf("mark the deliveries of endpoint %d dead: %w", endpointID, err)
	}
	return tag.RowsAffected() > 0, killed.RowsAffected(), nil
}

// insertAttempt records a failed attempt. dur nil means unknown (the
// summary of the in-memory attempts).
func insertAttempt(ctx context.Context, tx pgx.Tx, deliveryID int64, err error, dur *time.Duration, text string) error {
	var (
		status *int32
		body   []byte
		secs   *float64
	)
	if c := StatusCode(err); c != 0 {
		c32 := int32(c)
		status = &c32
	}
	var ae *AttemptError
	if errors.As(err, &ae) && len(ae.Body) > 0 {
		body = ae.Body[:min(len(ae.Body), ErrorBodyBytes)]
	}
	if dur != nil {
		s := dur.Seconds()
		secs = &s
	}
	if text == "" {
		text = errorText(err)
	}
	_, e := tx.Exec(ctx, `INSERT INTO grouphook.delivery_attempts (delivery_id, status_code, duration, error, response_body)
		VALUES ($1, $2, make_interval(secs => $3), $4, $5)`, deliveryID, status, secs, text, body)
	if e != nil {
		return fmt.Errorf("record the attempt: %w", e)
	}
	return nil
}

func queryInt64s(ctx context.Context, db interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, sql string, args ...any) ([]int64, error) {
	rows, err := db.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// logFailure logs a failing background operation once per outage, and
// its recovery.
func (q *Queue) logFailure(op string, err error) {
	q.failOnce.Lock()
	defer q.failOnce.Unlock()
	if err == nil {
		if q.failed[op] {
			delete(q.failed, op)
			q.logger.Info("durable queue: " + op + " works again")
		}
		return
	}
	if !q.failed[op] {
		q.failed[op] = true
		q.logger.Error("durable queue: cannot "+op+"; will retry", "err", err)
	}
}

func itoa64(v int64) string { return strconv.FormatInt(v, 10) }
