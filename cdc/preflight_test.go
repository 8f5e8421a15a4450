package cdc

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
)

func TestPreflightCreatesSlotThenReusesIt(t *testing.T) {
	t.Parallel()
	env := newStEnv(t, true)
	ctx := context.Background()

	s := env.newStream(t, nil)
	if err := s.Preflight(ctx); err != nil {
		t.Fatalf("Preflight: %v", err)
	}
	var plugin, db string
	var confirmed pglogrepl.LSN
	err := env.pool.QueryRow(ctx, `SELECT plugin, database, confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1`,
		env.slot).Scan(&plugin, &db, &confirmed)
	if err != nil {
		t.Fatalf("slot not created: %v", err)
	}
	if plugin != "pgoutput" {
		t.Errorf("slot plugin %q, want pgoutput", plugin)
	}
	if s.Confirmed() != confirmed || confirmed == 0 {
		t.Errorf("Confirmed() = %s, slot confirmed_flush_lsn %s", s.Confirmed(), confirmed)
	}

	// Move the slot on, so that reuse is visible as a kept position.
	env.exec(t, "INSERT INTO other (v) VALUES ('x')")
	env.exec(t, "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())", env.slot)
	var advanced pglogrepl.LSN
	if err := env.pool.QueryRow(ctx, `SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1`, env.slot).Scan(&advanced); err != nil {
		t.Fatal(err)
	}

	s2 := env.newStream(t, nil)
	if err := s2.Preflight(ctx); err != nil {
		t.Fatalf("second Preflight: %v", err)
	}
	var n int
	if err := env.pool.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, env.slot).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("%d slots named %s, want 1", n, env.slot)
	}
	if s2.Confirmed() != advanced {
		t.Errorf("reused slot: Confirmed() = %s, want the slot's %s (was it recreated?)", s2.Confirmed(), advanced)
	}
}

func TestPreflightErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		setup   func(t *testing.T, env *stEnv) // before the stream is built
		cfg     func(c *Config)
		kind    error
		msg     []string // substrings of the message
		mayMake bool     // the slot may exist afterwards (slot checks)
	}{
		{
			name: "table missing",
			cfg:  func(c *Config) { c.Decoder.Table = "groupz" },
			kind: ErrTableMissing,
			msg:  []string{"table public.groupz does not exist", "GROUPHOOK_TABLE"},
		},
		{
			name: "field missing",
			cfg:  func(c *Config) { c.Decoder.Fields = []string{"id", "nmae"} },
			kind: ErrColumnMissing,
			msg:  []string{`no column "nmae"`, "GROUPHOOK_FIELDS", "id, name, client_id"},
		},
		{
			name: "tenant column missing",
			cfg:  func(c *Config) { c.Decoder.TenantColumn = "tenant" },
			kind: ErrColumnMissing,
			msg:  []string{`no column "tenant"`, "GROUPHOOK_TENANT_COLUMN"},
		},
		{
			name: "publication missing",
			cfg:  func(c *Config) { c.Publication = "nopub" },
			kind: ErrPublication,
			msg:  []string{`publication "nopub" does not exist`, "run grouphook migrate"},
		},
		{
			name: "publication without the table",
			setup: func(t *testing.T, env *stEnv) {
				env.exec(t, `CREATE PUBLICATION "odd'pub" FOR TABLE other`)
			},
			cfg:  func(c *Config) { c.Publication = "odd'pub" },
			kind: ErrPublication,
			msg:  []string{"does not include table public.groups", "run grouphook migrate"},
		},
		{
			name: "role without replication",
			setup: func(t *testing.T, env *stEnv) {
				role := env.slot + "_app"
				env.exec(t, fmt.Sprintf(`CREATE ROLE %s LOGIN NOREPLICATION`, role))
				u, err := url.Parse(env.url)
				if err != nil {
					t.Fatal(err)
				}
				u.User = url.User(role)
				env.url = u.String()
			},
			kind: ErrNoReplicationRole,
			msg:  []string{"may not use logical replication", "WITH REPLICATION"},
		},
		{
			name: "slot with another plugin",
			setup: func(t *testing.T, env *stEnv) {
				env.exec(t, "SELECT pg_create_logical_replication_slot($1, 'test_decoding')", env.slot)
			},
			kind:    ErrSlotMismatch,
			msg:     []string{`plugin "test_decoding"`, "GROUPHOOK_SLOT", "pg_drop_replication_slot('"},
			mayMake: true,
		},
		{
			name: "physical slot",
			setup: func(t *testing.T, env *stEnv) {
				env.exec(t, "SELECT pg_create_physical_replication_slot($1)", env.slot)
			},
			kind:    ErrSlotMismatch,
			msg:     []string{"physical slot", "GROUPHOOK_SLOT"},
			mayMake: true,
		},
		{
			name: "slot in another database",
			setup: func(t *testing.T, env *stEnv) {
				other := cluster.NewDatabase(t)
				p, err := pgxpool.New(context.Background(), other)
				if err != nil {
					t.Fatal(err)
				}
				defer p.Close()
				if _, err := p.Exec(context.Background(), "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", env.slot); err != nil {
					t.Fatal(err)
				}
			},
			kind:    ErrSlotMismatch,
			msg:     []string{"belongs to database", "DATABASE_URL"},
			mayMake: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := newStEnv(t, true)
			if tt.setup != nil {
				tt.setup(t, env)
			}
			pool := env.pool
			if env.url != env.origURL {
				var err error
				if pool, err = pgxpool.New(context.Background(), env.url); err != nil {
					t.Fatal(err)
				}
				defer pool.Close()
			}
			cfg := env.config()
			cfg.DatabaseURL = env.url
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			s, err := NewStream(cfg, pool)
			if err != nil {
				t.Fatal(err)
			}
			err = s.Preflight(context.Background())
			var perr *PreflightError
			if !errors.As(err, &perr) {
				t.Fatalf("Preflight: %v (%T), want a *PreflightError", err, err)
			}
			if !errors.Is(err, tt.kind) {
				t.Errorf("error kind %v, want %v", perr.Kind, tt.kind)
			}
			for _, m := range tt.msg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("message %q lacks %q", err, m)
				}
			}
			if strings.Contains(err.Error(), "\n") || strings.Count(err.Error(), ". ") > 0 {
				t.Errorf("message %q is not one sentence", err)
			}
			if !tt.mayMake && env.slotExists(t) {
				t.Errorf("Preflight created the slot although a check failed")
			}
		})
	}
}

