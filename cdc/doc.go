// Package cdc turns the watched table's committed changes, read from a
// PostgreSQL logical replication slot (pgoutput, protocol version 1), into
// Changes, and confirms WAL positions back to the server only once the
// Changes before them are done.
//
// # What it owns
//
//   - Preflight: wal_level, the REPLICATION attribute, the table and its
//     configured columns, the publication, and the permanent slot, which it
//     creates when missing (after checking the publication). Each failed
//     check is a *PreflightError naming the fix.
//   - The replication connection (Stream.Run): reads under a deadline, sends
//     standby status updates at least every StatusInterval and at once when
//     the server asks, reconnects with backoff, and stands by while another
//     process holds the slot.
//   - The checkpoint tracker: the flush position sent to the server is the
//     end LSN of the newest transaction such that it and every earlier one
//     are done; when nothing is pending, the server's WAL end. It also bounds
//     the work in flight (MaxInFlight), counting each change by the weight
//     its Sink.Submit returns (one per delivery, for grouphook).
//   - The decoder: relation cache and tuple decoding (decoder.go, values.go).
//   - Slot health (health.go): WatchSlot checks the slot periodically on
//     every replica (missing, wal_status, max_slot_wal_keep_size) and
//     reports each new state once; Heartbeat writes a pg_logical_emit_message
//     while this replica streams, so an idle slot keeps confirming.
//
// # What it must never do
//
//   - Confirm a position that was received but not delivered, or send 0.
//   - Drop or recreate a slot or a publication.
//   - Go silent while deliveries are stuck: backpressure stops reading, never
//     the status updates.
//   - Know anything about HTTP, endpoints or signing: Changes leave through
//     the Sink interface, and completions come back only as done calls.
package cdc
