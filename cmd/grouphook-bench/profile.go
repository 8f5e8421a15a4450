package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// profiler captures a CPU profile of the daemon during a scenario: through
// the daemon's pprof endpoint when GROUPHOOK_PPROF is honoured, else with
// perf record. finish must be called while the daemon still runs.
type profiler struct {
	dir     string
	logf    func(string, ...any)
	addr    string     // the daemon's HTTP address, for pprof
	cpuDone chan error // the pprof CPU profile's fetch
	perf    *exec.Cmd  // perf record, when pprof is unavailable
	started time.Time
}

func startProfiler(ctx context.Context, dir string, d *daemon, seconds int, logf func(string, ...any)) *profiler {
	p := &profiler{dir: dir, logf: logf, started: time.Now()}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		logf("profile: %v", err)
		return p
	}
	if addr, err := d.waitListen(ctx, 30*time.Second); err == nil && pprofServed(ctx, addr) {
		p.addr = addr
		p.cpuDone = make(chan error, 1)
		go func() {
			p.cpuDone <- fetch(ctx, "http://"+addr+"/debug/pprof/profile?seconds="+strconv.Itoa(seconds), filepath.Join(dir, "cpu.pprof"), time.Duration(seconds+30)*time.Second)
		}()
		logf("profile: pprof CPU profile for %ds from %s", seconds, addr)
		return p
	}
	perfPath, err := exec.LookPath("perf")
	if err != nil {
		logf("profile: the daemon serves no /debug/pprof/ and perf is not installed; no profile")
		return p
	}
	p.perf = exec.Command(perfPath, "record", "-F", "999", "-g", "-p", strconv.Itoa(d.pid()), "-o", filepath.Join(dir, "perf.data"))
	p.perf.Stdout, p.perf.Stderr = io.Discard, io.Discard
	if err := p.perf.Start(); err != nil {
		logf("profile: perf record: %v", err)
		p.perf = nil
	}
	logf("profile: perf record -p %d", d.pid())
	return p
}

// finish waits for the profile and also saves a heap profile (pprof
// only). It returns a description of what it wrote.
func (p *profiler) finish() string {
	switch {
	case p.cpuDone != nil:
		if err := <-p.cpuDone; err != nil {
			return "pprof CPU profile failed: " + err.Error()
		}
		heap := filepath.Join(p.dir, "heap.pprof")
		if err := fetch(context.Background(), "http://"+p.addr+"/debug/pprof/heap", heap, 30*time.Second); err != nil {
			p.logf("profile: heap: %v", err)
		}
		return "pprof: " + filepath.Join(p.dir, "cpu.pprof") + " and " + heap
	case p.perf != nil:
		_ = p.perf.Process.Signal(syscall.SIGINT)
		_ = p.perf.Wait()
		return fmt.Sprintf("perf: %s (%.1fs)", filepath.Join(p.dir, "perf.data"), time.Since(p.started).Seconds())
	}
	return ""
}

func pprofServed(ctx context.Context, addr string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/pprof/", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func fetch(ctx context.Context, url, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}
