package cdc

import (
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/jackc/pglogrepl"
)

// op is one step of a tracker script.
type op struct {
	kind string        // open, add, done, seal, idle, floor
	txn  string        // open, add, seal: transaction name
	id   string        // add, done: change name
	lsn  pglogrepl.LSN // open: commit; seal: end; idle, floor: position
	want pglogrepl.LSN // confirmed position after the step
}

func TestTrackerConfirmed(t *testing.T) {
	open := func(txn string, commit, want pglogrepl.LSN) op {
		return op{kind: "open", txn: txn, lsn: commit, want: want}
	}
	add := func(txn, id string, want pglogrepl.LSN) op { return op{kind: "add", txn: txn, id: id, want: want} }
	done := func(id string, want pglogrepl.LSN) op { return op{kind: "done", id: id, want: want} }
	seal := func(txn string, end, want pglogrepl.LSN) op {
		return op{kind: "seal", txn: txn, lsn: end, want: want}
	}
	idle := func(lsn, want pglogrepl.LSN) op { return op{kind: "idle", lsn: lsn, want: want} }
	floor := func(lsn, want pglogrepl.LSN) op { return op{kind: "floor", lsn: lsn, want: want} }

	tests := []struct {
		name  string
		start pglogrepl.LSN
		ops   []op
	}{
		{"in order", 10, []op{
			open("a", 100, 10), add("a", "a1", 10), add("a", "a2", 10), seal("a", 110, 10),
			done("a1", 10), done("a2", 110),
		}},
		{"empty transaction confirms at commit", 10, []op{
			open("a", 100, 10), seal("a", 110, 110),
		}},
		{"out of order done waits for the older transaction", 10, []op{
			open("a", 100, 10), add("a", "a1", 10), seal("a", 110, 10),
			open("b", 200, 10), add("b", "b1", 10), seal("b", 210, 10),
			open("c", 300, 10), add("c", "c1", 10), seal("c", 310, 10),
			done("c1", 10), done("b1", 10), done("a1", 310),
		}},
		{"partial progress stops at the first unsettled", 10, []op{
			open("a", 100, 10), add("a", "a1", 10), seal("a", 110, 10),
			open("b", 200, 10), add("b", "b1", 10), seal("b", 210, 10),
			open("c", 300, 10), add("c", "c1", 10), seal("c", 310, 10),
			done("a1", 110), done("c1", 110), done("b1", 310),
		}},
		{"unsealed entry blocks even with nothing outstanding", 10, []op{
			open("a", 100, 10), add("a", "a1", 10), done("a1", 10),
			open("b", 200, 10), seal("b", 210, 10), // cannot happen on the wire, but must stay safe
			seal("a", 110, 210),
		}},
		{"unsealed entry blocks later sealed ones", 10, []op{
			open("a", 100, 10), add("a", "a1", 10), seal("a", 110, 10), done("a1", 110),
			open("b", 200, 110), add("b", "b1", 110), done("b1", 110),
			idle(500, 110), // inside a transaction: never confirmed
			seal("b", 210, 210),
		}},
		{"double done is ignored", 10, []op{
			open("a", 100, 10), add("a", "a1", 10), add("a", "a2", 10), seal("a", 110, 10),
			done("a1", 10), done("a1", 10), done("a1", 10), done("a2", 110),
		}},
		{"idle confirms only when nothing is pending", 10, []op{
			idle(50, 50), idle(40, 50),
			open("a", 100, 50), add("a", "a1", 50), seal("a", 110, 50),
			idle(150, 50), done("a1", 110), idle(150, 150),
		}},
		{"floor raises but never lowers", 0, []op{
			floor(30, 30), floor(20, 30),
			open("a", 100, 30), add("a", "a1", 30), seal("a", 110, 30),
			floor(105, 105), done("a1", 110),
		}},
		{"never moves backwards", 500, []op{
			open("a", 100, 500), add("a", "a1", 500), seal("a", 110, 500), done("a1", 500),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			settled := 0
			tr := newTracker(100, tt.start, func() { settled++ })
			entries := map[string]*entry{}
			dones := map[string]func(){}
			added := 0
			for i, o := range tt.ops {
				switch o.kind {
				case "open":
					entries[o.txn] = tr.open(o.lsn)
				case "add":
					d, ok := tr.tryAdd(entries[o.txn])
					if !ok {
						t.Fatalf("step %d: tryAdd refused", i)
					}
					dones[o.id] = d
					added++
				case "done":
					dones[o.id]()
				case "seal":
					tr.seal(entries[o.txn], o.lsn)
				case "idle":
					tr.idle(o.lsn)
				case "floor":
					tr.floor(o.lsn)
				}
				if got := tr.Confirmed(); got != o.want {
					t.Fatalf("step %d (%s %s%s %d): confirmed %d, want %d", i, o.kind, o.txn, o.id, o.lsn, got, o.want)
				}
			}
			if settled != added-tr.InFlight() {
				t.Errorf("onSettle called %d times for %d settled changes", settled, added-tr.InFlight())
			}
		})
	}
}

