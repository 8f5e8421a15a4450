package main

// Security end to end: the SSRF guard and GROUPHOOK_ALLOWED_CIDRS,
// GROUPHOOK_REQUIRE_HTTPS and GROUPHOOK_CA_FILE, secret rotation as
// receivers see it, the least-privilege role, and tenant isolation under
// load.

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/sethvargo/go-envconfig"

	"github.com/grouphook/grouphook/deliver"
	gsql "github.com/grouphook/grouphook/sql"
)

// guardOn is the environment with the SSRF guard as in production (the
// tests' base environment turns it off), and failed deliveries parked
// quickly and kept pending, so their last error can be read.
var guardOn = map[string]string{
	"GROUPHOOK_ALLOW_PRIVATE_DESTINATIONS": "false",
	"GROUPHOOK_PARK_AFTER":                 "300ms",
	"GROUPHOOK_RETRY_SCHEDULE":             "1h",
}

// lastErrors returns the last error of each queued delivery of endpoint id.
func (db *testDB) lastErrors(t *testing.T, id int64) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ds, err := deliver.ListDeliveries(ctx, db.Pool, deliver.ListFilter{EndpointID: id})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range ds {
		if d.LastError != "" {
			out = append(out, d.LastError)
		}
	}
	return out
}

// By default a delivery to loopback (by address or by a name that resolves
// to it) or to the metadata address never connects: it fails with the
// reason, is parked and keeps the reason as its last error; the metrics
// count it by endpoint id. GROUPHOOK_ALLOWED_CIDRS opens loopback again.
func TestSSRFGuardEndToEnd(t *testing.T) {
	t.Parallel()
	blocked := func(t *testing.T, extra map[string]string) (*testDB, *runningDaemon, map[string]*receiver, map[string]int64) {
		db := newTestDB(t, groupsDDL)
		db.migrate(t, nil)
		recv := map[string]*receiver{}
		ids := map[string]int64{}
		for _, name := range []string{"ip", "localhost", "ipv6"} {
			secret := randomSecret(t, true)
			recv[name] = newReceiver(t, name, secret)
			u := recv[name].URL()
			switch name {
			case "localhost":
				u = strings.Replace(u, "127.0.0.1", "localhost", 1)
			case "ipv6":
				u = strings.Replace(u, "127.0.0.1", "[::ffff:127.0.0.1]", 1)
			}
			ids[name] = db.addEndpoint(t, endpoint{URL: u + "?token=url-token-must-not-leak", Secret: secret})
		}
		ids["metadata"] = db.addEndpoint(t, endpoint{URL: "http://169.254.169.254/latest/meta-data/", Secret: randomSecret(t, false)})
		ids["private"] = db.addEndpoint(t, endpoint{URL: "http://10.0.0.1:8080/hook", Secret: randomSecret(t, false)})
		env := map[string]string{}
		for k, v := range guardOn {
			env[k] = v
		}
		for k, v := range extra {
			env[k] = v
		}
		return db, startDaemon(t, db, env), recv, ids
	}

	t.Run("blocked", func(t *testing.T) {
		t.Parallel()
		db, d, recv, ids := blocked(t, nil)
		db.exec(t, `INSERT INTO groups (id, name) VALUES (1, 'one')`)
		want := map[string]string{"ip": "loopback", "localhost": "loopback", "ipv6": "loopback", "metadata": "link-local", "private": "private"}
		for name, reason := range want {
			var errs []string
			eventually(t, waitLong, func() bool {
				errs = db.lastErrors(t, ids[name])
				return len(errs) == 1
			}, func() string { return "the delivery to " + name + " to be parked with its reason" })
			if !strings.Contains(errs[0], reason) || !strings.Contains(errs[0], "GROUPHOOK_ALLOWED_CIDRS") {
				t.Errorf("%s: last error %q does not say %q and how to allow it", name, errs[0], reason)
			}
			if strings.Contains(errs[0], "url-token-must-not-leak") {
				t.Errorf("%s: the last error holds the URL", name)
			}
		}
		for name, r := range recv {
			if n := len(r.snapshot()); n != 0 {
				t.Errorf("receiver %s got %d requests through the guard", name, n)
			}
		}
		m := d.metrics(t)
		for name, id := range ids {
			re := regexp.MustCompile(`(?m)^grouphook_deliveries_total\{endpoint="` + strconv.FormatInt(id, 10) + `",outcome="failure"\} [1-9]`)
			if !re.MatchString(m) {
				t.Errorf("no failure counted for endpoint %s (%d):\n%s", name, id, grepLines(m, "deliveries_total"))
			}
		}
		if strings.Contains(d.Log.String(), "url-token-must-not-leak") || strings.Contains(m, "url-token-must-not-leak") {
			t.Error("an endpoint URL is in the log or the metrics")
		}
		if !strings.Contains(d.Log.String(), "loopback") {
			t.Error("the log does not say why deliveries failed")
		}
	})

	t.Run("allowed CIDRs", func(t *testing.T) {
		t.Parallel()
		db, _, recv, ids := blocked(t, map[string]string{"GROUPHOOK_ALLOWED_CIDRS": "127.0.0.0/8, ::1/128"})
		db.exec(t, `INSERT INTO groups (id, name) VALUES (1, 'one')`)
		for _, name := range []string{"ip", "localhost", "ipv6"} {
			recv[name].waitOK(t, 1, waitLong)
		}
		eventually(t, waitLong, func() bool {
			return len(db.lastErrors(t, ids["metadata"])) == 1 && len(db.lastErrors(t, ids["private"])) == 1
		}, func() string { return "the metadata and 10/8 deliveries to stay refused" })
	})
}

