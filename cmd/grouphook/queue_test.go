package main

// End-to-end tests of the durable queue (issue 4): failing endpoints, 410,
// dead deliveries and replay, SIGKILL while parking and while draining, two
// daemons on one database. Real PostgreSQL, real receivers, the daemon
// in-process or as the real binary.

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/sethvargo/go-envconfig"
)

const versionedDDL = `CREATE TABLE groups (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0, name text)`

// queueEnv is fast queue settings for tests, plus extra.
func queueEnv(extra map[string]string) map[string]string {
	m := map[string]string{
		"GROUPHOOK_PARK_AFTER":          "500ms",
		"GROUPHOOK_RETRY_SCHEDULE":      "200ms,500ms" + strings.Repeat(",1s", 60),
		"GROUPHOOK_QUEUE_POLL_INTERVAL": "100ms",
		"GROUPHOOK_QUEUE_WORKERS":       "4",
	}
	maps.Copy(m, extra)
	return m
}

// writeVersions commits, for each group 1..groups, an insert (v = 0) and
// then updates v = 1..versions-1, one transaction each, interleaving the
// groups. It returns the WAL position after the last commit.
func writeVersions(t testing.TB, db *testDB, groups, versions int) pglogrepl.LSN {
	t.Helper()
	var end pglogrepl.LSN
	for v := range versions {
		for g := 1; g <= groups; g++ {
			if v == 0 {
				_, end = db.commit(t, fmt.Sprintf("INSERT INTO groups (id, v, name) VALUES (%d, 0, 'g%d')", g, g))
			} else {
				_, end = db.commit(t, fmt.Sprintf("UPDATE groups SET v = %d WHERE id = %d", v, g))
			}
		}
	}
	return end
}

// versionKey identifies one change: group id and its v.
type versionKey struct{ g, v int64 }

// checkFirstDeliveries checks that r got every version 0..want[g]-1 of each
// group with a 2xx, that the first successful delivery of each version
// comes in increasing v (commit order) per group, and that a change always
// carries the same webhook-id. It returns how many 2xx were repeats.
func checkFirstDeliveries(t testing.TB, r *receiver, want map[int64]int) int {
	t.Helper()
	seen := map[versionKey]string{}
	last := map[int64]int64{}
	dups := 0
	for _, d := range r.ok() {
		k := versionKey{d.groupInt(t, "id"), d.groupInt(t, "v")}
		if id, ok := seen[k]; ok {
			dups++
			if id != d.Ev.ID {
				t.Errorf("group %d v %d came with id %s and again with %s", k.g, k.v, id, d.Ev.ID)
			}
			continue
		}
		seen[k] = d.Ev.ID
		if prev, ok := last[k.g]; ok && k.v < prev {
			t.Errorf("group %d: v %d was first delivered after v %d", k.g, k.v, prev)
		}
		last[k.g] = k.v
	}
	for g, n := range want {
		for v := range n {
			if _, ok := seen[versionKey{g, int64(v)}]; !ok {
				t.Errorf("group %d v %d was never delivered", g, v)
			}
		}
	}
	return dups
}

// allDelivered reports whether r has a 2xx for every version in want.
func allDelivered(t testing.TB, r *receiver, want map[int64]int) (bool, int) {
	seen := map[versionKey]bool{}
	for _, d := range r.ok() {
		seen[versionKey{d.groupInt(t, "id"), d.groupInt(t, "v")}] = true
	}
	missing := 0
	for g, n := range want {
		for v := range n {
			if !seen[versionKey{g, int64(v)}] {
				missing++
			}
		}
	}
	return missing == 0, missing
}

func wantVersions(groups, versions int) map[int64]int {
	m := map[int64]int{}
	for g := 1; g <= groups; g++ {
		m[int64(g)] = versions
	}
	return m
}

