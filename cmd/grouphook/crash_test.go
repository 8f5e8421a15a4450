package main

// The daemon as a real child process: graceful shutdown on SIGTERM, and
// SIGKILL at random moments while rows stream in.

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// TestGracefulShutdown sends SIGTERM while a callback is in flight (the
// receiver takes 1 s): the callback completes, the position covers it, the
// process exits 0, and a restart does not send it again.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, `CREATE TABLE groups (id bigint PRIMARY KEY, name text)`)
	db.migrate(t, nil)
	secret := randomSecret(t, true)
	r := newReceiver(t, "slow", secret)
	arrived := make(chan struct{})
	var once sync.Once
	var completed atomic.Int64 // unix nanoseconds when the first callback was answered
	r.setRespond(func(d *delivery) int {
		once.Do(func() { close(arrived) })
		time.Sleep(time.Second)
		completed.CompareAndSwap(0, time.Now().UnixNano())
		return http.StatusOK
	})
	db.addEndpoint(t, endpoint{URL: r.URL(), Secret: secret})
	env := db.env(map[string]string{"GROUPHOOK_SHUTDOWN_TIMEOUT": "10s"})

	c := startChild(t, env, "run")
	c.waitStreaming(t, db)
	db.commit(t, `INSERT INTO groups VALUES (1, 'one')`)
	select {
	case <-arrived:
	case <-time.After(waitLong):
		t.Fatalf("no callback arrived\n%s", tail(c.stderr.String(), 20000))
	}
	c.signal(t, syscall.SIGTERM)
	sent := time.Now()
	// Committed after SIGTERM: the stopping daemon may or may not read it,
	// but it must arrive after the restart at the latest.
	db.commit(t, `INSERT INTO groups VALUES (2, 'two')`)
	if code := c.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0\n%s", code, tail(c.stderr.String(), 20000))
	}
	exited := time.Now()
	t.Logf("exited %s after SIGTERM", exited.Sub(sent).Round(time.Millisecond))

	done := completed.Load()
	if done == 0 || time.Unix(0, done).After(exited) {
		t.Fatalf("the in-flight callback was not answered before the process exited")
	}
	got := r.snapshot()
	if len(got) == 0 || got[0].Status != http.StatusOK || got[0].groupInt(t, "id") != 1 {
		t.Fatalf("first callback: %s", describe(got))
	}
	assertBody(t, got[0], "CREATE", `{"id":1,"name":"one"}`, "")
	commit1, _ := idLSN(t, got[0].Ev.ID)
	db.waitSlotInactive(t, 10*time.Second)
	if cf := db.confirmedFlush(t); cf <= commit1 {
		t.Fatalf("after a graceful exit confirmed_flush_lsn is %s, not past the delivered transaction's commit at %s\n%s", cf, commit1, tail(c.stderr.String(), 20000))
	}

	// Restart: group 2 arrives, group 1 does not come again.
	r.setRespond(nil)
	c = startChild(t, env, "run")
	c.waitStreaming(t, db)
	eventually(t, waitLong, func() bool {
		for _, d := range r.ok() {
			if d.groupInt(t, "id") == 2 {
				return true
			}
		}
		return false
	}, func() string { return "group 2 after the restart:\n" + describe(r.snapshot()) })
	c.signal(t, syscall.SIGTERM)
	if code := c.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0\n%s", code, tail(c.stderr.String(), 20000))
	}
	n1 := 0
	for _, d := range r.snapshot() {
		if d.groupInt(t, "id") == 1 {
			n1++
		}
	}
	if n1 != 1 {
		t.Errorf("group 1 was sent %d times; the graceful exit should have confirmed it", n1)
	}
}