// GROUPHOOK_REQUIRE_HTTPS refuses http:// endpoints at attempt time, with
// the reason recorded; https is verified, here against GROUPHOOK_CA_FILE.
func TestRequireHTTPSAndCAFile(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, groupsDDL)
	db.migrate(t, nil)
	plainSecret, tlsSecret := randomSecret(t, false), randomSecret(t, true)
	plain := newReceiver(t, "plain", plainSecret)
	secure := &receiver{t: t, name: "secure", secrets: []string{tlsSecret}}
	secure.srv = httptest.NewTLSServer(secure)
	t.Cleanup(secure.srv.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: secure.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	plainID := db.addEndpoint(t, endpoint{URL: plain.URL(), Secret: plainSecret})
	db.addEndpoint(t, endpoint{URL: secure.URL(), Secret: tlsSecret})
	startDaemon(t, db, map[string]string{
		"GROUPHOOK_REQUIRE_HTTPS":  "true",
		"GROUPHOOK_CA_FILE":        caFile,
		"GROUPHOOK_PARK_AFTER":     "300ms",
		"GROUPHOOK_RETRY_SCHEDULE": "1h",
	})
	db.exec(t, `INSERT INTO groups (id, name) VALUES (1, 'one')`)
	got := secure.waitOK(t, 1, waitLong)
	assertBody(t, got[0], "CREATE", `{"id":1,"client_id":null,"name":"one","description":null,"member_count":0}`, "")
	var errs []string
	eventually(t, waitLong, func() bool { errs = db.lastErrors(t, plainID); return len(errs) == 1 },
		func() string { return "the http delivery to be refused and parked" })
	if !strings.Contains(errs[0], "GROUPHOOK_REQUIRE_HTTPS") {
		t.Errorf("last error %q does not name GROUPHOOK_REQUIRE_HTTPS", errs[0])
	}
	if n := len(plain.snapshot()); n != 0 {
		t.Errorf("the http receiver got %d requests", n)
	}

	// A CA file that is not one is refused at start.
	bad := filepath.Join(t.TempDir(), "bad.pem")
	_ = os.WriteFile(bad, []byte("not a certificate"), 0o600)
	code, stderr := runOnce(t, db.env(map[string]string{"GROUPHOOK_CA_FILE": bad}))
	assertOneLineError(t, code, stderr, []string{"GROUPHOOK_CA_FILE"}, []string{"PEM"})
}

// standardWebhookVerifies is a receiver that checks only webhook-signature
// with one secret, as a Standard Webhooks library does.
func standardWebhookVerifies(secret string, h http.Header, body []byte) bool {
	key := []byte(secret)
	if rest, ok := strings.CutPrefix(secret, "whsec_"); ok {
		key, _ = base64.StdEncoding.DecodeString(rest)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(h.Get("webhook-id") + "." + h.Get("webhook-timestamp") + "."))
	mac.Write(body)
	want := mac.Sum(nil)
	for _, s := range strings.Fields(h.Get("webhook-signature")) {
		if b64, ok := strings.CutPrefix(s, "v1,"); ok {
			if got, err := base64.StdEncoding.DecodeString(b64); err == nil && hmac.Equal(got, want) {
				return true
			}
		}
	}
	return false
}

