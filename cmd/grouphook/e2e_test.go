package main

// End-to-end tests: plain SQL (and psql) against a real PostgreSQL, the
// daemon in-process, and real HTTP receivers that verify every signature.

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// waitLong bounds every wait for a delivery or a checkpoint; the daemon
// normally takes milliseconds, the bound only keeps a broken run short.
const waitLong = 20 * time.Second

const groupsDDL = `CREATE TABLE groups (
	id           bigint PRIMARY KEY,
	client_id    text,
	name         text NOT NULL,
	description  text,
	member_count integer NOT NULL DEFAULT 0
)`

func randomSecret(t testing.TB, whsec bool) string {
	t.Helper()
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	if whsec {
		return "whsec_" + base64.StdEncoding.EncodeToString(b)
	}
	return "sk_" + hex.EncodeToString(b)
}

// TestHappyPathWithPsql makes changes with the real psql client and checks
// the exact bytes two receivers get: one endpoint with a plain secret, one
// with a whsec_ secret, so both signing paths are verified.
func TestHappyPathWithPsql(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, groupsDDL)
	db.migrate(t, nil)
	plainSecret := `It's a Secret to Everybody`
	whsec := randomSecret(t, true)
	plain := newReceiver(t, "plain", plainSecret)
	svix := newReceiver(t, "svix", whsec)
	db.addEndpoint(t, endpoint{ClientID: "acme", URL: plain.URL(), Secret: plainSecret})
	db.addEndpoint(t, endpoint{URL: svix.URL(), Secret: whsec})
	d := startDaemon(t, db, nil)
	// The walsender holds the slot a moment before the daemon marks itself
	// streaming, so /readyz may need a moment.
	for path, want := range map[string]string{"/healthz": `"status":"ok"`, "/readyz": `"streaming":true`} {
		var last string
		eventually(t, 10*time.Second, func() bool {
			resp, err := http.Get("http://" + d.HTTPAddr + path)
			if err != nil {
				last = err.Error()
				return false
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = fmt.Sprintf("%d %s", resp.StatusCode, b)
			return resp.StatusCode == http.StatusOK && strings.Contains(string(b), want)
		}, func() string { return fmt.Sprintf("GET %s: 200 with %s (last: %s)", path, want, last) })
	}

	type want struct {
		event, group, previous string
	}
	steps := []struct {
		sql  string
		want []want // by position in the transaction
	}{
		{
			`INSERT INTO groups (id, client_id, name, description, member_count) VALUES (1, 'acme', 'Book club', 'We read <books> & "talk" ✓', 3)`,
			[]want{{"CREATE", `{"id":1,"client_id":"acme","name":"Book club","description":"We read <books> & \"talk\" ✓","member_count":3}`, ""}},
		},
		{
			`UPDATE groups SET name = 'Chess club', member_count = 4 WHERE id = 1`,
			[]want{{"UPDATE", `{"id":1,"client_id":"acme","name":"Chess club","description":"We read <books> & \"talk\" ✓","member_count":4}`, `{"name":"Book club","member_count":3}`}},
		},
		{
			`DELETE FROM groups WHERE id = 1`,
			[]want{{"DELETE", `{"id":1,"client_id":"acme","name":"Chess club","description":"We read <books> & \"talk\" ✓","member_count":4}`, ""}},
		},
		{
			// One psql -c string is one transaction: three changes, positions 0..2.
			`INSERT INTO groups (id, client_id, name) VALUES (2, 'acme', 'Two'); INSERT INTO groups (id, client_id, name) VALUES (3, NULL, 'Three'); UPDATE groups SET description = 'second' WHERE id = 2`,
			[]want{
				{"CREATE", `{"id":2,"client_id":"acme","name":"Two","description":null,"member_count":0}`, ""},
				{"CREATE", `{"id":3,"client_id":null,"name":"Three","description":null,"member_count":0}`, ""},
				{"UPDATE", `{"id":2,"client_id":"acme","name":"Two","description":"second","member_count":0}`, `{"description":null}`},
			},
		},
	}
	type window struct {
		before, after pglogrepl.LSN
		start, end    time.Time
	}
	windows := make([]window, len(steps))
	total := 0
	for i, s := range steps {
		w := window{before: db.walInsertLSN(t), start: time.Now()}
		psql(t, db.URL, s.sql)
		w.after, w.end = db.walInsertLSN(t), time.Now()
		windows[i] = w
		total += len(s.want)
	}

	bodies := map[string]map[string]string{} // receiver -> id -> body
	for _, r := range []*receiver{plain, svix} {
		got := r.waitOK(t, total, waitLong)
		time.Sleep(300 * time.Millisecond) // let a wrong extra callback show up
		got = r.ok()
		if len(got) != total {
			t.Fatalf("receiver %s got %d callbacks, want %d:\n%s", r.name, len(got), total, describe(got))
		}
		bodies[r.name] = map[string]string{}
		byGroup := map[string][]string{}
		for _, d := range got {
			lsn, pos := idLSN(t, d.Ev.ID)
			step := -1
			for i, w := range windows {
				if lsn > w.before && lsn <= w.after {
					step = i
				}
			}
			if step < 0 {
				t.Errorf("%s: id %s carries commit LSN %s, outside every statement's WAL range", r.name, d.Ev.ID, lsn)
				continue
			}
			if pos >= len(steps[step].want) {
				t.Errorf("%s: id %s has position %d, but statement %d made %d changes", r.name, d.Ev.ID, pos, step, len(steps[step].want))
				continue
			}
			w := steps[step].want[pos]
			assertBody(t, d, w.event, w.group, w.previous)
			_, at, _ := checkIDAndTime(d)
			if at.Before(windows[step].start.Add(-time.Second)) || at.After(windows[step].end.Add(time.Second)) {
				t.Errorf("%s: occurred_at %s is not the commit time (between %s and %s)", d.Ev.ID, at, windows[step].start, windows[step].end)
			}
			if _, dup := bodies[r.name][d.Ev.ID]; dup {
				t.Errorf("%s: id %s delivered twice without any failure", r.name, d.Ev.ID)
			}
			bodies[r.name][d.Ev.ID] = string(d.Body)
			key := d.groupField(t, "id")
			byGroup[key] = append(byGroup[key], d.Ev.Event)
		}
		if len(bodies[r.name]) != total {
			t.Errorf("%s: %d distinct ids, want %d", r.name, len(bodies[r.name]), total)
		}
		if g := strings.Join(byGroup["1"], ","); g != "CREATE,UPDATE,DELETE" {
			t.Errorf("%s: group 1 events arrived as %s, want CREATE,UPDATE,DELETE", r.name, g)
		}
		if g := strings.Join(byGroup["2"], ","); g != "CREATE,UPDATE" {
			t.Errorf("%s: group 2 events arrived as %s, want CREATE,UPDATE", r.name, g)
		}
	}
	for id, b := range bodies["plain"] {
		if bodies["svix"][id] != b {
			t.Errorf("event %s differs between endpoints:\n plain: %s\n  svix: %s", id, b, bodies["svix"][id])
		}
	}
}

