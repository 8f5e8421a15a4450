package deliver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grouphook/grouphook/metrics"
)

// Event types.
const (
	TypeCreate = "CREATE"
	TypeUpdate = "UPDATE"
	TypeDelete = "DELETE"
)

// EventSet is a set of event types, as in grouphook.endpoints.events.
type EventSet uint8

// The members of an EventSet.
const (
	EventCreate EventSet = 1 << iota
	EventUpdate
	EventDelete

	AllEvents = EventCreate | EventUpdate | EventDelete
)

// EventBit returns the member for an event type, or 0 for an unknown type.
func EventBit(typ string) EventSet {
	switch typ {
	case TypeCreate:
		return EventCreate
	case TypeUpdate:
		return EventUpdate
	case TypeDelete:
		return EventDelete
	}
	return 0
}

// ParseEventSet builds a set from event type names.
func ParseEventSet(types []string) (EventSet, error) {
	var s EventSet
	for _, t := range types {
		b := EventBit(t)
		if b == 0 {
			return 0, fmt.Errorf("events contain the unknown type %q (want CREATE, UPDATE or DELETE)", t)
		}
		s |= b
	}
	return s, nil
}

// Has reports whether the set contains the event type typ.
func (s EventSet) Has(typ string) bool {
	bit := EventBit(typ)
	return bit != 0 && s&bit != 0
}

func (s EventSet) String() string {
	var parts []string
	for _, t := range []string{TypeCreate, TypeUpdate, TypeDelete} {
		if s.Has(t) {
			parts = append(parts, t)
		}
	}
	return strings.Join(parts, ",")
}

// Endpoint is one enabled, valid row of grouphook.endpoints. Endpoints in a
// Snapshot are shared and must not be modified.
type Endpoint struct {
	ID int64
	// ClientID is the owning client when HasClient; an endpoint without a
	// client (client_id NULL) receives every tenant's events.
	ClientID  string
	HasClient bool
	// URL is the validated callback URL (see ValidateURL).
	URL string
	// Secret is the endpoint's secret_key. Never log it: Endpoint's
	// LogValue leaves it out.
	Secret string
	// PreviousSecret is the secret replaced by the last rotation while its
	// overlap (previous_secret_expires_at) lasts, else "". Receivers may
	// still verify webhook-signature with it; x-hashed-key never uses it.
	PreviousSecret string
	Events         EventSet
	IncludeData    bool

	signer *Signer
	url    *url.URL // URL parsed, Host without an empty port; shared, never modified
}

// Signer returns the endpoint's signer, built once when the endpoint was
// loaded (or now, for an Endpoint made by hand).
func (e *Endpoint) Signer() *Signer {
	if e.signer != nil {
		return e.signer
	}
	return e.newSigner()
}

// target returns the parsed URL, parsed once when the endpoint was loaded
// (or now, for an Endpoint made by hand). Callers must not modify it.
func (e *Endpoint) target() (*url.URL, error) {
	if e.url != nil {
		return e.url, nil
	}
	return parseTarget(e.URL)
}

// parseTarget parses an endpoint URL as http.NewRequest does.
func parseTarget(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	// An empty port ("host:") means the default one, as in net/http's
	// removeEmptyPort.
	if strings.LastIndex(u.Host, ":") > strings.LastIndex(u.Host, "]") {
		u.Host = strings.TrimSuffix(u.Host, ":")
	}
	return u, nil
}

// prepare builds what every attempt needs once: the signer and the parsed
// URL (left nil when it does not parse, so that the attempt reports it).
func (e *Endpoint) prepare() {
	e.signer = e.newSigner()
	e.url, _ = parseTarget(e.URL)
}

// newSigner signs with the current secret and, during a rotation's
// overlap, the previous one too.
func (e *Endpoint) newSigner() *Signer {
	if e.PreviousSecret != "" && e.PreviousSecret != e.Secret {
		return NewSigner(e.Secret, e.PreviousSecret)
	}
	return NewSigner(e.Secret)
}

// LogValue implements slog.LogValuer; it never includes the secret, nor the
// URL, which may carry a token in its query.
func (e *Endpoint) LogValue() slog.Value {
	attrs := []slog.Attr{slog.Int64("id", e.ID), slog.String("events", e.Events.String())}
	if e.HasClient {
		attrs = append(attrs, slog.String("client_id", e.ClientID))
	}
	return slog.GroupValue(attrs...)
}

// String describes the endpoint without its secret or URL, so %v and %+v
// of an *Endpoint are safe in logs and errors.
func (e *Endpoint) String() string {
	if e.HasClient {
		return fmt.Sprintf("endpoint %d (client %q, %s)", e.ID, e.ClientID, e.Events)
	}
	return fmt.Sprintf("endpoint %d (%s)", e.ID, e.Events)
}