// TestGracefulShutdownMidTransaction sends SIGTERM while the daemon is
// still reading a 1000-row transaction whose first callback is in flight.
// The delivered callback can only be confirmed with its whole transaction,
// so the daemon must read on to the COMMIT (well within the grace period)
// and deliver the rest: after exit 0 the position covers the transaction,
// and a restart sends nothing again.
func TestGracefulShutdownMidTransaction(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, `CREATE TABLE groups (id bigint PRIMARY KEY, name text)`)
	db.migrate(t, nil)
	secret := randomSecret(t, false)
	r := newReceiver(t, "mid", secret)
	arrived := make(chan struct{})
	var once sync.Once
	r.setRespond(func(d *delivery) int {
		first := false
		once.Do(func() { first = true; close(arrived) })
		if first {
			time.Sleep(time.Second)
		}
		return http.StatusOK
	})
	db.addEndpoint(t, endpoint{URL: r.URL(), Secret: secret})
	env := db.env(nil)

	c := startChild(t, env, "run")
	c.waitStreaming(t, db)
	const rows = 1000
	db.commit(t, fmt.Sprintf(`INSERT INTO groups SELECT g, 'row ' || g FROM generate_series(1, %d) g`, rows))
	select {
	case <-arrived:
	case <-time.After(waitLong):
		t.Fatalf("no callback arrived\n%s", tail(c.stderr.String(), 20000))
	}
	c.signal(t, syscall.SIGTERM)
	if code := c.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0\n%s", code, tail(c.stderr.String(), 20000))
	}
	got := r.ok()
	if len(got) == 0 {
		t.Fatal("nothing delivered")
	}
	commit, _ := idLSN(t, got[0].Ev.ID)
	db.waitSlotInactive(t, 10*time.Second)
	cf := db.confirmedFlush(t)
	t.Logf("%d of %d rows delivered before exit; confirmed_flush_lsn %s, commit %s", len(got), rows, cf, commit)
	if cf <= commit {
		t.Errorf("after a graceful exit confirmed_flush_lsn %s does not cover the transaction (commit at %s) whose callbacks were delivered: %d of %d rows will be sent again",
			cf, commit, len(got), rows)
	}

	// A restart finishes whatever is left, and repeats nothing confirmed.
	before := len(r.snapshot())
	c = startChild(t, env, "run")
	c.waitStreaming(t, db)
	eventually(t, waitLong, func() bool {
		seen := map[string]bool{}
		for _, d := range r.ok() {
			seen[d.Ev.ID] = true
		}
		return len(seen) == rows
	}, func() string { return "every row after the restart" })
	c.signal(t, syscall.SIGTERM)
	if code := c.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0\n%s", code, tail(c.stderr.String(), 20000))
	}
	if cf > commit {
		if again := len(r.snapshot()) - before; again != rows-len(got) {
			t.Errorf("after the restart %d callbacks came, want the %d not delivered before", again, rows-len(got))
		}
	}
}

// TestSIGTERMDuringStartup: a stop request while the daemon still waits to
// create its slot (creation waits for running transactions) is an ordinary
// shutdown: exit 0, not an error an orchestrator would count as a crash.
func TestSIGTERMDuringStartup(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, `CREATE TABLE groups (id bigint PRIMARY KEY, name text)`)
	db.migrate(t, nil)
	ctx := context.Background()
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	if _, err := tx.Exec(ctx, "INSERT INTO groups VALUES (1, 'still open')"); err != nil {
		t.Fatal(err)
	}

	c := startChild(t, db.env(nil), "run")
	eventually(t, 30*time.Second, func() bool {
		if c.exited() {
			t.Fatalf("grouphook exited early:\n%s", c.stderr.String())
		}
		return db.queryString(t, "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)::text", db.Slot) == "true"
	}, func() string { return "grouphook to start creating its slot" })
	c.signal(t, syscall.SIGTERM)
	if code := c.wait(t, 20*time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM during start-up, want 0:\n%s", code, c.stderr.String())
	}
}

// TestCrashRecovery: single-row transactions stream in while the daemon is
// killed with SIGKILL at random moments and restarted. Every committed row
// arrives at least once, and every repeat carries the same webhook-id (and
// the very same body) as the first delivery.
func TestCrashRecovery(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, `CREATE TABLE groups (id bigint PRIMARY KEY, name text)`)
	db.migrate(t, nil)
	secret := randomSecret(t, false)
	r := newReceiver(t, "crash", secret)
	var rmu sync.Mutex
	rnd := mrand.New(mrand.NewPCG(5, 6))
	// Mostly quick, sometimes slow; every fifth row fails its first four
	// attempts, so that at any moment some rows wait for a retry: a daemon
	// that confirmed them before delivery would lose them in the next kill.
	attempts := map[int64]int{}
	r.setRespond(func(d *delivery) int {
		rmu.Lock()
		defer rmu.Unlock()
		row, _ := strconv.ParseInt(groupKey(d), 10, 64)
		attempts[row]++
		if row%5 == 0 && attempts[row] <= 4 {
			return http.StatusServiceUnavailable
		}
		delay := time.Duration(rnd.IntN(5)) * time.Millisecond
		if rnd.IntN(20) == 0 {
			delay = time.Duration(100+rnd.IntN(200)) * time.Millisecond
		}
		rmu.Unlock()
		time.Sleep(delay)
		rmu.Lock()
		return http.StatusOK
	})
	db.addEndpoint(t, endpoint{URL: r.URL(), Secret: secret})
	env := db.env(map[string]string{"GROUPHOOK_LOG_LEVEL": "warn"})

	c := startChild(t, env, "run")
	c.waitStreaming(t, db)

	const rows = 400
	var (
		wmu       sync.Mutex
		committed []int
		writeErr  error
		lastEnd   pglogrepl.LSN
	)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		ctx := context.Background()
		for i := 1; i <= rows; i++ {
			if _, err := db.Pool.Exec(ctx, "INSERT INTO groups VALUES ($1, $2)", i, fmt.Sprintf("row %d", i)); err != nil {
				wmu.Lock()
				writeErr = err
				wmu.Unlock()
				return
			}
			wmu.Lock()
			committed = append(committed, i)
			wmu.Unlock()
			time.Sleep(40 * time.Millisecond)
		}
		var s string
		if err := db.Pool.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err == nil {
			l, _ := pglogrepl.ParseLSN(s)
			wmu.Lock()
			lastEnd = l
			wmu.Unlock()
		}
	}()

	kills := 0
	krnd := mrand.New(mrand.NewPCG(7, 8))
