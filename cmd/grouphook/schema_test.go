package main

// ALTER TABLE on the watched table while the daemon runs, and while it is
// stopped: later events follow the new relation.

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// byGroup returns the last 2xx delivery of each event type and group id.
func byGroup(t testing.TB, ds []delivery) map[string]delivery {
	t.Helper()
	out := map[string]delivery{}
	for _, d := range ds {
		out[fmt.Sprintf("%s %d", d.Ev.Event, d.groupInt(t, "id"))] = d
	}
	return out
}

// waitGroup waits for the callback of one event type and group id.
func waitGroup(t testing.TB, r *receiver, event string, id int) delivery {
	t.Helper()
	key := fmt.Sprintf("%s %d", event, id)
	var d delivery
	eventually(t, waitLong, func() bool {
		var ok bool
		d, ok = byGroup(t, r.ok())[key]
		return ok
	}, func() string { return key + " at the receiver:\n" + describe(r.snapshot()) })
	return d
}

// logCount counts the JSON log records at level with msg containing sub
// and, when field is not "", attribute "field" equal to it.
func logCount(log, level, sub, field string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		msg, _ := rec["msg"].(string)
		if rec["level"] == level && strings.Contains(msg, sub) && (field == "" || rec["field"] == field) {
			n++
		}
	}
	return n
}

// TestSchemaChanges: with every column client-facing, ADD COLUMN and DROP
// COLUMN while the daemon runs show in the very next events; then, with the
// daemon stopped, rows are written around more ALTERs, and after the
// restart each of them arrives with the columns its row had when it was
// committed (pgoutput replays the relation of that time). Nothing fails
// and nothing is logged as an error.
func TestSchemaChanges(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, `CREATE TABLE groups (id bigint PRIMARY KEY, name text NOT NULL, description text)`)
	db.migrate(t, nil)
	secret := randomSecret(t, false)
	r := newReceiver(t, "schema", secret)
	db.addEndpoint(t, endpoint{URL: r.URL(), Secret: secret})
	d := startDaemon(t, db, nil)

	psql(t, db.URL, `INSERT INTO groups VALUES (1, 'one', 'first')`)
	assertBody(t, waitGroup(t, r, "CREATE", 1), "CREATE", `{"id":1,"name":"one","description":"first"}`, "")

	psql(t, db.URL, `ALTER TABLE groups ADD COLUMN color text DEFAULT 'red'`)
	psql(t, db.URL, `INSERT INTO groups (id, name) VALUES (2, 'two')`)
	assertBody(t, waitGroup(t, r, "CREATE", 2), "CREATE", `{"id":2,"name":"two","description":null,"color":"red"}`, "")
	psql(t, db.URL, `UPDATE groups SET color = 'blue' WHERE id = 1`)
	assertBody(t, waitGroup(t, r, "UPDATE", 1), "UPDATE", `{"id":1,"name":"one","description":"first","color":"blue"}`, `{"color":"red"}`)

	psql(t, db.URL, `ALTER TABLE groups DROP COLUMN description`)
	psql(t, db.URL, `INSERT INTO groups (id, name) VALUES (3, 'three')`)
	assertBody(t, waitGroup(t, r, "CREATE", 3), "CREATE", `{"id":3,"name":"three","color":"red"}`, "")
	psql(t, db.URL, `DELETE FROM groups WHERE id = 2`)
	assertBody(t, waitGroup(t, r, "DELETE", 2), "DELETE", `{"id":2,"name":"two","color":"red"}`, "")

	// Stopped: rows committed around two more ALTERs.
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	log1 := d.Log.String()
	db.waitSlotInactive(t, waitLong)
	psql(t, db.URL, `INSERT INTO groups (id, name) VALUES (4, 'four')`)
	psql(t, db.URL, `ALTER TABLE groups ADD COLUMN size integer`)
	psql(t, db.URL, `INSERT INTO groups (id, name, size) VALUES (5, 'five', 5)`)
	psql(t, db.URL, `ALTER TABLE groups DROP COLUMN color`)
	psql(t, db.URL, `INSERT INTO groups (id, name, size) VALUES (6, 'six', 6)`)
	psql(t, db.URL, `UPDATE groups SET size = 7 WHERE id = 5`)

	d = startDaemon(t, db, nil)
	assertBody(t, waitGroup(t, r, "CREATE", 4), "CREATE", `{"id":4,"name":"four","color":"red"}`, "")
	assertBody(t, waitGroup(t, r, "CREATE", 5), "CREATE", `{"id":5,"name":"five","color":"red","size":5}`, "")
	assertBody(t, waitGroup(t, r, "CREATE", 6), "CREATE", `{"id":6,"name":"six","size":6}`, "")
	assertBody(t, waitGroup(t, r, "UPDATE", 5), "UPDATE", `{"id":5,"name":"five","size":7}`, `{"size":5}`)

	// And while running again.
	psql(t, db.URL, `ALTER TABLE groups ADD COLUMN tags text[] DEFAULT '{a,b}'`)
	psql(t, db.URL, `INSERT INTO groups (id, name) VALUES (7, 'seven')`)
	assertBody(t, waitGroup(t, r, "CREATE", 7), "CREATE", `{"id":7,"name":"seven","size":null,"tags":["a","b"]}`, "")

	for _, log := range []string{log1, d.Log.String()} {
		if n := logCount(log, "ERROR", "", ""); n != 0 {
			t.Errorf("%d errors logged:\n%s", n, grepLines(log, `"ERROR"`))
		}
	}
	if !db.streaming(t) {
		t.Error("the daemon no longer streams")
	}
}

