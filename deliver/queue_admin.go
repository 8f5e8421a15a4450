package deliver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DB is what the queue's admin functions need: a *pgx.Conn or a
// *pgxpool.Pool.
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// InputError is a request that names something that does not exist or is
// in the wrong state. Nothing was changed. Its message is one sentence.
type InputError struct{ Msg string }

func (e *InputError) Error() string { return e.Msg }

// Delivery is one row of grouphook.deliveries, for the CLI.
type Delivery struct {
	ID             int64      `json:"id"`
	EventID        string     `json:"event_id"`
	EndpointID     int64      `json:"endpoint_id"`
	GroupKey       string     `json:"group_key"`
	EventType      string     `json:"event_type"`
	Table          string     `json:"table"`
	OccurredAt     time.Time  `json:"occurred_at"`
	Status         string     `json:"status"`
	Head           bool       `json:"head"`
	Attempts       int        `json:"attempts"`
	Retries        int        `json:"retries"`
	NextAttemptAt  *time.Time `json:"next_attempt_at,omitempty"`
	FirstFailureAt *time.Time `json:"first_failure_at,omitempty"`
	LastError      string     `json:"last_error,omitempty"`
	LockedBy       string     `json:"locked_by,omitempty"`
	LockedUntil    *time.Time `json:"locked_until,omitempty"`
	DeadAt         *time.Time `json:"dead_at,omitempty"`
	DeadReason     string     `json:"dead_reason,omitempty"`
	CreatedAt      time.Time  `json:"created_at"`
}

// Attempt is one row of grouphook.delivery_attempts.
type Attempt struct {
	AttemptedAt time.Time      `json:"attempted_at"`
	StatusCode  int            `json:"status_code,omitempty"`
	Duration    *time.Duration `json:"duration_ns,omitempty"` // nil for the in-memory summary
	Error       string         `json:"error"`
	// ResponseBody is the first 4 KiB of the response body, as received.
	ResponseBody []byte `json:"response_body,omitempty"`
}

const deliveryColumns = `id, event_id, endpoint_id, group_key, event_type, table_name, occurred_at, status, head,
	attempts, retries, CASE WHEN status = 'pending' THEN next_attempt_at END, first_failure_at, coalesce(last_error, ''),
	coalesce(locked_by, ''), CASE WHEN locked_until > now() THEN locked_until END, dead_at, coalesce(dead_reason, ''), created_at`

func scanDelivery(row pgx.Row) (Delivery, error) {
	var d Delivery
	var attempts, retries int32
	err := row.Scan(&d.ID, &d.EventID, &d.EndpointID, &d.GroupKey, &d.EventType, &d.Table, &d.OccurredAt, &d.Status, &d.Head,
		&attempts, &retries, &d.NextAttemptAt, &d.FirstFailureAt, &d.LastError, &d.LockedBy, &d.LockedUntil, &d.DeadAt,
		&d.DeadReason, &d.CreatedAt)
	d.Attempts, d.Retries = int(attempts), int(retries)
	if d.LockedUntil == nil {
		d.LockedBy = ""
	}
	return d, err
}

// ListFilter selects deliveries for ListDeliveries. Zero fields select
// everything.
type ListFilter struct {
	EndpointID int64  // 0: every endpoint
	Status     string // "", "pending" or "dead"
	Limit      int    // 0: no limit
}

