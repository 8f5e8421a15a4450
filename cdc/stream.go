package cdc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grouphook/grouphook/metrics"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// Sink receives changes in commit order. Submit must not block for long;
// done must be called exactly once per change, from any goroutine, when that
// change is fully delivered (or durably parked). Later calls are ignored.
// Submit returns the change's weight, the units of work it created (for
// example one per webhook delivery), which MaxInFlight counts; a weight
// below 1 counts as 1.
type Sink interface {
	Submit(c Change, done func()) (weight int)
}

// Config configures a Stream. Zero durations and counts take the defaults.
type Config struct {
	// DatabaseURL is a normal connection string; the replication
	// connection (replication=database) is derived from it.
	DatabaseURL string
	// Slot is the permanent logical slot: 1 to 63 of [a-z0-9_].
	Slot string
	// Publication must include the watched table.
	Publication string
	// Decoder names the table and its client-facing columns.
	Decoder DecoderConfig
	// MaxInFlight bounds the weight (see Sink) of the changes submitted
	// and not yet done; when it is reached the stream stops reading
	// (default 10000). A change heavier than MaxInFlight is taken alone.
	MaxInFlight int
	// StatusInterval is the longest time between two standby status
	// updates (default 10s).
	StatusInterval time.Duration
	// ShutdownTimeout bounds the wait for in-flight changes after the
	// context of Run is cancelled (default 10s).
	ShutdownTimeout time.Duration
	// Logger defaults to discarding; Metrics to a private registry.
	Logger  *slog.Logger
	Metrics *metrics.Metrics
	// OnStreaming, when set, runs each time this process has taken the
	// slot, before the first change of that replication session is read.
	// Another process may have held the slot meanwhile and delivered, or
	// durably queued, changes; a sink whose routing depends on what that
	// process did (the durable queue's held lanes) catches up here. An
	// error ends the session, which is retried like a lost connection.
	OnStreaming func(ctx context.Context) error
}

const (
	defaultMaxInFlight     = 10000
	defaultStatusInterval  = 10 * time.Second
	defaultShutdownTimeout = 10 * time.Second

	// pollInterval bounds every read, so that a confirmed position that
	// moved because of a done func is reported soon.
	pollInterval = 250 * time.Millisecond
	// minStatusGap is the shortest time between two status updates sent
	// because the confirmed position moved.
	minStatusGap = 500 * time.Millisecond
	// standbyRetry is how often a stand-by replica tries to take the slot.
	standbyRetry = 2 * time.Second
	// maxBackoff caps the reconnect backoff.
	maxBackoff = 5 * time.Second
	// ioTimeout bounds connecting, START_REPLICATION, status writes and the
	// closing handshake.
	ioTimeout = 30 * time.Second
)

var slotNameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// Stream reads the watched table's changes from a logical replication slot
// and hands them to a Sink, confirming to the server only what the Sink
// reported done.
type Stream struct {
	cfg     Config
	pool    *pgxpool.Pool
	connCfg *pgconn.Config
	log     *slog.Logger
	m       *metrics.Metrics
	tracker *tracker

	streaming atomic.Bool
	running   atomic.Bool
}