// endpointSwitch answers 503 while down, else 200, optionally after a delay.
type endpointSwitch struct {
	up    atomic.Bool
	delay atomic.Int64 // nanoseconds
}

func (s *endpointSwitch) respond(d *delivery) int {
	if !s.up.Load() {
		return http.StatusServiceUnavailable
	}
	if n := s.delay.Load(); n > 0 {
		time.Sleep(time.Duration(n))
	}
	return http.StatusOK
}

func countRows(t testing.TB, db *testDB, sql string, args ...any) int {
	t.Helper()
	n, err := strconv.Atoi(db.queryString(t, "SELECT ("+sql+")::text", args...))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// metricSample returns the value of one sample line of a /metrics text, or
// -1 when it is absent.
func metricSample(text, sample string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`).FindStringSubmatch(text)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// TestQueueFailingEndpoint: one endpoint answers 503 for a while. The
// healthy endpoint meanwhile gets every event within seconds, and after
// GROUPHOOK_PARK_AFTER the slot's confirmed_flush_lsn catches up with the
// WAL although the failing endpoint has nothing yet. When it recovers it
// gets every event, per group in commit order, each exactly once.
func TestQueueFailingEndpoint(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, versionedDDL)
	db.migrate(t, nil)
	secret := randomSecret(t, true)
	healthy, flaky := newReceiver(t, "healthy", secret), newReceiver(t, "flaky", secret)
	sw := &endpointSwitch{}
	flaky.setRespond(sw.respond)
	db.addEndpoint(t, endpoint{URL: healthy.URL(), Secret: secret})
	flakyID := db.addEndpoint(t, endpoint{URL: flaky.URL(), Secret: secret})
	d := startDaemon(t, db, queueEnv(nil))

	const groups, versions = 8, 5
	start := time.Now()
	end := writeVersions(t, db, groups, versions)
	healthy.waitOK(t, groups*versions, 15*time.Second)
	t.Logf("healthy endpoint got all %d events %s after the first commit", groups*versions, time.Since(start).Round(time.Millisecond))
	db.waitConfirmed(t, end, 15*time.Second)
	t.Logf("confirmed_flush_lsn reached the last commit %s after the first commit, with the flaky endpoint still down", time.Since(start).Round(time.Millisecond))
	if n := len(flaky.ok()); n != 0 {
		t.Fatalf("flaky endpoint has %d successes while down", n)
	}
	if n := countRows(t, db, `SELECT count(*) FROM grouphook.deliveries WHERE status = 'pending' AND endpoint_id = $1`, flakyID); n != groups*versions {
		t.Errorf("%d pending deliveries, want %d", n, groups*versions)
	}

	// More changes while it is down: they queue behind at once, and the
	// slot keeps up.
	_, end2 := db.commit(t, "UPDATE groups SET v = 5 WHERE id = 1")
	healthy.waitOK(t, groups*versions+1, 10*time.Second)
	db.waitConfirmed(t, end2, 10*time.Second)
	eventually(t, 20*time.Second, func() bool {
		return metricSample(d.metrics(t), `grouphook_queue_deliveries{status="pending"}`) == groups*versions+1
	}, func() string { return "grouphook_queue_deliveries{status=\"pending\"} to count the queue" })

	sw.up.Store(true)
	want := wantVersions(groups, versions)
	want[1] = versions + 1
	eventually(t, 40*time.Second, func() bool { ok, _ := allDelivered(t, flaky, want); return ok }, func() string {
		_, missing := allDelivered(t, flaky, want)
		return fmt.Sprintf("the recovered endpoint to get every event; %d missing", missing)
	})
	if dups := checkFirstDeliveries(t, flaky, want); dups != 0 {
		t.Errorf("%d events were delivered twice without any crash", dups)
	}
	if dups := checkFirstDeliveries(t, healthy, want); dups != 0 {
		t.Errorf("healthy endpoint: %d events delivered twice", dups)
	}
	eventually(t, 10*time.Second, func() bool { return countRows(t, db, `SELECT count(*) FROM grouphook.deliveries`) == 0 },
		func() string { return "the queue to be empty" })
	if v := metricSample(d.metrics(t), `grouphook_queue_attempts_total{outcome="success"}`); v != float64(groups*versions+1) {
		t.Errorf("queue successes = %v, want %d", v, groups*versions+1)
	}
}

// TestQueueGoneDeadAndReplay: 410 disables the endpoint; an exhausted
// schedule makes deliveries dead with their attempt history; the CLI shows
// them and replay delivers them with their original ids.
func TestQueueGoneDeadAndReplay(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, versionedDDL)
	db.migrate(t, nil)
	secret := randomSecret(t, false)
	gone, down := newReceiver(t, "gone", secret), newReceiver(t, "down", secret)
	gone.setRespond(func(d *delivery) int { return http.StatusGone })
	sw := &endpointSwitch{}
	down.setRespond(sw.respond)
	goneID := db.addEndpoint(t, endpoint{URL: gone.URL(), Secret: secret})
	downID := db.addEndpoint(t, endpoint{URL: down.URL(), Secret: secret})
	d := startDaemon(t, db, queueEnv(map[string]string{"GROUPHOOK_RETRY_SCHEDULE": "100ms,200ms"}))

	end := writeVersions(t, db, 2, 2)
	db.waitConfirmed(t, end, 20*time.Second)

	// 410: disabled at once, with a reason; its deliveries are dead.
	eventually(t, 10*time.Second, func() bool {
		return db.queryString(t, `SELECT enabled::text FROM grouphook.endpoints WHERE id = $1`, goneID) == "false"
	}, func() string { return "the 410 endpoint to be disabled" })
	if r := db.queryString(t, `SELECT disabled_reason FROM grouphook.endpoints WHERE id = $1`, goneID); !strings.Contains(r, "410") {
		t.Errorf("disabled_reason = %q", r)
	}
	if n := len(gone.snapshot()); n > 4 {
		t.Errorf("the 410 endpoint got %d requests; it should be disabled at its first 410 (and the lanes in flight)", n)
	}
	// Exhausted schedule: dead, with attempts.
	eventually(t, 20*time.Second, func() bool {
		return countRows(t, db, `SELECT count(*) FROM grouphook.deliveries WHERE endpoint_id = $1 AND status = 'dead'`, downID) == 4
	}, func() string { return "4 dead deliveries of the failing endpoint" })
	eventually(t, 20*time.Second, func() bool {
		m := d.metrics(t)
		return metricSample(m, `grouphook_dead_deliveries_total{reason="exhausted"}`) == 4 &&
			metricSample(m, `grouphook_endpoints_disabled_total{reason="gone"}`) == 1 &&
			metricSample(m, `grouphook_queue_deliveries{status="dead"}`) >= 4
	}, func() string { return "dead and disabled metrics" })

	env := db.env(nil)
	out := runCLI(t, env, 0, "deliveries", "list", "--status", "dead", "--endpoint", strconv.FormatInt(downID, 10), "--json")
	var list []struct {
		ID         int64  `json:"id"`
		EventID    string `json:"event_id"`
		Status     string `json:"status"`
		Attempts   int    `json:"attempts"`
		DeadReason string `json:"dead_reason"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 4 {
		t.Fatalf("list --json: %v, %d entries:\n%s", err, len(list), out)
	}
	show := runCLI(t, env, 0, "deliveries", "show", strconv.FormatInt(list[0].ID, 10))
	for _, w := range []string{"dead", list[0].EventID, "attempts:", "503", "in memory", "retry schedule"} {
		if !strings.Contains(show, w) {
			t.Errorf("deliveries show does not mention %q:\n%s", w, show)
		}
	}
	t.Logf("grouphook deliveries show %d:\n%s", list[0].ID, show)
	text := runCLI(t, env, 0, "deliveries", "list")
	t.Logf("grouphook deliveries list:\n%s", text)
	if !strings.Contains(text, list[0].EventID) || !strings.Contains(text, "STATUS") {
		t.Errorf("deliveries list:\n%s", text)
	}

	// Replay: by id for one, by endpoint for the rest, once the endpoint
	// is back. Each comes with its original id.
	sw.up.Store(true)
	out = runCLI(t, env, 0, "deliveries", "replay", strconv.FormatInt(list[0].ID, 10))
	if !strings.Contains(out, "replayed 1") {
		t.Errorf("replay by id: %s", out)
	}
	out = runCLI(t, env, 0, "deliveries", "replay", "--endpoint", strconv.FormatInt(downID, 10), "--since", "1h")
	if !strings.Contains(out, "replayed 3") {
		t.Errorf("replay --endpoint: %s", out)
	}
	down.waitOK(t, 4, 20*time.Second)
	got := map[string]bool{}
	for _, r := range down.ok() {
		got[r.Ev.ID] = true
	}
	for _, l := range list {
		if !got[l.EventID] {
			t.Errorf("replayed delivery %d did not arrive with its id %s", l.ID, l.EventID)
		}
	}
	eventually(t, 10*time.Second, func() bool {
		return countRows(t, db, `SELECT count(*) FROM grouphook.deliveries WHERE endpoint_id = $1`, downID) == 0
	}, func() string { return "delivered rows to be removed" })

	// The gone endpoint's deliveries wait while it is disabled.
	out = runCLI(t, env, 0, "deliveries", "replay", "--endpoint", strconv.FormatInt(goneID, 10))
	if !strings.Contains(out, "is disabled") {
		t.Errorf("replay for a disabled endpoint does not say it is disabled: %s", out)
	}
}

// runCLI runs the grouphook binary with args and env and returns its
// standard output; the exit code must be wantCode.
func runCLI(t testing.TB, env map[string]string, wantCode int, args ...string) string {
	t.Helper()
	c := startChild(t, env, args...)
	if code := c.wait(t, 30*time.Second); code != wantCode {
		t.Fatalf("grouphook %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, wantCode,
			c.stdout.String(), c.stderr.String())
	}
	return c.stdout.String()
}

// TestQueueCLIBadInput: bad input to grouphook deliveries is one sentence
// and a non-zero exit, and changes nothing in the queue.
func TestQueueCLIBadInput(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, versionedDDL)
	db.migrate(t, nil)
	ep := db.addEndpoint(t, endpoint{URL: "http://127.0.0.1:1/hook", Secret: "s"})
	db.exec(t, `INSERT INTO grouphook.deliveries (event_id, endpoint_id, group_key, event_type, table_name, occurred_at, row_json, key_json, status, head, dead_at)
		VALUES ('evt_1', $1, 'g', 'CREATE', 'public.groups', now(), '{"id":1}', '{"id":1}', 'dead', false, now()),
		       ('evt_2', $1, 'h', 'CREATE', 'public.groups', now(), '{"id":2}', '{"id":2}', 'pending', true, NULL)`, ep)
	dead := db.queryString(t, `SELECT id::text FROM grouphook.deliveries WHERE event_id = 'evt_1'`)
	pending := db.queryString(t, `SELECT id::text FROM grouphook.deliveries WHERE event_id = 'evt_2'`)
	snapshot := func() string {
		return db.queryString(t, `SELECT string_agg(format('%s/%s/%s/%s', id, status, head, retries), ',' ORDER BY id) FROM grouphook.deliveries`)
	}
	before := snapshot()
	env := db.env(nil)
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"deliveries"}, []string{"list, show or replay"}},
		{[]string{"deliveries", "purge"}, []string{`"purge"`}},
		{[]string{"deliveries", "show", "424242"}, []string{"delivery 424242 does not exist"}},
		{[]string{"deliveries", "show", "abc"}, []string{`"abc" is not a delivery id`}},
		{[]string{"deliveries", "show"}, []string{"one delivery id"}},
		{[]string{"deliveries", "list", "--status", "stuck"}, []string{"--status", "pending or dead"}},
		{[]string{"deliveries", "list", "--endpoint", "777"}, []string{"endpoint 777 does not exist"}},
		{[]string{"deliveries", "list", "--bogus"}, []string{"bogus"}},
		{[]string{"deliveries", "replay"}, []string{"--endpoint", "ids"}},
		{[]string{"deliveries", "replay", "--endpoint", "777"}, []string{"endpoint 777 does not exist"}},
		{[]string{"deliveries", "replay", "--endpoint", "x1"}, []string{`"x1" is not an endpoint id`}},
		{[]string{"deliveries", "replay", "--endpoint", strconv.FormatInt(ep, 10), "--since", "last tuesday"}, []string{"--since", "not a time"}},
		{[]string{"deliveries", "replay", "--since", "1h", dead}, []string{"--since goes with --endpoint"}},
		{[]string{"deliveries", "replay", dead, "424242"}, []string{"424242 does not exist", "nothing was replayed"}},
		{[]string{"deliveries", "replay", dead, pending}, []string{pending + " is pending", "nothing was replayed"}},
		{[]string{"deliveries", "replay", "--endpoint", strconv.FormatInt(ep, 10), dead}, []string{"not both"}},
	} {
		c := startChild(t, env, tt.args...)
		code := c.wait(t, 30*time.Second)
		assertOneLineError(t, code, c.stderr.String(), alternativesEach(tt.want)...)
		if after := snapshot(); after != before {
			t.Fatalf("grouphook %s changed the queue: %s -> %s", strings.Join(tt.args, " "), before, after)
		}
	}
	// Configuration errors of the queue stop "grouphook run" with one line.
	for _, tt := range []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{"GROUPHOOK_RETRY_SCHEDULE": "5s,soon"}, []string{"GROUPHOOK_RETRY_SCHEDULE", `"soon"`}},
		{map[string]string{"GROUPHOOK_RETRY_SCHEDULE": "5s,-5m"}, []string{"GROUPHOOK_RETRY_SCHEDULE", "not positive"}},
		{map[string]string{"GROUPHOOK_PARK_AFTER": "-1s"}, []string{"GROUPHOOK_PARK_AFTER", "positive"}},
	} {
		code, stderr := runOnce(t, db.env(tt.env))
		assertOneLineError(t, code, stderr, alternativesEach(tt.want)...)
	}
}

