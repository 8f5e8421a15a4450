package metrics

import (
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// touch gives every vector one series, so that Gather returns every family.
func touch(m *Metrics) {
	m.EventsTotal.WithLabelValues("CREATE").Inc()
	m.DeliveriesTotal.WithLabelValues("1", OutcomeSuccess).Inc()
	m.AttemptDuration.WithLabelValues(OutcomeSuccess).Observe(0.01)
	m.EndpointConfigErrors.WithLabelValues("1").Inc()
	m.QueueDeliveries.WithLabelValues("pending").Set(1)
	m.QueueAttemptsTotal.WithLabelValues(OutcomeFailure).Inc()
	m.DeadDeliveriesTotal.WithLabelValues(ReasonExhausted).Inc()
	m.EndpointsDisabledTotal.WithLabelValues(ReasonGone).Inc()
	m.EndpointState.WithLabelValues("1", EndpointEnabled).Set(1)
	m.BuildInfo.WithLabelValues("v1.0.0", "abc", "go1.26").Set(1)
}

// TestEveryCollectorRegisteredAndLintClean: every field of Metrics is set
// and registered, every family has help text and the grouphook namespace,
// and promlint finds nothing (base units, _total on counters, and so on).
func TestEveryCollectorRegisteredAndLintClean(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		if v.Field(i).IsNil() {
			t.Errorf("Metrics.%s is nil after New", v.Type().Field(i).Name)
		}
	}
	touch(m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != v.NumField() {
		t.Errorf("gathered %d families for %d fields of Metrics", len(mfs), v.NumField())
	}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "grouphook_") {
			t.Errorf("%s lacks the grouphook_ namespace", mf.GetName())
		}
		if len(mf.GetHelp()) < 20 {
			t.Errorf("%s has no real help text: %q", mf.GetName(), mf.GetHelp())
		}
		if mf.GetType().String() == "COUNTER" && !strings.HasSuffix(mf.GetName(), "_total") {
			t.Errorf("counter %s does not end in _total", mf.GetName())
		}
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestSlotWALStatus: exactly one wal_status is 1, and every value is
// exported from the start (at 0), so alerts have a series to look at.
func TestSlotWALStatus(t *testing.T) {
	m := New(prometheus.NewRegistry())
	if n := testutil.CollectAndCount(m.SlotWALStatus); n != len(WALStatuses) {
		t.Fatalf("%d wal_status series before the first check, want %d", n, len(WALStatuses))
	}
	sum := func() float64 {
		s := 0.0
		for _, st := range WALStatuses {
			s += testutil.ToFloat64(m.SlotWALStatus.WithLabelValues(st))
		}
		return s
	}
	if sum() != 0 {
		t.Error("a wal_status is 1 before the first check")
	}
	for _, st := range WALStatuses {
		m.SetSlotWALStatus(st)
		if testutil.ToFloat64(m.SlotWALStatus.WithLabelValues(st)) != 1 || sum() != 1 {
			t.Errorf("after SetSlotWALStatus(%q): want it alone at 1", st)
		}
	}
	m.SetSlotWALStatus("something_new")
	if testutil.ToFloat64(m.SlotWALStatus.WithLabelValues("something_new")) != 1 || sum() != 0 {
		t.Error("an unknown wal_status is not exported alone at 1")
	}
}