func hashedKeyOf(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return hex.EncodeToString(mac.Sum(nil))
}

// After "rotate-secret", a receiver that verifies only with the old secret
// and one that verifies only with the new both accept every callback until
// the overlap ends; then only the new one does. x-hashed-key uses the new
// secret from the rotation on. No callback is missed.
func TestSecretRotationEndToEnd(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, groupsDDL)
	db.migrate(t, nil)
	oldSecret := randomSecret(t, false)
	r := newReceiver(t, "rot", oldSecret)
	id := db.addEndpoint(t, endpoint{URL: r.URL(), Secret: oldSecret})
	d := startDaemon(t, db, nil)
	cfg := db.config(t, nil)

	row := 0
	insert := func() {
		row++
		db.exec(t, `INSERT INTO groups (id, name) VALUES ($1, 'g')`, row)
	}
	insert()
	r.waitOK(t, 1, waitLong)

	const overlap = 8 * time.Second
	out := mustCLI(t, cfg, "rotate-secret", strconv.FormatInt(id, 10), "--overlap", overlap.String())
	m := printedSecret.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("rotate-secret printed:\n%s", out)
	}
	newSecret := m[1]
	r.setSecrets(newSecret, oldSecret) // the helper's own check: whichever verifies both headers
	expires, err := time.Parse(time.RFC3339Nano, db.queryString(t,
		`SELECT to_char(previous_secret_expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') FROM grouphook.endpoints WHERE id = $1`, id))
	if err != nil {
		t.Fatal(err)
	}

	sigs := func(d delivery) int { return len(strings.Fields(d.Header.Get("webhook-signature"))) }
	// During the overlap: keep changing rows until a callback carries two
	// signatures.
	eventually(t, waitLong, func() bool {
		for _, d := range r.ok() {
			if sigs(d) == 2 {
				return true
			}
		}
		insert()
		time.Sleep(200 * time.Millisecond)
		return false
	}, func() string { return "a callback signed with both secrets" })
	// After it: until a callback carries one signature again.
	eventually(t, waitLong+overlap, func() bool {
		seenTwo := false
		for _, d := range r.ok() {
			seenTwo = seenTwo || sigs(d) == 2
			if seenTwo && sigs(d) == 1 {
				return true
			}
		}
		insert()
		time.Sleep(300 * time.Millisecond)
		return false
	}, func() string { return "a callback signed with the new secret only" })
	r.waitOK(t, row, waitLong)
	db.waitConfirmed(t, db.walInsertLSN(t), waitLong)

	var during, after int
	seenTwo := false
	for _, d := range r.snapshot() {
		oldOK := standardWebhookVerifies(oldSecret, d.Header, d.Body)
		newOK := standardWebhookVerifies(newSecret, d.Header, d.Body)
		hashedNew := d.Header.Get("x-hashed-key") == hashedKeyOf(newSecret, d.Body)
		switch n := sigs(d); {
		case n == 2:
			seenTwo = true
			during++
			if !oldOK || !newOK || !hashedNew {
				t.Errorf("during the overlap: old-secret receiver %v, new-secret receiver %v, x-hashed-key with the new secret %v: %s", oldOK, newOK, hashedNew, d.Ev.ID)
			}
			if d.At.After(expires.Add(2 * time.Second)) {
				t.Errorf("a callback at %s, after the overlap ended at %s, still carries the old signature", d.At.Format(time.RFC3339Nano), expires)
			}
		case seenTwo:
			after++
			if oldOK || !newOK || !hashedNew {
				t.Errorf("after the overlap: old-secret receiver %v (want false), new-secret receiver %v, x-hashed-key new %v", oldOK, newOK, hashedNew)
			}
		case !oldOK && !newOK:
			t.Errorf("a callback before the switch verifies with neither secret: %s", d.Ev.ID)
		}
		if d.Status != http.StatusOK {
			t.Errorf("callback %s was answered %d", d.Ev.ID, d.Status)
		}
	}
	if during == 0 || after == 0 {
		t.Errorf("%d callbacks during the overlap and %d after, want some of each", during, after)
	}
	// Every row arrived once or more: none was missed over the switch.
	ids := map[int64]bool{}
	for _, d := range r.ok() {
		ids[d.groupInt(t, "id")] = true
	}
	if len(ids) != row {
		t.Errorf("%d of %d rows arrived", len(ids), row)
	}
	if log := d.Log.String(); strings.Contains(log, oldSecret) || strings.Contains(log, newSecret) {
		t.Error("a secret is in the daemon's log")
	}
}

