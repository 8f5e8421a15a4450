package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// buildDaemon compiles ./cmd/grouphook into dir and returns the binary.
func buildDaemon(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "grouphook")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/grouphook/grouphook/cmd/grouphook")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/grouphook: %w\n%s", err, out)
	}
	return bin, nil
}

// daemonEnv is the environment for one daemon run: ours, without any
// DATABASE_URL or GROUPHOOK_* from the caller's shell.
func daemonEnv(dbURL string, workers int, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "GROUPHOOK_") || strings.HasPrefix(kv, "DATABASE_URL=") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env,
		"DATABASE_URL="+dbURL,
		"GROUPHOOK_HTTP_ADDR=127.0.0.1:0",
		"GROUPHOOK_LOG_LEVEL=warn",
		"GROUPHOOK_LOG_FORMAT=text",
		"GROUPHOOK_TENANT_COLUMN=client_id",
		// The receiver is on loopback, which the daemon refuses by
		// default (SSRF protection); open exactly that address.
		"GROUPHOOK_ALLOWED_CIDRS=127.0.0.1/32",
	)
	if workers > 0 {
		env = append(env, "GROUPHOOK_WORKERS="+strconv.Itoa(workers))
	}
	return append(env, extra...)
}

// daemon is a running `grouphook run` child process.
type daemon struct {
	cmd     *exec.Cmd
	log     *syncBuffer
	done    chan struct{} // closed when the process has exited
	waitErr error
	mem     *memSampler
}

