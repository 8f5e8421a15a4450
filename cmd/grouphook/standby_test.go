package main

// Two "grouphook run" processes (real binaries) against one database: one
// streams, the other stands by and takes over when the first is killed.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// httpAddr waits for the child's "serving /metrics ..." log line (JSON
// logs) and returns the address it listens on.
func (c *child) httpAddr(t testing.TB) string {
	t.Helper()
	var addr string
	eventually(t, 30*time.Second, func() bool {
		for _, line := range strings.Split(c.stderr.String(), "\n") {
			var rec struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &rec) == nil && strings.HasPrefix(rec.Msg, "serving /metrics") && rec.Addr != "" {
				addr = rec.Addr
				return true
			}
		}
		if c.exited() {
			t.Fatalf("grouphook exited with code %d:\n%s", c.cmd.ProcessState.ExitCode(), tail(c.stderr.String(), 20000))
		}
		return false
	}, func() string { return "the HTTP address in the log:\n" + tail(c.stderr.String(), 5000) })
	return addr
}

// readyz returns the status code and JSON body of GET /readyz.
func readyz(t testing.TB, addr string) (int, map[string]any) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var body map[string]any
	_ = json.Unmarshal(b, &body)
	return resp.StatusCode, body
}

// TestStandbyTakeover: two grouphook processes run against one database
// while rows are committed throughout. One streams (/readyz 200,
// grouphook_replication_streaming 1); the other stands by (/readyz 503
// with "streaming": false, the gauge 0). The streaming one is killed with
// SIGKILL: the stand-by takes over within 10 s, and every committed row
// arrives.
func TestStandbyTakeover(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, `CREATE TABLE groups (id bigint PRIMARY KEY, name text)`)
	db.migrate(t, nil)
	secret := randomSecret(t, true)
	r := newReceiver(t, "standby", secret)
	db.addEndpoint(t, endpoint{URL: r.URL(), Secret: secret})
	env := db.env(nil)

	a := startChild(t, env, "run")
	a.waitStreaming(t, db)
	b := startChild(t, env, "run")
	addrA, addrB := a.httpAddr(t), b.httpAddr(t)
	eventually(t, waitLong, func() bool { return strings.Contains(b.stderr.String(), "standing by") },
		func() string { return "the second process to stand by:\n" + tail(b.stderr.String(), 5000) })

	if code, body := readyz(t, addrA); code != http.StatusOK || body["streaming"] != true {
		t.Errorf("streaming replica: /readyz %d %v, want 200 with streaming true", code, body)
	}
	if code, body := readyz(t, addrB); code != http.StatusServiceUnavailable || body["streaming"] != false {
		t.Errorf("stand-by replica: /readyz %d %v, want 503 with streaming false", code, body)
	}
	if v := mustSeries(t, scrape(t, addrA), "grouphook_replication_streaming"); v != 1 {
		t.Errorf("streaming replica: grouphook_replication_streaming %v, want 1", v)
	}
	if v := mustSeries(t, scrape(t, addrB), "grouphook_replication_streaming"); v != 0 {
		t.Errorf("stand-by replica: grouphook_replication_streaming %v, want 0", v)
	}

	// Rows are committed throughout, one per transaction.
	var (
		mu        sync.Mutex
		committed []int
		writeErr  error
	)
	stop := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := db.Pool.Exec(ctx, "INSERT INTO groups VALUES ($1, $2)", i, fmt.Sprintf("row %d", i))
			cancel()
			mu.Lock()
			if err != nil {
				writeErr = err
				mu.Unlock()
				return
			}
			committed = append(committed, i)
			mu.Unlock()
			time.Sleep(30 * time.Millisecond)
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-writerDone
	}()
	r.waitOK(t, 20, waitLong)

	a.signal(t, syscall.SIGKILL)
	killed := time.Now()
	if code := a.wait(t, 10*time.Second); code != -1 {
		t.Fatalf("the first process exited with %d, want -1 (killed):\n%s", code, tail(a.stderr.String(), 20000))
	}
	var took time.Duration
	eventually(t, 30*time.Second, func() bool {
		code, _ := readyz(t, addrB)
		took = time.Since(killed)
		return code == http.StatusOK
	}, func() string { return "the stand-by to take over:\n" + tail(b.stderr.String(), 10000) })
	t.Logf("the stand-by took over %s after SIGKILL", took.Round(time.Millisecond))
	if took > 10*time.Second {
		t.Errorf("the stand-by took over %s after SIGKILL, want within 10s", took)
	}
	if !db.streaming(t) {
		t.Error("after the take-over no walsender holds the slot")
	}
	if v := mustSeries(t, scrape(t, addrB), "grouphook_replication_streaming"); v != 1 {
		t.Errorf("after the take-over: grouphook_replication_streaming %v, want 1", v)
	}

	time.Sleep(2 * time.Second) // more rows, now through the new streamer
	close(stop)
	<-writerDone
	mu.Lock()
	want, werr := append([]int(nil), committed...), writeErr
	mu.Unlock()
	if werr != nil {
		t.Fatalf("writer: %v", werr)
	}
	missing := func() []int {
		seen := map[int64]bool{}
		for _, d := range r.ok() {
			seen[d.groupInt(t, "id")] = true
		}
		var out []int
		for _, id := range want {
			if !seen[int64(id)] {
				out = append(out, id)
			}
		}
		return out
	}
	eventually(t, waitLong, func() bool { return len(missing()) == 0 }, func() string {
		m := missing()
		return fmt.Sprintf("every committed row; %d of %d missing, e.g. %v\n%s", len(m), len(want), m[:min(len(m), 20)], tail(b.stderr.String(), 10000))
	})
	ids := map[int64]string{}
	for _, d := range r.ok() {
		row := d.groupInt(t, "id")
		if first, ok := ids[row]; ok && first != d.Ev.ID {
			t.Errorf("row %d came again with id %s, first with %s", row, d.Ev.ID, first)
		}
		ids[row] = d.Ev.ID
	}
	t.Logf("%d rows committed, %d callbacks (repeats after the kill carry the same id)", len(want), len(r.ok()))

	b.signal(t, syscall.SIGTERM)
	if code := b.wait(t, 20*time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0\n%s", code, tail(b.stderr.String(), 20000))
	}
}