func TestPreflightMessages(t *testing.T) {
	if err := checkWALLevel("logical"); err != nil {
		t.Errorf("checkWALLevel(logical) = %v", err)
	}
	err := checkWALLevel("replica")
	if !errors.Is(err, ErrWALLevel) || !strings.Contains(err.Error(), `wal_level is "replica"`) ||
		!strings.Contains(err.Error(), "ALTER SYSTEM SET wal_level = logical") || !strings.Contains(err.Error(), "restart") {
		t.Errorf("checkWALLevel(replica) = %v", err)
	}

	s := &Stream{cfg: Config{Slot: "grouphook"}}
	str := func(v string) *string { return &v }
	yes := true
	ok := slotInfo{SlotType: "logical", Plugin: str("pgoutput"), sameDatabase: true, WALStatus: str("reserved"), ConfirmedFlushLSN: str("0/16B3748")}
	if err := s.checkSlot(&ok); err != nil {
		t.Errorf("checkSlot(healthy) = %v", err)
	}
	for name, si := range map[string]slotInfo{
		"wal_status lost":     {SlotType: "logical", Plugin: str("pgoutput"), sameDatabase: true, WALStatus: str("lost"), ConfirmedFlushLSN: str("0/16B3748")},
		"invalidation_reason": {SlotType: "logical", Plugin: str("pgoutput"), sameDatabase: true, WALStatus: str("lost"), InvalidationReason: str("wal_removed")},
		"conflicting":         {SlotType: "logical", Plugin: str("pgoutput"), sameDatabase: true, WALStatus: str("reserved"), Conflicting: &yes},
	} {
		err := s.checkSlot(&si)
		if !errors.Is(err, ErrSlotLost) {
			t.Errorf("%s: checkSlot = %v, want ErrSlotLost", name, err)
			continue
		}
		for _, m := range []string{`replication slot "grouphook" was invalidated`, "are lost", "SELECT pg_drop_replication_slot('grouphook')"} {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("%s: message %q lacks %q", name, err, m)
			}
		}
	}
	if err := s.checkSlot(nil); !errors.Is(err, ErrSlotMissing) || !strings.Contains(err.Error(), "no longer exists") {
		t.Errorf("checkSlot(nil) = %v, want ErrSlotMissing", err)
	}
}

func TestNewStreamValidates(t *testing.T) {
	pool, err := pgxpool.New(context.Background(), "postgres://localhost:1/x")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	good := Config{DatabaseURL: "postgres://u@localhost/db", Slot: "grouphook", Publication: "grouphook",
		Decoder: DecoderConfig{Table: "groups"}}
	if s, err := NewStream(good, pool); err != nil {
		t.Fatalf("NewStream(good) = %v", err)
	} else {
		if s.cfg.MaxInFlight != 10000 || s.cfg.StatusInterval.Seconds() != 10 || s.cfg.ShutdownTimeout.Seconds() != 10 || s.cfg.Decoder.Schema != "public" {
			t.Errorf("defaults not applied: %+v", s.cfg)
		}
		rp := s.connCfg.RuntimeParams
		for k, v := range map[string]string{"replication": "database", "DateStyle": "ISO", "TimeZone": "UTC", "bytea_output": "hex",
			"extra_float_digits": "3", "IntervalStyle": "postgres", "application_name": "grouphook"} {
			if rp[k] != v {
				t.Errorf("runtime param %s = %q, want %q", k, rp[k], v)
			}
		}
	}
	for name, mod := range map[string]func(*Config){
		"upper-case slot":  func(c *Config) { c.Slot = "GroupHook" },
		"slot with quote":  func(c *Config) { c.Slot = "a'b" },
		"empty slot":       func(c *Config) { c.Slot = "" },
		"64-char slot":     func(c *Config) { c.Slot = strings.Repeat("a", 64) },
		"no publication":   func(c *Config) { c.Publication = "" },
		"no table":         func(c *Config) { c.Decoder.Table = "" },
		"bad url":          func(c *Config) { c.DatabaseURL = "postgres://x:y@localhost:notaport/db" },
		"negative timeout": func(c *Config) { c.ShutdownTimeout = -1 },
	} {
		c := good
		mod(&c)
		if _, err := NewStream(c, pool); err == nil {
			t.Errorf("%s: NewStream accepted it", name)
		}
	}
}