// TestDroppedConfiguredField: GROUPHOOK_FIELDS lists id, name and
// description. A column added while the daemon runs is not sent (it is not
// listed); the daemon restarts in between; then description is dropped
// while it runs: later events carry id and name, the missing field is
// logged once (although the relation arrives again after later ALTERs),
// and the daemon keeps streaming. A restart with the dropped column still
// listed is refused with one line naming GROUPHOOK_FIELDS (Preflight's
// check for typos), and a restart with the list fixed delivers what was
// committed meanwhile.
func TestDroppedConfiguredField(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, `CREATE TABLE groups (id bigint PRIMARY KEY, name text NOT NULL, description text)`)
	db.migrate(t, nil)
	secret := randomSecret(t, false)
	r := newReceiver(t, "fields", secret)
	db.addEndpoint(t, endpoint{URL: r.URL(), Secret: secret})
	fields := map[string]string{"GROUPHOOK_FIELDS": "id,name,description"}
	d := startDaemon(t, db, fields)

	psql(t, db.URL, `ALTER TABLE groups ADD COLUMN internal_note text`)
	psql(t, db.URL, `INSERT INTO groups VALUES (1, 'one', 'first', 'not for clients')`)
	assertBody(t, waitGroup(t, r, "CREATE", 1), "CREATE", `{"id":1,"name":"one","description":"first"}`, "")

	// Restart in between.
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	db.waitSlotInactive(t, waitLong)
	psql(t, db.URL, `INSERT INTO groups VALUES (2, 'two', 'second', 'secret')`)
	d = startDaemon(t, db, fields)
	assertBody(t, waitGroup(t, r, "CREATE", 2), "CREATE", `{"id":2,"name":"two","description":"second"}`, "")

	psql(t, db.URL, `ALTER TABLE groups DROP COLUMN description`)
	psql(t, db.URL, `INSERT INTO groups (id, name) VALUES (3, 'three')`)
	assertBody(t, waitGroup(t, r, "CREATE", 3), "CREATE", `{"id":3,"name":"three"}`, "")
	psql(t, db.URL, `ALTER TABLE groups ADD COLUMN other_note text`) // the relation comes again
	psql(t, db.URL, `UPDATE groups SET name = 'uno' WHERE id = 1`)
	psql(t, db.URL, `INSERT INTO groups (id, name) VALUES (4, 'four')`)
	assertBody(t, waitGroup(t, r, "UPDATE", 1), "UPDATE", `{"id":1,"name":"uno"}`, `{"name":"one"}`)
	assertBody(t, waitGroup(t, r, "CREATE", 4), "CREATE", `{"id":4,"name":"four"}`, "")
	if n := logCount(d.Log.String(), "WARN", "configured field", "description"); n != 1 {
		t.Errorf("the dropped field was logged %d times, want once:\n%s", n, grepLines(d.Log.String(), "description"))
	}
	if !db.streaming(t) {
		t.Fatal("the daemon stopped streaming after the column was dropped")
	}

	// A restart with the dropped column still listed: refused, naming the fix.
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	db.waitSlotInactive(t, waitLong)
	psql(t, db.URL, `INSERT INTO groups (id, name) VALUES (5, 'five')`)
	code, stderr := runOnce(t, db.env(fields))
	assertOneLineError(t, code, stderr, []string{`"description"`}, []string{"GROUPHOOK_FIELDS"})

	startDaemon(t, db, map[string]string{"GROUPHOOK_FIELDS": "id,name"})
	assertBody(t, waitGroup(t, r, "CREATE", 5), "CREATE", `{"id":5,"name":"five"}`, "")
}
