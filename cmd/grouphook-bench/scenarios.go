package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// recvlogicalSlot names the slots, created at the same point as the
// daemon's, that pg_recvlogical drains (numbered, then suffixed with the
// trial number).
const recvlogicalSlot = "bench_recvlogical"

// backlogSpec is a scenario that commits a backlog with the daemon stopped,
// then starts the daemon and times it until every callback was verified.
type backlogSpec struct {
	name   string
	eps    []endpointSpec
	delay  time.Duration // receiver's answer delay
	work   workload
	fanout bool     // every endpoint gets every event (else exactly one does)
	slots  []string // extra slots created with the daemon's
	// beforeDaemon runs after the backlog is committed, with its end LSN.
	beforeDaemon func(ctx context.Context, r *trial, endLSN pglogrepl.LSN) error
	profile      bool
}

func (b *bench) runBacklog(ctx context.Context, spec backlogSpec) (backlogResult, error) {
	var res backlogResult
	r, err := b.newTrial(ctx, spec.name, spec.eps, spec.delay, false, spec.slots...)
	if err != nil {
		return res, err
	}
	defer r.close()
	if err := b.commitBacklog(ctx, r, spec, &res); err != nil {
		return res, err
	}
	res.Deliveries = res.Events
	if spec.fanout {
		res.Deliveries *= len(spec.eps)
	}
	return res, b.timeDaemon(ctx, r, spec, &res)
}

// commitBacklog commits spec's workload and runs spec.beforeDaemon.
func (b *bench) commitBacklog(ctx context.Context, r *trial, spec backlogSpec, res *backlogResult) error {
	b.logf("%s: committing %d row changes", spec.name, spec.work.events)
	start := time.Now()
	var err error
	if res.Events, err = generate(ctx, r.conn, spec.work); err != nil {
		return fmt.Errorf("%s: %w", spec.name, err)
	}
	res.GenerateSeconds = time.Since(start).Seconds()
	endLSN, err := walInsertLSN(ctx, r.conn)
	if err != nil || spec.beforeDaemon == nil {
		return err
	}
	return spec.beforeDaemon(ctx, r, endLSN)
}

// timeDaemon starts a fresh daemon and times it until every callback of
// the backlog was verified, measuring its memory (and profiling it) on the
// way; then it stops the daemon gracefully.
func (b *bench) timeDaemon(ctx context.Context, r *trial, spec backlogSpec, res *backlogResult) error {
	b.logf("%s: starting the daemon; expecting %d callbacks", spec.name, res.Deliveries)
	var env []string
	if spec.profile {
		env = append(env, "GROUPHOOK_PPROF=true")
	}
	start, selfStart := time.Now(), selfCPUTime()
	if err := r.startDaemon(env...); err != nil {
		return err
	}
	var prof *profiler
	if spec.profile {
		prof = startProfiler(ctx, b.opts.profileDir, r.daemon, b.opts.profileSeconds, b.logf)
	}
	last, waitErr := r.waitDelivered(ctx, res.Deliveries)
	cpu := cpuUse(r.daemon.pid(), selfCPUTime()-selfStart, res.Deliveries)
	res.PeakRSS, res.MaxSampledRSS = r.daemon.mem.peak()
	res.RSSSeries = r.daemon.mem.series(10)
	if prof != nil {
		res.Profile = prof.finish()
	}
	res.Verification = r.check(res.Deliveries)
	if waitErr != nil {
		return waitErr
	}
	res.CPU = cpu
	res.Seconds = last.Sub(start).Seconds()
	res.FirstCallbackSecs = r.recv.first().Sub(start).Seconds()
	res.DeliveriesPerSecond = float64(res.Deliveries) / res.Seconds
	res.EventsPerSecond = float64(res.Events) / res.Seconds
	stopErr := r.stopDaemon()
	res.Verification = r.check(res.Deliveries) // again after the graceful stop
	b.logf("%s: %d callbacks in %.2fs (%.0f/s), peak RSS %s", spec.name, res.Deliveries, res.Seconds, res.DeliveriesPerSecond, mib(res.PeakRSS))
	return stopErr
}

