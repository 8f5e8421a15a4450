package cdc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Preflight checks everything the stream needs before it starts, in the
// order an operator would fix them, and creates the slot when it is missing
// (only after the publication is confirmed to exist). Each failed check is a
// *PreflightError whose message is one sentence naming the fix; any other
// error means the database could not be asked. Preflight never drops or
// recreates a slot or a publication.
func (s *Stream) Preflight(ctx context.Context) error {
	var level string
	if err := s.pool.QueryRow(ctx, "SELECT current_setting('wal_level')").Scan(&level); err != nil {
		return fmt.Errorf("preflight: read wal_level: %w", err)
	}
	if err := checkWALLevel(level); err != nil {
		return err
	}

	var role string
	var canReplicate bool
	err := s.pool.QueryRow(ctx,
		"SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user").
		Scan(&role, &canReplicate)
	if err != nil {
		return fmt.Errorf("preflight: read role attributes: %w", err)
	}
	if !canReplicate {
		return preflightErr(ErrNoReplicationRole, fmt.Sprintf(
			"role %s may not use logical replication: run ALTER ROLE %s WITH REPLICATION as a superuser, or connect as a role that has it",
			pgx.Identifier{role}.Sanitize(), pgx.Identifier{role}.Sanitize()))
	}

	if err := s.checkTable(ctx); err != nil {
		return err
	}
	if err := s.checkPublication(ctx); err != nil {
		return err
	}

	slot, err := s.readSlot(ctx)
	if err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	if slot == nil {
		if slot, err = s.createSlot(ctx); err != nil {
			return err
		}
	}
	if err := s.checkSlot(slot); err != nil {
		return err
	}
	if slot.WALStatus != nil && *slot.WALStatus == "unreserved" {
		s.log.Warn("replication slot is about to lose WAL (wal_status unreserved): deliver the backlog soon or raise max_slot_wal_keep_size")
	}
	s.tracker.floor(slot.confirmedFlush())
	s.log.Info("preflight passed", "publication", s.cfg.Publication,
		"table", s.table(), "confirmed_flush_lsn", slot.confirmedFlush().String())
	return nil
}

// checkWALLevel is the wal_level check, separate so its message can be
// tested without restarting a server.
func checkWALLevel(level string) error {
	if level == "logical" {
		return nil
	}
	return preflightErr(ErrWALLevel, fmt.Sprintf(
		"wal_level is %q but grouphook needs logical: run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL", level))
}

func (s *Stream) table() string {
	return s.cfg.Decoder.Schema + "." + s.cfg.Decoder.Table
}

func (s *Stream) checkTable(ctx context.Context) error {
	qualified := pgx.Identifier{s.cfg.Decoder.Schema, s.cfg.Decoder.Table}.Sanitize()
	var oid *uint32
	if err := s.pool.QueryRow(ctx, "SELECT to_regclass($1)::oid", qualified).Scan(&oid); err != nil {
		return fmt.Errorf("preflight: look up table %s: %w", s.table(), err)
	}
	if oid == nil {
		return preflightErr(ErrTableMissing, fmt.Sprintf(
			"table %s does not exist: create it, or set GROUPHOOK_TABLE to the table to watch", s.table()))
	}
	rows, err := s.pool.Query(ctx,
		"SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum", *oid)
	if err != nil {
		return fmt.Errorf("preflight: read columns of %s: %w", s.table(), err)
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("preflight: read columns of %s: %w", s.table(), err)
	}
	return checkColumns(s.table(), cols, s.cfg.Decoder.Fields, s.cfg.Decoder.TenantColumn)
}

// checkColumns reports the first configured field or tenant column that is
// not among cols.
func checkColumns(table string, cols, fields []string, tenant string) error {
	for _, f := range fields {
		if !slices.Contains(cols, f) {
			return preflightErr(ErrColumnMissing, fmt.Sprintf(
				"table %s has no column %q, which GROUPHOOK_FIELDS lists: fix GROUPHOOK_FIELDS (the table has %s)",
				table, f, strings.Join(cols, ", ")))
		}
	}
	if tenant != "" && !slices.Contains(cols, tenant) {
		return preflightErr(ErrColumnMissing, fmt.Sprintf(
			"table %s has no column %q, which GROUPHOOK_TENANT_COLUMN names: fix GROUPHOOK_TENANT_COLUMN (the table has %s)",
			table, tenant, strings.Join(cols, ", ")))
	}
	return nil
}