// TestAllTypes inserts one row with every type the issue lists and checks
// the exact "group" JSON, then an update's "previous".
func TestAllTypes(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, `CREATE TABLE groups (
		id    bigint PRIMARY KEY,
		si    smallint,
		i     integer,
		bi    bigint,
		bneg  bigint,
		n     numeric,
		ok    boolean,
		t     text,
		vc    varchar(20),
		j     jsonb,
		jn    json,
		ta    text[],
		ia    integer[],
		ba    bigint[],
		ts    timestamptz,
		d     date,
		u     uuid,
		by    bytea,
		nul   text,
		other inet,
		iv    interval
	)`)
	db.migrate(t, nil)
	secret := randomSecret(t, false)
	r := newReceiver(t, "types", secret)
	db.addEndpoint(t, endpoint{URL: r.URL(), Secret: secret})
	startDaemon(t, db, nil)

	db.exec(t, `INSERT INTO groups VALUES (
		1,
		32767,
		2147483647,
		9223372036854775807,
		-9223372036854775808,
		-1234567890123456789012345678901234567890.000100,
		true,
		E'<b>Tom & "Jerry"</b> \\ café 日本語 🎉\n\ttab',
		'v',
		'{"b": [1, 2.50, {"c": "x  y"}], "a": null, "<&>": "é"}',
		'{ "z" : 1 , "a" : [ true , false ] }',
		ARRAY['a', NULL, 'NULL', 'b "q"', 'c,d', ''],
		'{1,NULL,-3}',
		ARRAY[9223372036854775807],
		'2024-02-29 13:14:15.123456+02',
		'2024-02-29',
		'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
		'\x00ff10fe',
		NULL,
		'192.168.0.1/24',
		'1 day 02:03:04'
	)`)
	const created = `{"id":1,"si":32767,"i":2147483647,"bi":9223372036854775807,"bneg":-9223372036854775808,` +
		`"n":"-1234567890123456789012345678901234567890.000100","ok":true,` +
		`"t":"<b>Tom & \"Jerry\"</b> \\ café 日本語 🎉\n\ttab","vc":"v",` +
		`"j":{"a":null,"b":[1,2.50,{"c":"x  y"}],"<&>":"é"},"jn":{"z":1,"a":[true,false]},` +
		`"ta":["a",null,"NULL","b \"q\"","c,d",""],"ia":[1,null,-3],"ba":[9223372036854775807],` +
		`"ts":"2024-02-29T11:14:15.123456Z","d":"2024-02-29","u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",` +
		`"by":"AP8Q/g==","nul":null,"other":"192.168.0.1/24","iv":"1 day 02:03:04"}`
	got := r.waitOK(t, 1, waitLong)
	assertBody(t, got[0], "CREATE", created, "")

	db.exec(t, `UPDATE groups SET ok = false, ia = '{}', nul = 'now set' WHERE id = 1`)
	got = r.waitOK(t, 2, waitLong)
	updated := strings.Replace(created, `"ok":true`, `"ok":false`, 1)
	updated = strings.Replace(updated, `"ia":[1,null,-3]`, `"ia":[]`, 1)
	updated = strings.Replace(updated, `"nul":null`, `"nul":"now set"`, 1)
	assertBody(t, got[1], "UPDATE", updated, `{"ok":true,"ia":[1,null,-3],"nul":null}`)
}

