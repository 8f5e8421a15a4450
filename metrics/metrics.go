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
}

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
	}
}