func alternativesEach(ws []string) [][]string {
	out := make([][]string, len(ws))
	for i, w := range ws {
		out[i] = []string{w}
	}
	return out
}

func TestQueueConfig(t *testing.T) {
	cfg, _, err := LoadConfig(context.Background(), envconfig.MapLookuper(map[string]string{"DATABASE_URL": validURL}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ParkAfter != 10*time.Second || cfg.RetrySchedule != "5s,5m,30m,2h,5h,10h,10h" || cfg.DeadRetention != 336*time.Hour ||
		cfg.DisableAfter != 120*time.Hour || cfg.QueueWorkers != 8 || cfg.QueuePollInterval != time.Second {
		t.Errorf("defaults: %+v", cfg)
	}
	for _, tt := range []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{"GROUPHOOK_RETRY_SCHEDULE": "5s,soon"}, []string{"GROUPHOOK_RETRY_SCHEDULE", `entry 2 ("soon") is not a duration`}},
		{map[string]string{"GROUPHOOK_RETRY_SCHEDULE": "5s,-5m"}, []string{"GROUPHOOK_RETRY_SCHEDULE", "not positive"}},
		{map[string]string{"GROUPHOOK_RETRY_SCHEDULE": "5s,,5m"}, []string{"GROUPHOOK_RETRY_SCHEDULE", "entry 2 is empty"}},
		{map[string]string{"GROUPHOOK_RETRY_SCHEDULE": ""}, []string{"GROUPHOOK_RETRY_SCHEDULE"}},
		{map[string]string{"GROUPHOOK_PARK_AFTER": "0s"}, []string{"GROUPHOOK_PARK_AFTER", "positive"}},
		{map[string]string{"GROUPHOOK_PARK_AFTER": "soon"}, []string{"GROUPHOOK_PARK_AFTER"}},
		{map[string]string{"GROUPHOOK_DEAD_RETENTION": "-1h"}, []string{"GROUPHOOK_DEAD_RETENTION", "positive"}},
		{map[string]string{"GROUPHOOK_DISABLE_AFTER": "0s"}, []string{"GROUPHOOK_DISABLE_AFTER", "positive"}},
		{map[string]string{"GROUPHOOK_QUEUE_WORKERS": "0"}, []string{"GROUPHOOK_QUEUE_WORKERS"}},
		{map[string]string{"GROUPHOOK_QUEUE_POLL_INTERVAL": "0s"}, []string{"GROUPHOOK_QUEUE_POLL_INTERVAL"}},
	} {
		env := map[string]string{"DATABASE_URL": validURL}
		maps.Copy(env, tt.env)
		_, _, err := LoadConfig(context.Background(), envconfig.MapLookuper(env), nil)
		if err == nil {
			t.Errorf("%v: no error", tt.env)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q does not contain %q", tt.env, err, w)
			}
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: error spans lines: %q", tt.env, err)
		}
	}
	var environ []string
	for _, v := range []string{"GROUPHOOK_PARK_AFTER", "GROUPHOOK_RETRY_SCHEDULE", "GROUPHOOK_DEAD_RETENTION",
		"GROUPHOOK_DISABLE_AFTER", "GROUPHOOK_QUEUE_WORKERS", "GROUPHOOK_QUEUE_POLL_INTERVAL"} {
		environ = append(environ, v+"=x")
	}
	if u := unknownVariables(environ); len(u) != 0 {
		t.Errorf("queue variables reported as unknown: %v", u)
	}
}

