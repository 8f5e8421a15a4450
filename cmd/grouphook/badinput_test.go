package main

// Bad input: "grouphook run" (the real binary) exits non-zero with one
// clear line that names the fix.

import (
	"context"
	"net"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grouphook/grouphook/sql/pgcluster"
)

// runOnce runs "grouphook run" with env until it exits and returns its exit
// code and standard error.
func runOnce(t *testing.T, env map[string]string) (int, string) {
	t.Helper()
	c := startChild(t, env, "run")
	code := c.wait(t, 30*time.Second)
	return code, c.stderr.String()
}

// assertOneLineError checks that grouphook failed with exactly one
// "grouphook: ..." line, last on stderr, that contains, for each group of
// alternatives in want, at least one of them (case-insensitive).
func assertOneLineError(t *testing.T, code int, stderr string, want ...[]string) {
	t.Helper()
	if code == 0 {
		t.Fatalf("exit code 0, want non-zero\nstderr:\n%s", stderr)
	}
	var lines, errLines []string
	for _, l := range strings.Split(stderr, "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		lines = append(lines, l)
		if strings.HasPrefix(l, "grouphook: ") {
			errLines = append(errLines, l)
		}
	}
	if len(errLines) != 1 || len(lines) == 0 || lines[len(lines)-1] != errLines[0] {
		t.Fatalf("want exactly one error line \"grouphook: ...\" at the end of stderr, got:\n%s", stderr)
	}
	msg := strings.ToLower(errLines[0])
	for _, alts := range want {
		found := false
		for _, a := range alts {
			if strings.Contains(msg, strings.ToLower(a)) {
				found = true
			}
		}
		if !found {
			t.Errorf("error line does not mention any of %q:\n%s", alts, errLines[0])
		}
	}
	t.Logf("exit %d: %s", code, errLines[0])
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	const ddl = `CREATE TABLE groups (id bigint PRIMARY KEY, client_id text, name text)`

	t.Run("missing DATABASE_URL", func(t *testing.T) {
		t.Parallel()
		code, stderr := runOnce(t, map[string]string{"GROUPHOOK_HTTP_ADDR": "127.0.0.1:0"})
		assertOneLineError(t, code, stderr, []string{"DATABASE_URL"}, []string{"not set", "missing", "required"})
	})

	t.Run("database unreachable", func(t *testing.T) {
		t.Parallel()
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := l.Addr().String()
		l.Close()
		code, stderr := runOnce(t, map[string]string{
			"DATABASE_URL":        "postgres://grouphook:hunter2secret@" + closed + "/app?sslmode=disable",
			"GROUPHOOK_HTTP_ADDR": "127.0.0.1:0",
		})
		assertOneLineError(t, code, stderr, []string{"cannot reach the database"}, []string{"check that PostgreSQL is running"})
		if strings.Contains(stderr, "hunter2secret") {
			t.Errorf("the password leaked into stderr:\n%s", stderr)
		}
	})

	t.Run("wal_level not logical", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cl, err := pgcluster.Start(ctx, pgcluster.Options{Settings: []string{"wal_level = replica"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Stop() })
		db := newTestDBOn(t, cl, ddl)
		db.migrate(t, nil)
		if wl := db.queryString(t, "SHOW wal_level"); wl != "replica" {
			t.Fatalf("test bug: wal_level is %s", wl)
		}
		code, stderr := runOnce(t, db.env(nil))
		assertOneLineError(t, code, stderr, []string{"wal_level"}, []string{"logical"})
	})

	t.Run("missing table", func(t *testing.T) {
		t.Parallel()
		db := newTestDB(t, ddl)
		db.migrate(t, nil)
		db.exec(t, "DROP TABLE groups")
		code, stderr := runOnce(t, db.env(nil))
		assertOneLineError(t, code, stderr, []string{"groups"}, []string{"does not exist", "not exist", "missing", "not found", "no such"})
	})

	t.Run("not migrated", func(t *testing.T) {
		t.Parallel()
		db := newTestDB(t, ddl)
		code, stderr := runOnce(t, db.env(nil))
		assertOneLineError(t, code, stderr, []string{"grouphook migrate"})
	})

	t.Run("GROUPHOOK_FIELDS names a missing column", func(t *testing.T) {
		t.Parallel()
		db := newTestDB(t, ddl)
		db.migrate(t, nil)
		code, stderr := runOnce(t, db.env(map[string]string{"GROUPHOOK_FIELDS": "id,nosuchcolumn"}))
		assertOneLineError(t, code, stderr, []string{"nosuchcolumn"}, []string{"GROUPHOOK_FIELDS"})
	})

	t.Run("GROUPHOOK_TENANT_COLUMN names a missing column", func(t *testing.T) {
		t.Parallel()
		db := newTestDB(t, ddl)
		db.migrate(t, nil)
		code, stderr := runOnce(t, db.env(map[string]string{"GROUPHOOK_TENANT_COLUMN": "tenant_nosuch"}))
		assertOneLineError(t, code, stderr, []string{"tenant_nosuch"}, []string{"GROUPHOOK_TENANT_COLUMN"})
	})

	t.Run("role without REPLICATION", func(t *testing.T) {
		t.Parallel()
		db := newTestDB(t, ddl)
		db.migrate(t, nil)
		role := "norepl_" + db.Name
		if len(role) > 63 {
			role = role[:63]
		}
		db.exec(t, `CREATE ROLE "`+role+`" LOGIN NOREPLICATION`)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, _ = db.Pool.Exec(ctx, `DROP OWNED BY "`+role+`"`)
			_, _ = db.Pool.Exec(ctx, `DROP ROLE "`+role+`"`)
		})
		db.exec(t, `GRANT USAGE ON SCHEMA grouphook TO "`+role+`"`)
		db.exec(t, `GRANT SELECT ON ALL TABLES IN SCHEMA grouphook TO "`+role+`"`)
		db.exec(t, `GRANT SELECT ON groups TO "`+role+`"`)
		u, err := url.Parse(db.URL)
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.User(role)
		code, stderr := runOnce(t, db.env(map[string]string{"DATABASE_URL": u.String()}))
		assertOneLineError(t, code, stderr, []string{"replication"}, []string{"alter role", "grant", "with replication"})
	})

	t.Run("invalidated slot", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cl, err := pgcluster.Start(ctx, pgcluster.Options{Settings: []string{"max_slot_wal_keep_size = 16MB", "wal_keep_size = 0"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Stop() })
		db := newTestDBOn(t, cl, ddl, `CREATE TABLE filler (x text)`)
		db.migrate(t, nil)
		db.exec(t, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", db.Slot)
		status := ""
		for i := 0; i < 15 && status != "lost"; i++ {
			for range 3 {
				db.exec(t, "INSERT INTO filler SELECT md5(g::text) FROM generate_series(1, 1000) g")
				db.exec(t, "SELECT pg_switch_wal()")
			}
			db.exec(t, "CHECKPOINT")
			status = db.queryString(t, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", db.Slot)
		}
		if status != "lost" {
			t.Fatalf("test bug: slot wal_status is %q, want lost", status)
		}
		code, stderr := runOnce(t, db.env(nil))
		assertOneLineError(t, code, stderr, []string{db.Slot}, []string{"lost", "invalidated"}, []string{"drop"})
	})
}

// TestUnknownVariableWarns: an unknown GROUPHOOK_* variable is a warning
// naming it; the daemon runs anyway.
func TestUnknownVariableWarns(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, `CREATE TABLE groups (id bigint PRIMARY KEY, name text)`)
	db.migrate(t, nil)
	c := startChild(t, db.env(map[string]string{"GROUPHOOK_COLOUR": "blue", "GROUPHOOK_RETRY_MAXIMUM": "1m"}), "run")
	c.waitStreaming(t, db)
	c.signal(t, syscall.SIGTERM)
	if code := c.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0:\n%s", code, c.stderr.String())
	}
	stderr := c.stderr.String()
	for _, name := range []string{"GROUPHOOK_COLOUR", "GROUPHOOK_RETRY_MAXIMUM"} {
		found := false
		for _, l := range strings.Split(stderr, "\n") {
			if strings.Contains(l, name) && strings.Contains(strings.ToLower(l), "warn") {
				found = true
			}
		}
		if !found {
			t.Errorf("no warning names %s:\n%s", name, stderr)
		}
	}
}