// roleURL is db's URL for another user.
func roleURL(t *testing.T, dbURL, user string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(user)
	return u.String()
}

// migrate runs as the superuser (the table's owner); sql/roles.sql, run
// with psql, creates the role "grouphook"; the daemon, the CLI and the
// admin API run as that role, deliver in memory and through the durable
// queue, and cannot read the watched table.
func TestLeastPrivilegeRole(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, groupsDDL)
	db.migrate(t, nil)
	// As an administrator would: psql -f sql/roles.sql.
	rolesFile := filepath.Join(t.TempDir(), "roles.sql")
	if err := os.WriteFile(rolesFile, []byte(gsql.RolesSQL), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db.URL, "-f", rolesFile).CombinedOutput(); err != nil {
		t.Fatalf("psql -f roles.sql: %v\n%s", err, out)
	}
	asRole := roleURL(t, db.URL, "grouphook")

	// The CLI as the role.
	recv := newReceiver(t, "role")
	cfg := db.config(t, map[string]string{"DATABASE_URL": asRole})
	out := mustCLI(t, cfg, "add", "--url", recv.URL())
	secret := printedSecret.FindStringSubmatch(out)[1]
	recv.setSecrets(secret)

	// The receiver fails for a second after the first request, longer
	// than GROUPHOOK_PARK_AFTER, so deliveries go through the durable
	// queue too.
	var (
		mu    sync.Mutex
		first time.Time
	)
	recv.setRespond(func(*delivery) int {
		mu.Lock()
		defer mu.Unlock()
		if first.IsZero() {
			first = time.Now()
		}
		if time.Since(first) < time.Second {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	d := startDaemon(t, db, map[string]string{
		"DATABASE_URL":                  asRole,
		"GROUPHOOK_ADMIN_TOKEN":         testAdminToken,
		"GROUPHOOK_PARK_AFTER":          "200ms",
		"GROUPHOOK_RETRY_SCHEDULE":      "200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms",
		"GROUPHOOK_QUEUE_POLL_INTERVAL": "100ms",
	})
	if owner := db.queryString(t, `SELECT a.usename::text FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid
		WHERE s.slot_name = $1`, db.Slot); owner != "grouphook" {
		t.Errorf("the slot is streamed by %q, want grouphook", owner)
	}

	// The admin API as the role.
	api := &adminClient{t: t, base: "http://" + d.HTTPAddr, token: testAdminToken, doc: loadOpenAPI(t)}
	second := newReceiver(t, "role2")
	a := api.expect(http.StatusCreated, "", http.MethodPost, "/v1/endpoints", nil, "", map[string]any{"url": second.URL()})
	second.setSecrets(a.JSON["secret"].(string))
	time.Sleep(2 * time.Second) // GROUPHOOK_ENDPOINT_REFRESH is 1s

	const rows = 5
	for i := 1; i <= rows; i++ {
		db.exec(t, `INSERT INTO groups (id, name) VALUES ($1, 'g')`, i)
	}
	_, end := db.commit(t, `UPDATE groups SET name = 'h' WHERE id = 1`)
	recv.waitOK(t, rows+1, waitLong)
	second.waitOK(t, rows+1, waitLong)
	db.waitConfirmed(t, end, waitLong)
	m := d.metrics(t)
	if !regexp.MustCompile(`(?m)^grouphook_deliveries_total\{endpoint="\d+",outcome="parked"\} [1-9]`).MatchString(m) {
		t.Errorf("nothing went through the durable queue:\n%s", grepLines(m, "deliveries_total"))
	}

	// The role cannot read the watched table or change the schema.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, asRole)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, q := range []string{"SELECT * FROM groups", "CREATE TABLE grouphook.x (id int)", "ALTER TABLE groups REPLICA IDENTITY DEFAULT"} {
		_, err := conn.Exec(ctx, q)
		if err == nil || !strings.Contains(err.Error(), "permission denied") && !strings.Contains(err.Error(), "must be owner") {
			t.Errorf("as grouphook, %s: %v, want permission denied", q, err)
		}
	}
}

// Many clients, each with an endpoint (some with two, one endpoint for
// every client), concurrent writers whose transactions interleave rows of
// different clients, and groups that move between clients: no callback
// ever reaches an endpoint of a client other than the group's, and every
// change reaches every endpoint it should.
func TestTenantIsolationUnderLoad(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, `CREATE TABLE groups (id bigint PRIMARY KEY, client_id text, name text, rev int NOT NULL DEFAULT 0)`)
	db.migrate(t, nil)
	const (
		clients = 24
		writers = 6
		perW    = 40 // transactions per writer
		groups  = 240
	)
	client := func(i int) string { return fmt.Sprintf("c%02d", i) }
	type sink struct {
		r      *receiver
		client string // "" for every client
	}
	var sinks []sink
	for i := range clients {
		s := randomSecret(t, i%2 == 0)
		r := newReceiver(t, client(i), s)
		db.addEndpoint(t, endpoint{ClientID: client(i), URL: r.URL(), Secret: s})
		sinks = append(sinks, sink{r, client(i)})
		if i%8 == 0 { // a second endpoint of this client
			s2 := randomSecret(t, false)
			r2 := newReceiver(t, client(i)+"b", s2)
			db.addEndpoint(t, endpoint{ClientID: client(i), URL: r2.URL(), Secret: s2})
			sinks = append(sinks, sink{r2, client(i)})
		}
	}
	allSecret := randomSecret(t, true)
	all := newReceiver(t, "all", allSecret)
	db.addEndpoint(t, endpoint{URL: all.URL(), Secret: allSecret})
	sinks = append(sinks, sink{all, ""})
	startDaemon(t, db, map[string]string{"GROUPHOOK_TENANT_COLUMN": "client_id"})

	// expected[client] = "id:EVENT:rev:client" of every change routed to it.
	var (
		mu       sync.Mutex
		expected = map[string][]string{}
	)
	record := func(id int, ev string, rev int, owner string) {
		k := fmt.Sprintf("%d:%s:%d:%s", id, ev, rev, owner)
		mu.Lock()
		expected[owner] = append(expected[owner], k)
		expected[""] = append(expected[""], k)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			rnd := mrand.New(mrand.NewPCG(uint64(w), 7))
			owner := map[int]string{}
			rev := map[int]int{}
			var mine []int
			for id := w + 1; id <= groups; id += writers {
				mine = append(mine, id)
			}
			for range perW {
				var stmts []string
				for range 1 + rnd.IntN(5) {
					id := mine[rnd.IntN(len(mine))]
					c, exists := owner[id]
					switch {
					case !exists:
						c = client(rnd.IntN(clients))
						owner[id] = c
						stmts = append(stmts, fmt.Sprintf("INSERT INTO groups (id, client_id, name) VALUES (%d, '%s', 'g')", id, c))
						record(id, "CREATE", 0, c)
					case rnd.IntN(10) == 0: // move to another client
						c = client(rnd.IntN(clients))
						owner[id] = c
						rev[id]++
						stmts = append(stmts, fmt.Sprintf("UPDATE groups SET client_id = '%s', rev = %d WHERE id = %d", c, rev[id], id))
						record(id, "UPDATE", rev[id], c)
					case rnd.IntN(12) == 0:
						stmts = append(stmts, fmt.Sprintf("DELETE FROM groups WHERE id = %d", id))
						record(id, "DELETE", rev[id], c)
						delete(owner, id)
						delete(rev, id)
					default:
						rev[id]++
						stmts = append(stmts, fmt.Sprintf("UPDATE groups SET rev = %d WHERE id = %d", rev[id], id))
						record(id, "UPDATE", rev[id], c)
					}
				}
				db.commit(t, stmts...)
			}
		})
	}
	wg.Wait()
	end := db.walInsertLSN(t)

	for _, s := range sinks {
		s.r.waitOK(t, len(expected[s.client]), waitLong*3)
	}
	db.waitConfirmed(t, end, waitLong*3)
	total := 0
	for _, s := range sinks {
		want := map[string]int{}
		for _, k := range expected[s.client] {
			want[k]++
		}
		got := map[string]int{}
		for _, d := range s.r.snapshot() {
			owner := strings.Trim(d.groupField(t, "client_id"), `"`)
			if s.client != "" && owner != s.client {
				t.Errorf("endpoint of client %s received a group of client %s: %s", s.client, owner, d.Body)
			}
			got[fmt.Sprintf("%d:%s:%d:%s", d.groupInt(t, "id"), d.Ev.Event, d.groupInt(t, "rev"), owner)]++
		}
		for k, n := range want {
			if got[k] < n {
				t.Errorf("endpoint %s (client %q) got %s %d times, want %d", s.r.name, s.client, k, got[k], n)
			}
		}
		for k := range got {
			if want[k] == 0 {
				t.Errorf("endpoint %s (client %q) got %s, which is not its client's", s.r.name, s.client, k)
			}
		}
		total += len(s.r.snapshot())
	}
	t.Logf("%d changes, %d callbacks to %d endpoints of %d clients", len(expected[""]), total, len(sinks), clients)
}

