// Command go is a grouphook webhook receiver that uses net/http and the
// standard library only:
//
//	WEBHOOK_SECRET='whsec_…' go run ./examples/go
//
// Every callback is verified twice, over the raw body bytes (never over
// re-encoded JSON), in constant time:
//
//  1. x-hashed-key: lowercase hex HMAC-SHA256 of the body, keyed with the
//     endpoint's secret_key;
//  2. Standard Webhooks: webhook-signature holds "v1,<base64 HMAC-SHA256 of
//     "<webhook-id>.<webhook-timestamp>.<body>">", keyed with the
//     base64-decoded rest of a "whsec_" secret or else the secret's bytes;
//     webhook-timestamp must be within 5 minutes of now, so a captured
//     request cannot be replayed later.
//
// Settings (environment): WEBHOOK_SECRET (required), ADDR (default :3000),
// WEBHOOK_PATH (default /webhook). It prints one line per request:
// "accepted <EVENT> <id> <group JSON>" or "rejected <reason>", and
// "listening on http://<addr><path>" once.
package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"mime"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// tolerance is how far webhook-timestamp may be from now.
const tolerance = 5 * time.Minute

// maxBody bounds the request body; grouphook's events are far smaller.
const maxBody = 1 << 20

// Event is the JSON body grouphook POSTs.
type Event struct {
	ID         string          `json:"id"`
	Event      string          `json:"event"` // CREATE, UPDATE or DELETE
	Table      string          `json:"table"`
	OccurredAt time.Time       `json:"occurred_at"`
	Group      json.RawMessage `json:"group"`
	Previous   json.RawMessage `json:"previous,omitempty"`
}

// Verifier checks both signatures of a callback.
type Verifier struct {
	secret []byte // x-hashed-key key: the secret's bytes
	swKey  []byte // Standard Webhooks key
	now    func() time.Time
}

// NewVerifier returns a verifier for an endpoint's secret_key.
func NewVerifier(secret string) (*Verifier, error) {
	if secret == "" {
		return nil, errors.New("the secret is empty")
	}
	v := &Verifier{secret: []byte(secret), swKey: []byte(secret), now: time.Now}
	if rest, ok := strings.CutPrefix(secret, "whsec_"); ok {
		key, err := base64.StdEncoding.DecodeString(rest)
		if err != nil || len(key) == 0 {
			return nil, fmt.Errorf("a whsec_ secret must be followed by base64: %v", err)
		}
		v.swKey = key
	}
	return v, nil
}

// Verify returns nil when body and h carry valid signatures.
func (v *Verifier) Verify(h http.Header, body []byte) error {
	mac := hmac.New(sha256.New, v.secret)
	mac.Write(body)
	want := hex.EncodeToString(mac.Sum(nil))
	if !hmac.Equal([]byte(want), []byte(h.Get("x-hashed-key"))) {
		return errors.New("bad x-hashed-key")
	}

	id, ts, sigs := h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature")
	if id == "" || ts == "" || sigs == "" {
		return errors.New("missing Standard Webhooks headers")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New("bad webhook-timestamp")
	}
	if d := v.now().Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("webhook-timestamp is %s away from now", d.Round(time.Second))
	}
	mac = hmac.New(sha256.New, v.swKey)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	expected := mac.Sum(nil)
	// Several signatures may be sent (e.g. during a secret rotation).
	for _, s := range strings.Fields(sigs) {
		version, b64, ok := strings.Cut(s, ",")
		if !ok || version != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(b64)
		if err == nil && hmac.Equal(got, expected) {
			return nil
		}
	}
	return errors.New("bad webhook-signature")
}

// Handler verifies, de-duplicates and processes callbacks.
type Handler struct {
	V       *Verifier
	Process func(Event) // your work; must be idempotent or use the id

	mu   sync.Mutex
	seen map[string]bool // a real receiver keeps this in its database
}

func (hd *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("content-type")); mt != "application/json" {
		reject(w, http.StatusUnsupportedMediaType, "content-type must be application/json")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		reject(w, http.StatusBadRequest, "cannot read the body: "+err.Error())
		return
	}
	if err := hd.V.Verify(r.Header, body); err != nil {
		reject(w, http.StatusUnauthorized, err.Error())
		return
	}
	var ev Event
	if err := json.Unmarshal(body, &ev); err != nil {
		reject(w, http.StatusBadRequest, "the body is not an event: "+err.Error())
		return
	}
	hd.mu.Lock()
	dup := hd.seen[ev.ID]
	if !dup {
		if len(hd.seen) >= 10000 {
			clear(hd.seen)
		}
		hd.seen[ev.ID] = true
	}
	hd.mu.Unlock()
	if dup { // a retry or a replay after a restart: same id, already done
		fmt.Printf("duplicate %s %s\n", ev.Event, ev.ID)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	hd.Process(ev)
	w.WriteHeader(http.StatusNoContent) // any 2xx means "received"
}

func reject(w http.ResponseWriter, status int, reason string) {
	fmt.Printf("rejected %s\n", reason)
	http.Error(w, reason, status)
}

func main() {
	v, err := NewVerifier(os.Getenv("WEBHOOK_SECRET"))
	if err != nil {
		log.Fatalf("WEBHOOK_SECRET: %v: set it to the endpoint's secret_key", err)
	}
	addr := os.Getenv("ADDR")
	if addr == "" {
		addr = ":3000"
	}
	path := os.Getenv("WEBHOOK_PATH")
	if path == "" {
		path = "/webhook"
	}
	mux := http.NewServeMux()
	mux.Handle(path, &Handler{V: v, seen: map[string]bool{}, Process: func(ev Event) {
		group := string(ev.Group)
		if group == "" {
			group = "null"
		}
		fmt.Printf("accepted %s %s %s\n", ev.Event, ev.ID, group)
	}})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Printf("listening on http://%s%s\n", ln.Addr(), path)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