// NewStream checks cfg and returns a Stream; pool is a normal connection
// pool to the same database, used for the preflight, the slot and the
// decoder's catalog lookups.
func NewStream(cfg Config, pool *pgxpool.Pool) (*Stream, error) {
	if pool == nil {
		return nil, errors.New("cdc: NewStream needs a connection pool")
	}
	if !slotNameRE.MatchString(cfg.Slot) {
		return nil, fmt.Errorf("slot name %q is not valid: use 1 to 63 lowercase letters, digits and underscores", cfg.Slot)
	}
	if cfg.Publication == "" {
		return nil, errors.New("publication name is empty: set GROUPHOOK_PUBLICATION")
	}
	if cfg.Decoder.Table == "" {
		return nil, errors.New("watched table is empty: set GROUPHOOK_TABLE")
	}
	if cfg.Decoder.Schema == "" {
		cfg.Decoder.Schema = "public"
	}
	if cfg.MaxInFlight < 0 || cfg.StatusInterval < 0 || cfg.ShutdownTimeout < 0 {
		return nil, errors.New("cdc: MaxInFlight, StatusInterval and ShutdownTimeout must not be negative")
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = defaultMaxInFlight
	}
	if cfg.StatusInterval == 0 {
		cfg.StatusInterval = defaultStatusInterval
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = defaultShutdownTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New(prometheus.NewRegistry())
	}
	connCfg, err := pgconn.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL is not a valid connection string: %w", err)
	}
	for k, v := range map[string]string{
		"replication":        "database",
		"application_name":   "grouphook",
		"DateStyle":          "ISO",
		"TimeZone":           "UTC",
		"bytea_output":       "hex",
		"extra_float_digits": "3",
		"IntervalStyle":      "postgres",
	} {
		connCfg.RuntimeParams[k] = v
	}
	return &Stream{
		cfg:     cfg,
		pool:    pool,
		connCfg: connCfg,
		log:     cfg.Logger.With("slot", cfg.Slot),
		m:       cfg.Metrics,
		tracker: newTracker(cfg.MaxInFlight, 0, cfg.Metrics.EventsInFlight.Dec),
	}, nil
}

// Streaming reports whether this process holds the slot and streams.
func (s *Stream) Streaming() bool { return s.streaming.Load() }

// Confirmed is the position known to be fully delivered: what the next
// status update sends as the flush position. It is 0 until Preflight or Run
// has read the slot.
func (s *Stream) Confirmed() pglogrepl.LSN { return s.tracker.Confirmed() }

func (s *Stream) setStreaming(on bool) {
	s.streaming.Store(on)
	if on {
		s.m.Streaming.Set(1)
	} else {
		s.m.Streaming.Set(0)
	}
}

// Run streams changes to sink until ctx is cancelled. Then it stops
// reading, waits up to ShutdownTimeout for the changes in flight (still
// sending status updates), sends a final status update with the confirmed
// position and returns nil. A lost connection is retried with backoff; a
// slot held by another process is retried every 2 s (stand-by). Run returns
// an error only when streaming cannot go on: a *PreflightError when the
// slot vanished or was invalidated. Run may be called once.
func (s *Stream) Run(ctx context.Context, sink Sink) error {
	if sink == nil {
		return errors.New("cdc: Run needs a sink")
	}
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("cdc: Stream.Run called twice")
	}
	dcfg := s.cfg.Decoder
	if dcfg.Logger == nil {
		dcfg.Logger = s.log
	}
	r := &runner{s: s, sink: sink, t: s.tracker, dec: NewDecoder(dcfg, s.pool)}
	defer s.setStreaming(false)
	return r.run(ctx)
}

// errStandby means another process holds the slot.
var errStandby = errors.New("replication slot is in use by another process")

// errOwnWalsender means the slot is still held by the walsender of our own
// previous connection, which is on its way out.
var errOwnWalsender = errors.New("replication slot is still held by our previous connection")

// runner is the state of one Run: it survives reconnects.
type runner struct {
	s    *Stream
	sink Sink
	t    *tracker
	dec  *Decoder
	rows rowParser // row messages, without pglogrepl's per-column copies

	// Transaction state, kept across reconnects so that nothing submitted
	// is submitted again.
	lastCommit  pglogrepl.LSN // newest BEGIN final LSN seen
	open        *entry        // entry of the transaction being received
	openHandled int           // changes of open already handled (submitted or skipped)
	inTxn       bool          // between BEGIN and COMMIT
	skipping    bool          // the current transaction was handled already
	resumeSkip  int           // changes at the start of the current transaction handled before a reconnect
	pos         int           // changes seen in the current transaction

	received  pglogrepl.LSN // newest position received
	serverEnd pglogrepl.LSN // newest server WAL end seen

	// Status updates of the current connection.
	sentConfirmed pglogrepl.LSN
	lastStatus    time.Time
	nextStatus    time.Time

	lastPID          uint32 // backend pid of our last replication connection
	standby          bool
	shutdownDeadline time.Time
}

