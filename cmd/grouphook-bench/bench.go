package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/grouphook/grouphook/sql/pgcluster"
)

// bench owns what every scenario shares: the cluster, the daemon binary and
// a temporary directory. close removes them.
type bench struct {
	opts    options
	out     io.Writer
	cluster *pgcluster.Cluster
	tmp     string
	bin     string
	machine machine
}

func newBench(ctx context.Context, opts options, out io.Writer) (*bench, error) {
	b := &bench{opts: opts, out: out}
	var err error
	if b.tmp, err = os.MkdirTemp("", "grouphook-bench-"); err != nil {
		return nil, fmt.Errorf("create a temporary directory: %w", err)
	}
	if b.bin = opts.bin; b.bin == "" {
		b.logf("building ./cmd/grouphook")
		if b.bin, err = buildDaemon(ctx, b.tmp); err != nil {
			b.close()
			return nil, err
		}
	}
	b.logf("starting a throwaway PostgreSQL")
	if b.cluster, err = pgcluster.Start(ctx, pgcluster.Options{Settings: clusterSettings(opts)}); err != nil {
		b.close()
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	if b.machine, err = describeMachine(ctx, b.cluster.URL("postgres")); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

// clusterSettings adapts pgcluster's test settings to a production-like
// database. synchronous_commit goes back on: pgcluster turns it off for
// fast tests, but a walsender decodes only flushed WAL, so with it off a
// commit returns before its WAL is flushed and reaches the daemon only
// after the WAL writer's next flush, adding that delay to the measured
// commit-to-receipt latency (fsync stays off, so a flush costs nothing).
// max_slot_wal_keep_size is bounded as the README recommends (the daemon
// warns otherwise); 10GB holds the largest backlog.
func clusterSettings(opts options) []string {
	s := []string{"max_slot_wal_keep_size = '10GB'"}
	if !opts.asyncCommit {
		s = append(s, "synchronous_commit = on")
	}
	return s
}

func (b *bench) close() {
	if b.cluster != nil {
		if err := b.cluster.Stop(); err != nil {
			b.logf("removing the throwaway PostgreSQL: %v", err)
		}
		b.cluster = nil
	}
	if b.tmp != "" {
		os.RemoveAll(b.tmp)
		b.tmp = ""
	}
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.out, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// scenarioTimeout caps every scenario, so a hung daemon cannot hang the run.
const scenarioTimeout = 30 * time.Minute

// runAll runs the selected scenarios in order and collects their results.
func (b *bench) runAll(ctx context.Context) *results {
	res := &results{Machine: b.machine, Settings: b.settings(), Started: time.Now().UTC()}
	steps := []struct {
		name string
		run  func(context.Context, *results) error
	}{
		{"drain", b.drainScenario},
		{"steady", b.steadyScenario},
		{"fanout", b.fanoutScenarios},
		{"slow", b.slowScenarios},
		{"big", b.bigScenario},
	}
	for _, s := range steps {
		if !b.opts.wants(s.name) || (s.name == "big" && b.opts.big == 0) {
			continue
		}
		if ctx.Err() != nil {
			res.fail(s.name, ctx.Err())
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, scenarioTimeout)
		err := s.run(sctx, res)
		cancel()
		if err != nil {
			b.logf("%s FAILED: %v", s.name, err)
			res.fail(s.name, err)
		}
	}
	res.Seconds = time.Since(res.Started).Seconds()
	res.Interrupted = ctx.Err() != nil
	res.total()
	return res
}

func (b *bench) settings() settings {
	return settings{
		Smoke: b.opts.smoke, Events: b.opts.events, SingleFraction: b.opts.singleFrac, Chunk: b.opts.chunk,
		RecvlogicalRuns: b.opts.recvRuns, Rate: b.opts.rate, DurationSeconds: b.opts.duration.Seconds(),
		FanoutEvents: b.opts.fanoutEvents, FanoutEndpoints: b.opts.fanoutEndpoints,
		SlowEvents: b.opts.slowEvents, SlowDelayMS: b.opts.slowDelay.Milliseconds(), SlowEndpoints: b.opts.slowEndpoints,
		Big: b.opts.big, Workers: b.opts.workers, SynchronousCommit: !b.opts.asyncCommit, DaemonEnv: b.opts.daemonEnv,
	}
}

// trial is one scenario's world: a fresh database with the groups table,
// its own slots (slots are cluster-wide, so each trial names its own), its
// endpoints and receiver, and later the daemon.
type trial struct {
	b      *bench
	name   string
	dbName string
	dbURL  string
	slot   string   // the daemon's GROUPHOOK_SLOT
	slots  []string // every slot the trial created, the daemon's first
	conn   *pgx.Conn
	recv   *receiver
	daemon *daemon
}

// newTrial creates a fresh database, starts a receiver serving eps and
// registers them, and creates the daemon's slot (plus one slot per name in
// extra, suffixed like the database) at the current WAL position, so
// everything committed afterwards is their backlog.
func (b *bench) newTrial(ctx context.Context, name string, eps []endpointSpec, delay time.Duration, track bool, extra ...string) (*trial, error) {
	seq := dbSeq.Add(1)
	r := &trial{b: b, name: name, slot: fmt.Sprintf("grouphook_%d", seq)}
	var err error
	if r.dbName, r.dbURL, err = b.newDatabase(ctx, seq, name); err != nil {
		return nil, err
	}
	if r.conn, err = pgx.Connect(ctx, r.dbURL); err != nil {
		return nil, fmt.Errorf("%s: connect: %w", name, err)
	}
	if r.recv, err = startReceiver(eps, delay, track); err != nil {
		r.close()
		return nil, err
	}
	if err := registerEndpoints(ctx, r.conn, r.recv.base, eps); err != nil {
		r.close()
		return nil, err
	}
	r.slots = []string{r.slot}
	for _, e := range extra {
		r.slots = append(r.slots, fmt.Sprintf("%s_%d", e, seq))
	}
	if err := createSlots(ctx, r.conn, r.slots...); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

// startDaemon starts a fresh daemon on the trial's database and slot.
func (r *trial) startDaemon(extraEnv ...string) error {
	extra := append([]string{"GROUPHOOK_SLOT=" + r.slot}, r.b.opts.daemonEnv...)
	d, err := startDaemon(r.b.bin, daemonEnv(r.dbURL, r.b.opts.workers, append(extra, extraEnv...)...))
	if err != nil {
		return err
	}
	r.daemon = d
	return nil
}

// stopDaemon stops the daemon and fails if it did not exit cleanly.
func (r *trial) stopDaemon() error {
	if r.daemon == nil {
		return nil
	}
	if err := r.daemon.stop(30 * time.Second); err != nil {
		return fmt.Errorf("%s: %w", r.name, err)
	}
	return nil
}

// close stops everything the trial started and drops its slots and
// database, so their WAL and files do not weigh on later scenarios.
func (r *trial) close() {
	if r.daemon != nil {
		_ = r.daemon.stop(30 * time.Second)
	}
	if r.recv != nil {
		r.recv.close()
	}
	if r.conn != nil {
		r.conn.Close(context.Background())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.b.dropDatabase(ctx, r.dbName, r.slots); err != nil {
		r.b.logf("%s: clean up: %v", r.name, err)
	}
}

// waitDelivered waits for want distinct verified callbacks and returns the
// time of the last one.
func (r *trial) waitDelivered(ctx context.Context, want int) (time.Time, error) {
	var died <-chan struct{}
	if r.daemon != nil {
		died = r.daemon.exited()
	}
	last, err := r.recv.waitUnique(ctx, want, r.b.opts.stall, died)
	if err != nil && r.daemon != nil {
		return last, fmt.Errorf("%s: %w\n%s", r.name, err, r.daemon.logTail(20))
	}
	return last, err
}

// check turns what the receiver counted into a verification record; want
// is the number of distinct callbacks expected.
func (r *trial) check(want int) verification {
	n, _, _ := r.recv.snapshot()
	v := verification{Expected: want, Unique: n, tally: r.recv.counts()}
	v.Lost = max(want-n, 0)
	if r.daemon != nil {
		v.DaemonLogLines = r.daemon.warnings()
		v.DaemonLogHead = r.daemon.logHead(3)
	}
	return v
}
