package main

// Shared helpers of the end-to-end tests: a fresh database per test, the
// daemon in-process or as a child process, a webhook receiver that checks
// both signatures with its own HMAC code, psql, LSNs and waiting.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sethvargo/go-envconfig"

	"github.com/grouphook/grouphook/sql/pgcluster"
)

// ---------------------------------------------------------------------------
// Databases

// testDB is one test's database: the watched table exists, and its slot
// (named after the database, because slots are cluster-wide) is dropped
// when the test ends.
type testDB struct {
	URL  string
	Name string
	Slot string
	Pool *pgxpool.Pool
}

// newTestDB creates a fresh database and runs ddl in it (usually the CREATE
// TABLE groups statement). It does not migrate; see migrateDB.
func newTestDB(t testing.TB, ddl ...string) *testDB {
	t.Helper()
	return newTestDBOn(t, cluster, ddl...)
}

// newTestDBOn is newTestDB on another cluster than the package's.
func newTestDBOn(t testing.TB, cl *pgcluster.Cluster, ddl ...string) *testDB {
	t.Helper()
	dbURL := cl.NewDatabase(t)
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	db := &testDB{URL: dbURL, Name: strings.TrimPrefix(u.Path, "/")}
	db.Slot = "s_" + db.Name
	if len(db.Slot) > 63 {
		db.Slot = db.Slot[:63]
	}
	ctx := context.Background()
	db.Pool, err = pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Pool.Close)
	t.Cleanup(func() {
		// Runs before Pool.Close and after every daemon of the test stopped
		// (cleanups run last-in first-out). An active slot means a daemon
		// still runs; leave it then, the test has failed anyway.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = db.Pool.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", db.Slot)
	})
	for _, s := range ddl {
		db.exec(t, s)
	}
	return db
}

func (db *testDB) exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.Pool.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// queryString runs a query that returns one value, as text.
func (db *testDB) queryString(t testing.TB, sql string, args ...any) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var s *string
	if err := db.Pool.QueryRow(ctx, sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if s == nil {
		return ""
	}
	return *s
}

// env is the environment of a daemon for db with fast test settings;
// extra adds to or overrides it.
func (db *testDB) env(extra map[string]string) map[string]string {
	m := map[string]string{
		"DATABASE_URL":               db.URL,
		"GROUPHOOK_SLOT":             db.Slot,
		"GROUPHOOK_HTTP_ADDR":        "127.0.0.1:0",
		"GROUPHOOK_RETRY_MIN":        "50ms",
		"GROUPHOOK_RETRY_MAX":        "500ms",
		"GROUPHOOK_STATUS_INTERVAL":  "1s",
		"GROUPHOOK_ENDPOINT_REFRESH": "1s",
		"GROUPHOOK_DELIVERY_TIMEOUT": "5s",
		"GROUPHOOK_SHUTDOWN_TIMEOUT": "10s",
		"GROUPHOOK_LOG_LEVEL":        "info",
		"GROUPHOOK_LOG_FORMAT":       "json",
		"GROUPHOOK_REPLICA_IDENTITY": "full",
		"GROUPHOOK_MAX_IN_FLIGHT":    "10000",
		"GROUPHOOK_PUBLICATION":      "grouphook",
		"GROUPHOOK_TABLE":            "public.groups",
		"GROUPHOOK_TENANT_COLUMN":    "",
		"GROUPHOOK_WORKERS":          "16",
		// The receivers listen on 127.0.0.1, which the SSRF guard refuses
		// by default; security_test.go turns the guard back on.
		"GROUPHOOK_ALLOW_PRIVATE_DESTINATIONS": "true",
	}
	maps.Copy(m, extra)
	return m
}

// config loads the configuration the way main does, from db.env(extra).
func (db *testDB) config(t testing.TB, extra map[string]string) Config {
	t.Helper()
	env := db.env(extra)
	cfg, _, err := LoadConfig(context.Background(), envconfig.MapLookuper(env), nil)
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	return cfg
}

