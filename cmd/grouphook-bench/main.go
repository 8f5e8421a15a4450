// Command grouphook-bench measures grouphook end to end on this machine:
// backlog drain against pg_recvlogical's ceiling on the same WAL, steady-load
// latency, fan-out, slow receivers and peak memory. It starts a throwaway
// PostgreSQL, runs the real daemon as a child process and receives every
// callback in process, verifying x-hashed-key on each request.
//
//	go run ./cmd/grouphook-bench            # full run, 6 to 10 minutes on 2 cores
//	go run ./cmd/grouphook-bench -smoke     # about 30 seconds, for CI
//	go run ./cmd/grouphook-bench -only drain -profile prof   # CPU and heap profiles of the drain
//
// It prints one table and writes the same figures as JSON (-json). It exits
// non-zero when any callback was lost, failed verification or reached the
// wrong tenant, or when a scenario failed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options is the command line, checked once by parseOptions.
type options struct {
	smoke           bool
	bin             string
	jsonPath        string
	events          int
	singleFrac      float64
	chunk           int
	recvRuns        int
	rate            int
	duration        time.Duration
	fanoutEvents    int
	fanoutEndpoints []int
	slowEvents      int
	slowDelay       time.Duration
	slowEndpoints   []int
	big             int
	workers         int
	stall           time.Duration
	only            map[string]bool
	profileDir      string
	profileSeconds  int
	asyncCommit     bool
	selfProfile     string
	daemonEnv       []string
}

// scenario names accepted by -only.
var scenarioNames = []string{"drain", "steady", "fanout", "slow", "big"}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("grouphook-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&o.smoke, "smoke", false, "small sizes, under a minute (for CI); -big is skipped unless set")
	fs.StringVar(&o.bin, "bin", "", "grouphook binary to run (default: go build ./cmd/grouphook into a temporary directory)")
	fs.StringVar(&o.jsonPath, "json", "bench-results.json", "write the figures as JSON to this file (empty: don't)")
	fs.IntVar(&o.events, "events", 100_000, "row changes in the backlog drain")
	fs.Float64Var(&o.singleFrac, "single", 0.10, "fraction of backlog changes committed in single-row transactions")
	fs.IntVar(&o.chunk, "chunk", 1000, "rows per multi-row transaction in backlogs")
	fs.IntVar(&o.recvRuns, "recvlogical-runs", 3, "drain: pg_recvlogical runs (one slot each); the median is the baseline")
	fs.IntVar(&o.rate, "rate", 500, "steady load: single-row INSERT transactions per second")
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "steady load: how long")
	fs.IntVar(&o.fanoutEvents, "fanout-events", 10_000, "fan-out: row changes in each backlog")
	fanout := fs.String("fanout-endpoints", "1,10,100", "fan-out: endpoint counts")
	fs.IntVar(&o.slowEvents, "slow-events", 2000, "slow receivers: row changes in each backlog")
	fs.DurationVar(&o.slowDelay, "slow-delay", 50*time.Millisecond, "slow receivers: how long each response takes")
	slow := fs.String("slow-endpoints", "1,10", "slow receivers: endpoint counts (every endpoint gets every event)")
	fs.IntVar(&o.big, "big", 1_000_000, "memory: row changes in the big backlog (0: skip)")
	fs.IntVar(&o.workers, "workers", 0, "GROUPHOOK_WORKERS for the daemon (0: the daemon's default)")
	fs.DurationVar(&o.stall, "stall", 60*time.Second, "fail a scenario when no new callback arrives for this long")
	only := fs.String("only", "", "comma list of scenarios to run: "+strings.Join(scenarioNames, ","))
	fs.StringVar(&o.profileDir, "profile", "", "directory for a CPU profile of the daemon during the backlog drain (GROUPHOOK_PPROF, else perf)")
	fs.IntVar(&o.profileSeconds, "profile-seconds", 10, "length of the pprof CPU profile")
	denv := fs.String("daemon-env", "", "extra environment for the daemon, comma separated, e.g. GOGC=400,GOMAXPROCS=2")
	fs.StringVar(&o.selfProfile, "cpuprofile", "", "write a CPU profile of the benchmark process itself (the receiver) to this file")
	fs.BoolVar(&o.asyncCommit, "async-commit", false, "keep pgcluster's synchronous_commit=off (a commit then reaches the walsender only after the WAL writer's next flush)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.smoke {
		o.applySmoke(set)
	}
	var err error
	if o.fanoutEndpoints, err = parseInts(*fanout); err != nil {
		return o, fmt.Errorf("-fanout-endpoints: %w", err)
	}
	if o.slowEndpoints, err = parseInts(*slow); err != nil {
		return o, fmt.Errorf("-slow-endpoints: %w", err)
	}
	if o.smoke && !set["fanout-endpoints"] {
		o.fanoutEndpoints = []int{1, 10}
	}
	for _, kv := range strings.Split(*denv, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		if !strings.Contains(kv, "=") {
			return o, fmt.Errorf("-daemon-env: %q is not NAME=value", kv)
		}
		o.daemonEnv = append(o.daemonEnv, kv)
	}
	if o.only, err = parseOnly(*only); err != nil {
		return o, err
	}
	return o, o.validate()
}