// TestToast updates another column of a row whose text column is TOASTed
// (stored out of line, so the new tuple carries it as "unchanged").
func TestToast(t *testing.T) {
	t.Parallel()
	const ddl = `CREATE TABLE groups (id bigint PRIMARY KEY, name text NOT NULL, big text, n integer NOT NULL)`
	// 1000 md5 strings: 32 000 hex characters that pglz cannot shrink enough
	// to keep in line, so the value really lives in the TOAST table.
	const insert = `INSERT INTO groups VALUES (1, 'toasty', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 1000) i), 1)`
	assertToasted := func(t *testing.T, db *testDB) string {
		t.Helper()
		big := db.queryString(t, "SELECT big FROM groups WHERE id = 1")
		if len(big) != 32000 {
			t.Fatalf("big has %d characters", len(big))
		}
		toast := db.queryString(t, "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'groups'::regclass")
		if n := db.queryString(t, "SELECT count(*)::text FROM "+toast); n == "0" {
			t.Fatalf("the big value is not in the TOAST table %s", toast)
		}
		return big
	}

	t.Run("replica identity full", func(t *testing.T) {
		t.Parallel()
		db := newTestDB(t, ddl)
		db.migrate(t, nil)
		secret := randomSecret(t, false)
		r := newReceiver(t, "toast", secret)
		db.addEndpoint(t, endpoint{URL: r.URL(), Secret: secret})
		startDaemon(t, db, nil)

		db.exec(t, insert)
		big := assertToasted(t, db)
		bigJSON := `"` + big + `"`
		db.exec(t, `UPDATE groups SET n = 2 WHERE id = 1`)
		db.exec(t, `UPDATE groups SET name = 'renamed' WHERE id = 1`)
		db.exec(t, `DELETE FROM groups WHERE id = 1`)
		got := r.waitOK(t, 4, waitLong)
		assertBody(t, got[0], "CREATE", `{"id":1,"name":"toasty","big":`+bigJSON+`,"n":1}`, "")
		assertBody(t, got[1], "UPDATE", `{"id":1,"name":"toasty","big":`+bigJSON+`,"n":2}`, `{"n":1}`)
		assertBody(t, got[2], "UPDATE", `{"id":1,"name":"renamed","big":`+bigJSON+`,"n":2}`, `{"name":"toasty"}`)
		assertBody(t, got[3], "DELETE", `{"id":1,"name":"renamed","big":`+bigJSON+`,"n":2}`, "")
	})

	// With GROUPHOOK_REPLICA_IDENTITY=keep the table keeps REPLICA IDENTITY
	// DEFAULT: the old value is unknown, so it is left out, never null.
	t.Run("replica identity default", func(t *testing.T) {
		t.Parallel()
		db := newTestDB(t, ddl)
		keep := map[string]string{"GROUPHOOK_REPLICA_IDENTITY": "keep"}
		db.migrate(t, keep)
		if ri := db.queryString(t, "SELECT relreplident::text FROM pg_class WHERE oid = 'groups'::regclass"); ri != "d" {
			t.Fatalf("replica identity %q after migrate with keep, want d", ri)
		}
		secret := randomSecret(t, false)
		r := newReceiver(t, "toast", secret)
		db.addEndpoint(t, endpoint{URL: r.URL(), Secret: secret})
		startDaemon(t, db, keep)

		db.exec(t, insert)
		assertToasted(t, db)
		db.exec(t, `UPDATE groups SET n = 2 WHERE id = 1`)
		got := r.waitOK(t, 2, waitLong)
		if strings.Contains(string(got[1].Body), `"big":null`) {
			t.Fatalf("unchanged TOAST value sent as null: %s", got[1].Body)
		}
		assertBody(t, got[1], "UPDATE", `{"id":1,"name":"toasty","n":2}`, "")
	})
}