// migrateDB runs "grouphook migrate" (in-process) for db with extra settings.
func (db *testDB) migrate(t testing.TB, extra map[string]string) {
	t.Helper()
	var out bytes.Buffer
	if err := migrate(context.Background(), db.config(t, extra), &out); err != nil {
		t.Fatalf("migrate: %v\n%s", err, out.String())
	}
}

// endpoint is a row of grouphook.endpoints. The zero value of the optional
// fields means the column default (all events, include_data, enabled).
type endpoint struct {
	ClientID string // "" is NULL
	URL      string
	Secret   string
	Events   []string // nil: the default, all three
	Thin     bool     // include_data = false
	Disabled bool
}

func (db *testDB) addEndpoint(t testing.TB, e endpoint) int64 {
	t.Helper()
	var client *string
	if e.ClientID != "" {
		client = &e.ClientID
	}
	events := e.Events
	if events == nil {
		events = []string{"CREATE", "UPDATE", "DELETE"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var id int64
	err := db.Pool.QueryRow(ctx, `INSERT INTO grouphook.endpoints (client_id, url, secret_key, events, include_data, enabled)
		VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`, client, e.URL, e.Secret, events, !e.Thin, !e.Disabled).Scan(&id)
	if err != nil {
		t.Fatalf("insert endpoint: %v", err)
	}
	return id
}

// ---------------------------------------------------------------------------
// LSNs

func parseLSN(t testing.TB, s string) pglogrepl.LSN {
	t.Helper()
	l, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatalf("parse LSN %q: %v", s, err)
	}
	return l
}

// walInsertLSN is the current end of WAL (pg_current_wal_insert_lsn, which
// unlike pg_current_wal_lsn does not lag behind with synchronous_commit off).
func (db *testDB) walInsertLSN(t testing.TB) pglogrepl.LSN {
	t.Helper()
	return parseLSN(t, db.queryString(t, "SELECT pg_current_wal_insert_lsn()::text"))
}

// confirmedFlush reads the slot's confirmed_flush_lsn; 0 when the slot does
// not exist yet.
func (db *testDB) confirmedFlush(t testing.TB) pglogrepl.LSN {
	t.Helper()
	s := db.queryString(t, "SELECT (SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1)", db.Slot)
	if s == "" {
		return 0
	}
	return parseLSN(t, s)
}

// waitConfirmed waits until confirmed_flush_lsn >= target.
func (db *testDB) waitConfirmed(t testing.TB, target pglogrepl.LSN, timeout time.Duration) {
	t.Helper()
	var last pglogrepl.LSN
	eventually(t, timeout, func() bool {
		last = db.confirmedFlush(t)
		return last >= target
	}, func() string {
		return fmt.Sprintf("confirmed_flush_lsn of %s to reach %s (it is %s)", db.Slot, target, last)
	})
}

// streaming reports whether a walsender holds the slot. A slot is also
// "active" while a normal backend creates it (and waits for running
// transactions), and a change committed then may predate the slot's
// consistent point; so "active" alone is not enough.
func (db *testDB) streaming(t testing.TB) bool {
	t.Helper()
	return db.queryString(t, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid
		WHERE s.slot_name = $1 AND a.backend_type = 'walsender')::text`, db.Slot) == "true"
}

// waitSlotActive waits until a walsender holds the slot, i.e. the daemon
// streams and every change committed from now on will reach it.
func (db *testDB) waitSlotActive(t testing.TB, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, func() bool { return db.streaming(t) },
		func() string { return "a walsender to stream from slot " + db.Slot })
}

func (db *testDB) waitSlotInactive(t testing.TB, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, func() bool {
		return db.queryString(t, "SELECT (SELECT active::text FROM pg_replication_slots WHERE slot_name = $1)", db.Slot) != "true"
	}, func() string { return "slot " + db.Slot + " to become inactive" })
}

// commit runs stmts in one transaction and returns the WAL insert position
// just before COMMIT and the one just after it.
func (db *testDB) commit(t testing.TB, stmts ...string) (before, after pglogrepl.LSN) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
		}
		var s string
		if err := tx.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
			return err
		}
		before = parseLSN(t, s)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var s string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
		t.Fatal(err)
	}
	return before, parseLSN(t, s)
}

// ---------------------------------------------------------------------------
// Event ids

var eventIDPattern = regexp.MustCompile(`^evt_([0-9a-fA-F]{16})_([0-9]+)$`)

// idLSN returns the commit LSN and the position encoded in an event id
// (evt_<16 hex commit LSN>_<position>).
func idLSN(t testing.TB, id string) (pglogrepl.LSN, int) {
	t.Helper()
	m := eventIDPattern.FindStringSubmatch(id)
	if m == nil {
		t.Fatalf("event id %q does not look like evt_<16 hex commit LSN>_<position>", id)
	}
	l, err := strconv.ParseUint(m[1], 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	pos, _ := strconv.Atoi(m[2])
	return pglogrepl.LSN(l), pos
}

// ---------------------------------------------------------------------------
// The webhook receiver

// event is a callback body, with group and previous kept as raw bytes.
type event struct {
	ID         string          `json:"id"`
	Event      string          `json:"event"`
	Table      string          `json:"table"`
	OccurredAt string          `json:"occurred_at"`
	Group      json.RawMessage `json:"group"`
	Previous   json.RawMessage `json:"previous"`
}

// delivery is one request the receiver got.
type delivery struct {
	Seq       int // arrival order at this receiver, from 0
	At        time.Time
	Body      []byte
	Header    http.Header
	Ev        event
	Status    int // what the receiver answered; 0 while in progress
	SecretIdx int // which of the receiver's secrets verified the signatures
}

// groupField returns the raw JSON of one column in the event's group, or ""
// when it is absent.
func (d delivery) groupField(t testing.TB, name string) string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(d.Ev.Group, &m); err != nil {
		t.Fatalf("group of %s is not an object: %v: %s", d.Ev.ID, err, d.Body)
	}
	return string(m[name])
}

// groupKey returns the raw JSON of group.id, or "" when there is none. It
// never fails the test, so receiver callbacks can use it.
func groupKey(d *delivery) string {
	var m map[string]json.RawMessage
	_ = json.Unmarshal(d.Ev.Group, &m)
	return string(m["id"])
}

func (d delivery) groupInt(t testing.TB, name string) int64 {
	t.Helper()
	s := d.groupField(t, name)
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("group.%s of %s = %q, want an integer: %s", name, d.Ev.ID, s, d.Body)
	}
	return n
}

type receiver struct {
	t       testing.TB
	name    string
	srv     *httptest.Server
	mu      sync.Mutex
	secrets []string
	all     []*delivery
	// respond, when set, decides the status (and may sleep).
	respond func(d *delivery) int
	// inFlight counts requests being handled; maxInFlight is its peak.
	inFlight, maxInFlight int
}

// newReceiver starts a webhook receiver that verifies x-hashed-key and
// webhook-signature with the given secrets (the first that matches wins)
// and answers 200 unless respond says otherwise. A request that fails
// verification fails the test but is still answered, so the daemon moves on.
func newReceiver(t testing.TB, name string, secrets ...string) *receiver {
	t.Helper()
	r := &receiver{t: t, name: name, secrets: secrets}
	r.srv = httptest.NewServer(r)
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) URL() string { return r.srv.URL + "/hooks/" + r.name }

func (r *receiver) setRespond(f func(d *delivery) int) {
	r.mu.Lock()
	r.respond = f
	r.mu.Unlock()
}

func (r *receiver) setSecrets(s ...string) {
	r.mu.Lock()
	r.secrets = s
	r.mu.Unlock()
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		r.t.Errorf("receiver %s: read body: %v", r.name, err)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	d := &delivery{At: time.Now(), Body: body, Header: req.Header.Clone(), SecretIdx: -1}
	var problems []string
	if req.Method != http.MethodPost {
		problems = append(problems, "method "+req.Method+", want POST")
	}
	if req.URL.Path != "/hooks/"+r.name {
		problems = append(problems, "path "+req.URL.Path+", want /hooks/"+r.name)
	}
	if mt, _, err := mime.ParseMediaType(req.Header.Get("content-type")); err != nil || mt != "application/json" {
		problems = append(problems, fmt.Sprintf("content-type %q, want application/json", req.Header.Get("content-type")))
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d.Ev); err != nil {
		problems = append(problems, "body is not an event: "+err.Error())
	}
	if !json.Valid(body) {
		problems = append(problems, "body is not valid JSON")
	}
	r.mu.Lock()
	secrets := r.secrets
	respond := r.respond
	d.Seq = len(r.all)
	r.all = append(r.all, d)
	r.inFlight++
	r.maxInFlight = max(r.maxInFlight, r.inFlight)
	r.mu.Unlock()

	idx, sigProblems := verifySignatures(secrets, req.Header, body, time.Now())
	problems = append(problems, sigProblems...)
	if hid := req.Header.Get("webhook-id"); hid != d.Ev.ID {
		problems = append(problems, fmt.Sprintf("webhook-id %q differs from the body's id %q", hid, d.Ev.ID))
	}
	if strings.Contains(d.Ev.ID, ".") || d.Ev.ID == "" {
		problems = append(problems, fmt.Sprintf("event id %q is empty or contains '.'", d.Ev.ID))
	}
	if len(problems) > 0 {
		r.t.Errorf("receiver %s: bad request: %s\nheaders: %v\nbody: %s", r.name, strings.Join(problems, "; "), req.Header, body)
	}

	status := http.StatusOK
	if respond != nil {
		status = respond(d)
	}
	r.mu.Lock()
	d.Status = status
	d.SecretIdx = idx
	r.inFlight--
	r.mu.Unlock()
	w.WriteHeader(status)
}

// verifySignatures checks x-hashed-key and the Standard Webhooks headers
// against each secret, with this file's own HMAC code (not package
// deliver's). It returns the index of the secret that verified both.
func verifySignatures(secrets []string, h http.Header, body []byte, now time.Time) (int, []string) {
	var problems []string
	hashed := h.Get("x-hashed-key")
	id, ts, sigs := h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature")
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		problems = append(problems, fmt.Sprintf("webhook-timestamp %q is not unix seconds", ts))
	} else if d := now.Sub(time.Unix(sec, 0)); d > time.Minute || d < -time.Minute {
		problems = append(problems, fmt.Sprintf("webhook-timestamp %s is %s away from now", ts, d))
	}
	for i, secret := range secrets {
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write(body)
		hashOK := hashed == hex.EncodeToString(mac.Sum(nil)) // lowercase hex, exactly

		key := []byte(secret)
		if rest, ok := strings.CutPrefix(secret, "whsec_"); ok {
			key, err = base64.StdEncoding.DecodeString(rest)
			if err != nil {
				problems = append(problems, "test bug: bad whsec_ secret")
				continue
			}
		}
		mac = hmac.New(sha256.New, key)
		mac.Write([]byte(id + "." + ts + "."))
		mac.Write(body)
		want := mac.Sum(nil)
		sigOK := false
		for _, s := range strings.Fields(sigs) {
			v, b64, ok := strings.Cut(s, ",")
			if !ok || v != "v1" {
				continue
			}
			got, err := base64.StdEncoding.DecodeString(b64)
			if err == nil && hmac.Equal(got, want) {
				sigOK = true
			}
		}
		if hashOK && sigOK {
			return i, problems
		}
		if hashOK != sigOK {
			problems = append(problems, fmt.Sprintf("secret #%d verifies x-hashed-key=%v but webhook-signature=%v", i, hashOK, sigOK))
		}
	}
	problems = append(problems, fmt.Sprintf("no secret verifies x-hashed-key %q and webhook-signature %q", hashed, sigs))
	return -1, problems
}

// snapshot returns copies of every request so far, in arrival order.
func (r *receiver) snapshot() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]delivery, len(r.all))
	for i, d := range r.all {
		out[i] = *d
	}
	return out
}

// ok returns the requests answered with 2xx, in arrival order.
func (r *receiver) ok() []delivery {
	var out []delivery
	for _, d := range r.snapshot() {
		if d.Status >= 200 && d.Status < 300 {
			out = append(out, d)
		}
	}
	return out
}

// waitOK waits until the receiver answered at least n requests with 2xx.
func (r *receiver) waitOK(t testing.TB, n int, timeout time.Duration) []delivery {
	t.Helper()
	var got []delivery
	eventually(t, timeout, func() bool {
		got = r.ok()
		return len(got) >= n
	}, func() string {
		return fmt.Sprintf("%d callbacks at receiver %s; got %d:\n%s", n, r.name, len(got), describe(got))
	})
	return got
}

func (r *receiver) peakInFlight() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.maxInFlight
}

func describe(ds []delivery) string {
	var b strings.Builder
	for i, d := range ds {
		if i == 30 {
			fmt.Fprintf(&b, "  ... %d more\n", len(ds)-i)
			break
		}
		fmt.Fprintf(&b, "  [%d] status %d: %s\n", d.Seq, d.Status, d.Body)
	}
	return b.String()
}

var occurredAtPattern = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$`)

// assertBody checks the exact bytes of a callback body. The id and
// occurred_at are taken from the body itself after checking their form;
// previous == "" means the key must be absent.
func assertBody(t testing.TB, d delivery, eventType, group, previous string) {
	t.Helper()
	if _, _, err := checkIDAndTime(d); err != nil {
		t.Errorf("%v: %s", err, d.Body)
	}
	want := `{"id":"` + d.Ev.ID + `","event":"` + eventType + `","table":"public.groups","occurred_at":"` + d.Ev.OccurredAt + `","group":` + group
	if previous != "" {
		want += `,"previous":` + previous
	}
	want += "}"
	if string(d.Body) != want {
		t.Errorf("body mismatch\n got: %s\nwant: %s", d.Body, want)
	}
}

func checkIDAndTime(d delivery) (string, time.Time, error) {
	if !eventIDPattern.MatchString(d.Ev.ID) {
		return "", time.Time{}, fmt.Errorf("event id %q does not look like evt_<16 hex commit LSN>_<position>", d.Ev.ID)
	}
	if !occurredAtPattern.MatchString(d.Ev.OccurredAt) {
		return "", time.Time{}, fmt.Errorf("occurred_at %q is not RFC 3339 in UTC", d.Ev.OccurredAt)
	}
	ts, err := time.Parse(time.RFC3339Nano, d.Ev.OccurredAt)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("occurred_at %q: %w", d.Ev.OccurredAt, err)
	}
	return d.Ev.ID, ts, nil
}

