package deliver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/grouphook/grouphook/metrics"
)

// blockedCases has one address of every refused range, with a word its
// reason must contain.
var blockedCases = []struct{ addr, reason string }{
	{"0.0.0.0", "unspecified"},
	{"0.1.2.3", "unspecified"},
	{"127.0.0.1", "loopback"},
	{"127.255.255.254", "loopback"},
	{"10.0.0.1", "private"},
	{"10.255.255.255", "private"},
	{"172.16.0.1", "private"},
	{"172.31.255.254", "private"},
	{"192.168.1.1", "private"},
	{"169.254.169.254", "link-local"},
	{"169.254.0.1", "link-local"},
	{"100.64.0.1", "carrier-grade NAT"},
	{"100.127.255.254", "carrier-grade NAT"},
	{"192.0.0.1", "IETF"},
	{"198.18.0.1", "benchmarking"},
	{"224.0.0.1", "multicast"},
	{"239.255.255.250", "multicast"},
	{"255.255.255.255", "broadcast"},
	{"240.0.0.1", "reserved"},
	{"::", "unspecified"},
	{"::1", "loopback"},
	{"fe80::1", "link-local"},
	{"fc00::1", "unique-local"},
	{"fd12:3456:789a::1", "unique-local"},
	{"fec0::1", "site-local"},
	{"ff02::1", "multicast"},
	// IPv4 inside IPv6.
	{"::ffff:127.0.0.1", "loopback"},
	{"::ffff:169.254.169.254", "link-local"},
	{"::ffff:10.1.2.3", "private"},
	{"::127.0.0.1", "loopback"},                          // IPv4-compatible
	{"64:ff9b::7f00:1", "loopback"},                      // NAT64 of 127.0.0.1
	{"64:ff9b::a9fe:a9fe", "link-local"},                 // NAT64 of 169.254.169.254
	{"64:ff9b::c0a8:101", "private"},                     // NAT64 of 192.168.1.1
	{"64:ff9b:1::1", "local-use NAT64"},                  // RFC 8215
	{"2002:7f00:1::1", "loopback"},                       // 6to4 of 127.0.0.1
	{"2002:a9fe:a9fe::1", "link-local"},                  // 6to4 of 169.254.169.254
	{"2002:a00:1::", "private"},                          // 6to4 of 10.0.0.1
	{"2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"}, // Teredo, client 127.0.0.1
}

var allowedCases = []string{
	"93.184.216.34", "8.8.8.8", "1.1.1.1", "172.15.255.255", "172.32.0.1", "100.63.255.255", "100.128.0.1",
	"192.169.0.1", "169.253.255.255", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34",
	"64:ff9b::5db8:d822", "2002:5db8:d822::1", "2001:4860:4860::8888",
}

func TestDialGuardCheck(t *testing.T) {
	g := NewDialGuard()
	for _, c := range blockedCases {
		err := g.Check(netip.MustParseAddr(c.addr))
		var be *BlockedError
		if !errors.As(err, &be) || !errors.Is(err, ErrBlockedDestination) {
			t.Errorf("%s: Check = %v, want a *BlockedError", c.addr, err)
			continue
		}
		if !strings.Contains(be.Error(), c.reason) || !strings.Contains(be.Error(), "GROUPHOOK_ALLOWED_CIDRS") {
			t.Errorf("%s: message %q does not say %q and how to allow it", c.addr, be.Error(), c.reason)
		}
	}
	for _, a := range allowedCases {
		if err := g.Check(netip.MustParseAddr(a)); err != nil {
			t.Errorf("%s: Check = %v, want nil (a public address)", a, err)
		}
	}
	if err := g.Check(netip.MustParseAddr("fe80::1%eth0")); err == nil {
		t.Error("a link-local address with a zone passed")
	}
}

func TestDialGuardAllowedCIDRs(t *testing.T) {
	allowed, err := ParseCIDRs([]string{"10.1.0.0/16", "127.0.0.1", "fd00:1::/32"})
	if err != nil {
		t.Fatal(err)
	}
	g := NewDialGuard(allowed...)
	for _, a := range []string{"10.1.2.3", "::ffff:10.1.2.3", "127.0.0.1", "64:ff9b::a01:203", "fd00:1::5"} {
		if err := g.Check(netip.MustParseAddr(a)); err != nil {
			t.Errorf("%s is inside GROUPHOOK_ALLOWED_CIDRS but refused: %v", a, err)
		}
	}
	for _, a := range []string{"10.2.0.1", "127.0.0.2", "169.254.169.254", "fd00:2::1"} {
		if err := g.Check(netip.MustParseAddr(a)); err == nil {
			t.Errorf("%s is outside GROUPHOOK_ALLOWED_CIDRS but passed", a)
		}
	}
	for _, bad := range [][]string{{"10.0.0.0/33"}, {"nonsense"}, {""}, {"10.0.0.0/8", "fe80::/10%eth0"}} {
		if _, err := ParseCIDRs(bad); err == nil {
			t.Errorf("ParseCIDRs(%q) passed", bad)
		}
	}
}

// Every blocked range is refused by the dialer's Control hook, after
// resolution and before a packet is sent.
func TestDialGuardRefusesAtDialTime(t *testing.T) {
	g := NewDialGuard()
	for _, c := range blockedCases {
		dialer := &net.Dialer{Timeout: 3 * time.Second, Control: g.Control}
		conn, err := dialer.Dial("tcp", net.JoinHostPort(c.addr, "80"))
		if conn != nil {
			conn.Close()
		}
		if errors.Is(err, ErrBlockedDestination) {
			continue
		}
		if errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EADDRNOTAVAIL) {
			t.Logf("%s: no IPv6 socket here (%v); Check covers it", c.addr, err)
			continue
		}
		t.Errorf("dial %s: %v, want it refused by the guard", c.addr, err)
	}
}

