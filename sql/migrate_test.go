package sql

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/grouphook/grouphook/sql/pgcluster"
)

var cluster *pgcluster.Cluster

func TestMain(m *testing.M) { os.Exit(pgcluster.RunTests(m, &cluster)) }

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	return conn
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

var defaultOpts = Options{Table: "public.groups", Publication: "grouphook", ReplicaIdentityFull: true}

func TestMigrateIsIdempotentAndSetsUpTheTable(t *testing.T) {
	ctx := context.Background()
	conn := connect(t, cluster.NewDatabase(t))
	mustExec(t, conn, "CREATE TABLE groups (id bigint PRIMARY KEY, name text)")

	res, err := Migrate(ctx, conn, defaultOpts)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Applied) == 0 || !res.PublicationCreated || !res.ReplicaIdentitySet {
		t.Fatalf("first run did too little: %+v", res)
	}
	res, err = Migrate(ctx, conn, defaultOpts)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Applied) != 0 || res.PublicationCreated || res.PublicationAltered || res.ReplicaIdentitySet {
		t.Fatalf("second run changed something: %+v", res)
	}

	var ident string
	if err := conn.QueryRow(ctx, "SELECT relreplident::text FROM pg_class WHERE oid = 'public.groups'::regclass").Scan(&ident); err != nil {
		t.Fatal(err)
	}
	if ident != "f" {
		t.Fatalf("replica identity = %q, want f (full)", ident)
	}
	var inPub bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = 'grouphook' AND tablename = 'groups')").Scan(&inPub); err != nil {
		t.Fatal(err)
	}
	if !inPub {
		t.Fatal("groups is not in publication grouphook")
	}
	var recorded int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM grouphook.schema_migrations").Scan(&recorded); err != nil {
		t.Fatal(err)
	}
	if ms, _ := migrations(); recorded != len(ms) {
		t.Fatalf("recorded %d migrations, have %d", recorded, len(ms))
	}
}

func TestEndpointsConstraints(t *testing.T) {
	ctx := context.Background()
	conn := connect(t, cluster.NewDatabase(t))
	mustExec(t, conn, "CREATE TABLE groups (id bigint PRIMARY KEY)")
	if _, err := Migrate(ctx, conn, defaultOpts); err != nil {
		t.Fatal(err)
	}
	mustExec(t, conn, "INSERT INTO grouphook.endpoints (url, secret_key) VALUES ('http://x.example/', 's')")
	var events []string
	var includeData, enabled bool
	if err := conn.QueryRow(ctx, "SELECT events, include_data, enabled FROM grouphook.endpoints").Scan(&events, &includeData, &enabled); err != nil {
		t.Fatal(err)
	}
	if strings.Join(events, ",") != "CREATE,UPDATE,DELETE" || !includeData || !enabled {
		t.Fatalf("defaults: events=%v include_data=%v enabled=%v", events, includeData, enabled)
	}
	for _, bad := range []string{
		"INSERT INTO grouphook.endpoints (url, secret_key) VALUES ('http://x.example/', '')",
		"INSERT INTO grouphook.endpoints (url, secret_key, events) VALUES ('http://x.example/', 's', '{CREATE,TRUNCATE}')",
		"INSERT INTO grouphook.endpoints (url, secret_key, events) VALUES ('http://x.example/', 's', '{}')",
		"INSERT INTO grouphook.endpoints (secret_key) VALUES ('s')",
	} {
		if _, err := conn.Exec(ctx, bad); err == nil {
			t.Errorf("accepted: %s", bad)
		}
	}
	var before, after time.Time
	if err := conn.QueryRow(ctx, "SELECT updated_at FROM grouphook.endpoints").Scan(&before); err != nil {
		t.Fatal(err)
	}
	mustExec(t, conn, "UPDATE grouphook.endpoints SET enabled = false")
	if err := conn.QueryRow(ctx, "SELECT updated_at FROM grouphook.endpoints").Scan(&after); err != nil {
		t.Fatal(err)
	}
	if !after.After(before) {
		t.Fatalf("updated_at did not move on update: %v then %v", before, after)
	}
}

func TestMigrateKeepsReplicaIdentityWhenAsked(t *testing.T) {
	ctx := context.Background()
	conn := connect(t, cluster.NewDatabase(t))
	mustExec(t, conn, "CREATE TABLE groups (id bigint PRIMARY KEY)")
	opts := defaultOpts
	opts.ReplicaIdentityFull = false
	if _, err := Migrate(ctx, conn, opts); err != nil {
		t.Fatal(err)
	}
	var ident string
	if err := conn.QueryRow(ctx, "SELECT relreplident::text FROM pg_class WHERE oid = 'public.groups'::regclass").Scan(&ident); err != nil {
		t.Fatal(err)
	}
	if ident != "d" {
		t.Fatalf("replica identity = %q, want d (default, untouched)", ident)
	}
}

func TestMigrateAddsTableToExistingPublication(t *testing.T) {
	ctx := context.Background()
	conn := connect(t, cluster.NewDatabase(t))
	mustExec(t, conn, "CREATE TABLE groups (id bigint PRIMARY KEY)")
	mustExec(t, conn, "CREATE TABLE other (id bigint PRIMARY KEY)")
	mustExec(t, conn, "CREATE PUBLICATION grouphook FOR TABLE other")
	res, err := Migrate(ctx, conn, defaultOpts)
	if err != nil {
		t.Fatal(err)
	}
	if !res.PublicationAltered {
		t.Fatalf("want table added to the publication: %+v", res)
	}
}

func TestMigrateErrors(t *testing.T) {
	ctx := context.Background()
	conn := connect(t, cluster.NewDatabase(t))
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"missing table", Options{Table: "public.groups", Publication: "grouphook"}, "table public.groups does not exist"},
		{"bad table name", Options{Table: "a.b.c", Publication: "grouphook"}, "want schema.table"},
		{"no publication", Options{Table: "public.groups"}, "GROUPHOOK_PUBLICATION"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Migrate(ctx, conn, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	var schemas int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname = 'grouphook'").Scan(&schemas); err != nil {
		t.Fatal(err)
	}
	if schemas != 0 {
		t.Fatal("a failed migrate left schema grouphook behind")
	}
}

func TestConcurrentMigrations(t *testing.T) {
	ctx := context.Background()
	url := cluster.NewDatabase(t)
	mustExec(t, connect(t, url), "CREATE TABLE groups (id bigint PRIMARY KEY)")
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(ctx)
			_, err = Migrate(ctx, conn, defaultOpts)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestMigrateWaitsBrieflyForLocks(t *testing.T) {
	ctx := context.Background()
	url := cluster.NewDatabase(t)
	app := connect(t, url)
	mustExec(t, app, "CREATE TABLE groups (id bigint PRIMARY KEY)")
	tx, err := app.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "LOCK TABLE groups IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	opts := defaultOpts
	opts.LockTimeout = 200 * time.Millisecond
	_, err = Migrate(ctx, connect(t, url), opts)
	if err == nil || !strings.Contains(err.Error(), "run grouphook migrate again") {
		t.Fatalf("err = %v, want a lock timeout with advice", err)
	}
}