// ---------------------------------------------------------------------------
// The daemon, in-process

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// tail returns at most the last n bytes of the log.
func tail(s string, n int) string {
	if len(s) > n {
		return "...\n" + s[len(s)-n:]
	}
	return s
}

type runningDaemon struct {
	HTTPAddr string
	Log      *syncBuffer
	cancel   context.CancelFunc
	done     chan error
	once     sync.Once
	err      error
}

// startDaemon runs daemon() for db with db.env(extra) until the test ends
// (or stop is called), and returns once the slot is active. The test fails
// if the daemon does not stop cleanly with a nil error.
func startDaemon(t testing.TB, db *testDB, extra map[string]string) *runningDaemon {
	t.Helper()
	cfg := db.config(t, extra)
	ctx, cancel := context.WithCancel(context.Background())
	d := &runningDaemon{Log: &syncBuffer{}, cancel: cancel, done: make(chan error, 1)}
	logger := newLogger(cfg, d.Log)
	addr := make(chan string, 1)
	go func() {
		d.done <- daemon(ctx, cfg, logger, func(a string) { addr <- a })
	}()
	t.Cleanup(func() {
		if err := d.stop(); err != nil {
			t.Errorf("daemon: %v", err)
		}
		if t.Failed() {
			t.Logf("daemon log (%s):\n%s", db.Name, tail(d.Log.String(), 20000))
		}
	})
	select {
	case d.HTTPAddr = <-addr:
	case err := <-d.done:
		d.err = err
		d.once.Do(func() {})
		t.Fatalf("daemon stopped at start: %v\n%s", err, d.Log.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("daemon did not start within 30s\n%s", d.Log.String())
	}
	db.waitSlotActive(t, 30*time.Second)
	return d
}

// stop cancels the daemon and waits for it; safe to call more than once.
func (d *runningDaemon) stop() error {
	d.once.Do(func() {
		d.cancel()
		select {
		case d.err = <-d.done:
		case <-time.After(60 * time.Second):
			d.err = fmt.Errorf("did not stop within 60s of cancellation")
		}
	})
	return d.err
}

// metrics returns the daemon's /metrics text.
func (d *runningDaemon) metrics(t testing.TB) string {
	t.Helper()
	resp, err := http.Get("http://" + d.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ---------------------------------------------------------------------------
// The daemon, as a child process

var bin struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func raceEnabled() bool {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" && s.Value == "true" {
				return true
			}
		}
	}
	return false
}