// The security settings are checked once, at start, with messages that
// name the variable and never repeat the admin token.
func TestSecurityConfig(t *testing.T) {
	const short = "tooShortToken123"
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "x.pem")
	_ = os.WriteFile(notPEM, []byte("hello"), 0o600)
	for _, c := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"short token", map[string]string{"GROUPHOOK_ADMIN_TOKEN": short}, []string{"GROUPHOOK_ADMIN_TOKEN", "at least 32"}},
		{"token with a space", map[string]string{"GROUPHOOK_ADMIN_TOKEN": strings.Repeat("a", 20) + " " + strings.Repeat("b", 20)}, []string{"GROUPHOOK_ADMIN_TOKEN", "space"}},
		{"negative overlap", map[string]string{"GROUPHOOK_ROTATION_OVERLAP": "-1h"}, []string{"GROUPHOOK_ROTATION_OVERLAP", "negative"}},
		{"bad overlap", map[string]string{"GROUPHOOK_ROTATION_OVERLAP": "a day"}, []string{"GROUPHOOK_ROTATION_OVERLAP"}},
		{"bad CIDR", map[string]string{"GROUPHOOK_ALLOWED_CIDRS": "10.0.0.0/8,10.1.0.0/99"}, []string{"GROUPHOOK_ALLOWED_CIDRS", "entry 2"}},
		{"empty CIDR", map[string]string{"GROUPHOOK_ALLOWED_CIDRS": "10.0.0.0/8,,fd00::/8"}, []string{"GROUPHOOK_ALLOWED_CIDRS", "empty"}},
		{"bad bool", map[string]string{"GROUPHOOK_ALLOW_PRIVATE_DESTINATIONS": "maybe"}, []string{"GROUPHOOK_ALLOW_PRIVATE_DESTINATIONS"}},
		{"missing CA file", map[string]string{"GROUPHOOK_CA_FILE": filepath.Join(dir, "nope.pem")}, []string{"GROUPHOOK_CA_FILE", "cannot be read"}},
		{"CA file without PEM", map[string]string{"GROUPHOOK_CA_FILE": notPEM}, []string{"GROUPHOOK_CA_FILE", "PEM"}},
	} {
		env := map[string]string{"DATABASE_URL": "postgres://u@localhost/db"}
		for k, v := range c.env {
			env[k] = v
		}
		_, _, err := LoadConfig(context.Background(), envconfig.MapLookuper(env), nil)
		if err == nil {
			t.Errorf("%s: LoadConfig succeeded", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not mention %q", c.name, err, w)
			}
		}
		if strings.Contains(err.Error(), short) || strings.Contains(err.Error(), strings.Repeat("a", 20)) {
			t.Errorf("%s: the error repeats the token: %q", c.name, err)
		}
	}
	cfg, unknown, err := LoadConfig(context.Background(), envconfig.MapLookuper(map[string]string{
		"DATABASE_URL": "postgres://u@localhost/db", "GROUPHOOK_ALLOWED_CIDRS": " 10.0.0.0/8 , 192.168.1.7 ",
		"GROUPHOOK_ADMIN_TOKEN": testAdminToken,
	}), []string{"GROUPHOOK_ADMIN_TOKEN=x", "GROUPHOOK_ROTATION_OVERLAP=1h", "GROUPHOOK_ALLOW_PRIVATE_DESTINATIONS=true",
		"GROUPHOOK_ALLOWED_CIDRS=x", "GROUPHOOK_REQUIRE_HTTPS=true", "GROUPHOOK_CA_FILE=x"})
	if err != nil || len(unknown) != 0 {
		t.Fatalf("LoadConfig: %v, unknown %v", err, unknown)
	}
	if cfg.RotationOverlap != 24*time.Hour || cfg.AllowPrivateDestinations || cfg.RequireHTTPS || cfg.CAFile != "" {
		t.Errorf("defaults: %+v", cfg)
	}
	prefixes, err := cfg.allowedPrefixes()
	if err != nil || fmt.Sprint(prefixes) != "[10.0.0.0/8 192.168.1.7/32]" {
		t.Errorf("allowed prefixes %v, %v", prefixes, err)
	}
}
