package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
)

// results is everything one run measured; it is also the JSON document.
type results struct {
	Machine  machine   `json:"machine"`
	Settings settings  `json:"settings"`
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"seconds"`

	Drain  *drainResult   `json:"drain,omitempty"`
	Steady *steadyResult  `json:"steady,omitempty"`
	FanOut []fanoutResult `json:"fan_out,omitempty"`
	Slow   []slowResult   `json:"slow_receivers,omitempty"`
	Big    *backlogResult `json:"big_backlog,omitempty"`

	Totals      verification      `json:"totals"`
	Interrupted bool              `json:"interrupted,omitempty"` // Ctrl-C: callbacks still missing then are not "lost"
	Failures    map[string]string `json:"failures,omitempty"`
}

type machine struct {
	CPU        string `json:"cpu"`
	Cores      int    `json:"cores"`
	MemoryMiB  uint64 `json:"memory_mib"`
	Kernel     string `json:"kernel"`
	GoVersion  string `json:"go_version"`
	PostgreSQL string `json:"postgresql"`
}

type settings struct {
	Smoke             bool     `json:"smoke"`
	Events            int      `json:"events"`
	SingleFraction    float64  `json:"single_row_fraction"`
	Chunk             int      `json:"rows_per_transaction"`
	Rate              int      `json:"steady_rate"`
	DurationSeconds   float64  `json:"steady_seconds"`
	FanoutEvents      int      `json:"fanout_events"`
	FanoutEndpoints   []int    `json:"fanout_endpoints"`
	SlowEvents        int      `json:"slow_events"`
	SlowDelayMS       int64    `json:"slow_delay_ms"`
	SlowEndpoints     []int    `json:"slow_endpoints"`
	Big               int      `json:"big_events"`
	RecvlogicalRuns   int      `json:"pg_recvlogical_runs"`
	Workers           int      `json:"workers"` // 0: the daemon's default
	SynchronousCommit bool     `json:"synchronous_commit"`
	DaemonEnv         []string `json:"daemon_env,omitempty"`
}

// verification is what the receiver saw against what it expected.
type verification struct {
	Expected int `json:"expected"`
	Unique   int `json:"unique_verified"`
	Lost     int `json:"lost"`
	tally
	DaemonLogLines int      `json:"daemon_log_lines"` // warnings and errors
	DaemonLogHead  []string `json:"daemon_log_head,omitempty"`
}

func (v *verification) add(o verification) {
	v.Expected += o.Expected
	v.Unique += o.Unique
	v.Lost += o.Lost
	v.tally.add(o.tally)
	v.DaemonLogLines += o.DaemonLogLines
	if len(v.DaemonLogHead) < 5 {
		v.DaemonLogHead = append(v.DaemonLogHead, o.DaemonLogHead[:min(len(o.DaemonLogHead), 5-len(v.DaemonLogHead))]...)
	}
}

type backlogResult struct {
	Events              int          `json:"events"`
	Deliveries          int          `json:"deliveries"`
	GenerateSeconds     float64      `json:"generate_seconds"`
	Seconds             float64      `json:"seconds"` // daemon start to the last first receipt
	FirstCallbackSecs   float64      `json:"first_callback_seconds"`
	EventsPerSecond     float64      `json:"events_per_second"`
	DeliveriesPerSecond float64      `json:"deliveries_per_second"`
	CPU                 cpuUsage     `json:"cpu"`
	PeakRSS             uint64       `json:"peak_rss_bytes"` // VmHWM
	MaxSampledRSS       uint64       `json:"max_sampled_rss_bytes"`
	RSSSeries           []memSample  `json:"rss_series,omitempty"`
	Profile             string       `json:"profile,omitempty"`
	Verification        verification `json:"verification"`
}

// cpuUsage is the CPU time spent from the daemon's start to the last
// callback: by the daemon (from /proc) and by this process, which is
// mostly the receiver.
type cpuUsage struct {
	DaemonSeconds         float64 `json:"daemon_seconds"`
	DaemonPerDeliveryUS   float64 `json:"daemon_us_per_delivery"`
	ReceiverSeconds       float64 `json:"receiver_seconds"`
	ReceiverPerDeliveryUS float64 `json:"receiver_us_per_delivery"`
}

type drainResult struct {
	RecvlogicalRuns            []float64     `json:"pg_recvlogical_runs_seconds"`
	RecvlogicalSeconds         float64       `json:"pg_recvlogical_seconds"` // the median run
	RecvlogicalEventsPerSecond float64       `json:"pg_recvlogical_events_per_second"`
	Daemon                     backlogResult `json:"daemon"`
	Ratio                      float64       `json:"ratio"` // daemon / pg_recvlogical
}

type latencyStats struct {
	Samples int     `json:"samples"`
	P50     float64 `json:"p50_ms"`
	P90     float64 `json:"p90_ms"`
	P99     float64 `json:"p99_ms"`
	Max     float64 `json:"max_ms"`
}

type steadyResult struct {
	TargetRate   int          `json:"target_rate"`
	AchievedRate float64      `json:"achieved_rate"`
	Commits      int          `json:"commits"`
	Latency      latencyStats `json:"latency"`
	PeakRSS      uint64       `json:"peak_rss_bytes"`
	Verification verification `json:"verification"`
}

type fanoutResult struct {
	Endpoints  int           `json:"endpoints"`
	AllTenants bool          `json:"all_tenants"`
	Backlog    backlogResult `json:"backlog"`
}

type slowResult struct {
	Endpoints           int           `json:"endpoints"`
	DelayMS             int64         `json:"delay_ms"`
	Backlog             backlogResult `json:"backlog"`
	SequentialPerSecond float64       `json:"one_at_a_time_per_second"`
	Speedup             float64       `json:"speedup"`
}

func (r *results) fail(scenario string, err error) {
	if r.Failures == nil {
		r.Failures = map[string]string{}
	}
	r.Failures[scenario] = err.Error()
}

// verifications lists every scenario's verification record.
func (r *results) verifications() []verification {
	var vs []verification
	if r.Drain != nil {
		vs = append(vs, r.Drain.Daemon.Verification)
	}
	if r.Steady != nil {
		vs = append(vs, r.Steady.Verification)
	}
	for _, f := range r.FanOut {
		vs = append(vs, f.Backlog.Verification)
	}
	for _, s := range r.Slow {
		vs = append(vs, s.Backlog.Verification)
	}
	if r.Big != nil {
		vs = append(vs, r.Big.Verification)
	}
	return vs
}

// verdict sums the verifications and fails the run on any lost, unverified
// or misrouted callback, or any failed scenario.
func (r *results) verdict() error {
	var errs []error
	if r.Interrupted {
		errs = append(errs, errors.New("interrupted: the figures are incomplete"))
	}
	if t := r.Totals; t.Lost > 0 || t.Failed > 0 || t.Misrouted > 0 {
		errs = append(errs, fmt.Errorf("%d callbacks missing, %d failed verification, %d reached the wrong tenant", t.Lost, t.Failed, t.Misrouted))
	}
	for name, msg := range r.Failures {
		errs = append(errs, fmt.Errorf("scenario %s failed: %s", name, firstLine(msg)))
	}
	return errors.Join(errs...)
}

func (r *results) total() {
	r.Totals = verification{}
	for _, v := range r.verifications() {
		r.Totals.add(v)
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func writeJSON(path string, r *results) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// printTable prints one table of every figure.
func printTable(w io.Writer, r *results) {
	fmt.Fprintf(w, "\ngrouphook benchmark  %s, %d cores, %s, %s\n\n", r.Machine.CPU, r.Machine.Cores, r.Machine.GoVersion, r.Machine.PostgreSQL)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tfigure\tdetail")
	fmt.Fprintln(tw, "--------\t------\t------")
	if d := r.Drain; d != nil {
		fmt.Fprintf(tw, "drain %d: pg_recvlogical\t%s events/s\t%.2fs, the median of %d runs (%s)\n", d.Daemon.Events, num(d.RecvlogicalEventsPerSecond), d.RecvlogicalSeconds, len(d.RecvlogicalRuns), seconds(d.RecvlogicalRuns))
		fmt.Fprintf(tw, "drain %d: grouphook\t%s events/s\t%.2fs (first callback after %.2fs), ratio %.3f to pg_recvlogical (target >= 0.20, aim 0.30)\n", d.Daemon.Events, num(d.Daemon.EventsPerSecond), d.Daemon.Seconds, d.Daemon.FirstCallbackSecs, d.Ratio)
		fmt.Fprintf(tw, "CPU, drain %d\t%.0f us/event\tdaemon %.2f CPU-s; receiver %.0f us/event (%.2f CPU-s)\n", d.Daemon.Events, d.Daemon.CPU.DaemonPerDeliveryUS, d.Daemon.CPU.DaemonSeconds, d.Daemon.CPU.ReceiverPerDeliveryUS, d.Daemon.CPU.ReceiverSeconds)
		fmt.Fprintf(tw, "memory, drain %d\t%s peak RSS\tlargest sampled RSS %s (target < 128 MiB)\n", d.Daemon.Events, mib(d.Daemon.PeakRSS), mib(d.Daemon.MaxSampledRSS))
	}
	if s := r.Steady; s != nil {
		l := s.Latency
		fmt.Fprintf(tw, "steady %d/s\tp99 %.1f ms\tp50 %.1f, p90 %.1f, max %.1f ms; %d commits at %.0f/s (target p99 < 25 ms)\n", s.TargetRate, l.P99, l.P50, l.P90, l.Max, s.Commits, s.AchievedRate)
	}
	for _, f := range r.FanOut {
		kind := "tenant-routed"
		if f.AllTenants {
			kind = "all-tenant"
		}
		fmt.Fprintf(tw, "fan-out %d endpoint(s), %s\t%s deliveries/s\t%d deliveries of %d events in %.2fs; %.0f us/delivery; peak RSS %s\n", f.Endpoints, kind, num(f.Backlog.DeliveriesPerSecond), f.Backlog.Deliveries, f.Backlog.Events, f.Backlog.Seconds, f.Backlog.CPU.DaemonPerDeliveryUS, mib(f.Backlog.PeakRSS))
	}
	for _, s := range r.Slow {
		fmt.Fprintf(tw, "slow %dms, %d endpoint(s)\t%s deliveries/s\t%.0fx a one-at-a-time sender (%.0f/s); %d deliveries in %.2fs; peak RSS %s\n", s.DelayMS, s.Endpoints, num(s.Backlog.DeliveriesPerSecond), s.Speedup, s.SequentialPerSecond, s.Backlog.Deliveries, s.Backlog.Seconds, mib(s.Backlog.PeakRSS))
	}
	if b := r.Big; b != nil {
		fmt.Fprintf(tw, "memory, drain %d\t%s peak RSS\t%s events/s, %.0f us/event; sampled RSS %s\n", b.Events, mib(b.PeakRSS), num(b.EventsPerSecond), b.CPU.DaemonPerDeliveryUS, rssTrend(b.RSSSeries))
	}
	t := r.Totals
	fmt.Fprintf(tw, "verification\t%d lost, %d failed\t%d verified (%d distinct of %d expected), %d duplicates, %d misrouted, %d daemon warnings\n", t.Lost, t.Failed, t.Verified, t.Unique, t.Expected, t.Duplicates, t.Misrouted, t.DaemonLogLines)
	tw.Flush()
	for name, msg := range r.Failures {
		fmt.Fprintf(w, "\nFAILED %s: %s\n", name, msg)
	}
}

func rssTrend(s []memSample) string {
	parts := make([]string, len(s))
	for i, m := range s {
		parts[i] = fmt.Sprintf("%.0f", float64(m.RSS)/(1<<20))
	}
	return strings.Join(parts, " ") + " MiB over the run"
}

func seconds(fs []float64) string {
	parts := make([]string, len(fs))
	for i, f := range fs {
		parts[i] = fmt.Sprintf("%.2fs", f)
	}
	return strings.Join(parts, " ")
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// num formats a rate with thousands separators; 0 means the scenario did
// not finish.
func num(f float64) string {
	if f == 0 {
		return "-"
	}
	s := fmt.Sprintf("%.0f", f)
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

func describeMachine(ctx context.Context, dbURL string) (machine, error) {
	m := machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), CPU: cpuModel(), MemoryMiB: memTotalMiB()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return m, fmt.Errorf("connect to read the server version: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var v string
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&v); err != nil {
		return m, fmt.Errorf("read the server version: %w", err)
	}
	m.PostgreSQL = "PostgreSQL " + v
	return m, nil
}

func cpuModel() string {
	return procField("/proc/cpuinfo", "model name", ":")
}

func memTotalMiB() uint64 {
	return parseKB("MemTotal: "+procField("/proc/meminfo", "MemTotal", ":")) >> 20
}

// procField returns the value of the first "key<sep> value" line in path.
func procField(path, key, sep string) string {
	f, err := os.Open(path)
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), sep)
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