// grouphookBinary builds this command once per package run (with -race when
// the tests run with it) and returns its path.
func grouphookBinary(t testing.TB) string {
	t.Helper()
	bin.once.Do(func() {
		bin.dir, bin.err = os.MkdirTemp("", "grouphook-bin-")
		if bin.err != nil {
			return
		}
		bin.path = filepath.Join(bin.dir, "grouphook")
		args := []string{"build", "-o", bin.path}
		if raceEnabled() {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, ".")...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			bin.err = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if bin.err != nil {
		t.Fatal(bin.err)
	}
	return bin.path
}

func removeBinary() {
	if bin.dir != "" {
		os.RemoveAll(bin.dir)
	}
}

// childEnv is this process's environment without any grouphook setting,
// plus env.
func childEnv(env map[string]string) []string {
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if name == "DATABASE_URL" || strings.HasPrefix(name, "GROUPHOOK_") {
			continue
		}
		out = append(out, kv)
	}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

type child struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	stdout *syncBuffer
	done   chan struct{}
}

// startChild starts the grouphook binary with args and env. The test's
// cleanup kills it if it still runs.
func startChild(t testing.TB, env map[string]string, args ...string) *child {
	t.Helper()
	c := &child{stderr: &syncBuffer{}, stdout: &syncBuffer{}, done: make(chan struct{})}
	c.cmd = exec.Command(grouphookBinary(t), args...)
	c.cmd.Env = childEnv(env)
	c.cmd.Stdout = c.stdout
	c.cmd.Stderr = c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = c.cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	})
	return c
}