// startDaemon runs `bin run` with env. The child dies with us (Pdeathsig),
// so an interrupted benchmark leaves no daemon behind.
func startDaemon(bin string, env []string) (*daemon, error) {
	d := &daemon{log: &syncBuffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(bin, "run")
	d.cmd.Env = env
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s run: %w", bin, err)
	}
	d.mem = startMemSampler(d.cmd.Process.Pid, 50*time.Millisecond)
	go func() {
		d.waitErr = d.cmd.Wait()
		close(d.done)
	}()
	return d, nil
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// exited is closed when the daemon has exited.
func (d *daemon) exited() <-chan struct{} { return d.done }

// stop sends SIGTERM, waits for a clean exit and kills the process after
// grace. It returns the exit error, with the log's tail, unless the daemon
// exited 0.
func (d *daemon) stop(grace time.Duration) error {
	d.mem.stop()
	select {
	case <-d.done:
		return d.exitError()
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return d.exitError()
	case <-time.After(grace):
		_ = d.cmd.Process.Kill()
		<-d.done
		return fmt.Errorf("the daemon did not stop within %s of SIGTERM; killed it\n%s", grace, d.logTail(20))
	}
}

func (d *daemon) exitError() error {
	if d.waitErr != nil {
		return fmt.Errorf("the daemon exited with %w\n%s", d.waitErr, d.logTail(20))
	}
	return nil
}

// logTail returns the last n lines the daemon wrote.
func (d *daemon) logTail(n int) string {
	lines := strings.Split(strings.TrimRight(d.log.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "daemon log (last lines):\n  " + strings.Join(lines, "\n  ")
}

// logHead returns the first n lines the daemon wrote.
func (d *daemon) logHead(n int) []string {
	s := strings.TrimSpace(d.log.String())
	if s == "" {
		return nil
	}
	lines := strings.SplitN(s, "\n", n+1)
	return lines[:min(n, len(lines))]
}

// warnings counts the lines the daemon logged (its level is warn, so every
// line is a warning or an error).
func (d *daemon) warnings() int {
	s := strings.TrimSpace(d.log.String())
	if s == "" {
		return 0
	}
	return strings.Count(s, "\n") + 1
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 1<<20 { // keep the tail only
		b.buf.Next(b.buf.Len() / 2)
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// memSampler polls /proc/<pid>/status: VmHWM is the kernel's own peak
// resident set, VmRSS the current one.
type memSampler struct {
	pid     int
	stopped chan struct{}
	wg      sync.WaitGroup
	once    sync.Once

	mu      sync.Mutex
	hwm     uint64 // bytes, the latest VmHWM read
	maxRSS  uint64
	samples []memSample
}

type memSample struct {
	At  time.Duration `json:"at_seconds"`
	RSS uint64        `json:"rss_bytes"`
}

func startMemSampler(pid int, every time.Duration) *memSampler {
	m := &memSampler{pid: pid, stopped: make(chan struct{})}
	m.wg.Add(1)
	go m.loop(every)
	return m
}

func (m *memSampler) loop(every time.Duration) {
	defer m.wg.Done()
	start := time.Now()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		m.sample(time.Since(start))
		select {
		case <-m.stopped:
			return
		case <-t.C:
		}
	}
}

func (m *memSampler) sample(at time.Duration) {
	hwm, rss, err := readStatus(m.pid)
	if err != nil {
		return // the process is gone or not yet there
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.hwm = max(m.hwm, hwm)
	m.maxRSS = max(m.maxRSS, rss)
	m.samples = append(m.samples, memSample{At: at, RSS: rss})
}

// peak reads VmHWM now (the process must still run for an exact figure)
// and returns the peak and the largest sampled VmRSS, in bytes.
func (m *memSampler) peak() (hwm, maxRSS uint64) {
	m.sample(0)
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.hwm, m.maxRSS
}

// series returns up to n samples spread evenly over the run.
func (m *memSampler) series(n int) []memSample {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []memSample
	var all []memSample
	for _, s := range m.samples {
		if s.At >= 100*time.Millisecond { // not the exec'ing process
			all = append(all, s)
		}
	}
	if len(all) == 0 {
		return nil
	}
	n = min(n, len(all))
	for i := range n {
		s := all[i*(len(all)-1)/max(n-1, 1)]
		s.At = s.At.Round(time.Millisecond)
		out = append(out, s)
	}
	return out
}

func (m *memSampler) stop() {
	m.once.Do(func() { close(m.stopped) })
	m.wg.Wait()
}

func readStatus(pid int) (hwm, rss uint64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "VmHWM:"):
			hwm = parseKB(line)
		case strings.HasPrefix(line, "VmRSS:"):
			rss = parseKB(line)
		}
	}
	if hwm == 0 {
		return 0, 0, errors.New("no VmHWM in /proc status")
	}
	return hwm, rss, sc.Err()
}

// parseKB reads "VmRSS:	   12345 kB" as bytes.
func parseKB(line string) uint64 {
	f := strings.Fields(line)
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.ParseUint(f[1], 10, 64)
	return n * 1024
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every
// Linux architecture Go supports (sysconf needs cgo).
const clockTicks = 100

// cpuTime returns the user plus system CPU time the process has used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read the daemon's CPU time: %w", err)
	}
	// The command name, in parentheses, may hold spaces: count fields
	// after its closing parenthesis. utime and stime are fields 14 and 15.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, errors.New("unexpected /proc/<pid>/stat format")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("unexpected /proc/<pid>/stat format")
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// selfCPUTime returns the CPU time this process (the receiver, mostly) has
// used.
func selfCPUTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// listenAddr finds the TCP address the process listens on (its
// GROUPHOOK_HTTP_ADDR was 127.0.0.1:0) through its socket inodes and
// /proc/net/tcp.
func listenAddr(pid int) (string, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return "", fmt.Errorf("list the daemon's sockets: %w", err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return "", fmt.Errorf("read /proc/net/tcp: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] { // 0A: LISTEN
			continue
		}
		return decodeProcAddr(f[1])
	}
	return "", errors.New("the daemon listens on no TCP port yet")
}

// decodeProcAddr turns "0100007F:1F90" into "127.0.0.1:8080".
func decodeProcAddr(s string) (string, error) {
	ipHex, portHex, ok := strings.Cut(s, ":")
	ip, err1 := strconv.ParseUint(ipHex, 16, 32)
	port, err2 := strconv.ParseUint(portHex, 16, 16)
	if !ok || len(ipHex) != 8 || err1 != nil || err2 != nil {
		return "", fmt.Errorf("unexpected address %q in /proc/net/tcp", s)
	}
	return fmt.Sprintf("%d.%d.%d.%d:%d", byte(ip), byte(ip>>8), byte(ip>>16), byte(ip>>24), port), nil
}

// waitListen polls listenAddr until the daemon serves HTTP.
func (d *daemon) waitListen(ctx context.Context, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		addr, err := listenAddr(d.pid())
		if err == nil {
			return addr, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("find the daemon's HTTP address: %w (last: %w)", ctx.Err(), err)
		case <-d.done:
			return "", d.exitError()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
