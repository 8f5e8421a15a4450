package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

const namespace = "grouphook"

// Outcomes of one delivery attempt, used as the "outcome" label.
const (
	OutcomeSuccess = "success" // 2xx
	OutcomeFailure = "failure" // non-2xx, timeout, connection error
	OutcomeDropped = "dropped" // endpoint removed or disabled while the delivery waited
	OutcomeParked  = "parked"  // handed to the durable queue after failing too long (issue 4)
)

// Reasons a queued delivery dies or an endpoint is disabled, used as the
// "reason" label.
const (
	ReasonExhausted = "exhausted" // the retry schedule ran out
	ReasonGone      = "gone"      // the endpoint answered 410 Gone
	ReasonFailing   = "failing"   // no success for GROUPHOOK_DISABLE_AFTER
	ReasonDisabled  = "disabled"  // parked while its endpoint was disabled
)

// Metrics holds every collector grouphook exports. Build it with New; a nil
// *Metrics is not valid.
type Metrics struct {
	// cdc
	EventsTotal         *prometheus.CounterVec // by type: CREATE, UPDATE, DELETE
	ChangesSkippedTotal prometheus.Counter     // updates that changed no client-facing column
	TransactionsTotal   prometheus.Counter
	ReceivedLSN         prometheus.Gauge
	ConfirmedLSN        prometheus.Gauge
	LagBytes            prometheus.Gauge // server WAL end minus confirmed position
	Streaming           prometheus.Gauge // 1 while this process holds the slot
	ReconnectsTotal     prometheus.Counter
	EventsInFlight      prometheus.Gauge

	// deliver
	DeliveriesTotal        *prometheus.CounterVec   // by endpoint id and outcome
	AttemptDuration        *prometheus.HistogramVec // by outcome
	DeliveryLatency        prometheus.Histogram     // commit to successful delivery
	EndpointConfigErrors   *prometheus.CounterVec   // by endpoint id: invalid URL and the like
	Endpoints              prometheus.Gauge         // enabled endpoints currently loaded
	EndpointReloadFailures prometheus.Counter

	// durable queue (deliver/queue*.go)
	QueueDeliveries        *prometheus.GaugeVec   // rows by status (pending, dead), refreshed every few seconds
	QueueOldestPending     prometheus.Gauge       // age of the oldest pending row
	QueueAttemptsTotal     *prometheus.CounterVec // queue attempts by outcome (success, failure, dropped)
	QueueHeldLanes         prometheus.Gauge       // (endpoint, group) lanes this process routes to the queue
	DeadDeliveriesTotal    *prometheus.CounterVec // deliveries that became dead, by reason
	EndpointsDisabledTotal *prometheus.CounterVec // endpoints grouphook disabled, by reason

	// Slot health (cdc/health.go), checked by every replica, streaming or not.
	SlotWALStatus           *prometheus.GaugeVec // 1 for the slot's current wal_status (WALStatuses), 0 for the others
	SlotLagBytes            prometheus.Gauge     // the server's WAL position minus the slot's confirmed_flush_lsn
	MaxSlotWALKeepSizeBytes prometheus.Gauge     // max_slot_wal_keep_size; -1 means unlimited
	SlotCheckErrorsTotal    prometheus.Counter   // slot checks that could not read the slot
	HeartbeatsTotal         prometheus.Counter   // pg_logical_emit_message heartbeats written

	// Endpoint state and build info.
	EndpointState *prometheus.GaugeVec // 1 per endpoint id, labelled with its state (EndpointStates)
	BuildInfo     *prometheus.GaugeVec // constant 1, labelled with version, revision and goversion
}

// WALStatuses are the values of the "wal_status" label of
// grouphook_replication_slot_wal_status: PostgreSQL's wal_status of the slot,
// or "missing" when the slot does not exist.
var WALStatuses = []string{"reserved", "extended", "unreserved", "lost", "missing"}

// Endpoint states, used as the "state" label of grouphook_endpoint_state.
const (
	EndpointEnabled  = "enabled"  // enabled and usable: gets deliveries
	EndpointDisabled = "disabled" // enabled = false, by an operator or by grouphook
	EndpointInvalid  = "invalid"  // enabled, but its row is unusable (see endpoint_config_errors_total)
)