func (s *Stream) checkPublication(ctx context.Context) error {
	var hasTable, ins, upd, del bool
	err := s.pool.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM pg_publication_tables t
		               WHERE t.pubname = p.pubname AND t.schemaname = $2 AND t.tablename = $3),
		       p.pubinsert, p.pubupdate, p.pubdelete
		FROM pg_publication p WHERE p.pubname = $1`,
		s.cfg.Publication, s.cfg.Decoder.Schema, s.cfg.Decoder.Table).Scan(&hasTable, &ins, &upd, &del)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return preflightErr(ErrPublication, fmt.Sprintf(
			"publication %s does not exist: run grouphook migrate", pgx.Identifier{s.cfg.Publication}.Sanitize()))
	case err != nil:
		return fmt.Errorf("preflight: look up publication %s: %w", s.cfg.Publication, err)
	case !hasTable:
		return preflightErr(ErrPublication, fmt.Sprintf(
			"publication %s does not include table %s: run grouphook migrate",
			pgx.Identifier{s.cfg.Publication}.Sanitize(), s.table()))
	}
	if !ins || !upd || !del {
		s.log.Warn("the publication does not publish every insert, update and delete, so some events will never be sent; fix it with ALTER PUBLICATION ... SET (publish = 'insert, update, delete')",
			"publication", s.cfg.Publication, "insert", ins, "update", upd, "delete", del)
	}
	return nil
}

// slotInfo is a row of pg_replication_slots, read as JSON so that columns
// of newer servers (invalidation_reason, conflicting) are optional.
type slotInfo struct {
	SlotName           string  `json:"slot_name"`
	Plugin             *string `json:"plugin"`
	SlotType           string  `json:"slot_type"`
	Database           *string `json:"database"`
	Active             bool    `json:"active"`
	ActivePID          *uint32 `json:"active_pid"`
	WALStatus          *string `json:"wal_status"`
	ConfirmedFlushLSN  *string `json:"confirmed_flush_lsn"`
	InvalidationReason *string `json:"invalidation_reason"` // PostgreSQL 17+
	Conflicting        *bool   `json:"conflicting"`         // PostgreSQL 16+
	sameDatabase       bool
}

func (si *slotInfo) confirmedFlush() pglogrepl.LSN {
	if si.ConfirmedFlushLSN == nil {
		return 0
	}
	lsn, err := pglogrepl.ParseLSN(*si.ConfirmedFlushLSN)
	if err != nil {
		return 0
	}
	return lsn
}

func (si *slotInfo) activePID() uint32 {
	if !si.Active || si.ActivePID == nil {
		return 0
	}
	return *si.ActivePID
}

// readSlot returns the slot's row, or nil when there is no such slot.
func (s *Stream) readSlot(ctx context.Context) (*slotInfo, error) {
	var raw []byte
	var same bool
	err := s.pool.QueryRow(ctx, `
		SELECT to_jsonb(s)::text, s.database IS NOT DISTINCT FROM current_database()
		FROM pg_replication_slots s WHERE s.slot_name = $1`, s.cfg.Slot).Scan(&raw, &same)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read replication slot %s: %w", s.cfg.Slot, err)
	}
	var si slotInfo
	if err := json.Unmarshal(raw, &si); err != nil {
		return nil, fmt.Errorf("read replication slot %s: %w", s.cfg.Slot, err)
	}
	si.sameDatabase = same
	return &si, nil
}

// createSlot creates the permanent slot. Two replicas may race; the loser
// reads the winner's slot.
func (s *Stream) createSlot(ctx context.Context) (*slotInfo, error) {
	s.log.Info("creating replication slot (this waits for running transactions to finish)")
	_, err := s.pool.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", s.cfg.Slot)
	var pgErr *pgconn.PgError
	if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42710") { // duplicate_object
		return nil, fmt.Errorf("preflight: create replication slot %s: %w", s.cfg.Slot, err)
	}
	slot, err := s.readSlot(ctx)
	if err != nil {
		return nil, fmt.Errorf("preflight: %w", err)
	}
	if slot == nil {
		return nil, fmt.Errorf("preflight: replication slot %s vanished right after it was created", s.cfg.Slot)
	}
	return slot, nil
}

// checkSlot reports a slot that exists but cannot be used. A missing slot
// (nil) is ErrSlotMissing; Preflight creates it before calling checkSlot.
func (s *Stream) checkSlot(si *slotInfo) error {
	name := s.cfg.Slot
	drop := fmt.Sprintf("SELECT pg_drop_replication_slot('%s')", strings.ReplaceAll(name, "'", "''"))
	if si == nil {
		return preflightErr(ErrSlotMissing, fmt.Sprintf(
			"replication slot %q no longer exists, so changes since grouphook last confirmed may be lost: start grouphook again to create it, and resynchronise clients", name))
	}
	if si.SlotType != "logical" {
		return preflightErr(ErrSlotMismatch, fmt.Sprintf(
			"replication slot %q is a %s slot, not a logical one: set GROUPHOOK_SLOT to another name, or drop it with %s if nothing uses it",
			name, si.SlotType, drop))
	}
	if si.Plugin == nil || *si.Plugin != "pgoutput" {
		plugin := ""
		if si.Plugin != nil {
			plugin = *si.Plugin
		}
		return preflightErr(ErrSlotMismatch, fmt.Sprintf(
			"replication slot %q uses plugin %q, not pgoutput: set GROUPHOOK_SLOT to another name, or drop it with %s if nothing uses it",
			name, plugin, drop))
	}
	if !si.sameDatabase {
		db := ""
		if si.Database != nil {
			db = *si.Database
		}
		return preflightErr(ErrSlotMismatch, fmt.Sprintf(
			"replication slot %q belongs to database %q, not the one in DATABASE_URL: set GROUPHOOK_SLOT to another name, or fix DATABASE_URL",
			name, db))
	}
	lost := si.WALStatus != nil && *si.WALStatus == "lost"
	reason := "wal_status lost"
	if si.InvalidationReason != nil && *si.InvalidationReason != "" {
		lost, reason = true, "invalidation_reason "+*si.InvalidationReason
	} else if si.Conflicting != nil && *si.Conflicting {
		lost, reason = true, "conflicting"
	}
	if lost {
		return preflightErr(ErrSlotLost, fmt.Sprintf(
			"replication slot %q was invalidated (%s) and the changes after its confirmed position %s are lost: drop it with %s, start grouphook again to create a new slot, and resynchronise clients",
			name, reason, si.confirmedFlush(), drop))
	}
	return nil
}
