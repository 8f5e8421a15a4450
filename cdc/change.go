package cdc

import (
	"time"

	"github.com/jackc/pglogrepl"
)

// Op is the kind of row change.
type Op uint8

const (
	OpInsert Op = iota + 1
	OpUpdate
	OpDelete
)

// String returns the event name clients see: CREATE, UPDATE or DELETE.
func (o Op) String() string {
	switch o {
	case OpInsert:
		return "CREATE"
	case OpUpdate:
		return "UPDATE"
	case OpDelete:
		return "DELETE"
	}
	return "UNKNOWN"
}

// Change is one decoded row change of the watched table, ready to become an
// event. It carries only client-facing columns (GROUPHOOK_FIELDS), the
// primary key and the tenant; nothing else from the row ever leaves cdc.
type Change struct {
	// ID is deterministic: derived from the commit LSN and Position, so a
	// replay after a crash carries the same id. It contains no '.'.
	ID string
	Op Op
	// Table is "schema.table" as Postgres names it.
	Table string
	// CommitLSN is the LSN of the commit record (BEGIN's final LSN).
	CommitLSN pglogrepl.LSN
	// Position counts every insert, update and delete of the transaction
	// from 0, including changes that produce no event.
	Position   int
	CommitTime time.Time
	// Row is a JSON object of the client-facing columns of the new row
	// (insert, update) or of the deleted row (delete), in table column
	// order. An unchanged TOASTed value whose old value is unknown is left
	// out, never sent as null.
	Row []byte
	// Key is a JSON object of the primary-key columns that are also
	// client-facing, in key order; "{}" when there are none.
	Key []byte
	// Previous is, for an update whose old row is known, a JSON object of
	// the old values of the client-facing columns that changed; nil when
	// the old row is unknown or it is not an update.
	Previous []byte
	// Tenant is the text form of GROUPHOOK_TENANT_COLUMN in the row;
	// TenantNull is true when the column is NULL or no tenant column is set.
	Tenant     string
	TenantNull bool
	// GroupKey identifies the group for per-group ordering: the primary-key
	// values, joined. Empty when the table has no primary key (then all
	// changes share one order).
	GroupKey string
}