// New creates and registers the collectors on reg.
func New(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	return &Metrics{
		EventsTotal: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "events_total",
			Help: "Row changes of the watched table turned into events, by event type.",
		}, []string{"type"}),
		ChangesSkippedTotal: f.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "changes_skipped_total",
			Help: "Updates that changed no client-facing column and so sent nothing.",
		}),
		TransactionsTotal: f.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "transactions_total",
			Help: "Committed transactions received from the replication stream.",
		}),
		ReceivedLSN: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "replication", Name: "received_lsn",
			Help: "Newest WAL position received from the server, as a byte offset.",
		}),
		ConfirmedLSN: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "replication", Name: "confirmed_lsn",
			Help: "WAL position confirmed to the server as fully delivered, as a byte offset.",
		}),
		LagBytes: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "replication", Name: "lag_bytes",
			Help: "Bytes of WAL between the server's WAL end and the confirmed position.",
		}),
		Streaming: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "replication", Name: "streaming",
			Help: "1 while this process holds the replication slot and streams, else 0.",
		}),
		ReconnectsTotal: f.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "replication", Name: "reconnects_total",
			Help: "Times the replication connection was lost or refused and retried.",
		}),
		EventsInFlight: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "events_in_flight",
			Help: "Events received and not yet delivered to every endpoint.",
		}),
		DeliveriesTotal: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "deliveries_total",
			Help: "Delivery attempts, by endpoint id and outcome (success, failure, dropped).",
		}, []string{"endpoint", "outcome"}),
		AttemptDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "delivery_attempt_duration_seconds",
			Help:    "Duration of one HTTP delivery attempt, by outcome.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"outcome"}),
		DeliveryLatency: f.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "delivery_latency_seconds",
			Help:    "Time from the transaction's commit to the successful delivery of its event.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}),
		EndpointConfigErrors: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "endpoint_config_errors_total",
			Help: "Endpoints skipped because their row is unusable (e.g. a malformed URL), by endpoint id.",
		}, []string{"endpoint"}),
		Endpoints: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "endpoints",
			Help: "Enabled, usable endpoints currently loaded.",
		}),
		EndpointReloadFailures: f.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "endpoint_reload_failures_total",
			Help: "Failed reads of grouphook.endpoints; the last good set stays in use.",
		}),
		QueueDeliveries: f.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "queue", Name: "deliveries",
			Help: "Deliveries in the durable queue (grouphook.deliveries), by status (pending, dead); refreshed every few seconds.",
		}, []string{"status"}),
		QueueOldestPending: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "queue", Name: "oldest_pending_age_seconds",
			Help: "Time since the oldest pending delivery entered the durable queue; 0 when none is pending.",
		}),
		QueueAttemptsTotal: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "queue", Name: "attempts_total",
			Help: "Delivery attempts made by this process's queue workers, by outcome (success, failure, dropped).",
		}, []string{"outcome"}),
		QueueHeldLanes: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "queue", Name: "held_lanes",
			Help: "(endpoint, group) lanes with queued deliveries, as this process knows them; new events of these lanes queue behind.",
		}),
		DeadDeliveriesTotal: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "dead_deliveries_total",
			Help: "Deliveries that became dead in this process, by reason (exhausted, gone, failing, disabled).",
		}, []string{"reason"}),
		EndpointsDisabledTotal: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "endpoints_disabled_total",
			Help: "Endpoints this process disabled, by reason (gone: answered 410; failing: no success for GROUPHOOK_DISABLE_AFTER).",
		}, []string{"reason"}),
		SlotWALStatus: newWALStatus(f),
		SlotLagBytes: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "replication", Name: "slot_lag_bytes",
			Help: "Bytes of WAL the slot makes PostgreSQL keep: pg_current_wal_lsn() minus the slot's confirmed_flush_lsn, read by every replica.",
		}),
		MaxSlotWALKeepSizeBytes: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "replication", Name: "max_slot_wal_keep_size_bytes",
			Help: "The server's max_slot_wal_keep_size; -1 means unlimited, so a stopped grouphook can fill the disk: set it (ALTER SYSTEM SET max_slot_wal_keep_size = '10GB').",
		}),
		SlotCheckErrorsTotal: f.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "replication", Name: "slot_check_errors_total",
			Help: "Periodic slot checks that could not read pg_replication_slots.",
		}),
		HeartbeatsTotal: f.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "replication", Name: "heartbeats_total",
			Help: "Heartbeat messages (pg_logical_emit_message) written by this replica while it streamed, so an idle slot keeps confirming.",
		}),
		EndpointState: f.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "endpoint_state",
			Help: "1 for each row of grouphook.endpoints, labelled with its id and state (enabled, disabled, invalid).",
		}, []string{"endpoint", "state"}),
		BuildInfo: f.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "build_info",
			Help: "Constant 1, labelled with the grouphook version, VCS revision and Go version of this binary.",
		}, []string{"version", "revision", "goversion"}),
	}
}

// newWALStatus registers grouphook_replication_slot_wal_status with every
// label value at 0, so an alert on a value that is not yet 1 has a series.
func newWALStatus(f promauto.Factory) *prometheus.GaugeVec {
	g := f.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: "replication", Name: "slot_wal_status",
		Help: "1 for the replication slot's current wal_status (reserved, extended, unreserved, lost; missing when the slot does not exist), 0 for the others.",
	}, []string{"wal_status"})
	for _, s := range WALStatuses {
		g.WithLabelValues(s)
	}
	return g
}

// SetSlotWALStatus sets grouphook_replication_slot_wal_status to 1 for
// status and 0 for every other value; "" (not checked yet) zeroes them all.
func (m *Metrics) SetSlotWALStatus(status string) {
	known := false
	for _, s := range WALStatuses {
		v := 0.0
		if s == status {
			v, known = 1, true
		}
		m.SlotWALStatus.WithLabelValues(s).Set(v)
	}
	if !known && status != "" {
		m.SlotWALStatus.WithLabelValues(status).Set(1) // a value of a newer server
	}
}
