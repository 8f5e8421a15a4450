package sql

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Schema is the schema grouphook owns in the application database.
const Schema = "grouphook"

// migrateLock is the pg_advisory_xact_lock key that serialises concurrent
// migrate runs ("grouphook" in ASCII, truncated to fit an int64).
const migrateLock int64 = 0x67726f7570686f6f

// Options says which table to set up.
type Options struct {
	// Table is the watched table, "schema.table" or "table" (public).
	Table string
	// Publication is created FOR TABLE Table when missing.
	Publication string
	// ReplicaIdentityFull sets REPLICA IDENTITY FULL on Table so updates and
	// deletes carry old values. Off leaves the table's identity as it is.
	ReplicaIdentityFull bool
	// LockTimeout bounds how long ALTER TABLE and CREATE PUBLICATION wait
	// for a lock on the application's table; 0 means 5s.
	LockTimeout time.Duration
}

// Result says what Migrate did.
type Result struct {
	Applied            []string // migration names applied by this run
	PublicationCreated bool
	PublicationAltered bool // table added to an existing publication
	ReplicaIdentitySet bool
}

type migration struct {
	version int
	name    string
	sql     string
}

func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %s: name must start with a number and '_'", e.Name())
		}
		b, err := migrationFiles.ReadFile("migrations/" + e.Name())
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		ms = append(ms, migration{version: v, name: strings.TrimSuffix(e.Name(), ".sql"), sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	return ms, nil
}

// SplitTable splits "schema.table" (or "table", meaning public) into its
// parts. Names are taken literally, as Postgres stores them.
func SplitTable(name string) (schema, table string, err error) {
	schema, table, ok := strings.Cut(name, ".")
	if !ok {
		schema, table = "public", name
	}
	if schema == "" || table == "" || strings.Contains(table, ".") {
		return "", "", fmt.Errorf("table %q: want schema.table, e.g. public.groups", name)
	}
	return schema, table, nil
}

// Migrate brings schema grouphook up to date and sets up the watched table.
// It is idempotent and safe to run from several processes at once.
func Migrate(ctx context.Context, conn *pgx.Conn, opts Options) (Result, error) {
	var res Result
	schema, table, err := SplitTable(opts.Table)
	if err != nil {
		return res, err
	}
	if opts.Publication == "" {
		return res, errors.New("publication name is empty: set GROUPHOOK_PUBLICATION")
	}
	lockTimeout := opts.LockTimeout
	if lockTimeout <= 0 {
		lockTimeout = 5 * time.Second
	}
	ms, err := migrations()
	if err != nil {
		return res, err
	}

	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrateLock); err != nil {
			return fmt.Errorf("take the migration lock: %w", err)
		}
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = "+strconv.FormatInt(lockTimeout.Milliseconds(), 10)); err != nil {
			return fmt.Errorf("set lock_timeout: %w", err)
		}
		var rel *string
		if err := tx.QueryRow(ctx, "SELECT to_regclass($1)::text", pgx.Identifier{schema, table}.Sanitize()).Scan(&rel); err != nil {
			return fmt.Errorf("look up table %s.%s: %w", schema, table, err)
		}
		if rel == nil {
			return fmt.Errorf("table %s.%s does not exist: create it first or set GROUPHOOK_TABLE to the table to watch", schema, table)
		}
		stmts := []string{
			"CREATE SCHEMA IF NOT EXISTS " + pgx.Identifier{Schema}.Sanitize(),
			`CREATE TABLE IF NOT EXISTS grouphook.schema_migrations (
				version    integer PRIMARY KEY,
				name       text NOT NULL,
				applied_at timestamptz NOT NULL DEFAULT now())`,
		}
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("create schema grouphook: %w", err)
			}
		}
		done := map[int]bool{}
		rows, err := tx.Query(ctx, "SELECT version FROM grouphook.schema_migrations")
		if err != nil {
			return fmt.Errorf("read applied migrations: %w", err)
		}
		versions, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			return fmt.Errorf("read applied migrations: %w", err)
		}
		for _, v := range versions {
			done[int(v)] = true
		}
		for _, m := range ms {
			if done[m.version] {
				continue
			}
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return fmt.Errorf("apply migration %s: %w", m.name, err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO grouphook.schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
				return fmt.Errorf("record migration %s: %w", m.name, err)
			}
			res.Applied = append(res.Applied, m.name)
		}

		qualified := pgx.Identifier{schema, table}.Sanitize()
		pub := pgx.Identifier{opts.Publication}.Sanitize()
		var pubExists, hasTable bool
		err = tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1),
			EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)`,
			opts.Publication, schema, table).Scan(&pubExists, &hasTable)
		if err != nil {
			return fmt.Errorf("look up publication %s: %w", opts.Publication, err)
		}
		switch {
		case !pubExists:
			if _, err := tx.Exec(ctx, "CREATE PUBLICATION "+pub+" FOR TABLE "+qualified); err != nil {
				return lockHint(fmt.Errorf("create publication %s for %s.%s: %w", opts.Publication, schema, table, err))
			}
			res.PublicationCreated = true
		case !hasTable:
			if _, err := tx.Exec(ctx, "ALTER PUBLICATION "+pub+" ADD TABLE "+qualified); err != nil {
				return lockHint(fmt.Errorf("add %s.%s to publication %s: %w", schema, table, opts.Publication, err))
			}
			res.PublicationAltered = true
		}

		if opts.ReplicaIdentityFull {
			var ident string
			if err := tx.QueryRow(ctx, "SELECT relreplident::text FROM pg_class WHERE oid = $1::regclass", qualified).Scan(&ident); err != nil {
				return fmt.Errorf("read replica identity of %s.%s: %w", schema, table, err)
			}
			if ident != "f" {
				if _, err := tx.Exec(ctx, "ALTER TABLE "+qualified+" REPLICA IDENTITY FULL"); err != nil {
					return lockHint(fmt.Errorf("set REPLICA IDENTITY FULL on %s.%s: %w", schema, table, err))
				}
				res.ReplicaIdentitySet = true
			}
		}
		return nil
	})
	return res, err
}

// lockHint adds the fix to a lock_timeout failure: the application held a
// lock on its table for longer than we are willing to wait.
func lockHint(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "55P03" {
		return fmt.Errorf("%w (the table was locked by another transaction; run grouphook migrate again when it is quieter)", err)
	}
	return err
}