// startWriter commits changes to groups 1..groups from a goroutine until
// stop is called, which returns how many versions each group has.
func startWriter(t *testing.T, db *testDB, groups int, pause time.Duration) (stop func() map[int64]int) {
	t.Helper()
	var (
		mu       sync.Mutex
		versions = map[int64]int{}
		err      error
	)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		ctx := context.Background()
		rnd := mrand.New(mrand.NewPCG(11, 12))
		for {
			select {
			case <-quit:
				return
			default:
			}
			g := int64(rnd.IntN(groups) + 1)
			mu.Lock()
			v, exists := versions[g]
			mu.Unlock()
			var e error
			if !exists {
				_, e = db.Pool.Exec(ctx, "INSERT INTO groups (id, v) VALUES ($1, 0)", g)
			} else {
				_, e = db.Pool.Exec(ctx, "UPDATE groups SET v = $2 WHERE id = $1", g, v)
			}
			if e != nil {
				mu.Lock()
				err = e
				mu.Unlock()
				return
			}
			mu.Lock()
			versions[g] = v + 1
			mu.Unlock()
			time.Sleep(pause)
		}
	}()
	return func() map[int64]int {
		close(quit)
		<-done
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			t.Fatalf("writer: %v", err)
		}
		return maps.Clone(versions)
	}
}