// TestFieldFiltering: with GROUPHOOK_FIELDS=id,name nothing else is ever
// sent, and an update of other columns sends nothing at all.
func TestFieldFiltering(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, `CREATE TABLE groups (id bigint PRIMARY KEY, client_id text, name text, secret_notes text, member_count int)`)
	db.migrate(t, nil)
	secret := randomSecret(t, true)
	r := newReceiver(t, "fields", secret)
	db.addEndpoint(t, endpoint{URL: r.URL(), Secret: secret})
	startDaemon(t, db, map[string]string{"GROUPHOOK_FIELDS": "id, name"})

	db.commit(t, `INSERT INTO groups VALUES (1, 'acme', 'Alpha', 'TOPSECRET-1', 5)`)
	db.commit(t, `UPDATE groups SET member_count = 6, secret_notes = 'TOPSECRET-2', client_id = 'globex' WHERE id = 1`)
	db.commit(t, `UPDATE groups SET name = 'Beta', secret_notes = 'TOPSECRET-3' WHERE id = 1`)
	_, end := db.commit(t, `DELETE FROM groups WHERE id = 1`)

	got := r.waitOK(t, 3, waitLong)
	db.waitConfirmed(t, end, waitLong)
	got = r.snapshot()
	if len(got) != 3 {
		t.Fatalf("got %d callbacks, want 3 (the update of hidden columns must send nothing):\n%s", len(got), describe(got))
	}
	assertBody(t, got[0], "CREATE", `{"id":1,"name":"Alpha"}`, "")
	assertBody(t, got[1], "UPDATE", `{"id":1,"name":"Beta"}`, `{"name":"Alpha"}`)
	assertBody(t, got[2], "DELETE", `{"id":1,"name":"Beta"}`, "")
	for _, d := range got {
		for _, hidden := range []string{"TOPSECRET", "acme", "globex", "secret_notes", "member_count", "client_id"} {
			if strings.Contains(string(d.Body), hidden) {
				t.Errorf("callback leaks %q: %s", hidden, d.Body)
			}
		}
	}
}

// TestEndpointOptions: include_data=false sends only the primary key and no
// previous; events='{DELETE}' gets only deletes; a disabled endpoint
// nothing.
func TestEndpointOptions(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, groupsDDL)
	db.migrate(t, nil)
	secrets := map[string]string{}
	recv := map[string]*receiver{}
	for _, name := range []string{"full", "thin", "deletes", "disabled"} {
		secrets[name] = randomSecret(t, name == "thin")
		recv[name] = newReceiver(t, name, secrets[name])
	}
	db.addEndpoint(t, endpoint{URL: recv["full"].URL(), Secret: secrets["full"]})
	db.addEndpoint(t, endpoint{URL: recv["thin"].URL(), Secret: secrets["thin"], Thin: true})
	db.addEndpoint(t, endpoint{URL: recv["deletes"].URL(), Secret: secrets["deletes"], Events: []string{"DELETE"}})
	db.addEndpoint(t, endpoint{URL: recv["disabled"].URL(), Secret: secrets["disabled"], Disabled: true})
	startDaemon(t, db, nil)

	db.commit(t, `INSERT INTO groups (id, client_id, name) VALUES (7, 'acme', 'Seven')`)
	db.commit(t, `UPDATE groups SET name = 'Seven!' WHERE id = 7`)
	_, end := db.commit(t, `DELETE FROM groups WHERE id = 7`)

	full := recv["full"].waitOK(t, 3, waitLong)
	recv["thin"].waitOK(t, 3, waitLong)
	recv["deletes"].waitOK(t, 1, waitLong)
	db.waitConfirmed(t, end, waitLong)

	assertBody(t, full[0], "CREATE", `{"id":7,"client_id":"acme","name":"Seven","description":null,"member_count":0}`, "")
	assertBody(t, full[1], "UPDATE", `{"id":7,"client_id":"acme","name":"Seven!","description":null,"member_count":0}`, `{"name":"Seven"}`)
	assertBody(t, full[2], "DELETE", `{"id":7,"client_id":"acme","name":"Seven!","description":null,"member_count":0}`, "")

	thin := recv["thin"].snapshot()
	if len(thin) != 3 {
		t.Fatalf("thin endpoint got %d callbacks, want 3:\n%s", len(thin), describe(thin))
	}
	for i, ev := range []string{"CREATE", "UPDATE", "DELETE"} {
		assertBody(t, thin[i], ev, `{"id":7}`, "")
		if thin[i].Ev.ID != full[i].Ev.ID || thin[i].Ev.OccurredAt != full[i].Ev.OccurredAt {
			t.Errorf("thin and full callbacks of one change differ in id or time: %s vs %s", thin[i].Body, full[i].Body)
		}
	}
	dels := recv["deletes"].snapshot()
	if len(dels) != 1 {
		t.Fatalf("DELETE-only endpoint got %d callbacks, want 1:\n%s", len(dels), describe(dels))
	}
	assertBody(t, dels[0], "DELETE", `{"id":7,"client_id":"acme","name":"Seven!","description":null,"member_count":0}`, "")
	if dels[0].Ev.ID != full[2].Ev.ID {
		t.Errorf("the delete has id %s at one endpoint and %s at another", dels[0].Ev.ID, full[2].Ev.ID)
	}
	if n := len(recv["disabled"].snapshot()); n != 0 {
		t.Errorf("disabled endpoint got %d callbacks", n)
	}
}