// countingServer counts the requests it gets.
func countingServer(t *testing.T, tlsServer bool) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { n.Add(1); w.WriteHeader(204) })
	var srv *httptest.Server
	if tlsServer {
		srv = httptest.NewTLSServer(h)
	} else {
		srv = httptest.NewServer(h)
	}
	t.Cleanup(srv.Close)
	return srv, &n
}

func post(c *http.Client, url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader("{}"))
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// Through the delivery client: 127.0.0.1 and localhost (a name that
// resolves to loopback) are refused; GROUPHOOK_ALLOWED_CIDRS and
// GROUPHOOK_ALLOW_PRIVATE_DESTINATIONS (no Control) let them through.
func TestHTTPClientGuard(t *testing.T) {
	srv, n := countingServer(t, false)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	byName := "http://localhost:" + port + "/hook"

	guarded := NewHTTPClient(HTTPOptions{Control: NewDialGuard().Control})
	for _, u := range []string{srv.URL + "/hook", byName} {
		err := post(guarded, u)
		if !errors.Is(err, ErrBlockedDestination) || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("POST %s: %v, want refused as loopback", u, err)
		}
	}
	if n.Load() != 0 {
		t.Fatalf("the receiver got %d requests through the guard", n.Load())
	}

	loop, _ := ParseCIDRs([]string{"127.0.0.0/8", "::1/128"})
	opened := NewHTTPClient(HTTPOptions{Control: NewDialGuard(loop...).Control})
	for _, u := range []string{srv.URL + "/hook", byName} {
		if err := post(opened, u); err != nil {
			t.Errorf("POST %s with 127.0.0.0/8 allowed: %v", u, err)
		}
	}
	if err := post(NewHTTPClient(HTTPOptions{}), srv.URL); err != nil {
		t.Errorf("POST without a guard: %v", err)
	}
	if n.Load() != 3 {
		t.Errorf("the receiver got %d requests, want 3", n.Load())
	}
}

// GROUPHOOK_REQUIRE_HTTPS refuses http:// before connecting; https is
// verified against the given roots only.
func TestHTTPClientRequireHTTPSAndTLS(t *testing.T) {
	plain, plainN := countingServer(t, false)
	secure, secureN := countingServer(t, true)
	roots := x509.NewCertPool()
	roots.AddCert(secure.Certificate())

	c := NewHTTPClient(HTTPOptions{RequireHTTPS: true, TLSClientConfig: &tls.Config{RootCAs: roots}})
	if err := post(c, plain.URL); !errors.Is(err, ErrPlainHTTP) {
		t.Errorf("http:// with RequireHTTPS: %v, want ErrPlainHTTP", err)
	}
	if plainN.Load() != 0 {
		t.Error("the plain receiver got a request")
	}
	if err := post(c, secure.URL); err != nil {
		t.Errorf("https with the CA: %v", err)
	}
	// Without the test CA the certificate does not verify.
	if err := post(NewHTTPClient(HTTPOptions{}), secure.URL); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("https without the CA: %v, want a certificate error", err)
	}
	// InsecureSkipVerify in the given config is ignored.
	insecure := NewHTTPClient(HTTPOptions{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}})
	if err := post(insecure, secure.URL); err == nil {
		t.Error("InsecureSkipVerify was honoured")
	}
	if secureN.Load() != 1 {
		t.Errorf("the https receiver got %d requests, want 1", secureN.Load())
	}
}

// A blocked delivery is a failed attempt like any other: counted, logged
// with the reason, retried, and parked with that reason as its last error.
func TestDispatchBlockedDestination(t *testing.T) {
	pool := newDB(t)
	srv, n := countingServer(t, false)
	id := addEndpoint(t, pool, endpointRow{URL: srv.URL + "/hook?token=sekrit-in-url", Secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
	m, _ := newMetrics()
	logs := &syncBuffer{}
	logger := testLogger(t, logs)
	reg := NewRegistry(pool, logger, m)
	if err := reg.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	p := &fakeParker{}
	d := NewDispatcher(DispatcherConfig{RetryBase: 20 * time.Millisecond, RetryMax: 50 * time.Millisecond, Parker: p, ParkAfter: 300 * time.Millisecond},
		reg, NewHTTPClient(HTTPOptions{Control: NewDialGuard().Control}), logger, m)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	var dc doneCounter
	ev := groupEvent("g", 1)
	d.Submit(ev, dc.fn(ev.ID, nil))
	eventually(t, 10*time.Second, "the blocked delivery to be parked", func() bool { return dc.count(ev.ID) == 1 })
	p.mu.Lock()
	parked := append([]Parked(nil), p.parked...)
	p.mu.Unlock()
	if len(parked) != 1 || !errors.Is(parked[0].LastError, ErrBlockedDestination) || parked[0].Attempts < 2 {
		t.Fatalf("parked %+v, want one delivery, attempted at least twice, whose last error is the guard's", parked)
	}
	if failures := testutilFailures(m, id); failures < 2 {
		t.Errorf("failure outcome = %v, want >= 2", failures)
	}
	if n.Load() != 0 {
		t.Errorf("the receiver got %d requests", n.Load())
	}
	log := logs.String()
	if !strings.Contains(log, "loopback") {
		t.Errorf("the log does not give the reason:\n%s", log)
	}
	if strings.Contains(log, "sekrit-in-url") || strings.Contains(log, "MfKQ9r8") {
		t.Errorf("the log holds the URL's token or the secret:\n%s", log)
	}
}

func testutilFailures(m *metrics.Metrics, id int64) float64 {
	return testutil.ToFloat64(m.DeliveriesTotal.WithLabelValues(itoa(id), metrics.OutcomeFailure))
}
