package sql

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// roles.sql is idempotent and grants the daemon's role exactly what the
// daemon needs: no SELECT on the watched table, no CREATE anywhere, no
// access to schema_migrations.
func TestRolesSQL(t *testing.T) {
	ctx := context.Background()
	conn := connect(t, cluster.NewDatabase(t))
	mustExec(t, conn, "CREATE TABLE groups (id bigint PRIMARY KEY, name text)")
	if _, err := Migrate(ctx, conn, defaultOpts); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		mustExec(t, conn, RolesSQL)
	}
	var login, repl, super, createdb, createrole bool
	if err := conn.QueryRow(ctx, `SELECT rolcanlogin, rolreplication, rolsuper, rolcreatedb, rolcreaterole
		FROM pg_roles WHERE rolname = 'grouphook'`).Scan(&login, &repl, &super, &createdb, &createrole); err != nil {
		t.Fatal(err)
	}
	if !login || !repl || super || createdb || createrole {
		t.Errorf("role grouphook: login %v replication %v superuser %v createdb %v createrole %v", login, repl, super, createdb, createrole)
	}
	for _, c := range []struct {
		check string
		want  bool
	}{
		{"has_database_privilege('grouphook', current_database(), 'CONNECT')", true},
		{"has_database_privilege('grouphook', current_database(), 'CREATE')", false},
		{"has_schema_privilege('grouphook', 'grouphook', 'USAGE')", true},
		{"has_schema_privilege('grouphook', 'grouphook', 'CREATE')", false},
		{"has_table_privilege('grouphook', 'grouphook.endpoints', 'SELECT,INSERT,UPDATE,DELETE')", true},
		{"has_table_privilege('grouphook', 'grouphook.endpoints', 'TRUNCATE')", false},
		{"has_table_privilege('grouphook', 'grouphook.deliveries', 'SELECT,INSERT,UPDATE,DELETE')", true},
		{"has_table_privilege('grouphook', 'grouphook.delivery_attempts', 'SELECT,INSERT,UPDATE,DELETE')", true},
		{"has_table_privilege('grouphook', 'grouphook.schema_migrations', 'SELECT')", false},
		{"has_table_privilege('grouphook', 'public.groups', 'SELECT')", false},
		{"has_table_privilege('grouphook', 'public.groups', 'INSERT')", false},
	} {
		var got bool
		if err := conn.QueryRow(ctx, "SELECT "+c.check).Scan(&got); err != nil {
			t.Fatalf("%s: %v", c.check, err)
		}
		if got != c.want {
			t.Errorf("%s = %v, want %v", c.check, got, c.want)
		}
	}

	// As the role: what the daemon runs works, and the watched table is
	// out of reach.
	cfg := conn.Config().Copy()
	cfg.User = "grouphook"
	as, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect as grouphook: %v", err)
	}
	defer as.Close(ctx)
	for _, q := range []string{
		"SELECT pg_logical_emit_message(false, 'grouphook', 'heartbeat')",
		"SELECT count(*) FROM pg_replication_slots",
		"SELECT id, secret_key FROM grouphook.endpoints",
		"SELECT count(*) FROM grouphook.deliveries",
	} {
		if _, err := as.Exec(ctx, q); err != nil {
			t.Errorf("as grouphook: %s: %v", q, err)
		}
	}
	for _, q := range []string{
		"SELECT * FROM public.groups",
		"CREATE TABLE grouphook.x (id int)",
		"SELECT * FROM grouphook.schema_migrations",
	} {
		if _, err := as.Exec(ctx, q); err == nil {
			t.Errorf("as grouphook: %s succeeded, want permission denied", q)
		}
	}
}