// drainScenario: the backlog read by pg_recvlogical, then by the daemon.
// pg_recvlogical drains its own slots, all created with the daemon's, one
// run per slot; the median run is the baseline, since a run of a second or
// two is easily disturbed on a shared machine.
func (b *bench) drainScenario(ctx context.Context, res *results) error {
	var runs []time.Duration
	slots := make([]string, b.opts.recvRuns)
	for i := range slots {
		slots[i] = fmt.Sprintf("%s%d", recvlogicalSlot, i+1)
	}
	spec := backlogSpec{
		name:  "drain",
		eps:   tenantEndpoints("drain", 1),
		work:  b.workload(b.opts.events, 1),
		slots: slots,
		beforeDaemon: func(ctx context.Context, r *trial, endLSN pglogrepl.LSN) error {
			if err := markEnd(ctx, r.conn); err != nil {
				return err
			}
			for _, slot := range r.slots[1:] {
				b.logf("drain: pg_recvlogical --slot %s up to %s", slot, endLSN)
				d, err := runRecvlogical(ctx, r.dbURL, slot, endLSN)
				if err != nil {
					return err
				}
				runs = append(runs, d)
			}
			return nil
		},
		profile: b.opts.profileDir != "",
	}
	out, err := b.runBacklog(ctx, spec)
	res.Drain = newDrainResult(out, runs)
	return err
}

func newDrainResult(out backlogResult, runs []time.Duration) *drainResult {
	d := &drainResult{Daemon: out}
	for _, r := range runs {
		d.RecvlogicalRuns = append(d.RecvlogicalRuns, r.Seconds())
	}
	if len(runs) == 0 || out.Events == 0 {
		return d
	}
	sorted := slices.Clone(runs)
	slices.Sort(sorted)
	d.RecvlogicalSeconds = sorted[len(sorted)/2].Seconds()
	d.RecvlogicalEventsPerSecond = float64(out.Events) / d.RecvlogicalSeconds
	if out.EventsPerSecond > 0 {
		d.Ratio = out.EventsPerSecond / d.RecvlogicalEventsPerSecond
	}
	return d
}

// markEnd writes a little WAL after the backlog's end LSN and flushes it
// (a commit with an xid, which pgoutput skips as an empty transaction), so
// pg_recvlogical -E sees the walsender pass the end; see runRecvlogical.
func markEnd(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, "SELECT pg_logical_emit_message(false, 'grouphook-bench', 'end'), txid_current()"); err != nil {
		return fmt.Errorf("write WAL past the end: %w", err)
	}
	return nil
}