// killAndRestart SIGKILLs c and starts a new daemon with env.
func killAndRestart(t *testing.T, c *child, env map[string]string) *child {
	t.Helper()
	c.signal(t, syscall.SIGKILL)
	if code := c.wait(t, 10*time.Second); code != -1 {
		t.Fatalf("grouphook exited with %d before SIGKILL:\n%s", code, tail(c.stderr.String(), 20000))
	}
	return startChild(t, env, "run")
}

// TestQueueKillWhileParking: the endpoint is down and changes stream in, so
// lanes keep moving to the queue; the daemon is killed with SIGKILL again
// and again meanwhile. Once the endpoint is back, every change arrives, the
// first delivery of each per group in commit order.
func TestQueueKillWhileParking(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, versionedDDL)
	db.migrate(t, nil)
	secret := randomSecret(t, false)
	r := newReceiver(t, "parking", secret)
	sw := &endpointSwitch{}
	r.setRespond(sw.respond)
	db.addEndpoint(t, endpoint{URL: r.URL(), Secret: secret})
	env := db.env(queueEnv(map[string]string{"GROUPHOOK_PARK_AFTER": "300ms", "GROUPHOOK_LOG_LEVEL": "warn"}))

	c := startChild(t, env, "run")
	c.waitStreaming(t, db)
	stop := startWriter(t, db, 40, 5*time.Millisecond)
	krnd := mrand.New(mrand.NewPCG(21, 22))
	kills := 0
	for range 4 {
		// Wait until this daemon is parking, then kill it at a random moment.
		eventually(t, 30*time.Second, func() bool {
			return countRows(t, db, `SELECT count(*) FROM grouphook.deliveries WHERE created_at > now() - interval '300 milliseconds'`) > 0
		}, func() string { return "deliveries being parked; log:\n" + tail(c.stderr.String(), 5000) })
		time.Sleep(time.Duration(krnd.IntN(700)) * time.Millisecond)
		c = killAndRestart(t, c, env)
		kills++
	}
	want := stop()
	c.waitStreaming(t, db)
	total := 0
	for _, n := range want {
		total += n
	}
	queued := countRows(t, db, `SELECT count(*) FROM grouphook.deliveries`)
	t.Logf("%d changes in %d groups, %d kills, %d rows queued", total, len(want), kills, queued)

	sw.up.Store(true)
	eventually(t, 90*time.Second, func() bool { ok, _ := allDelivered(t, r, want); return ok }, func() string {
		_, missing := allDelivered(t, r, want)
		return fmt.Sprintf("every change; %d missing\nlog:\n%s", missing, tail(c.stderr.String(), 10000))
	})
	dups := checkFirstDeliveries(t, r, want)
	t.Logf("%d repeated deliveries", dups)
	eventually(t, 30*time.Second, func() bool { return countRows(t, db, `SELECT count(*) FROM grouphook.deliveries`) == 0 },
		func() string { return "the queue to be empty" })
}

