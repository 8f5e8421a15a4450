package deliver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// The pooled HMAC states give the same signatures as fresh ones, however
// many times and from however many goroutines they are reused.
func TestSignerReusesStates(t *testing.T) {
	const secret, old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "plain-old-secret"
	s := NewSigner(secret, old)
	now := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				id := fmt.Sprintf("evt_%d_%d", g, i)
				if i%7 == 0 {
					id = strings.Repeat("long-id-", 20) + id // longer than the scratch buffer
				}
				body := bytes.Repeat([]byte{byte('a' + i%26)}, i*13)
				h := make(http.Header)
				s.SetHeaders(h, id, now, body)
				if !VerifyHashedKey(secret, body, h.Get(HeaderHashedKey)) {
					errs <- fmt.Errorf("x-hashed-key of %s does not verify", id)
					return
				}
				if err := VerifyWebhook(secret, h, body, now, 0); err != nil {
					errs <- fmt.Errorf("signature of %s, current secret: %w", id, err)
					return
				}
				if err := VerifyWebhook(old, h, body, now, 0); err != nil {
					errs <- fmt.Errorf("signature of %s, old secret: %w", id, err)
					return
				}
				if got, want := h.Get(HeaderWebhookSignature), Signature(secret, id, now.Unix(), body)+" "+Signature(old, id, now.Unix(), body); got != want {
					errs <- fmt.Errorf("signature of %s = %q, want %q", id, got, want)
					return
				}
				if got := h.Get(HeaderWebhookTimestamp); got != fmt.Sprint(now.Unix()) || h.Get(HeaderWebhookID) != id {
					errs <- fmt.Errorf("timestamp %q, id %q", got, h.Get(HeaderWebhookID))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// parseTarget gives the URL and Host that http.NewRequest would.
func TestParseTargetLikeNewRequest(t *testing.T) {
	for _, raw := range []string{
		"http://example.com/hook",
		"https://example.com:8443/a/b?token=x%20y&z=1",
		"http://example.com:/hook",
		"http://[::1]:/hook",
		"http://[::1]/hook",
		"https://user-less.example/p%2Fq#frag",
		"http://xn--bcher-kva.example/",
	} {
		want, err := http.NewRequest(http.MethodPost, raw, nil)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		u, err := parseTarget(raw)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if *u != *want.URL || u.Host != want.Host {
			t.Errorf("%s: parsed %#v, NewRequest %#v (host %q)", raw, u, want.URL, want.Host)
		}
	}
}

// recordingRT answers 204 and keeps the requests it was given.
type recordingRT struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (rt *recordingRT) RoundTrip(req *http.Request) (*http.Response, error) {
	rt.mu.Lock()
	rt.reqs = append(rt.reqs, req)
	rt.mu.Unlock()
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	return &http.Response{StatusCode: http.StatusNoContent, Header: http.Header{}, Request: req}, nil // nil Body
}

// send hands the RoundTripper the request http.NewRequest would build, with
// a body it can send again, and copes with a nil response body.
func TestSendBuildsRequest(t *testing.T) {
	rt := &recordingRT{}
	d := NewDispatcher(DispatcherConfig{UserAgent: "grouphook/test"}, NewRegistry(nil, nil, nil), &http.Client{Transport: rt}, nil, nil)
	snap := NewSnapshot([]Endpoint{{ID: 7, URL: "http://receiver.example:/hook?token=t", Secret: "s", Events: AllEvents}})
	ep, _ := snap.Endpoint(7)
	ev := groupEvent("g", 0)
	body := []byte(`{"type":"group.created"}`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for range 2 { // the parsed URL is shared, never modified
		if err := d.send(ctx, ep, &ev, body); err != nil {
			t.Fatal(err)
		}
	}
	if len(rt.reqs) != 2 || rt.reqs[0].URL == rt.reqs[1].URL || rt.reqs[0].URL == ep.url {
		t.Fatalf("%d requests; each needs a URL of its own", len(rt.reqs))
	}
	req := rt.reqs[1]
	want, _ := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, bytes.NewReader(body))
	if req.Method != want.Method || *req.URL != *want.URL || req.Host != want.Host || req.Proto != want.Proto ||
		req.ProtoMajor != 1 || req.ProtoMinor != 1 || req.ContentLength != want.ContentLength || req.Context() != ctx {
		t.Errorf("request %s %s host %q %s len %d, want %s %s host %q %s len %d",
			req.Method, req.URL, req.Host, req.Proto, req.ContentLength, want.Method, want.URL, want.Host, want.Proto, want.ContentLength)
	}
	if req.GetBody == nil {
		t.Fatal("no GetBody: the Transport cannot resend on a stale connection")
	}
	for range 2 {
		rc, err := req.GetBody()
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := io.ReadAll(rc); !bytes.Equal(b, body) {
			t.Fatalf("GetBody = %q", b)
		}
	}
	h := req.Header
	if h.Get("Content-Type") != "application/json" || h.Get("User-Agent") != "grouphook/test" || h.Get(HeaderWebhookID) != ev.ID ||
		!VerifyHashedKey("s", body, h.Get(HeaderHashedKey)) || VerifyWebhook("s", h, body, time.Now(), 0) != nil {
		t.Errorf("headers %v", h)
	}
	// An Endpoint made by hand is parsed at each attempt, so a changed URL
	// takes effect.
	hand := &Endpoint{ID: 8, URL: "http://a.example/x", Secret: "s"}
	_ = d.send(ctx, hand, &ev, body)
	hand.URL = "http://b.example/y"
	_ = d.send(ctx, hand, &ev, body)
	if got := rt.reqs[3].URL.String(); got != "http://b.example/y" {
		t.Errorf("hand-made endpoint sent to %s", got)
	}
	if err := d.send(ctx, &Endpoint{ID: 9, URL: "http://bad host/", Secret: "s"}, &ev, body); err == nil || strings.Contains(err.Error(), "bad host") {
		t.Errorf("unparseable URL: %v", err)
	}
}

// An https URL answered by a plain HTTP server says so, as http.Client
// would, and a client with its own Timeout is still honoured.
func TestSendSchemeMismatchAndClientTimeout(t *testing.T) {
	slow := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-slow
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	defer close(slow)
	d := NewDispatcher(DispatcherConfig{}, NewRegistry(nil, nil, nil), nil, nil, nil)
	ev := groupEvent("g", 0)
	err := d.send(context.Background(), &Endpoint{ID: 1, URL: strings.Replace(srv.URL, "http:", "https:", 1), Secret: "s"}, &ev, []byte(`{}`))
	if !errors.Is(err, http.ErrSchemeMismatch) {
		t.Errorf("https to an http server: %v", err)
	}
	if d.rt == nil {
		t.Error("the default client is not used through its RoundTripper")
	}
	dt := NewDispatcher(DispatcherConfig{}, NewRegistry(nil, nil, nil), &http.Client{Timeout: 100 * time.Millisecond}, nil, nil)
	if dt.rt != nil {
		t.Fatal("a client with a Timeout must be used through Do")
	}
	start := time.Now()
	err = dt.send(context.Background(), &Endpoint{ID: 1, URL: srv.URL + "/slow", Secret: "s"}, &ev, []byte(`{}`))
	var ae *AttemptError
	if !errors.As(err, &ae) || !ae.Timeout() || time.Since(start) > 5*time.Second {
		t.Errorf("client Timeout not applied: %v after %s", err, time.Since(start))
	}
}