func TestTrackerDoubleDoneCounted(t *testing.T) {
	tr := newTracker(10, 1, nil)
	e := tr.open(100)
	d, _ := tr.tryAdd(e)
	d()
	d()
	if n := tr.doubleDone.Load(); n != 1 {
		t.Errorf("doubleDone = %d, want 1", n)
	}
	if n := tr.InFlight(); n != 0 {
		t.Errorf("InFlight = %d after a double done, want 0", n)
	}
}

func TestTrackerMaxInFlight(t *testing.T) {
	tr := newTracker(2, 1, nil)
	e := tr.open(100)
	d1, ok1 := tr.tryAdd(e)
	_, ok2 := tr.tryAdd(e)
	if !ok1 || !ok2 {
		t.Fatal("tryAdd refused below the limit")
	}
	if _, ok := tr.tryAdd(e); ok {
		t.Fatal("tryAdd accepted a third change with max 2")
	}
	// Drain the wake-up token left by nothing so far, then expect one on done.
	select {
	case <-tr.changed:
	default:
	}
	d1()
	select {
	case <-tr.changed:
	default:
		t.Fatal("done did not signal a waiting stream")
	}
	d1() // double: must not free another slot
	if _, ok := tr.tryAdd(e); !ok {
		t.Fatal("tryAdd refused after a slot was freed")
	}
	if _, ok := tr.tryAdd(e); ok {
		t.Fatal("a double done freed a second slot")
	}
}

// TestTrackerConcurrent settles changes from many goroutines in random order
// while the confirmed position is read; run it with -race. The confirmed
// position must never move backwards, never pass an unsettled transaction,
// and end at the last transaction's end.
func TestTrackerConcurrent(t *testing.T) {
	const txns, perTxn = 300, 5
	tr := newTracker(txns*perTxn, 1, nil)
	type change struct {
		txn  int
		done func()
	}
	var changes []change
	ends := make([]pglogrepl.LSN, txns)
	for i := range txns {
		e := tr.open(pglogrepl.LSN(1000 * (i + 1)))
		for range perTxn {
			d, ok := tr.tryAdd(e)
			if !ok {
				t.Fatal("tryAdd refused")
			}
			changes = append(changes, change{i, d})
		}
		ends[i] = pglogrepl.LSN(1000*(i+1) + 10)
		tr.seal(e, ends[i])
	}
	rand.Shuffle(len(changes), func(i, j int) { changes[i], changes[j] = changes[j], changes[i] })

	var mu sync.Mutex
	settled := make([]int, txns) // settled changes per transaction
	stop := make(chan struct{})
	var watcher sync.WaitGroup
	watcher.Go(func() {
		var last pglogrepl.LSN
		for {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			c := tr.Confirmed()
			// Every transaction whose end is <= c must be fully settled.
			// settled is updated before done, so a settled count may
			// be ahead of the tracker, never behind.
			for i := range txns {
				if ends[i] > c {
					break
				}
				if settled[i] != perTxn {
					mu.Unlock()
					t.Errorf("confirmed %d passes transaction %d with %d of %d changes done", c, i, settled[i], perTxn)
					return
				}
			}
			mu.Unlock()
			if c < last {
				t.Errorf("confirmed moved backwards: %d after %d", c, last)
				return
			}
			last = c
		}
	})

	var wg sync.WaitGroup
	work := make(chan change)
	for range 8 {
		wg.Go(func() {
			for c := range work {
				mu.Lock()
				settled[c.txn]++
				mu.Unlock()
				c.done()
				c.done() // double calls are ignored
			}
		})
	}
	for _, c := range changes {
		work <- c
	}
	close(work)
	wg.Wait()
	close(stop)
	watcher.Wait()

	if got, want := tr.Confirmed(), ends[txns-1]; got != want {
		t.Errorf("confirmed %d after everything was done, want %d", got, want)
	}
	if n := tr.InFlight(); n != 0 {
		t.Errorf("InFlight = %d, want 0", n)
	}
	if n := tr.Pending(); n != 0 {
		t.Errorf("Pending = %d, want 0", n)
	}
}