// TestQueueKillWhileDraining: a queue of parked deliveries drains slowly;
// the daemon is killed with SIGKILL twice while its workers hold leases.
// Nothing is lost, and the first delivery of each change comes per group
// in commit order.
func TestQueueKillWhileDraining(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, versionedDDL)
	db.migrate(t, nil)
	secret := randomSecret(t, false)
	r := newReceiver(t, "draining", secret)
	sw := &endpointSwitch{}
	r.setRespond(sw.respond)
	db.addEndpoint(t, endpoint{URL: r.URL(), Secret: secret})
	env := db.env(queueEnv(map[string]string{"GROUPHOOK_DELIVERY_TIMEOUT": "2s", "GROUPHOOK_LOG_LEVEL": "warn"}))

	c := startChild(t, env, "run")
	c.waitStreaming(t, db)
	const groups, versions = 20, 8
	end := writeVersions(t, db, groups, versions)
	db.waitConfirmed(t, end, 30*time.Second)
	if n := countRows(t, db, `SELECT count(*) FROM grouphook.deliveries`); n != groups*versions {
		t.Fatalf("%d rows queued, want %d", n, groups*versions)
	}
	sw.delay.Store(int64(25 * time.Millisecond))
	sw.up.Store(true)
	for i := range 2 {
		target := (i + 1) * groups * versions / 4
		eventually(t, 60*time.Second, func() bool { return len(r.ok()) >= target }, func() string {
			return fmt.Sprintf("%d deliveries before kill %d; log:\n%s", target, i+1, tail(c.stderr.String(), 5000))
		})
		leased := countRows(t, db, `SELECT count(*) FROM grouphook.deliveries WHERE locked_until > now()`)
		c = killAndRestart(t, c, env)
		t.Logf("kill %d with %d rows leased", i+1, leased)
	}
	want := wantVersions(groups, versions)
	eventually(t, 90*time.Second, func() bool { ok, _ := allDelivered(t, r, want); return ok }, func() string {
		_, missing := allDelivered(t, r, want)
		return fmt.Sprintf("every change; %d missing\nlog:\n%s", missing, tail(c.stderr.String(), 10000))
	})
	dups := checkFirstDeliveries(t, r, want)
	t.Logf("%d repeated deliveries (at most those in flight at each kill)", dups)
	eventually(t, 30*time.Second, func() bool { return countRows(t, db, `SELECT count(*) FROM grouphook.deliveries`) == 0 },
		func() string { return "the queue to be empty" })
}