killing:
	for kills < 4 {
		select {
		case <-writerDone:
			break killing
		case <-time.After(time.Duration(1500+krnd.IntN(2000)) * time.Millisecond):
		}
		c.signal(t, syscall.SIGKILL)
		if code := c.wait(t, 10*time.Second); code != -1 && code != 0 {
			// -1: killed by the signal; anything else means it had already failed.
			t.Fatalf("grouphook exited with %d before SIGKILL:\n%s", code, tail(c.stderr.String(), 20000))
		}
		kills++
		time.Sleep(time.Duration(krnd.IntN(300)) * time.Millisecond)
		c = startChild(t, env, "run")
	}
	<-writerDone
	wmu.Lock()
	werr, want, end := writeErr, slices.Clone(committed), lastEnd
	wmu.Unlock()
	if werr != nil {
		t.Fatalf("writer: %v", werr)
	}
	if kills < 3 {
		t.Fatalf("only %d kills happened while rows streamed in", kills)
	}

	eventually(t, 45*time.Second, func() bool {
		seen := map[int64]bool{}
		for _, d := range r.ok() {
			seen[d.groupInt(t, "id")] = true
		}
		for _, id := range want {
			if !seen[int64(id)] {
				return false
			}
		}
		return true
	}, func() string {
		seen := map[int64]bool{}
		for _, d := range r.ok() {
			seen[d.groupInt(t, "id")] = true
		}
		var missing []int
		for _, id := range want {
			if !seen[int64(id)] {
				missing = append(missing, id)
			}
		}
		return fmt.Sprintf("every committed row; %d of %d missing, e.g. %v\nlog:\n%s", len(missing), len(want), missing[:min(len(missing), 20)], tail(c.stderr.String(), 10000))
	})

	// Every attempt, failed ones included, of one row carries one id and
	// one body.
	first := map[int64]delivery{}
	idRow := map[string]int64{}
	dups := 0
	for _, d := range r.snapshot() {
		row := d.groupInt(t, "id")
		f, seen := first[row]
		if !seen {
			first[row] = d
			assertBody(t, d, "CREATE", fmt.Sprintf(`{"id":%d,"name":"row %d"}`, row, row), "")
			if other, taken := idRow[d.Ev.ID]; taken {
				t.Errorf("rows %d and %d share the id %s", other, row, d.Ev.ID)
			}
			idRow[d.Ev.ID] = row
			continue
		}
		dups++
		if d.Ev.ID != f.Ev.ID || d.Header.Get("webhook-id") != f.Header.Get("webhook-id") {
			t.Errorf("row %d came again with id %s, first with %s", row, d.Ev.ID, f.Ev.ID)
		} else if string(d.Body) != string(f.Body) {
			t.Errorf("row %d came again with another body:\nfirst: %s\nagain: %s", row, f.Body, d.Body)
		}
	}
	t.Logf("%d rows, %d kills, %d repeated attempts", len(want), kills, dups)

	// The last run stops cleanly and confirms everything.
	if !c.exited() {
		c.waitStreaming(t, db) // its signal handler is installed by then
		c.signal(t, syscall.SIGTERM)
		if code := c.wait(t, 20*time.Second); code != 0 {
			t.Fatalf("exit code %d after SIGTERM, want 0\n%s", code, tail(c.stderr.String(), 20000))
		}
	}
	last := first[int64(rows)]
	commitLast, _ := idLSN(t, last.Ev.ID)
	db.waitSlotInactive(t, 10*time.Second)
	if c := db.confirmedFlush(t); c <= commitLast {
		t.Errorf("confirmed_flush_lsn %s after a clean exit; the last row committed at %s (WAL ended at %s)", c, commitLast, end)
	}
}