func (e *Endpoint) same(o *Endpoint) bool {
	return e.ID == o.ID && e.ClientID == o.ClientID && e.HasClient == o.HasClient && e.URL == o.URL &&
		e.Secret == o.Secret && e.PreviousSecret == o.PreviousSecret && e.Events == o.Events && e.IncludeData == o.IncludeData
}

// MaxURLLength is the longest endpoint URL accepted.
const MaxURLLength = 2048

// ValidateURL checks an endpoint URL: absolute http or https, a host, no
// user info, at most MaxURLLength characters. The error says what is wrong
// without repeating the URL, which may hold credentials.
func ValidateURL(raw string) error {
	if len(raw) > MaxURLLength {
		return fmt.Errorf("url is %d characters long, more than the %d allowed", len(raw), MaxURLLength)
	}
	if raw == "" {
		return errors.New("url is empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the URL
		}
		return fmt.Errorf("url does not parse: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return errors.New("url must be absolute and start with http:// or https://")
	}
	if u.Opaque != "" || u.Host == "" || u.Hostname() == "" {
		return errors.New("url has no host")
	}
	if u.User != nil {
		return errors.New("url must not contain user info (user:password@)")
	}
	return nil
}

// Snapshot is an immutable set of enabled, valid endpoints with the indexes
// routing needs. Get the current one from Registry.Snapshot.
type Snapshot struct {
	loaded    bool
	endpoints []*Endpoint // by id
	byID      map[int64]*Endpoint
	// By event bit index (0 CREATE, 1 UPDATE, 2 DELETE):
	all      [3][]*Endpoint            // every subscribed endpoint
	shared   [3][]*Endpoint            // subscribed endpoints without a client
	byClient [3]map[string][]*Endpoint // subscribed endpoints of one client
}

var emptySnapshot = newSnapshot(nil, false)

// NewSnapshot builds a snapshot from endpoints, as the registry does after
// reading the table. It is meant for tests and tools; endpoints are taken
// as valid.
func NewSnapshot(endpoints []Endpoint) *Snapshot {
	eps := make([]*Endpoint, len(endpoints))
	for i := range endpoints {
		e := endpoints[i]
		e.prepare()
		eps[i] = &e
	}
	return newSnapshot(eps, true)
}

func newSnapshot(eps []*Endpoint, loaded bool) *Snapshot {
	slices.SortFunc(eps, func(a, b *Endpoint) int { return compareInt64(a.ID, b.ID) })
	s := &Snapshot{loaded: loaded, endpoints: eps, byID: make(map[int64]*Endpoint, len(eps))}
	for i := range 3 {
		s.byClient[i] = make(map[string][]*Endpoint)
	}
	for _, e := range eps {
		s.byID[e.ID] = e
		for i, bit := range [3]EventSet{EventCreate, EventUpdate, EventDelete} {
			if e.Events&bit == 0 {
				continue
			}
			s.all[i] = append(s.all[i], e)
			if e.HasClient {
				s.byClient[i][e.ClientID] = append(s.byClient[i][e.ClientID], e)
			} else {
				s.shared[i] = append(s.shared[i], e)
			}
		}
	}
	return s
}

func compareInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Loaded reports whether the snapshot was read from the table (false for
// the empty one a Registry starts with).
func (s *Snapshot) Loaded() bool { return s.loaded }

// Endpoint returns the endpoint with id, if it is enabled and valid.
func (s *Snapshot) Endpoint(id int64) (*Endpoint, bool) {
	e, ok := s.byID[id]
	return e, ok
}

// Endpoints returns every endpoint, by id. The slice must not be modified.
func (s *Snapshot) Endpoints() []*Endpoint { return s.endpoints }

// Len returns the number of endpoints.
func (s *Snapshot) Len() int { return len(s.endpoints) }

// Registry keeps the current Snapshot of grouphook.endpoints. Load reads it
// once (at startup); Run re-reads it every interval, so inserts, updates,
// disables and deletes take effect within about one interval without a
// restart. A failed read keeps the last good snapshot.
type Registry struct {
	pool   *pgxpool.Pool
	logger *slog.Logger
	m      *metrics.Metrics

	snap atomic.Pointer[Snapshot]

	mu      sync.Mutex       // serialises reloads
	invalid map[int64]string // id -> url already reported as invalid
	failing bool             // last reload failed (logged once per outage)
}

// EndpointsTable is the table the registry reads.
const EndpointsTable = "grouphook.endpoints"

// The previous secret is read only while its rotation overlap lasts, so it
// drops out of the signature within one reload of its expiry.
const loadQuery = `SELECT id, client_id, url, secret_key,
	CASE WHEN previous_secret_expires_at > now() THEN previous_secret_key END,
	events, include_data
FROM grouphook.endpoints WHERE enabled ORDER BY id`

// DefaultReloadInterval is how often Run re-reads the endpoints.
const DefaultReloadInterval = time.Second

// NewRegistry returns a registry reading through pool. Its snapshot is
// empty (not Loaded) until Load or Run has read the table.
func NewRegistry(pool *pgxpool.Pool, logger *slog.Logger, m *metrics.Metrics) *Registry {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Registry{pool: pool, logger: logger, m: m, invalid: make(map[int64]string)}
	r.snap.Store(emptySnapshot)
	return r
}

// Snapshot returns the current endpoints. It never returns nil.
func (r *Registry) Snapshot() *Snapshot { return r.snap.Load() }

// Load reads the endpoints now and installs them. Call it at startup before
// events are submitted: an error (table missing, database unreachable) is
// fatal there. A missing table gives an error that says to run grouphook
// migrate.
func (r *Registry) Load(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reload(ctx)
}

// Run re-reads the endpoints every interval (DefaultReloadInterval when
// interval <= 0) until ctx is cancelled, then returns nil. A failed read
// is counted in EndpointReloadFailures and logged (once per outage, and
// again when it recovers); the last good snapshot stays in use.
func (r *Registry) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = DefaultReloadInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	if !r.Snapshot().Loaded() {
		r.tick(ctx, interval)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			r.tick(ctx, interval)
		}
	}
}

