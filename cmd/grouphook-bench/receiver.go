package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// receiver is the clients' side: one HTTP server, one path per endpoint. It
// verifies x-hashed-key over the raw body on every request, drops
// duplicates by webhook-id, checks tenant isolation and remembers when each
// group was first received.
type receiver struct {
	srv   *http.Server
	base  string // http://127.0.0.1:port
	delay time.Duration

	mu        sync.Mutex
	endpoints map[string]*endpointState // by path
	unique    int                       // first verified receipts, all endpoints
	firstNew  time.Time                 // time of the very first receipt
	lastNew   time.Time                 // time of the newest first receipt
	progress  chan struct{}             // closed and replaced on every first receipt
	firstSeen map[int64]time.Time       // group id -> first verified receipt (when tracking)
	track     bool
	tally     tally
}

// tally counts what the receiver saw.
type tally struct {
	Requests   int64 `json:"requests"`
	Verified   int64 `json:"verified"`
	Failed     int64 `json:"failed_verification"`
	Duplicates int64 `json:"duplicates"`
	Misrouted  int64 `json:"misrouted"`
}

func (t *tally) add(o tally) {
	t.Requests += o.Requests
	t.Verified += o.Verified
	t.Failed += o.Failed
	t.Duplicates += o.Duplicates
	t.Misrouted += o.Misrouted
}

type endpointState struct {
	spec   endpointSpec
	key    []byte
	tenant []byte // `"client_id":"tenant-007"`, nil for all tenants
	seen   map[string]struct{}
}

// startReceiver serves eps on a loopback port. Each response waits delay
// first (slow receivers); track records first receipt times per group id.
func startReceiver(eps []endpointSpec, delay time.Duration, track bool) (*receiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("start the receiver: %w", err)
	}
	r := &receiver{
		base:      "http://" + ln.Addr().String(),
		delay:     delay,
		endpoints: make(map[string]*endpointState, len(eps)),
		progress:  make(chan struct{}),
		track:     track,
		firstSeen: map[int64]time.Time{},
	}
	for _, e := range eps {
		st := &endpointState{spec: e, key: []byte(e.secret), seen: map[string]struct{}{}}
		if e.tenant != "" {
			st.tenant = []byte(`"client_id":"` + e.tenant + `"`)
		}
		r.endpoints[e.path] = st
	}
	r.srv = &http.Server{
		Handler:           http.HandlerFunc(r.serve),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go r.srv.Serve(ln)
	return r, nil
}

func (r *receiver) close() { r.srv.Close() }

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	st, ok := r.endpoints[req.URL.Path]
	if !ok || req.Method != http.MethodPost {
		http.Error(w, "no such endpoint", http.StatusNotFound)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	if err != nil {
		http.Error(w, "read body", http.StatusBadRequest)
		return
	}
	now := time.Now()
	verified := verifyHashedKey(st.key, body, req.Header.Get("x-hashed-key"))
	id := req.Header.Get("webhook-id")
	r.record(st, id, body, verified && id != "", now)
	if !verified || id == "" {
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	if r.delay > 0 {
		select {
		case <-time.After(r.delay):
		case <-req.Context().Done():
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// verifyHashedKey checks header against lowercase hex HMAC-SHA256(key, body)
// in constant time.
func verifyHashedKey(key, body []byte, header string) bool {
	m := hmac.New(sha256.New, key)
	m.Write(body)
	var sum [sha256.Size]byte
	var want [2 * sha256.Size]byte
	hex.Encode(want[:], m.Sum(sum[:0]))
	return hmac.Equal(want[:], []byte(header))
}

func (r *receiver) record(st *endpointState, id string, body []byte, verified bool, now time.Time) {
	misrouted := verified && st.tenant != nil && !bytes.Contains(body, st.tenant)
	var gid int64
	var hasGID bool
	if verified && r.track {
		gid, hasGID = groupID(body)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tally.Requests++
	if !verified {
		r.tally.Failed++
		return
	}
	r.tally.Verified++
	if misrouted {
		r.tally.Misrouted++
	}
	if _, dup := st.seen[id]; dup {
		r.tally.Duplicates++
		return
	}
	st.seen[id] = struct{}{}
	r.unique++
	if r.firstNew.IsZero() {
		r.firstNew = now
	}
	r.lastNew = now
	if hasGID {
		if _, ok := r.firstSeen[gid]; !ok {
			r.firstSeen[gid] = now
		}
	}
	close(r.progress)
	r.progress = make(chan struct{})
}

// groupID finds "group":{"id":N in a body cheaply; the benchmark's table has
// id as its first column. Other shapes fall back to encoding/json.
func groupID(body []byte) (int64, bool) {
	const marker = `"group":{"id":`
	if i := bytes.Index(body, []byte(marker)); i >= 0 {
		rest := body[i+len(marker):]
		end := 0
		for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
			end++
		}
		if n, err := strconv.ParseInt(string(rest[:end]), 10, 64); err == nil {
			return n, true
		}
	}
	var ev struct {
		Group struct {
			ID json.Number `json:"id"`
		} `json:"group"`
	}
	if json.Unmarshal(body, &ev) != nil {
		return 0, false
	}
	n, err := ev.Group.ID.Int64()
	return n, err == nil
}

// snapshot returns the unique count, the newest first receipt and a channel
// closed at the next first receipt.
func (r *receiver) snapshot() (int, time.Time, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unique, r.lastNew, r.progress
}

// first returns when the first callback arrived (zero if none has).
func (r *receiver) first() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.firstNew
}

func (r *receiver) counts() tally {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tally
}

// receivedAt returns the first receipt time of group id.
func (r *receiver) receivedAt(id int64) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.firstSeen[id]
	return t, ok
}

// errStalled means no new callback arrived for the stall period.
var errStalled = errors.New("no new callback arrived")

// waitUnique waits until want distinct callbacks were verified and returns
// the time of the last one. It fails when nothing new arrives for stall,
// when died is closed (the daemon exited) or when ctx ends.
func (r *receiver) waitUnique(ctx context.Context, want int, stall time.Duration, died <-chan struct{}) (time.Time, error) {
	timer := time.NewTimer(stall)
	defer timer.Stop()
	for {
		n, last, progress := r.snapshot()
		if n >= want {
			return last, nil
		}
		select {
		case <-progress:
			timer.Reset(stall)
		case <-timer.C:
			return time.Time{}, fmt.Errorf("%w for %s: %d of %d callbacks verified", errStalled, stall, n, want)
		case <-died:
			return time.Time{}, fmt.Errorf("the daemon exited: %d of %d callbacks verified", n, want)
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("waiting for callbacks (%d of %d verified): %w", n, want, ctx.Err())
		}
	}
}