func (r *runner) run(ctx context.Context) error {
	log := r.s.log
	var backoff time.Duration
	ownWaits := 0
	next := func() time.Duration {
		backoff = min(max(2*backoff, 100*time.Millisecond), maxBackoff)
		return backoff
	}
	for {
		if ctx.Err() != nil {
			r.finishDisconnected()
			return nil
		}
		conn, err := r.connect(ctx)
		if err == nil {
			ownWaits = 0
			started := time.Now()
			err = r.stream(ctx, conn)
			r.s.setStreaming(false)
			closeConn(conn)
			if err == nil {
				return nil
			}
			if ctx.Err() != nil {
				continue // lost the connection while shutting down
			}
			r.s.m.ReconnectsTotal.Inc()
			if time.Since(started) > time.Minute {
				backoff = 0 // a long healthy stream: retry at once
			}
			wait := next()
			log.Warn("replication connection lost; reconnecting", "err", err, "retry_in", wait)
			sleep(ctx, wait)
			continue
		}
		var perr *PreflightError
		switch {
		case errors.As(err, &perr):
			log.Error("replication stopped", "err", err)
			return err
		case ctx.Err() != nil:
			continue
		case errors.Is(err, errStandby):
			if !r.standby {
				r.standby = true
				log.Info("another process holds the replication slot; standing by and retrying every 2s", "err", err)
			}
			sleep(ctx, standbyRetry)
		case errors.Is(err, errOwnWalsender):
			// Usually the old walsender is on its way out. After a
			// network failure it may not notice for wal_sender_timeout:
			// end it, since its client, us, has gone.
			if ownWaits++; ownWaits%25 == 5 {
				r.endOldWalsender(ctx)
			}
			sleep(ctx, 200*time.Millisecond)
		default:
			r.s.m.ReconnectsTotal.Inc()
			wait := next()
			log.Warn("cannot stream from the replication slot; retrying", "err", err, "retry_in", wait)
			sleep(ctx, wait)
		}
	}
}

