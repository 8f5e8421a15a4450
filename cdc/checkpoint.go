package cdc

import (
	"sync"
	"sync/atomic"

	"github.com/jackc/pglogrepl"
)

// tracker decides which WAL position may be confirmed to the server: the end
// LSN of the newest transaction such that it and every earlier transaction
// are fully delivered. It also bounds the work in flight: every change
// holds one unit, and the stream may make it hold more (its weight, the
// deliveries it became), so the bound counts deliveries.
//
// Entries are kept in commit order. The stream opens an entry at BEGIN,
// adds one outstanding change per submitted change and seals the entry at
// COMMIT with the transaction's end LSN. A done func, callable from any
// goroutine, settles one change. The confirmed position only moves forward,
// and never past an unsealed entry or one with outstanding changes.
//
// The stream goroutine owns open, add and seal; done funcs, Confirmed and
// InFlight are safe from any goroutine.
type tracker struct {
	mu        sync.Mutex
	queue     []*entry // commit order; queue[0] is the oldest unsettled entry
	confirmed pglogrepl.LSN
	inFlight  int // changes submitted and not done
	units     int // units they hold; at most max, but see grow
	max       int

	// changed gets a token (without blocking) whenever a change is done
	// or the confirmed position moves, so that a goroutine waiting for a
	// free slot or for the drain can wake up.
	changed chan struct{}

	// onSettle, if set, is called once per settled change, outside the
	// lock (the stream decrements the in-flight gauge).
	onSettle func()

	// doubleDone counts done funcs called more than once; such calls are
	// ignored.
	doubleDone atomic.Int64
}

// entry is one transaction in the tracker.
type entry struct {
	commit      pglogrepl.LSN // BEGIN's final LSN: the commit record's start
	end         pglogrepl.LSN // COMMIT's transaction end LSN, once sealed
	outstanding int
	sealed      bool
}

// newTracker returns a tracker that holds at most max changes in flight and
// starts from the confirmed position start (the slot's confirmed_flush_lsn).
// onSettle may be nil.
func newTracker(max int, start pglogrepl.LSN, onSettle func()) *tracker {
	if max < 1 {
		max = 1
	}
	return &tracker{max: max, confirmed: start, changed: make(chan struct{}, 1), onSettle: onSettle}
}

// Confirmed is the position that may be sent as the flush position.
func (t *tracker) Confirmed() pglogrepl.LSN {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.confirmed
}

// InFlight is the number of submitted changes whose done was not called yet.
func (t *tracker) InFlight() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.inFlight
}

// Pending is the number of transactions not yet settled (unsealed, or with
// changes in flight, or behind one that is).
func (t *tracker) Pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.queue)
}

// open starts the entry of a transaction whose commit record starts at
// commit. Transactions must be opened in commit order.
func (t *tracker) open(commit pglogrepl.LSN) *entry {
	e := &entry{commit: commit}
	t.mu.Lock()
	t.queue = append(t.queue, e)
	t.mu.Unlock()
	return e
}

// held is one change in flight: the units it holds until its done func.
type held struct {
	e       *entry
	units   int  // guarded by tracker.mu
	settled bool // guarded by tracker.mu
	called  atomic.Bool
}

// tryAdd takes one unit for one change of e and returns its done func, or
// false when MaxInFlight units are already in flight.
func (t *tracker) tryAdd(e *entry) (done func(), ok bool) {
	h, ok := t.tryHold(e)
	if !ok {
		return nil, false
	}
	return h.done(t), true
}

// tryHold is tryAdd, returning the change's hold for grow.
func (t *tracker) tryHold(e *entry) (*held, bool) {
	t.mu.Lock()
	if t.units >= t.max {
		t.mu.Unlock()
		return nil, false
	}
	t.inFlight++
	t.units++
	e.outstanding++
	t.mu.Unlock()
	return &held{e: e, units: 1}, true
}

// done returns the change's done func, which releases every unit it holds.
func (h *held) done(t *tracker) func() {
	return func() {
		if !h.called.CompareAndSwap(false, true) {
			t.doubleDone.Add(1)
			return
		}
		t.settle(h)
	}
}

// tryGrow makes h hold n more units, when they fit under max, or when h is
// the only change in flight (so a change heavier than max still goes, one
// at a time). It reports true, holding nothing more, when h is done
// already.
func (t *tracker) tryGrow(h *held, n int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if h.settled || n <= 0 {
		return true
	}
	if t.units+n > t.max && t.units != h.units {
		return false
	}
	t.units += n
	h.units += n
	return true
}

// Units is the number of units held by the changes in flight.
func (t *tracker) Units() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.units
}

func (t *tracker) settle(h *held) {
	t.mu.Lock()
	t.inFlight--
	t.units -= h.units
	h.settled = true
	h.e.outstanding--
	t.advanceLocked()
	t.mu.Unlock()
	if t.onSettle != nil {
		t.onSettle()
	}
	t.signal()
}

// seal records the end of e's transaction (COMMIT's TransactionEndLSN).
func (t *tracker) seal(e *entry, end pglogrepl.LSN) {
	t.mu.Lock()
	e.sealed = true
	e.end = end
	moved := t.advanceLocked()
	t.mu.Unlock()
	if moved {
		t.signal()
	}
}

// idle confirms lsn, a position the server reports as fully sent, but only
// when no transaction is pending: then nothing before lsn awaits delivery.
// The caller must not be inside a BEGIN..COMMIT (an open entry makes the
// queue non-empty anyway). It reports whether the confirmed position moved.
func (t *tracker) idle(lsn pglogrepl.LSN) bool {
	t.mu.Lock()
	moved := false
	if len(t.queue) == 0 && lsn > t.confirmed {
		t.confirmed = lsn
		moved = true
	}
	t.mu.Unlock()
	if moved {
		t.signal()
	}
	return moved
}

// floor raises the confirmed position to lsn, the slot's confirmed_flush_lsn
// as read from the server, which never resends anything before it. It never
// lowers the position.
func (t *tracker) floor(lsn pglogrepl.LSN) {
	t.mu.Lock()
	if lsn > t.confirmed {
		t.confirmed = lsn
	}
	t.mu.Unlock()
}

// advanceLocked drops settled entries from the head of the queue and moves
// the confirmed position to the end of the newest of them.
func (t *tracker) advanceLocked() bool {
	moved := false
	for len(t.queue) > 0 {
		e := t.queue[0]
		if !e.sealed || e.outstanding > 0 {
			break
		}
		if e.end > t.confirmed {
			t.confirmed = e.end
			moved = true
		}
		t.queue[0] = nil
		t.queue = t.queue[1:]
	}
	return moved
}

func (t *tracker) signal() {
	select {
	case t.changed <- struct{}{}:
	default:
	}
}