// TestTenantIsolation: with GROUPHOOK_TENANT_COLUMN=client_id, client a
// gets only a's groups, b only b's, and an endpoint with NULL client_id
// every change (also of rows whose client_id is NULL).
func TestTenantIsolation(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, `CREATE TABLE groups (id bigint PRIMARY KEY, client_id text, name text, rev int NOT NULL DEFAULT 0)`)
	db.migrate(t, nil)
	secrets := map[string]string{"a": randomSecret(t, false), "b": randomSecret(t, true), "all": randomSecret(t, false), "b2": randomSecret(t, false)}
	recv := map[string]*receiver{}
	for name, s := range secrets {
		recv[name] = newReceiver(t, name, s)
	}
	db.addEndpoint(t, endpoint{ClientID: "a", URL: recv["a"].URL(), Secret: secrets["a"]})
	db.addEndpoint(t, endpoint{ClientID: "b", URL: recv["b"].URL(), Secret: secrets["b"]})
	db.addEndpoint(t, endpoint{URL: recv["all"].URL(), Secret: secrets["all"]})
	// A second endpoint of client b that only wants deletes.
	db.addEndpoint(t, endpoint{ClientID: "b", URL: recv["b2"].URL(), Secret: secrets["b2"], Events: []string{"DELETE"}})
	startDaemon(t, db, map[string]string{"GROUPHOOK_TENANT_COLUMN": "client_id"})

	const groups = 30
	tenant := func(id int) string {
		switch {
		case id == groups+1:
			return "" // NULL
		case id%2 == 1:
			return "a"
		}
		return "b"
	}
	want := map[string][]string{} // receiver -> "id:EVENT:rev"
	record := func(id int, ev string, rev int) {
		k := fmt.Sprintf("%d:%s:%d", id, ev, rev)
		want["all"] = append(want["all"], k)
		if tn := tenant(id); tn != "" {
			want[tn] = append(want[tn], k)
			if tn == "b" && ev == "DELETE" {
				want["b2"] = append(want["b2"], k)
			}
		}
	}
	rev := map[int]int{}
	// One transaction creates every group, a and b interleaved.
	var stmts []string
	for id := 1; id <= groups+1; id++ {
		client := "NULL"
		if tn := tenant(id); tn != "" {
			client = "'" + tn + "'"
		}
		stmts = append(stmts, fmt.Sprintf("INSERT INTO groups (id, client_id, name) VALUES (%d, %s, 'g%d')", id, client, id))
		record(id, "CREATE", 0)
	}
	db.commit(t, stmts...)
	// Mixed transactions of updates across both tenants.
	rnd := mrand.New(mrand.NewPCG(1, 2))
	for range 20 {
		var stmts []string
		for range 1 + rnd.IntN(4) {
			id := 1 + rnd.IntN(groups+1)
			rev[id]++
			stmts = append(stmts, fmt.Sprintf("UPDATE groups SET rev = %d WHERE id = %d", rev[id], id))
			record(id, "UPDATE", rev[id])
		}
		db.commit(t, stmts...)
	}
	// And deletes of a few of each.
	stmts = nil
	for _, id := range []int{3, 4, groups + 1, 10, 11} {
		stmts = append(stmts, fmt.Sprintf("DELETE FROM groups WHERE id = %d", id))
		record(id, "DELETE", rev[id])
	}
	_, end := db.commit(t, stmts...)

	for name, r := range recv {
		r.waitOK(t, len(want[name]), waitLong)
	}
	db.waitConfirmed(t, end, waitLong)
	for name, r := range recv {
		var got []string
		for _, d := range r.snapshot() {
			id := d.groupInt(t, "id")
			got = append(got, fmt.Sprintf("%d:%s:%d", id, d.Ev.Event, d.groupInt(t, "rev")))
			client := d.groupField(t, "client_id")
			if (name == "a" || name == "b" || name == "b2") && client != `"`+strings.TrimSuffix(name, "2")+`"` {
				t.Errorf("client %s received a group of client %s: %s", name, client, d.Body)
			}
		}
		sort.Strings(got)
		w := slices.Clone(want[name])
		sort.Strings(w)
		if !slices.Equal(got, w) {
			t.Errorf("receiver %s got %d callbacks, want %d\n got: %v\nwant: %v", name, len(got), len(w), got, w)
		}
	}
}

