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
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/grouphook/grouphook/cdc"
	"github.com/grouphook/grouphook/deliver"
	"github.com/grouphook/grouphook/metrics"
	"github.com/grouphook/grouphook/sql"
)

// started tells the caller (the demo, tests) where the HTTP server listens.
type started func(httpAddr string)

// daemon runs grouphook until ctx is cancelled: the replication stream, the
// delivery workers, the endpoint registry and the HTTP server. On
// cancellation the stream stops reading, in-flight deliveries get
// ShutdownTimeout to finish, and what was delivered is confirmed.
func daemon(ctx context.Context, cfg Config, logger *slog.Logger, onStart started) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
	)
	m := metrics.New(reg)

	poolCfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("DATABASE_URL is not a valid connection string: %w", err)
	}
	poolCfg.MaxConns = 4
	poolCfg.ConnConfig.RuntimeParams["application_name"] = "grouphook"
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return fmt.Errorf("connect to DATABASE_URL: %w", err)
	}
	defer pool.Close()

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
	}, pool)
	if err != nil {
		return err
	}
	if err := stream.Preflight(ctx); err != nil {
		return err
	}

	registry := deliver.NewRegistry(pool, logger, m)
	if err := registry.Load(ctx); err != nil {
		return err
	}
	dispatcher := deliver.NewDispatcher(deliver.DispatcherConfig{
		Workers:       cfg.Workers,
		Timeout:       cfg.DeliveryTimeout,
		RetryBase:     cfg.RetryMin,
		RetryMax:      cfg.RetryMax,
		TenantRouting: cfg.TenantColumn != "",
		UserAgent:     "grouphook/" + version,
	}, registry, deliver.NewHTTPClient(deliver.HTTPOptions{MaxIdleConnsPerHost: cfg.Workers}), logger, m)

	var ln net.Listener
	if cfg.HTTPAddr != "" {
		ln, err = net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return fmt.Errorf("listen on GROUPHOOK_HTTP_ADDR %s: %w (choose a free address)", cfg.HTTPAddr, err)
		}
	}
	srv := &http.Server{Handler: handler(reg, stream, cfg.Pprof), ReadHeaderTimeout: 5 * time.Second}

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
// speaks HTTP, and this is the only place that knows both.
type sink struct{ d *deliver.Dispatcher }

func (s sink) Submit(c cdc.Change, done func()) {
	s.d.Submit(deliver.Event{
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

func handler(reg *prometheus.Registry, stream *cdc.Stream, withPprof bool) http.Handler {
	mux := http.NewServeMux()
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