// applySmoke shrinks every size the user did not set explicitly.
func (o *options) applySmoke(set map[string]bool) {
	shrink := map[string]func(){
		"events":        func() { o.events = 2000 },
		"duration":      func() { o.duration = 3 * time.Second },
		"fanout-events": func() { o.fanoutEvents = 500 },
		"slow-events":   func() { o.slowEvents = 200 },
		"big":           func() { o.big = 0 },
		"stall":         func() { o.stall = 20 * time.Second },
	}
	for name, f := range shrink {
		if !set[name] {
			f()
		}
	}
}

func (o *options) validate() error {
	switch {
	case o.events < 1:
		return errors.New("-events must be at least 1")
	case o.singleFrac < 0 || o.singleFrac > 1:
		return errors.New("-single must be between 0 and 1")
	case o.chunk < 1:
		return errors.New("-chunk must be at least 1")
	case o.rate < 1 || o.duration <= 0:
		return errors.New("-rate and -duration must be positive")
	case o.fanoutEvents < 1 || o.slowEvents < 1:
		return errors.New("-fanout-events and -slow-events must be at least 1")
	case o.big < 0 || o.workers < 0:
		return errors.New("-big and -workers must not be negative")
	case o.recvRuns < 1 || o.recvRuns > 9:
		return errors.New("-recvlogical-runs must be between 1 and 9")
	case o.stall <= 0:
		return errors.New("-stall must be positive")
	}
	for _, n := range append(append([]int{}, o.fanoutEndpoints...), o.slowEndpoints...) {
		if n < 1 || n > 1000 {
			return fmt.Errorf("endpoint count %d out of range 1..1000", n)
		}
	}
	return nil
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a number: %w", f, err)
		}
		out = append(out, n)
	}
	return out, nil
}

func parseOnly(s string) (map[string]bool, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	known := map[string]bool{}
	for _, n := range scenarioNames {
		known[n] = true
	}
	only := map[string]bool{}
	for _, n := range strings.Split(s, ",") {
		n = strings.TrimSpace(n)
		if !known[n] {
			return nil, fmt.Errorf("-only: unknown scenario %q (use %s)", n, strings.Join(scenarioNames, ","))
		}
		only[n] = true
	}
	return only, nil
}

// wants reports whether scenario name runs.
func (o options) wants(name string) bool { return o.only == nil || o.only[name] }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts, err := parseOptions(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "grouphook-bench:", err)
		os.Exit(2)
	}
	if err := run(ctx, opts, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "grouphook-bench:", err)
		os.Exit(1)
	}
}

// run executes every selected scenario, prints the table and writes JSON.
// Scenarios that fail are recorded and the rest still run, so one bad
// figure does not hide the others; the returned error lists the failures.
func run(ctx context.Context, opts options, stdout, stderr io.Writer) error {
	if opts.selfProfile != "" {
		stopProfile, err := profileSelf(opts.selfProfile)
		if err != nil {
			return err
		}
		defer stopProfile()
	}
	b, err := newBench(ctx, opts, stderr)
	if err != nil {
		return err
	}
	defer b.close()
	res := b.runAll(ctx)
	printTable(stdout, res)
	if opts.jsonPath != "" {
		if err := writeJSON(opts.jsonPath, res); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "\nwrote", opts.jsonPath)
	}
	return res.verdict()
}

// profileSelf starts a CPU profile of this process, written to path.
func profileSelf(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