// ListDeliveries returns the deliveries that match f, by id. An endpoint
// that does not exist, or a bad status, is an *InputError.
func ListDeliveries(ctx context.Context, db DB, f ListFilter) ([]Delivery, error) {
	if err := checkStatus(f.Status); err != nil {
		return nil, err
	}
	if f.EndpointID != 0 {
		if err := checkEndpoint(ctx, db, f.EndpointID); err != nil {
			return nil, err
		}
	}
	var endpoint *int64
	if f.EndpointID != 0 {
		endpoint = &f.EndpointID
	}
	var status *string
	if f.Status != "" {
		status = &f.Status
	}
	var limit *int
	if f.Limit > 0 {
		limit = &f.Limit
	}
	rows, err := db.Query(ctx, `SELECT `+deliveryColumns+` FROM grouphook.deliveries
		WHERE ($1::bigint IS NULL OR endpoint_id = $1) AND ($2::text IS NULL OR status = $2)
		ORDER BY id LIMIT $3`, endpoint, status, limit)
	if err != nil {
		return nil, fmt.Errorf("list deliveries: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Delivery, error) { return scanDelivery(r) })
}

// GetDelivery returns one delivery with its event and attempt history,
// oldest attempt first. An unknown id is an *InputError.
func GetDelivery(ctx context.Context, db DB, id int64) (Delivery, Event, []Attempt, error) {
	row := db.QueryRow(ctx, `SELECT `+deliveryColumns+`, row_json, key_json, previous_json, tenant
		FROM grouphook.deliveries WHERE id = $1`, id)
	var (
		d                       Delivery
		rowJ, keyJ, prev, tenat *string
		attempts, retries       int32
	)
	err := row.Scan(&d.ID, &d.EventID, &d.EndpointID, &d.GroupKey, &d.EventType, &d.Table, &d.OccurredAt, &d.Status, &d.Head,
		&attempts, &retries, &d.NextAttemptAt, &d.FirstFailureAt, &d.LastError, &d.LockedBy, &d.LockedUntil, &d.DeadAt,
		&d.DeadReason, &d.CreatedAt, &rowJ, &keyJ, &prev, &tenat)
	if errors.Is(err, pgx.ErrNoRows) {
		return d, Event{}, nil, &InputError{fmt.Sprintf("delivery %d does not exist (it was delivered, expired or never queued)", id)}
	}
	if err != nil {
		return d, Event{}, nil, fmt.Errorf("read delivery %d: %w", id, err)
	}
	d.Attempts, d.Retries = int(attempts), int(retries)
	if d.LockedUntil == nil {
		d.LockedBy = ""
	}
	q := queued{eventID: d.EventID, groupKey: d.GroupKey, typ: d.EventType, table: d.Table, occurredAt: d.OccurredAt,
		row: rowJ, key: keyJ, previous: prev, tenant: tenat}
	rows, err := db.Query(ctx, `SELECT attempted_at, coalesce(status_code, 0), extract(epoch FROM duration)::float8, error, response_body
		FROM grouphook.delivery_attempts WHERE delivery_id = $1 ORDER BY id`, id)
	if err != nil {
		return d, Event{}, nil, fmt.Errorf("read the attempts of delivery %d: %w", id, err)
	}
	history, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Attempt, error) {
		var a Attempt
		var code int32
		var secs *float64
		err := r.Scan(&a.AttemptedAt, &code, &secs, &a.Error, &a.ResponseBody)
		a.StatusCode = int(code)
		if secs != nil {
			dur := time.Duration(*secs * float64(time.Second))
			a.Duration = &dur
		}
		return a, err
	})
	if err != nil {
		return d, Event{}, nil, fmt.Errorf("read the attempts of delivery %d: %w", id, err)
	}
	return d, q.event(), history, nil
}

// ReplaySelector says which dead deliveries to put back in the queue:
// either IDs, or every dead delivery of EndpointID (whose event occurred
// at or after Since, when set).
type ReplaySelector struct {
	IDs        []int64
	EndpointID int64
	Since      time.Time
}

// ReplayResult says what a replay did.
type ReplayResult struct {
	Replayed int
	// EndpointsDisabled lists endpoints of replayed deliveries that are
	// disabled: their deliveries wait until the endpoint is enabled again.
	EndpointsDisabled []int64
}