func (r *Registry) tick(ctx context.Context, interval time.Duration) {
	// A slow database must not stack reloads; give each read a deadline
	// of a few intervals.
	rctx, cancel := context.WithTimeout(ctx, max(5*time.Second, 3*interval))
	defer cancel()
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.reload(rctx)
	switch {
	case err != nil && ctx.Err() != nil:
		// shutting down
	case err != nil:
		r.m.EndpointReloadFailures.Inc()
		if !r.failing {
			r.logger.Error("cannot reload webhook endpoints; using the last good set until the database answers again",
				"table", EndpointsTable, "err", err, "endpoints", r.Snapshot().Len())
		}
		r.failing = true
	case r.failing:
		r.failing = false
		r.logger.Info("reloading webhook endpoints works again", "endpoints", r.Snapshot().Len())
	}
}

// reload reads the table and installs a new snapshot. r.mu is held.
func (r *Registry) reload(ctx context.Context) error {
	rows, err := r.pool.Query(ctx, loadQuery)
	if err != nil {
		return r.loadError(err)
	}
	defer rows.Close()
	prev := r.Snapshot()
	var (
		eps     []*Endpoint
		invalid = make(map[int64]string)
	)
	for rows.Next() {
		var (
			e                Endpoint
			client, previous *string
			events           []string
		)
		if err := rows.Scan(&e.ID, &client, &e.URL, &e.Secret, &previous, &events, &e.IncludeData); err != nil {
			return fmt.Errorf("read %s: %w", EndpointsTable, err)
		}
		if client != nil {
			e.ClientID, e.HasClient = *client, true
		}
		if previous != nil {
			e.PreviousSecret = *previous
		}
		problem, fix := ValidateURL(e.URL), "SET url = '<absolute http(s) url>'"
		if problem == nil {
			e.Events, problem = ParseEventSet(events)
			fix = "SET events = '{CREATE,UPDATE,DELETE}'"
		}
		if problem != nil {
			// Reported once per (id, url): the loop runs every second.
			invalid[e.ID] = e.URL
			if seen, ok := r.invalid[e.ID]; !ok || seen != e.URL {
				r.m.EndpointConfigErrors.WithLabelValues(strconv.FormatInt(e.ID, 10)).Inc()
				r.logger.Error(fmt.Sprintf("webhook endpoint %d is skipped because its %v; fix it with UPDATE %s %s WHERE id = %d, or disable it",
					e.ID, problem, EndpointsTable, fix, e.ID), "endpoint", e.ID)
			}
			continue
		}
		if old, ok := prev.byID[e.ID]; ok && old.same(&e) {
			eps = append(eps, old) // keep the signer and pointer identity
			continue
		}
		e.prepare()
		eps = append(eps, &e)
	}
	if err := rows.Err(); err != nil {
		return r.loadError(err)
	}
	for id := range r.invalid {
		if _, still := invalid[id]; !still {
			r.logger.Info(fmt.Sprintf("webhook endpoint %d is no longer skipped", id), "endpoint", id)
		}
	}
	r.invalid = invalid
	r.snap.Store(newSnapshot(eps, true))
	r.m.Endpoints.Set(float64(len(eps)))
	return nil
}

func (r *Registry) loadError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000") {
		return fmt.Errorf("table %s does not exist: run grouphook migrate: %w", EndpointsTable, err)
	}
	if errors.As(err, &pgErr) && pgErr.Code == "42703" { // undefined column: an older schema
		return fmt.Errorf("table %s lacks a column this version reads: run grouphook migrate: %w", EndpointsTable, err)
	}
	return fmt.Errorf("read %s: %w", EndpointsTable, err)
}