// endOldWalsender terminates the walsender of our previous connection if it
// still holds the slot.
func (r *runner) endOldWalsender(ctx context.Context) {
	r.s.log.Info("the server still holds the slot for our lost connection; ending its walsender", "pid", r.lastPID)
	_, err := r.s.pool.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
		WHERE slot_name = $1 AND active_pid = $2`, r.s.cfg.Slot, int64(r.lastPID))
	if err != nil {
		r.s.log.Warn("could not end the walsender of our lost connection", "pid", r.lastPID, "err", err)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func closeConn(conn *pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// connect checks the slot, opens a replication connection and starts
// replication from the slot's confirmed position.
func (r *runner) connect(ctx context.Context) (*pgconn.PgConn, error) {
	s := r.s
	slot, err := s.readSlot(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.checkSlot(slot); err != nil {
		return nil, err
	}
	r.setFloor(slot.confirmedFlush())
	if pid := slot.activePID(); pid != 0 {
		if pid == r.lastPID {
			return nil, errOwnWalsender
		}
		return nil, fmt.Errorf("%w (pid %d)", errStandby, pid)
	}

	cctx, cancel := context.WithTimeout(ctx, ioTimeout)
	defer cancel()
	conn, err := pgconn.ConnectConfig(cctx, s.connCfg)
	if err != nil {
		return nil, fmt.Errorf("open replication connection: %w", err)
	}
	r.dec.Reset()
	pub := pgx.Identifier{s.cfg.Publication}.Sanitize()
	err = pglogrepl.StartReplication(cctx, conn, pgx.Identifier{s.cfg.Slot}.Sanitize(), 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{
			"proto_version '1'",
			"publication_names '" + strings.ReplaceAll(pub, "'", "''") + "'",
		},
	})
	if err != nil {
		closeConn(conn)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" { // object_in_use
			if slot, _ := s.readSlot(ctx); slot != nil && slot.activePID() != 0 && slot.activePID() == r.lastPID {
				return nil, errOwnWalsender
			}
			return nil, fmt.Errorf("%w: %w", errStandby, err)
		}
		if errors.As(err, &pgErr) && pgErr.Code == "42704" { // undefined_object: slot dropped meanwhile
			return nil, s.checkSlot(nil)
		}
		return nil, fmt.Errorf("start replication: %w", err)
	}
	r.lastPID = conn.PID()
	if r.standby {
		s.log.Info("took over the replication slot")
		r.standby = false
	}
	s.setStreaming(true)
	s.log.Info("streaming", "from", r.t.Confirmed().String(), "pid", conn.PID())
	return conn, nil
}

// setFloor applies the slot's confirmed_flush_lsn, read before each
// START_REPLICATION. The server resends nothing before it, so a transaction
// cut off mid-stream that lies before it will not come again.
func (r *runner) setFloor(lsn pglogrepl.LSN) {
	r.t.floor(lsn)
	if r.open != nil && r.open.commit < lsn {
		r.s.log.Warn("the slot was confirmed past a transaction this process received only partly; another process delivered it",
			"commit_lsn", r.open.commit.String(), "confirmed_flush_lsn", lsn.String())
		r.abandonOpen()
	}
}

// abandonOpen seals a cut-off transaction that will not be resent. It is
// sealed at its commit record's start, so confirming it never skips it.
func (r *runner) abandonOpen() {
	r.t.seal(r.open, r.open.commit)
	r.open, r.openHandled = nil, 0
}

// stream runs the read loop on one connection. It returns nil after a
// graceful shutdown and an error when the connection must be replaced.
func (r *runner) stream(ctx context.Context, conn *pgconn.PgConn) error {
	r.sentConfirmed, r.lastStatus = 0, time.Time{}
	r.inTxn, r.skipping = false, false
	if hook := r.s.cfg.OnStreaming; hook != nil {
		if err := hook(ctx); err != nil {
			return fmt.Errorf("prepare to stream: %w", err)
		}
	}
	// Answer at once, asking for a reply: the keepalive tells us the
	// server's WAL end.
	if err := r.sendStatus(conn, true); err != nil {
		return err
	}
	reads := readDeadline{nc: conn.Conn()}
	defer reads.stop()
	// live is the context of reads and submits. On shutdown in the middle
	// of a transaction it becomes one bounded by the shutdown deadline, so
	// the stream reads on to the COMMIT: only a sealed transaction can be
	// confirmed, and stopping short would send it all again after a restart.
	live := ctx
	reads.watch(live)
	finish, stopFinish := context.WithCancel(context.WithoutCancel(ctx))
	defer stopFinish()
	finishing := false
	for {
		if ctx.Err() != nil {
			if !r.inTxn || finish.Err() != nil {
				reads.stop()
				return r.drain(conn)
			}
			if !finishing {
				finishing = true
				r.s.log.Info("stopping: reading to the end of the current transaction", "commit_lsn", r.lastCommit.String())
				live = finish
				deadline := time.AfterFunc(time.Until(r.deadline()), stopFinish)
				defer deadline.Stop()
				reads.watch(live)
			}
		}
		if err := r.maybeStatus(conn); err != nil {
			return err
		}
		reads.arm(r.nextStatus)
		// No context: pgconn would watch one per message (an AfterFunc
		// and a channel each). The read deadline bounds the read.
		raw, err := conn.ReceiveMessage(context.Background())
		if err != nil {
			if pgconn.Timeout(err) || (live.Err() != nil && !conn.IsClosed()) {
				reads.expired()
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		if err := r.handle(live, conn, raw); err != nil {
			if live.Err() != nil && !conn.IsClosed() {
				reads.stop()
				return r.drain(conn)
			}
			return err
		}
	}
}

// readDeadline bounds the reads of the replication connection with the
// connection's read deadline, set once per poll interval (the next poll or
// status time) rather than per message, and interrupts a waiting read as
// soon as the watched context is done. pgconn does not close a connection
// on a timeout, and a message cut by one is read on by the next read.
type readDeadline struct {
	nc       net.Conn
	deadline time.Time // in effect on nc; zero when it must be set again
	ctx      context.Context
	w        *deadlineWatch
}

// deadlineWatch is one watched context; its interrupt does nothing once
// stopped, so a late one cannot cut a read it was not meant for.
type deadlineWatch struct {
	mu      sync.Mutex
	stopped bool
	cancel  func() bool
}

// past is a read deadline that has passed: the pending read returns a
// timeout at once.
var past = time.Unix(1, 0)

// watch makes the end of ctx interrupt reads, instead of the context
// watched before.
func (rd *readDeadline) watch(ctx context.Context) {
	rd.stop()
	w := &deadlineWatch{}
	nc := rd.nc
	w.cancel = context.AfterFunc(ctx, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if !w.stopped {
			_ = nc.SetReadDeadline(past)
		}
	})
	rd.ctx, rd.w, rd.deadline = ctx, w, time.Time{}
}

// stop ends the watch: after it returns, the context's end no longer
// touches the connection's deadline.
func (rd *readDeadline) stop() {
	if w := rd.w; w != nil {
		w.cancel()
		w.mu.Lock()
		w.stopped = true
		w.mu.Unlock()
		rd.w = nil
	}
}

// arm makes sure a read deadline is in effect: the next poll, or
// nextStatus when that is sooner.
func (rd *readDeadline) arm(nextStatus time.Time) {
	now := time.Now()
	if !rd.deadline.IsZero() && now.Before(rd.deadline) {
		return
	}
	rd.deadline = now.Add(pollInterval)
	if nextStatus.Before(rd.deadline) {
		rd.deadline = nextStatus
	}
	_ = rd.nc.SetReadDeadline(rd.deadline)
	if rd.ctx != nil && rd.ctx.Err() != nil {
		// The interrupt may have come before the line above.
		_ = rd.nc.SetReadDeadline(past)
	}
}

// expired records that a read timed out, at its deadline or interrupted:
// the next arm sets a new deadline.
func (rd *readDeadline) expired() { rd.deadline = time.Time{} }

func (r *runner) handle(ctx context.Context, conn *pgconn.PgConn, raw pgproto3.BackendMessage) error {
	switch msg := raw.(type) {
	case *pgproto3.CopyData:
		if len(msg.Data) == 0 {
			return nil
		}
		switch msg.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
			if err != nil {
				return fmt.Errorf("parse keepalive: %w", err)
			}
			r.sawPosition(pkm.ServerWALEnd, pkm.ServerWALEnd)
			if !r.inTxn {
				r.t.idle(pkm.ServerWALEnd)
			}
			if pkm.ReplyRequested {
				return r.sendStatus(conn, false)
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
			if err != nil {
				return fmt.Errorf("parse XLogData: %w", err)
			}
			r.sawPosition(xld.WALStart, xld.ServerWALEnd)
			if err := r.handleLogical(ctx, conn, xld.WALData); err != nil {
				return err
			}
			if !r.inTxn {
				r.t.idle(xld.ServerWALEnd)
			}
		}
	case *pgproto3.ErrorResponse:
		return fmt.Errorf("server error: %w", pgconn.ErrorResponseToPgError(msg))
	case *pgproto3.CopyDone:
		return errors.New("server ended the replication stream (CopyDone)")
	}
	return nil
}

func (r *runner) sawPosition(received, serverEnd pglogrepl.LSN) {
	if received > r.received {
		r.received = received
		r.s.m.ReceivedLSN.Set(float64(received))
	}
	if serverEnd > r.serverEnd {
		r.serverEnd = serverEnd
	}
}

func (r *runner) handleLogical(ctx context.Context, conn *pgconn.PgConn, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	msg, ok, err := r.rows.parse(data)
	if !ok {
		msg, err = pglogrepl.Parse(data)
	}
	if err != nil {
		return fmt.Errorf("parse pgoutput message %q: %w", data[0], err)
	}
	switch m := msg.(type) {
	case *pglogrepl.BeginMessage:
		r.begin(m)
	case *pglogrepl.RelationMessage:
		if err := r.dec.Relation(ctx, m); err != nil {
			return fmt.Errorf("relation %s.%s: %w", m.Namespace, m.RelationName, err)
		}
	case *pglogrepl.InsertMessage, *pglogrepl.UpdateMessage, *pglogrepl.DeleteMessage:
		return r.change(ctx, conn, msg)
	case *pglogrepl.CommitMessage:
		r.commit(m)
	case *pglogrepl.TruncateMessage:
		if !r.skipping {
			r.s.log.Warn("ignored a TRUNCATE of the watched table: grouphook sends no events for TRUNCATE",
				"relations", len(m.RelationIDs), "commit_lsn", r.lastCommit.String())
		}
	case *pglogrepl.TypeMessage, *pglogrepl.OriginMessage, *pglogrepl.LogicalDecodingMessage:
		// Types are looked up by the decoder; origins and messages are
		// not ours.
	}
	return nil
}

func (r *runner) begin(m *pglogrepl.BeginMessage) {
	r.inTxn, r.pos, r.resumeSkip, r.skipping = true, 0, 0, false
	switch {
	case r.open != nil && m.FinalLSN == r.open.commit:
		// Cut off by a reconnect: skip what was handled, then go on
		// into the same entry.
		r.resumeSkip = r.openHandled
		r.dec.Begin(m)
	case m.FinalLSN <= r.lastCommit:
		r.skipping = true // received completely before a reconnect
	default:
		if r.open != nil {
			r.s.log.Warn("the server did not resend a transaction cut off by a reconnect; it will be sent again after a restart",
				"commit_lsn", r.open.commit.String())
			r.abandonOpen()
		}
		r.open, r.openHandled, r.lastCommit = r.t.open(m.FinalLSN), 0, m.FinalLSN
		r.dec.Begin(m)
	}
}

func (r *runner) change(ctx context.Context, conn *pgconn.PgConn, msg pglogrepl.Message) error {
	if r.skipping {
		return nil
	}
	if r.open == nil {
		return errors.New("row change outside a transaction")
	}
	c, ok, err := r.dec.Change(msg)
	if err != nil {
		return fmt.Errorf("decode change %d of transaction %s: %w", r.pos, r.open.commit, err)
	}
	r.pos++
	if r.pos <= r.resumeSkip {
		return nil // submitted before the reconnect
	}
	if !ok {
		if _, upd := msg.(*pglogrepl.UpdateMessage); upd {
			r.s.m.ChangesSkippedTotal.Inc()
		}
		r.openHandled = r.pos
		return nil
	}
	var h *held
	err = r.waitRoom(ctx, conn, func() (ok bool) {
		h, ok = r.t.tryHold(r.open)
		return ok
	})
	if err != nil {
		return err
	}
	r.s.m.EventsInFlight.Inc()
	r.s.m.EventsTotal.WithLabelValues(c.Op.String()).Inc()
	weight := r.sink.Submit(c, h.done(r.t))
	r.openHandled = r.pos
	if weight > 1 {
		// The change is submitted; hold its weight before reading on, so
		// that MaxInFlight bounds deliveries rather than changes.
		return r.waitRoom(ctx, conn, func() bool { return r.t.tryGrow(h, weight-1) })
	}
	return nil
}

// waitRoom waits until try succeeds, that is until the tracker has room
// under MaxInFlight. Meanwhile it does not read, but keeps sending status
// updates.
func (r *runner) waitRoom(ctx context.Context, conn *pgconn.PgConn, try func() bool) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if try() {
			return nil
		}
		if err := r.maybeStatus(conn); err != nil {
			return err
		}
		wait := min(time.Until(r.nextStatus), pollInterval)
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.t.changed:
		case <-timer.C:
		}
	}
}

func (r *runner) commit(m *pglogrepl.CommitMessage) {
	r.inTxn = false
	if r.skipping {
		r.skipping = false
		return
	}
	if r.open == nil {
		return
	}
	r.t.seal(r.open, m.TransactionEndLSN)
	r.open, r.openHandled = nil, 0
	r.s.m.TransactionsTotal.Inc()
}

// maybeStatus sends a status update when one is due, or when the confirmed
// position moved and the last update is at least minStatusGap old.
func (r *runner) maybeStatus(conn *pgconn.PgConn) error {
	now := time.Now()
	if !now.Before(r.nextStatus) {
		// Periodic: ask for a reply, whose keepalive carries the
		// server's WAL end, which may be confirmed when idle.
		return r.sendStatus(conn, true)
	}
	if r.t.Confirmed() != r.sentConfirmed && now.Sub(r.lastStatus) >= minStatusGap {
		return r.sendStatus(conn, false)
	}
	return nil
}

// sendStatus reports the confirmed position as flush and apply position.
// It never sends 0: SendStandbyStatusUpdate would replace a 0 flush
// position with the write position.
func (r *runner) sendStatus(conn *pgconn.PgConn, replyRequested bool) error {
	now := time.Now()
	r.nextStatus = now.Add(r.s.cfg.StatusInterval)
	confirmed := r.t.Confirmed()
	if confirmed == 0 {
		return nil
	}
	nc := conn.Conn()
	_ = nc.SetWriteDeadline(now.Add(ioTimeout))
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: max(r.received, confirmed),
		WALFlushPosition: confirmed,
		WALApplyPosition: confirmed,
		ClientTime:       now,
		ReplyRequested:   replyRequested,
	})
	_ = nc.SetWriteDeadline(time.Time{})
	if err != nil {
		return fmt.Errorf("send standby status update: %w", err)
	}
	r.sentConfirmed, r.lastStatus = confirmed, now
	r.s.m.ConfirmedLSN.Set(float64(confirmed))
	if r.serverEnd > confirmed {
		r.s.m.LagBytes.Set(float64(r.serverEnd - confirmed))
	} else {
		r.s.m.LagBytes.Set(0)
	}
	return nil
}

func (r *runner) deadline() time.Time {
	if r.shutdownDeadline.IsZero() {
		r.shutdownDeadline = time.Now().Add(r.s.cfg.ShutdownTimeout)
	}
	return r.shutdownDeadline
}

// waitInFlight waits until no change is in flight or the shutdown deadline
// passes, calling tick (if not nil) on every wake-up.
func (r *runner) waitInFlight(tick func() error) error {
	deadline := r.deadline()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for r.t.InFlight() > 0 {
		now := time.Now()
		if !now.Before(deadline) {
			return nil
		}
		if tick != nil {
			if err := tick(); err != nil {
				return err
			}
		}
		wait := min(deadline.Sub(now), pollInterval)
		if tick != nil {
			wait = min(wait, time.Until(r.nextStatus))
		}
		timer.Reset(max(wait, time.Millisecond))
		select {
		case <-r.t.changed:
		case <-timer.C:
		}
	}
	return nil
}

// drain ends a connection gracefully: wait for the changes in flight while
// still sending status updates, send the final status update and end the
// replication with CopyDone so the server has processed it.
func (r *runner) drain(conn *pgconn.PgConn) error {
	log := r.s.log
	log.Info("stopping: waiting for changes in flight", "in_flight", r.t.InFlight(), "timeout", r.s.cfg.ShutdownTimeout)
	if err := r.waitInFlight(func() error { return r.maybeStatus(conn) }); err != nil {
		return err
	}
	if n := r.t.InFlight(); n > 0 {
		log.Warn("shutdown timeout passed with changes still in flight; they will be sent again after a restart", "in_flight", n)
	}
	if err := r.sendStatus(conn, false); err != nil {
		return err
	}
	_ = conn.Conn().SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := pglogrepl.SendStandbyCopyDone(context.Background(), conn); err != nil {
		log.Debug("ending replication with CopyDone", "err", err)
	}
	log.Info("stopped", "confirmed", r.sentConfirmed.String())
	return nil
}

// finishDisconnected ends a Run whose context was cancelled while it had no
// connection: it waits for the changes in flight and then confirms what was
// delivered through the pool, if the slot is free and behind.
func (r *runner) finishDisconnected() {
	_ = r.waitInFlight(nil)
	confirmed := r.t.Confirmed()
	if confirmed == 0 || confirmed <= r.sentConfirmed {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tag, err := r.s.pool.Exec(ctx, `
		SELECT pg_replication_slot_advance(slot_name, $2::pg_lsn) FROM pg_replication_slots
		WHERE slot_name = $1 AND NOT active AND confirmed_flush_lsn < $2::pg_lsn`,
		r.s.cfg.Slot, confirmed.String())
	if err != nil {
		r.s.log.Warn("could not confirm the delivered position after the connection was lost; those changes will be sent again after a restart",
			"confirmed", confirmed.String(), "err", err)
		return
	}
	if tag.RowsAffected() > 0 {
		r.s.log.Info("stopped; confirmed through the slot", "confirmed", confirmed.String())
	}
}
