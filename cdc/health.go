package cdc

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Slot health and heartbeats run beside Run, each in its own goroutine
// owned by the caller; they never change the slot.

// HeartbeatSQL is the heartbeat: a non-transactional logical decoding
// message in this database. pgoutput does not forward it (the stream does
// not ask for messages), but the walsender decodes past it, so the next
// keepalive carries a WAL end beyond it that an idle stream confirms.
const HeartbeatSQL = `SELECT pg_logical_emit_message(false, 'grouphook', 'heartbeat')`

// Heartbeat writes HeartbeatSQL every interval while this process streams
// (Streaming), until ctx is cancelled; interval <= 0 disables it.
//
// Why: when the watched table is quiet, the stream confirms the server WAL
// end that keepalives carry. A walsender sends keepalives when asked (every
// status interval) and when it waits for WAL, but if it has decoded nothing
// of this database for a long time, for instance because only other
// databases of the cluster write, some server versions and setups send a
// WAL end that stays behind, and the slot keeps WAL that nothing needs. A
// heartbeat in this database gives the walsender something of ours to
// decode past, so the confirmed position moves on regardless.
func (s *Stream) Heartbeat(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !s.Streaming() {
			continue
		}
		hctx, cancel := context.WithTimeout(ctx, max(interval, 5*time.Second))
		_, err := s.pool.Exec(hctx, HeartbeatSQL)
		cancel()
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			if !failing {
				s.log.Warn("cannot write the heartbeat message; an idle slot may confirm less often", "err", err)
			}
			failing = true
		default:
			if failing {
				s.log.Info("heartbeat messages work again")
			}
			failing = false
			s.m.HeartbeatsTotal.Inc()
		}
	}
}

// SlotHealth is what one slot check found.
type SlotHealth struct {
	// Exists is false when the slot is missing.
	Exists bool
	// WALStatus is the slot's wal_status (reserved, extended, unreserved,
	// lost), "missing" when it does not exist, or "lost" when the server
	// reports it invalidated in another way.
	WALStatus string
	// LagBytes is the server's WAL position minus confirmed_flush_lsn.
	LagBytes int64
	// MaxSlotWALKeepSize is the server's max_slot_wal_keep_size in bytes;
	// -1 means unlimited.
	MaxSlotWALKeepSize int64
	// Problem, when not nil, is the slot's fatal problem (missing, lost),
	// a *PreflightError naming the fix.
	Problem error
}

// CheckSlot reads the slot's health once and exports it as metrics
// (grouphook_replication_slot_wal_status, _slot_lag_bytes,
// _max_slot_wal_keep_size_bytes). It does not log.
func (s *Stream) CheckSlot(ctx context.Context) (SlotHealth, error) {
	var h SlotHealth
	slot, err := s.readSlot(ctx)
	if err != nil {
		s.m.SlotCheckErrorsTotal.Inc()
		return h, err
	}
	var lag *int64
	err = s.pool.QueryRow(ctx, `
		SELECT pg_size_bytes(current_setting('max_slot_wal_keep_size')),
		       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,
		                       (SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1))::bigint`,
		s.cfg.Slot).Scan(&h.MaxSlotWALKeepSize, &lag)
	if err != nil {
		s.m.SlotCheckErrorsTotal.Inc()
		return h, fmt.Errorf("read the WAL position and max_slot_wal_keep_size: %w", err)
	}
	if lag != nil {
		h.LagBytes = max(*lag, 0)
	}
	h.Exists = slot != nil
	switch {
	case slot == nil:
		h.WALStatus = "missing"
	case slot.WALStatus != nil:
		h.WALStatus = *slot.WALStatus
	}
	h.Problem = s.checkSlot(slot)
	if errors.Is(h.Problem, ErrSlotLost) {
		h.WALStatus = "lost"
	}
	s.m.SetSlotWALStatus(h.WALStatus)
	s.m.SlotLagBytes.Set(float64(h.LagBytes))
	s.m.MaxSlotWALKeepSizeBytes.Set(float64(h.MaxSlotWALKeepSize))
	return h, nil
}

// DefaultSlotCheckInterval is WatchSlot's interval when it is given none.
const DefaultSlotCheckInterval = 30 * time.Second

// WatchSlot checks the slot now and then every interval until ctx is
// cancelled, on every replica, and reports loudly, once per change of
// state: a slot that is missing after it existed or that was invalidated
// (ERROR, with the fix), wal_status unreserved (WARN: WAL is about to be
// removed) and max_slot_wal_keep_size = -1 (WARN: the slot may keep WAL
// without bound). Run itself stops with the same *PreflightError when it
// next connects; WatchSlot makes the problem visible on stand-by replicas
// and as metrics too.
func (s *Stream) WatchSlot(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultSlotCheckInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	w := slotWatch{s: s}
	for {
		cctx, cancel := context.WithTimeout(ctx, max(interval, 10*time.Second))
		h, err := s.CheckSlot(cctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		w.report(h, err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// slotWatch remembers what WatchSlot reported, so each state is logged
// once when it begins.
type slotWatch struct {
	s       *Stream
	seen    bool   // the slot existed at some check
	status  string // last wal_status reported
	keep    int64  // last max_slot_wal_keep_size reported
	checked bool   // keep is set
	failing bool   // the last check failed
}

func (w *slotWatch) report(h SlotHealth, err error) {
	log := w.s.log
	if err != nil {
		if !w.failing {
			log.Warn("cannot check the replication slot; retrying", "err", err)
		}
		w.failing = true
		return
	}
	if w.failing {
		log.Info("checking the replication slot works again")
		w.failing = false
	}
	if !w.checked || h.MaxSlotWALKeepSize != w.keep {
		if h.MaxSlotWALKeepSize < 0 {
			log.Warn("max_slot_wal_keep_size is -1 (unlimited): if grouphook stops or falls behind, PostgreSQL keeps WAL for its slot until the disk is full; "+
				"bound it with ALTER SYSTEM SET max_slot_wal_keep_size = '10GB' (sized for your longest expected outage) and SELECT pg_reload_conf()",
				"max_slot_wal_keep_size", -1)
		} else if w.checked {
			log.Info("max_slot_wal_keep_size changed", "bytes", h.MaxSlotWALKeepSize)
		}
		w.keep, w.checked = h.MaxSlotWALKeepSize, true
	}
	if h.WALStatus == w.status {
		return
	}
	prev := w.status
	w.status = h.WALStatus
	switch {
	case !h.Exists && w.seen:
		log.Error("replication slot is missing: it existed and was dropped", "err", h.Problem)
	case !h.Exists:
		// Never seen: Preflight creates it; nothing to report yet.
	case h.WALStatus == "lost":
		log.Error("replication slot was invalidated", "err", h.Problem, "lag_bytes", h.LagBytes)
	case h.WALStatus == "unreserved":
		log.Warn("replication slot is about to lose WAL (wal_status unreserved): the server will remove WAL it still needs at the next checkpoint; "+
			"deliver the backlog (are the stream and the endpoints healthy?) or raise max_slot_wal_keep_size",
			"lag_bytes", h.LagBytes, "max_slot_wal_keep_size", h.MaxSlotWALKeepSize)
	case h.WALStatus == "extended" && prev != "":
		log.Info("replication slot keeps more WAL than max_wal_size (wal_status extended)", "lag_bytes", h.LagBytes)
	case prev == "unreserved" || prev == "extended":
		log.Info("replication slot WAL status is back to normal", "wal_status", h.WALStatus)
	}
	if h.Exists {
		w.seen = true
	}
}
