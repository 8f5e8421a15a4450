package deliver

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/grouphook/grouphook/metrics"
)

// benchDispatcher returns a dispatcher whose registry holds n endpoints,
// all pointing at one fast in-process receiver, with no database.
func benchDispatcher(b *testing.B, n int) (*Dispatcher, *Snapshot) {
	b.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	b.Cleanup(srv.Close)
	eps := make([]Endpoint, n)
	for i := range eps {
		eps[i] = Endpoint{ID: int64(i + 1), URL: srv.URL + "/hook?token=abc", Secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
			Events: AllEvents, IncludeData: true}
	}
	snap := NewSnapshot(eps)
	reg := NewRegistry(nil, nil, nil)
	reg.snap.Store(snap)
	d := NewDispatcher(DispatcherConfig{Workers: 8}, reg, nil, nil, metrics.New(prometheus.NewRegistry()))
	return d, snap
}

// BenchmarkSend is one attempt: build the request, sign, POST, read the
// answer, on a reused connection.
func BenchmarkSend(b *testing.B) {
	d, snap := benchDispatcher(b, 1)
	ep := snap.Endpoints()[0]
	ev := benchEvent()
	body := AppendBody(nil, &ev, true)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := d.send(ctx, ep, &ev, body); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDispatch is the whole in-memory path per event: route, lane,
// worker, body, attempt, metrics, done.
func BenchmarkDispatch(b *testing.B) {
	d, _ := benchDispatcher(b, 1)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { _ = d.Run(ctx); close(runDone) }()
	defer func() { cancel(); <-runDone }()
	ev := benchEvent()
	groups := [...]string{"g0", "g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8", "g9", "g10", "g11", "g12", "g13", "g14", "g15"}
	var wg sync.WaitGroup
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		e := ev
		e.GroupKey = groups[i%len(groups)]
		i++
		wg.Add(1)
		d.Submit(e, wg.Done)
		if i%64 == 0 {
			wg.Wait() // keep the backlog small, as MaxInFlight does
		}
	}
	wg.Wait()
}