// TestQueueTwoDaemons: two daemons on one database. One streams, the other
// stands by; both drain the queue, and no delivery is ever sent twice at
// the same time.
func TestQueueTwoDaemons(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, versionedDDL)
	db.migrate(t, nil)
	secret := randomSecret(t, true)
	r := newReceiver(t, "two", secret)
	sw := &endpointSwitch{}
	var (
		mu       sync.Mutex
		inFlight = map[string]int{}
		lanes    = map[string]int{}
	)
	r.setRespond(func(d *delivery) int {
		mu.Lock()
		inFlight[d.Ev.ID]++
		lanes[groupKey(d)]++
		if inFlight[d.Ev.ID] > 1 {
			t.Errorf("delivery %s sent twice at the same time", d.Ev.ID)
		}
		if lanes[groupKey(d)] > 1 {
			t.Errorf("two deliveries of group %s at the same time", groupKey(d))
		}
		mu.Unlock()
		defer func() {
			mu.Lock()
			inFlight[d.Ev.ID]--
			lanes[groupKey(d)]--
			mu.Unlock()
		}()
		return sw.respond(d)
	})
	db.addEndpoint(t, endpoint{URL: r.URL(), Secret: secret})
	env := queueEnv(nil)
	a := startDaemon(t, db, env)
	b := startDaemon(t, db, env)
	ready := func(d *runningDaemon) int {
		resp, err := http.Get("http://" + d.HTTPAddr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	eventually(t, 10*time.Second, func() bool { return ready(a)+ready(b) == 200+503 }, func() string {
		return fmt.Sprintf("one daemon streaming and one standing by (readyz %d and %d)", ready(a), ready(b))
	})

	const groups, versions = 30, 6
	end := writeVersions(t, db, groups, versions)
	db.waitConfirmed(t, end, 30*time.Second)
	sw.delay.Store(int64(10 * time.Millisecond))
	sw.up.Store(true)
	want := wantVersions(groups, versions)
	eventually(t, 60*time.Second, func() bool { ok, _ := allDelivered(t, r, want); return ok }, func() string {
		_, missing := allDelivered(t, r, want)
		return fmt.Sprintf("every change; %d missing", missing)
	})
	if dups := checkFirstDeliveries(t, r, want); dups != 0 {
		t.Errorf("%d deliveries repeated without a crash", dups)
	}
	for name, d := range map[string]*runningDaemon{"a": a, "b": b} {
		n := metricSample(d.metrics(t), `grouphook_queue_attempts_total{outcome="success"}`)
		t.Logf("daemon %s delivered %v from the queue", name, n)
		if n <= 0 {
			t.Errorf("daemon %s delivered nothing from the queue", name)
		}
	}
}