func (c *child) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// wait waits for the child to exit and returns its exit code (-1 when a
// signal ended it); it fails the test after timeout.
func (c *child) wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-c.done:
		return c.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		_ = c.cmd.Process.Kill()
		<-c.done
		t.Fatalf("grouphook did not exit within %s\nstderr:\n%s", timeout, tail(c.stderr.String(), 20000))
		return 0
	}
}

// waitStreaming waits until the child holds db's slot; it fails at once,
// with the child's output, if the child exits first.
func (c *child) waitStreaming(t testing.TB, db *testDB) {
	t.Helper()
	eventually(t, 30*time.Second, func() bool {
		if c.exited() {
			t.Fatalf("grouphook exited with code %d before streaming:\n%s", c.cmd.ProcessState.ExitCode(), tail(c.stderr.String(), 20000))
		}
		return db.streaming(t)
	}, func() string {
		return "grouphook to stream from slot " + db.Slot + "; its log:\n" + tail(c.stderr.String(), 20000)
	})
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// ---------------------------------------------------------------------------
// psql and waiting

// psql runs the real psql client against url, as a user would.
func psql(t testing.TB, url, sql string) string {
	t.Helper()
	cmd := exec.Command("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql -c %q: %v\n%s", sql, err, out)
	}
	return string(out)
}

// eventually polls cond until it holds, or fails the test after timeout
// with what() describing what was awaited.
func eventually(t testing.TB, timeout time.Duration, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what())
		}
		time.Sleep(25 * time.Millisecond)
	}
}
