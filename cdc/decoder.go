package cdc

import (
	"context"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DecoderConfig says which table to decode and what of it clients may see.
type DecoderConfig struct {
	// Schema and Table name the watched table.
	Schema, Table string
	// Fields are the client-facing columns; empty means every column.
	Fields []string
	// TenantColumn names the column that routes events to clients; empty
	// means no tenant routing.
	TenantColumn string
}

// Decoder turns pgoutput messages of one connection into Changes. It caches
// Relation messages (each one an upsert) and looks up, when a relation
// arrives, the primary key and the types it does not know in the catalog.
// It is not safe for concurrent use; the stream loop owns it.
type Decoder struct {
	// TODO(decode): implementation
}

// NewDecoder returns a decoder; catalog is used only when a Relation
// message arrives, never per row.
func NewDecoder(cfg DecoderConfig, catalog *pgxpool.Pool) *Decoder {
	panic("TODO(decode)")
}

// Reset forgets cached relations; call it on every new connection, because
// relation ids are announced again per connection.
func (d *Decoder) Reset() { panic("TODO(decode)") }

// Relation records or replaces a relation.
func (d *Decoder) Relation(ctx context.Context, m *pglogrepl.RelationMessage) error {
	panic("TODO(decode)")
}

// Begin starts a transaction: positions count from 0 again and ids derive
// from m.FinalLSN; CommitTime is taken from it.
func (d *Decoder) Begin(m *pglogrepl.BeginMessage) { panic("TODO(decode)") }

// Change decodes an *InsertMessage, *UpdateMessage or *DeleteMessage. Every
// call advances the position in the transaction, also when ok is false (a
// change to another table, or an update that changed no client-facing
// column). An unknown relation id is an error.
func (d *Decoder) Change(m pglogrepl.Message) (c Change, ok bool, err error) {
	panic("TODO(decode)")
}
