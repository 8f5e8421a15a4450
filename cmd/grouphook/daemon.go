package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/grouphook/grouphook/cdc"
	"github.com/grouphook/grouphook/deliver"
	"github.com/grouphook/grouphook/sql"
)

// started tells the caller (the demo, tests) where the HTTP server listens.
type started func(httpAddr string)

// daemon runs grouphook until ctx is cancelled: the replication stream, the
// delivery workers, the endpoint registry and the HTTP server. On
// cancellation the stream stops reading, in-flight deliveries get
// ShutdownTimeout to finish, and what was delivered is confirmed.
func daemon(ctx context.Context, cfg Config, logger *slog.Logger, onStart started) error {
	reg, m := newMetricsRegistry()

	poolCfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("DATABASE_URL is not a valid connection string: %w", err)
	}
	// The stream, the registry and the queue's maintenance need a few
	// connections; the queue workers each hold one only for a short
	// transaction.
	poolCfg.MaxConns = int32(4 + (cfg.QueueWorkers+1)/2)
	poolCfg.ConnConfig.RuntimeParams["application_name"] = "grouphook"
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return fmt.Errorf("connect to DATABASE_URL: %w", err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		// pgconn lists every address it tried on its own line; keep it to
		// one line that says what to do.
		msg := strings.Join(strings.Fields(err.Error()), " ")
		return fmt.Errorf("cannot reach the database in DATABASE_URL (%s): check that PostgreSQL is running and DATABASE_URL names the right host, port, user and database", msg)
	}

	schedule, _ := deliver.ParseSchedule(cfg.RetrySchedule) // validated
	queue := deliver.NewQueue(deliver.QueueConfig{
		Schedule:      schedule,
		Workers:       cfg.QueueWorkers,
		PollInterval:  cfg.QueuePollInterval,
		DeadRetention: cfg.DeadRetention,
		DisableAfter:  cfg.DisableAfter,
	}, pool, logger, m)
	var dispatcher *deliver.Dispatcher

	schema, table, _ := sql.SplitTable(cfg.Table)
	stream, err := cdc.NewStream(cdc.Config{
		DatabaseURL: cfg.DatabaseURL,
		Slot:        cfg.Slot,
		Publication: cfg.Publication,
		Decoder: cdc.DecoderConfig{
			Schema:       schema,
			Table:        table,
			Fields:       cfg.Fields,
			TenantColumn: cfg.TenantColumn,
			Logger:       logger,
		},
		MaxInFlight:     cfg.MaxInFlight,
		StatusInterval:  cfg.StatusInterval,
		ShutdownTimeout: cfg.ShutdownTimeout,
		Logger:          logger,
		Metrics:         m,
		// Another replica may have queued deliveries while it held the
		// slot: learn its lanes before the first change of the session,
		// so no event overtakes them (see deliver.Queue, Holds).
		OnStreaming: func(ctx context.Context) error {
			if err := queue.Resync(ctx); err != nil {
				return err
			}
			dispatcher.RecheckParked()
			return nil
		},
	}, pool)
	if err != nil {
		return err
	}
	// A stop request during start-up (slot creation waits for running
	// transactions) is an ordinary shutdown, not a failure.
	registry := deliver.NewRegistry(pool, logger, m)
	for _, step := range []func(context.Context) error{stream.Preflight, registry.Load, queue.Load} {
		if err := step(ctx); err != nil {
			if ctx.Err() != nil {
				logger.Info("stopped during start-up")
				return nil
			}
			return err
		}
	}
	// The SSRF guard, https only and extra CAs (security.go).
	httpOpts, err := httpOptions(cfg, logger)
	if err != nil {
		return err
	}
	dispatcher = deliver.NewDispatcher(deliver.DispatcherConfig{
		Workers:       cfg.Workers,
		Timeout:       cfg.DeliveryTimeout,
		RetryBase:     cfg.RetryMin,
		RetryMax:      cfg.RetryMax,
		TenantRouting: cfg.TenantColumn != "",
		UserAgent:     "grouphook/" + version,
		Parker:        queue,
		ParkAfter:     cfg.ParkAfter,
	}, registry, deliver.NewHTTPClient(httpOpts), logger, m)

	var ln net.Listener
	if cfg.HTTPAddr != "" {
		ln, err = net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return fmt.Errorf("listen on GROUPHOOK_HTTP_ADDR %s: %w (choose a free address)", cfg.HTTPAddr, err)
		}
	}
	srv := &http.Server{Handler: handler(reg, stream, cfg.Pprof, newAdminAPI(cfg, pool, logger)), ReadHeaderTimeout: 5 * time.Second}

	// The stream owns the shutdown sequence: it stops on ctx, waits for
	// deliveries, confirms, and returns; only then do the workers stop. A
	// failing worker pool or HTTP server stops the stream too.
	streamCtx, stopStream := context.WithCancel(ctx)
	defer stopStream()
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	var (
		wg      sync.WaitGroup
		failMu  sync.Mutex
		failErr error
	)
	fail := func(err error) {
		failMu.Lock()
		if failErr == nil {
			failErr = err
		}
		failMu.Unlock()
		stopStream()
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := dispatcher.Run(workCtx); err != nil && workCtx.Err() == nil {
			fail(fmt.Errorf("delivery workers: %w", err))
		}
	}()
	go func() { defer wg.Done(); registry.Run(workCtx, cfg.EndpointRefresh) }()
	// Slot checks and endpoint states on every replica; heartbeats only
	// from the one that streams (cdc/health.go says why).
	wg.Add(3)
	go func() { defer wg.Done(); stream.WatchSlot(workCtx, cfg.SlotCheckInterval) }()
	go func() { defer wg.Done(); stream.Heartbeat(workCtx, cfg.HeartbeatInterval) }()
	go func() { defer wg.Done(); registry.RunStateMetrics(workCtx, cfg.EndpointRefresh) }()
	// Every replica drains the queue, streaming or standing by.
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := queue.Run(workCtx, dispatcher); err != nil && workCtx.Err() == nil {
			fail(fmt.Errorf("queue workers: %w", err))
		}
	}()
	if ln != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				fail(fmt.Errorf("http server: %w", err))
			}
		}()
		logger.Info("serving /metrics, /healthz and /readyz", "addr", ln.Addr().String())
	}
	if onStart != nil {
		addr := ""
		if ln != nil {
			addr = ln.Addr().String()
		}
		onStart(addr)
	}

	logger.Info("grouphook started", "version", version, "table", cfg.Table, "slot", cfg.Slot, "publication", cfg.Publication)
	streamErr := stream.Run(streamCtx, sink{dispatcher})

	stopWork()
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutCtx)
	wg.Wait()
	if streamErr != nil {
		return streamErr
	}
	if failErr != nil {
		return failErr
	}
	logger.Info("grouphook stopped", "confirmed_lsn", stream.Confirmed().String())
	return nil
}

