package cdc

import "errors"

// Kinds of PreflightError. Test with errors.Is(err, cdc.ErrSlotLost).
var (
	// ErrWALLevel: wal_level is not logical.
	ErrWALLevel = errors.New("wal_level is not logical")
	// ErrNoReplicationRole: the role may not use replication.
	ErrNoReplicationRole = errors.New("role lacks the REPLICATION attribute")
	// ErrTableMissing: the watched table does not exist.
	ErrTableMissing = errors.New("watched table does not exist")
	// ErrColumnMissing: a configured field or the tenant column is not a
	// column of the table.
	ErrColumnMissing = errors.New("configured column does not exist")
	// ErrPublication: the publication is missing or does not include the
	// table.
	ErrPublication = errors.New("publication missing or without the table")
	// ErrSlotLost: the slot was invalidated; changes were lost.
	ErrSlotLost = errors.New("replication slot invalidated")
	// ErrSlotMismatch: a slot of that name exists but cannot be used (other
	// plugin, other database, physical).
	ErrSlotMismatch = errors.New("replication slot unusable")
	// ErrSlotMissing: the slot vanished while grouphook was running.
	ErrSlotMissing = errors.New("replication slot missing")
)

// PreflightError is a problem with the database set-up that an operator must
// fix; retrying does not help. Error returns one sentence naming the fix.
// Preflight returns it for every failed start-up check, and Run returns it
// when the slot vanishes or is invalidated while running.
type PreflightError struct {
	// Kind is one of the Err* values above; errors.Is matches it.
	Kind error
	// Msg is the sentence shown to the operator.
	Msg string
	// Err is the underlying cause, if any.
	Err error
}

func (e *PreflightError) Error() string { return e.Msg }

// Unwrap exposes Kind and the cause to errors.Is and errors.As.
func (e *PreflightError) Unwrap() []error {
	errs := make([]error, 0, 2)
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

func preflightErr(kind error, msg string) *PreflightError {
	return &PreflightError{Kind: kind, Msg: msg}
}