// TestPerGroupOrder: many groups, many updates each, a receiver that is
// slow at random and fails 10% of attempts. For each group the attempts
// come one at a time and in commit order; deliveries run in parallel
// across groups.
func TestPerGroupOrder(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, `CREATE TABLE groups (id bigint PRIMARY KEY, seq int NOT NULL)`)
	db.migrate(t, nil)
	secret := randomSecret(t, true)
	r := newReceiver(t, "order", secret)
	var mu sync.Mutex
	busy := map[string]bool{}
	rnd := mrand.New(mrand.NewPCG(3, 4))
	r.setRespond(func(d *delivery) int {
		g := groupKey(d)
		mu.Lock()
		if busy[g] {
			t.Errorf("two concurrent callbacks for group %s: %s", g, d.Body)
		}
		busy[g] = true
		delay := time.Duration(rnd.IntN(15)) * time.Millisecond
		fail := rnd.IntN(10) == 0
		mu.Unlock()
		time.Sleep(delay)
		mu.Lock()
		busy[g] = false
		mu.Unlock()
		if fail {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	db.addEndpoint(t, endpoint{URL: r.URL(), Secret: secret})
	startDaemon(t, db, nil)

	const groups, rounds = 10, 15
	var stmts []string
	for g := 1; g <= groups; g++ {
		stmts = append(stmts, fmt.Sprintf("INSERT INTO groups VALUES (%d, 0)", g))
	}
	db.commit(t, stmts...)
	var end pglogrepl.LSN
	for round := 1; round <= rounds; round++ {
		for g := 1; g <= groups; g++ {
			_, end = db.commit(t, fmt.Sprintf("UPDATE groups SET seq = %d WHERE id = %d", round, g))
		}
	}
	r.waitOK(t, groups*(rounds+1), 60*time.Second)
	db.waitConfirmed(t, end, waitLong)

	all := map[int64][]int64{}
	ok := map[int64][]int64{}
	idOf := map[string]string{} // group:seq -> event id
	for _, d := range r.snapshot() {
		g, s := d.groupInt(t, "id"), d.groupInt(t, "seq")
		all[g] = append(all[g], s)
		if d.Status == http.StatusOK {
			ok[g] = append(ok[g], s)
		}
		k := fmt.Sprintf("%d:%d", g, s)
		if prev, seen := idOf[k]; seen && prev != d.Ev.ID {
			t.Errorf("retry of group %d seq %d changed its id from %s to %s", g, s, prev, d.Ev.ID)
		}
		idOf[k] = d.Ev.ID
	}
	for g := int64(1); g <= groups; g++ {
		want := make([]int64, rounds+1)
		for i := range want {
			want[i] = int64(i)
		}
		if !slices.Equal(ok[g], want) {
			t.Errorf("group %d: successful callbacks carried seq %v, want %v", g, ok[g], want)
		}
		if !slices.IsSorted(all[g]) {
			t.Errorf("group %d: attempts out of order: %v", g, all[g])
		}
	}
	if p := r.peakInFlight(); p < 2 {
		t.Errorf("at most %d callback in flight at once: deliveries for different groups must run in parallel", p)
	}
}

// TestLiveEndpointChanges: inserting, updating (a new secret), disabling,
// re-enabling and deleting an endpoint row takes effect within 2 seconds,
// without a restart.
func TestLiveEndpointChanges(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, `CREATE TABLE groups (id bigint PRIMARY KEY, name text)`)
	db.migrate(t, nil)
	witnessSecret := randomSecret(t, false)
	witness := newReceiver(t, "witness", witnessSecret)
	db.addEndpoint(t, endpoint{URL: witness.URL(), Secret: witnessSecret})
	oldSecret, newSecret := randomSecret(t, false), randomSecret(t, true)
	live := newReceiver(t, "live", oldSecret, newSecret)
	startDaemon(t, db, nil)

	const effect = 2 * time.Second
	nextID := 0
	// phase makes change, then inserts a group every 100 ms for 2.6 s, and
	// checks that every group committed at least 2 s after the change did
	// (or did not) reach the live endpoint.
	phase := func(name string, change func(), wantDelivered bool, wantSecret int) {
		t.Helper()
		change()
		changed := time.Now()
		type commit struct {
			id int
			at time.Time
		}
		var commits []commit
		var end pglogrepl.LSN
		for time.Since(changed) < effect+600*time.Millisecond {
			nextID++
			_, end = db.commit(t, fmt.Sprintf("INSERT INTO groups VALUES (%d, '%s')", nextID, name))
			commits = append(commits, commit{nextID, time.Now()})
			time.Sleep(100 * time.Millisecond)
		}
		witness.waitOK(t, nextID, waitLong)
		db.waitConfirmed(t, end, waitLong)
		got := map[int64]delivery{}
		for _, d := range live.ok() {
			got[d.groupInt(t, "id")] = d
		}
		checked := 0
		for _, c := range commits {
			if c.at.Sub(changed) < effect {
				continue
			}
			checked++
			d, ok := got[int64(c.id)]
			switch {
			case wantDelivered && !ok:
				t.Errorf("%s: group %d, committed %s after the change, did not reach the endpoint", name, c.id, c.at.Sub(changed).Round(time.Millisecond))
			case !wantDelivered && ok:
				t.Errorf("%s: group %d, committed %s after the change, still reached the endpoint", name, c.id, c.at.Sub(changed).Round(time.Millisecond))
			case ok && d.SecretIdx != wantSecret:
				t.Errorf("%s: group %d signed with secret #%d, want #%d", name, c.id, d.SecretIdx, wantSecret)
			}
		}
		if checked < 3 {
			t.Fatalf("%s: only %d groups committed late enough to check; the machine is too slow", name, checked)
		}
	}

	var id int64
	phase("insert", func() {
		id = db.addEndpoint(t, endpoint{URL: live.URL(), Secret: oldSecret})
	}, true, 0)
	phase("new secret", func() {
		db.exec(t, "UPDATE grouphook.endpoints SET secret_key = $1 WHERE id = $2", newSecret, id)
	}, true, 1)
	phase("disable", func() {
		db.exec(t, "UPDATE grouphook.endpoints SET enabled = false WHERE id = $1", id)
	}, false, 0)
	phase("enable", func() {
		db.exec(t, "UPDATE grouphook.endpoints SET enabled = true WHERE id = $1", id)
	}, true, 1)
	phase("delete", func() {
		db.exec(t, "DELETE FROM grouphook.endpoints WHERE id = $1", id)
	}, false, 0)
}

// TestCheckpoint reads confirmed_flush_lsn from pg_replication_slots.
func TestCheckpoint(t *testing.T) {
	t.Parallel()
	db := newTestDB(t,
		`CREATE TABLE groups (id bigint PRIMARY KEY, name text)`,
		`CREATE TABLE audit (id bigserial PRIMARY KEY, payload text)`)
	db.migrate(t, nil)
	goodSecret, flakySecret := randomSecret(t, false), randomSecret(t, true)
	good := newReceiver(t, "good", goodSecret)
	flaky := newReceiver(t, "flaky", flakySecret)
	db.addEndpoint(t, endpoint{URL: good.URL(), Secret: goodSecret})
	db.addEndpoint(t, endpoint{URL: flaky.URL(), Secret: flakySecret})
	d := startDaemon(t, db, map[string]string{"GROUPHOOK_HEARTBEAT_INTERVAL": "500ms"})

	// Only another table is written: nothing is pending, so the daemon
	// confirms the server's WAL end and Postgres can recycle that WAL.
	t.Run("idle WAL", func(t *testing.T) {
		start := db.confirmedFlush(t)
		for range 20 {
			db.commit(t, `INSERT INTO audit (payload) SELECT md5(i::text) FROM generate_series(1, 50) i`)
		}
		target := db.walInsertLSN(t)
		if target <= start {
			t.Fatalf("test bug: WAL did not move (%s <= %s)", target, start)
		}
		db.waitConfirmed(t, target, 10*time.Second)
		if n := len(good.snapshot()) + len(flaky.snapshot()); n != 0 {
			t.Errorf("writes to another table produced %d callbacks", n)
		}
	})

	// Nothing at all is written in this database, only in another one of
	// the cluster (WAL is cluster-wide): the slot must not keep that WAL
	// either. Keepalive confirmation does it; the heartbeat
	// (GROUPHOOK_HEARTBEAT_INTERVAL) is the fallback, and must be seen.
	t.Run("idle WAL while another database writes", func(t *testing.T) {
		busy := newTestDB(t, `CREATE TABLE busy (id bigserial PRIMARY KEY, payload text)`)
		start := db.confirmedFlush(t)
		for range 20 {
			busy.commit(t, `INSERT INTO busy (payload) SELECT md5(i::text) FROM generate_series(1, 50) i`)
		}
		target := busy.walInsertLSN(t)
		if target <= start {
			t.Fatalf("test bug: WAL did not move (%s <= %s)", target, start)
		}
		db.waitConfirmed(t, target, 10*time.Second)
		waitSeries(t, d.HTTPAddr, "grouphook_replication_heartbeats_total", func(v float64) bool { return v >= 1 })
		if n := len(good.snapshot()) + len(flaky.snapshot()); n != 0 {
			t.Errorf("writes to another database produced %d callbacks", n)
		}
	})

	// One endpoint answers 503 for group 1 only. Later transactions are
	// delivered everywhere, yet the confirmed position must stay at or
	// before the undelivered transaction's commit until it is delivered.
	t.Run("never past an undelivered transaction", func(t *testing.T) {
		var failing sync.Mutex // held while group 1 must fail
		blocked := true
		t.Cleanup(func() { // let the next subtest run even if this one fails
			failing.Lock()
			blocked = false
			failing.Unlock()
		})
		flaky.setRespond(func(d *delivery) int {
			failing.Lock()
			defer failing.Unlock()
			if blocked && groupKey(d) == "1" {
				return http.StatusServiceUnavailable
			}
			return http.StatusOK
		})
		before1, after1 := db.commit(t, `INSERT INTO groups VALUES (1, 'one')`)
		db.commit(t, `INSERT INTO groups VALUES (2, 'two')`)
		db.commit(t, `UPDATE groups SET name = 'two!' WHERE id = 2`)
		_, end := db.commit(t, `INSERT INTO groups VALUES (3, 'three')`)

		good.waitOK(t, 4, waitLong)
		flaky.waitOK(t, 3, waitLong)
		var t1 string
		eventually(t, waitLong, func() bool {
			n := 0
			for _, d := range flaky.snapshot() {
				if d.Status == http.StatusServiceUnavailable {
					n++
					t1 = d.Ev.ID
				}
			}
			return n >= 3
		}, func() string { return "three failed attempts of group 1 at the flaky endpoint" })
		commit1, _ := idLSN(t, t1)
		if commit1 < before1 {
			t.Fatalf("id %s says commit LSN %s, but WAL was at %s before that COMMIT", t1, commit1, before1)
		}
		// Three status intervals pass while group 1 is stuck.
		for deadline := time.Now().Add(3500 * time.Millisecond); time.Now().Before(deadline); {
			if c := db.confirmedFlush(t); c > commit1 || c >= after1 {
				t.Fatalf("confirmed_flush_lsn %s passed the undelivered transaction (commit record at %s per its id; WAL at %s before and %s after its COMMIT)", c, commit1, before1, after1)
			}
			time.Sleep(100 * time.Millisecond)
		}

		failing.Lock()
		blocked = false
		failing.Unlock()
		db.waitConfirmed(t, end, 5*time.Second)
		var okIDs []string
		for _, d := range flaky.ok() {
			if d.groupField(t, "id") == "1" {
				okIDs = append(okIDs, d.Ev.ID)
			}
		}
		if len(okIDs) != 1 || okIDs[0] != t1 {
			t.Errorf("group 1 was finally delivered as %v, want once as %s", okIDs, t1)
		}
	})

	// Deliveries done, then a quiet stretch with only other tables' writes:
	// the position still reaches the WAL end.
	t.Run("idle WAL after deliveries", func(t *testing.T) {
		db.commit(t, `INSERT INTO audit (payload) VALUES ('after')`)
		target := db.walInsertLSN(t)
		db.waitConfirmed(t, target, 10*time.Second)
	})
}

// TestMalformedEndpointURL: endpoint rows with unusable URLs are logged,
// counted and skipped; another endpoint still gets its callbacks and the
// position still advances.
func TestMalformedEndpointURL(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, groupsDDL)
	db.migrate(t, nil)
	secret := randomSecret(t, false)
	r := newReceiver(t, "good", secret)
	bad := []string{"http://[::1", "not a url"}
	var badIDs []int64
	for _, u := range bad {
		badIDs = append(badIDs, db.addEndpoint(t, endpoint{URL: u, Secret: "s"}))
	}
	db.addEndpoint(t, endpoint{URL: r.URL(), Secret: secret})
	d := startDaemon(t, db, nil)

	_, end := db.commit(t, `INSERT INTO groups (id, name) VALUES (1, 'one')`)
	got := r.waitOK(t, 1, waitLong)
	assertBody(t, got[0], "CREATE", `{"id":1,"client_id":null,"name":"one","description":null,"member_count":0}`, "")
	db.waitConfirmed(t, end, waitLong)

	// Each bad row is logged as a warning or error naming its endpoint id.
	for _, id := range badIDs {
		found := false
		for _, line := range strings.Split(d.Log.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) != nil {
				continue
			}
			lvl, _ := rec["level"].(string)
			if (lvl == "WARN" || lvl == "ERROR") && rec["endpoint"] == float64(id) && strings.Contains(strings.ToLower(fmt.Sprint(rec["msg"])), "url") {
				found = true
			}
		}
		if !found {
			t.Errorf("no warning or error in the log names endpoint %d and its url", id)
		}
	}
	m := d.metrics(t)
	for _, id := range badIDs {
		re := regexp.MustCompile(`(?m)^grouphook_endpoint_config_errors_total\{endpoint="` + strconv.FormatInt(id, 10) + `"\} [1-9]`)
		if !re.MatchString(m) {
			t.Errorf("/metrics does not count a config error for endpoint %d:\n%s", id, grepLines(m, "endpoint_config_errors"))
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