// sink hands decoded changes to the dispatcher: cdc speaks WAL, deliver
// speaks HTTP, and this is the only place that knows both. A change weighs
// its deliveries, so GROUPHOOK_MAX_IN_FLIGHT bounds deliveries in memory.
type sink struct{ d *deliver.Dispatcher }

func (s sink) Submit(c cdc.Change, done func()) int {
	return s.d.Submit(deliver.Event{
		ID:         c.ID,
		Type:       c.Op.String(),
		Table:      c.Table,
		OccurredAt: c.CommitTime,
		Row:        c.Row,
		Key:        c.Key,
		Previous:   c.Previous,
		Tenant:     c.Tenant,
		TenantNull: c.TenantNull,
		GroupKey:   c.GroupKey,
	}, done)
}

// handler serves the daemon's HTTP endpoints; admin, when not nil (see
// admin.go), adds the admin API under /v1/.
func handler(reg *prometheus.Registry, stream *cdc.Stream, withPprof bool, admin *adminAPI) http.Handler {
	mux := http.NewServeMux()
	if admin != nil {
		admin.register(mux)
	}
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	// Ready means "this replica streams": a standby answers 503, so a load
	// balancer or orchestrator can tell the two apart.
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if stream.Streaming() {
			writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "streaming": true, "confirmed_lsn": stream.Confirmed().String()})
			return
		}
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "standby", "streaming": false})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("content-type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