// fanoutScenarios: the same backlog to 1, 10 and 100 endpoints, routed by
// tenant (each event to one endpoint) and to all tenants (every endpoint
// gets every event).
func (b *bench) fanoutScenarios(ctx context.Context, res *results) error {
	for _, n := range b.opts.fanoutEndpoints {
		for _, all := range []bool{false, true} {
			name, eps, tenants := fmt.Sprintf("fanout-tenant-%d", n), tenantEndpoints("fanout", n), n
			if all {
				name, eps, tenants = fmt.Sprintf("fanout-all-%d", n), allTenantEndpoints("fanout", n), 1
			}
			out, err := b.runBacklog(ctx, backlogSpec{name: name, eps: eps, work: b.workload(b.opts.fanoutEvents, tenants), fanout: all})
			res.FanOut = append(res.FanOut, fanoutResult{Endpoints: n, AllTenants: all, Backlog: out})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// slowScenarios: receivers that answer after slowDelay, to every endpoint.
func (b *bench) slowScenarios(ctx context.Context, res *results) error {
	for _, n := range b.opts.slowEndpoints {
		out, err := b.runBacklog(ctx, backlogSpec{
			name:   fmt.Sprintf("slow-%d", n),
			eps:    allTenantEndpoints("slow", n),
			delay:  b.opts.slowDelay,
			work:   b.workload(b.opts.slowEvents, 1),
			fanout: true,
		})
		sequential := float64(time.Second) / float64(b.opts.slowDelay)
		sr := slowResult{Endpoints: n, DelayMS: b.opts.slowDelay.Milliseconds(), Backlog: out, SequentialPerSecond: sequential}
		if out.DeliveriesPerSecond > 0 {
			sr.Speedup = out.DeliveriesPerSecond / sequential
		}
		res.Slow = append(res.Slow, sr)
		if err != nil {
			return err
		}
	}
	return nil
}

// bigScenario: peak memory while draining a very large backlog.
func (b *bench) bigScenario(ctx context.Context, res *results) error {
	out, err := b.runBacklog(ctx, backlogSpec{name: "big", eps: tenantEndpoints("big", 1), work: b.workload(b.opts.big, 1)})
	res.Big = &out
	return err
}

// cpuUse records the CPU time the daemon and the receiver spent on n
// deliveries; per delivery it is far steadier than throughput on a busy
// machine.
func cpuUse(pid int, receiver time.Duration, n int) cpuUsage {
	u := cpuUsage{ReceiverSeconds: receiver.Seconds()}
	if d, err := cpuTime(pid); err == nil {
		u.DaemonSeconds = d.Seconds()
	}
	if n > 0 {
		u.DaemonPerDeliveryUS = u.DaemonSeconds / float64(n) * 1e6
		u.ReceiverPerDeliveryUS = u.ReceiverSeconds / float64(n) * 1e6
	}
	return u
}

func (b *bench) workload(events, tenants int) workload {
	return workload{events: events, singleFrac: b.opts.singleFrac, chunk: b.opts.chunk, tenants: tenants}
}

// tenantEndpoints are n endpoints of tenants tenant-000 .. tenant-(n-1).
func tenantEndpoints(prefix string, n int) []endpointSpec {
	eps := make([]endpointSpec, n)
	for i := range eps {
		eps[i] = endpointSpec{path: fmt.Sprintf("/%s/%03d", prefix, i), tenant: fmt.Sprintf("tenant-%03d", i), secret: newSecret()}
	}
	return eps
}

// allTenantEndpoints are n endpoints with client_id NULL.
func allTenantEndpoints(prefix string, n int) []endpointSpec {
	eps := tenantEndpoints(prefix, n)
	for i := range eps {
		eps[i].tenant = ""
	}
	return eps
}

func newSecret() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return "bench_" + hex.EncodeToString(b)
}

// steadyScenario: single-row INSERT transactions at a fixed rate against a
// running daemon; latency is first receipt minus the moment the commit
// returned, matched by group id.
func (b *bench) steadyScenario(ctx context.Context, res *results) error {
	r, err := b.newTrial(ctx, "steady", tenantEndpoints("steady", 1), 0, true)
	if err != nil {
		return err
	}
	defer r.close()
	if err := r.startDaemon(); err != nil {
		return err
	}
	const warmup = 20
	if err := r.warmUp(ctx, warmup); err != nil {
		return err
	}
	b.logf("steady: %d inserts/s for %s", b.opts.rate, b.opts.duration)
	commits, elapsed, err := steadyLoad(ctx, r.conn, b.opts.rate, b.opts.duration)
	if err != nil {
		return err
	}
	want := warmup + len(commits)
	_, waitErr := r.waitDelivered(ctx, want)
	s := &steadyResult{
		TargetRate: b.opts.rate, Commits: len(commits),
		AchievedRate: float64(len(commits)) / elapsed.Seconds(),
		Verification: r.check(want),
	}
	s.PeakRSS, _ = r.daemon.mem.peak()
	s.Latency = latencies(r.recv, commits)
	res.Steady = s
	if waitErr != nil {
		return waitErr
	}
	b.logf("steady: p50 %.1fms p99 %.1fms max %.1fms", s.Latency.P50, s.Latency.P99, s.Latency.Max)
	stopErr := r.stopDaemon()
	s.Verification = r.check(want)
	return stopErr
}

// warmUp commits n rows and waits for their callbacks, so connection set-up
// is not part of the measured latency.
func (r *trial) warmUp(ctx context.Context, n int) error {
	for i := range n {
		if _, err := insertOne(ctx, r.conn, int64(-1-i)); err != nil {
			return err
		}
	}
	_, err := r.waitDelivered(ctx, n)
	return err
}

// commit is one steady-load insert: its group id and when COMMIT returned.
type commit struct {
	id int64
	at time.Time
}

// steadyLoad commits single-row INSERTs on a fixed schedule (open loop: a
// late insert does not push the later ones back) for d.
func steadyLoad(ctx context.Context, conn *pgx.Conn, rate int, d time.Duration) ([]commit, time.Duration, error) {
	n := int(float64(rate) * d.Seconds())
	interval := time.Second / time.Duration(rate)
	commits := make([]commit, 0, n)
	start := time.Now()
	for i := range n {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return commits, time.Since(start), ctx.Err()
			}
		}
		id, err := insertOne(ctx, conn, int64(i))
		if err != nil {
			return commits, time.Since(start), err
		}
		commits = append(commits, commit{id: id, at: time.Now()})
	}
	return commits, time.Since(start), nil
}

// latencies computes commit-to-receipt percentiles in milliseconds.
func latencies(recv *receiver, commits []commit) latencyStats {
	ds := make([]time.Duration, 0, len(commits))
	for _, c := range commits {
		if at, ok := recv.receivedAt(c.id); ok {
			// A callback can be read a hair before our goroutine sees
			// COMMIT return; that is a latency of zero.
			ds = append(ds, max(at.Sub(c.at), 0))
		}
	}
	slices.Sort(ds)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	pct := func(q float64) float64 {
		if len(ds) == 0 {
			return 0
		}
		i := int(q*float64(len(ds))+0.999999) - 1
		return ms(ds[min(max(i, 0), len(ds)-1)])
	}
	st := latencyStats{Samples: len(ds), P50: pct(0.50), P90: pct(0.90), P99: pct(0.99)}
	if len(ds) > 0 {
		st.Max = ms(ds[len(ds)-1])
	}
	return st
}