// ReplayDeliveries puts dead deliveries back in the queue, with their
// original ids (webhook-id) and a fresh retry schedule, in one
// transaction. It checks everything before it writes: an unknown id, an id
// that is not dead, or an endpoint that does not exist is an *InputError
// and changes nothing. A replayed delivery joins its lane in id order; a
// lane without a head gets its oldest pending row as head. Running
// processes learn of the replayed lanes within their refresh interval; a
// replayed event is an old one sent again and is not ordered against
// events of its group delivered since.
func ReplayDeliveries(ctx context.Context, db DB, sel ReplaySelector) (ReplayResult, error) {
	var res ReplayResult
	if (len(sel.IDs) == 0) == (sel.EndpointID == 0) {
		return res, &InputError{"give either delivery ids or --endpoint"}
	}
	if len(sel.IDs) > 0 && !sel.Since.IsZero() {
		return res, &InputError{"--since goes with --endpoint, not with delivery ids"}
	}
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		var ids []int64
		if len(sel.IDs) > 0 {
			want := slices.Clone(sel.IDs)
			slices.Sort(want)
			want = slices.Compact(want)
			rows, err := tx.Query(ctx, `SELECT id, status FROM grouphook.deliveries WHERE id = ANY($1) ORDER BY id FOR UPDATE`, want)
			if err != nil {
				return err
			}
			found := map[int64]string{}
			var id int64
			var status string
			_, err = pgx.ForEachRow(rows, []any{&id, &status}, func() error { found[id] = status; return nil })
			if err != nil {
				return err
			}
			var missing, notDead []string
			for _, id := range want {
				switch st, ok := found[id]; {
				case !ok:
					missing = append(missing, itoa64(id))
				case st != "dead":
					notDead = append(notDead, itoa64(id))
				}
			}
			switch {
			case len(missing) == 1:
				return &InputError{"delivery " + missing[0] + " does not exist (it was delivered, expired or never queued); nothing was replayed"}
			case len(missing) > 1:
				return &InputError{"deliveries " + strings.Join(missing, ", ") + " do not exist; nothing was replayed"}
			case len(notDead) == 1:
				return &InputError{"delivery " + notDead[0] + " is pending, not dead: only dead deliveries can be replayed; nothing was replayed"}
			case len(notDead) > 1:
				return &InputError{"deliveries " + strings.Join(notDead, ", ") + " are pending, not dead: only dead deliveries can be replayed; nothing was replayed"}
			}
			ids = want
		} else {
			if err := checkEndpoint(ctx, tx, sel.EndpointID); err != nil {
				return err
			}
			var since *time.Time
			if !sel.Since.IsZero() {
				since = &sel.Since
			}
			var err error
			ids, err = queryInt64s(ctx, tx, `SELECT id FROM grouphook.deliveries
				WHERE endpoint_id = $1 AND status = 'dead' AND ($2::timestamptz IS NULL OR occurred_at >= $2)
				ORDER BY id FOR UPDATE`, sel.EndpointID, since)
			if err != nil {
				return err
			}
		}
		if len(ids) == 0 {
			return nil
		}
		// Lock the lanes in one order (every other writer takes one lane
		// lock at a time), then requeue and give headless lanes a head.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, k) FROM (
			SELECT DISTINCT hashtext(endpoint_id::text || '/' || group_key) AS k FROM grouphook.deliveries WHERE id = ANY($2)
			ORDER BY k) l`, queueLockClass, ids); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE grouphook.deliveries SET status = 'pending', head = false, retries = 0,
			next_attempt_at = now(), dead_at = NULL, dead_reason = NULL, locked_until = NULL, locked_by = NULL,
			updated_at = now() WHERE id = ANY($1)`, ids)
		if err != nil {
			return err
		}
		res.Replayed = int(tag.RowsAffected())
		if _, err := tx.Exec(ctx, `UPDATE grouphook.deliveries d SET head = true, next_attempt_at = now()
			FROM (SELECT DISTINCT ON (endpoint_id, group_key) id FROM grouphook.deliveries
				WHERE status = 'pending' AND (endpoint_id, group_key) IN (SELECT endpoint_id, group_key FROM grouphook.deliveries WHERE id = ANY($1))
				ORDER BY endpoint_id, group_key, id) f
			WHERE d.id = f.id AND NOT EXISTS (SELECT 1 FROM grouphook.deliveries h
				WHERE h.endpoint_id = d.endpoint_id AND h.group_key = d.group_key AND h.status = 'pending' AND h.head)`, ids); err != nil {
			return err
		}
		res.EndpointsDisabled, err = queryInt64s(ctx, tx, `SELECT id FROM grouphook.endpoints WHERE NOT enabled
			AND id IN (SELECT endpoint_id FROM grouphook.deliveries WHERE id = ANY($1)) ORDER BY id`, ids)
		return err
	})
	var ie *InputError
	if err != nil && !errors.As(err, &ie) {
		err = fmt.Errorf("replay deliveries: %w", err)
	}
	return res, err
}

func checkStatus(s string) error {
	switch s {
	case "", "pending", "dead":
		return nil
	}
	return &InputError{fmt.Sprintf("status %q is not valid: use pending or dead", s)}
}

func checkEndpoint(ctx context.Context, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, id int64) error {
	var exists bool
	if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM grouphook.endpoints WHERE id = $1)`, id).Scan(&exists); err != nil {
		return fmt.Errorf("look up endpoint %d: %w", id, err)
	}
	if !exists {
		return &InputError{fmt.Sprintf("endpoint %d does not exist (see SELECT id, url FROM grouphook.endpoints)", id)}
	}
	return nil
}
