package deliver

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"
)

const (
	// MaxResponseBytes is how much of a response body is read before the
	// body is closed; the rest is never read.
	MaxResponseBytes = 64 << 10
	// ErrorBodyBytes is how much of a non-2xx response body an AttemptError
	// keeps, for logs and (later) the attempt history.
	ErrorBodyBytes = 4 << 10
)

// HTTPOptions configures NewHTTPClient. The zero value is usable.
type HTTPOptions struct {
	// MaxIdleConnsPerHost is how many idle keep-alive connections are kept
	// per receiver host; default DefaultWorkers, so every worker can reuse
	// a connection to a single busy endpoint.
	MaxIdleConnsPerHost int
	// IdleConnTimeout closes idle connections; default 90s.
	IdleConnTimeout time.Duration
	// DialTimeout bounds connection setup; default 10s. The per-attempt
	// timeout of the Dispatcher applies as well.
	DialTimeout time.Duration
	// Control is the dialer's Control hook (net.Dialer.Control): it runs
	// for every connection after DNS resolution, with the IP address about
	// to be dialed, and an error refuses the connection. This is where the
	// SSRF guard plugs in, so DNS rebinding cannot get around it. Nil
	// allows every address.
	Control func(network, address string, c syscall.RawConn) error
	// TLSClientConfig, when set, is used for https receivers (for example
	// with extra root CAs). Certificates are always verified.
	TLSClientConfig *tls.Config
	// RequireHTTPS refuses every attempt to a plain http:// URL
	// (GROUPHOOK_REQUIRE_HTTPS); such an attempt fails with ErrPlainHTTP.
	RequireHTTPS bool
}

// ErrPlainHTTP is why an attempt to an http:// URL failed when
// HTTPOptions.RequireHTTPS is set.
var ErrPlainHTTP = errors.New("the endpoint URL is plain http and GROUPHOOK_REQUIRE_HTTPS is set: register an https:// URL")

// httpsOnly refuses requests that are not https before any connection.
type httpsOnly struct{ *http.Transport }

func (t httpsOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, ErrPlainHTTP
	}
	return t.Transport.RoundTrip(req)
}

// NewHTTPClient returns the client deliveries are sent with: redirects
// are not followed (a 3xx is a failed attempt), no proxy is used (so the
// dial-time guard sees the real destination), connections are reused, and
// the client itself has no timeout: each attempt carries its own deadline.
func NewHTTPClient(o HTTPOptions) *http.Client {
	if o.MaxIdleConnsPerHost <= 0 {
		o.MaxIdleConnsPerHost = DefaultWorkers
	}
	if o.IdleConnTimeout <= 0 {
		o.IdleConnTimeout = 90 * time.Second
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	dialer := &net.Dialer{Timeout: o.DialTimeout, KeepAlive: 30 * time.Second, Control: o.Control}
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           max(100, 4*o.MaxIdleConnsPerHost),
		MaxIdleConnsPerHost:    o.MaxIdleConnsPerHost,
		IdleConnTimeout:        o.IdleConnTimeout,
		TLSHandshakeTimeout:    10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
	if o.TLSClientConfig != nil {
		tr.TLSClientConfig = o.TLSClientConfig.Clone()
		tr.TLSClientConfig.InsecureSkipVerify = false
	}
	if o.RequireHTTPS {
		return &http.Client{Transport: httpsOnly{tr}, CheckRedirect: noRedirects}
	}
	return &http.Client{Transport: tr, CheckRedirect: noRedirects}
}

func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// AttemptError is a failed delivery attempt: a response that is not 2xx,
// or no response at all (Err). Inspect it with errors.As, IsRetryable and
// StatusCode. Its message never contains the URL or a secret.
type AttemptError struct {
	// StatusCode is the HTTP status, 0 when no response arrived.
	StatusCode int
	// RetryAfter is the receiver's Retry-After on 429 or 503 (seconds or an
	// HTTP date, as a delay), 0 when absent or unparseable.
	RetryAfter time.Duration
	// Body is the start (at most ErrorBodyBytes) of a non-2xx response body.
	Body []byte
	// Err is why no response arrived: timeout, refused connection, TLS,
	// blocked by the dial guard. Nil when there was a response.
	Err error
}

func (e *AttemptError) Error() string {
	switch {
	case e.Err != nil:
		return "no response: " + e.Err.Error()
	case e.StatusCode >= 300 && e.StatusCode < 400:
		return fmt.Sprintf("endpoint answered %d %s (redirects are not followed; register the final URL)", e.StatusCode, http.StatusText(e.StatusCode))
	default:
		return fmt.Sprintf("endpoint answered %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
}

func (e *AttemptError) Unwrap() error { return e.Err }

// Status returns the HTTP status, 0 when no response arrived.
func (e *AttemptError) Status() int { return e.StatusCode }

// Retryable reports whether sending the same delivery again may succeed:
// true for every failure except 410 Gone, which asks the sender to stop.
// (Today the dispatcher retries every failure while the slot holds the
// event; the durable queue will disable an endpoint that answers 410.)
func (e *AttemptError) Retryable() bool { return e.StatusCode != http.StatusGone }

// Timeout reports whether the attempt ran out of time.
func (e *AttemptError) Timeout() bool {
	var t interface{ Timeout() bool }
	return errors.Is(e.Err, context.DeadlineExceeded) || (errors.As(e.Err, &t) && t.Timeout())
}

// IsRetryable reports whether err, or an error it wraps, says that trying
// again may succeed. Errors that do not say are not retryable.
func IsRetryable(err error) bool {
	var r interface{ Retryable() bool }
	return errors.As(err, &r) && r.Retryable()
}

// StatusCode returns the HTTP status carried by err, or 0.
func StatusCode(err error) int {
	var s interface{ Status() int }
	if errors.As(err, &s) {
		return s.Status()
	}
	return 0
}

var (
	contentTypeJSON = []string{"application/json"}
)

// send makes one attempt: POST body to ep with fresh signature headers.
// It returns nil on 2xx and an *AttemptError otherwise.
//
// The request goes straight to the client's RoundTripper: http.Client.Do
// would clone the headers for redirects, which are never followed, and the
// attempt's deadline comes from ctx. A 3xx is returned as it is, a failure.
func (d *Dispatcher) send(ctx context.Context, ep *Endpoint, ev *Event, body []byte) error {
	target, err := ep.target()
	if err != nil {
		return &AttemptError{Err: stripURL(err)}
	}
	u := new(url.URL)
	*u = *target
	h := make(http.Header, 6)
	h["Content-Type"] = contentTypeJSON
	h["User-Agent"] = d.userAgent
	ep.Signer().SetHeaders(h, ev.ID, d.now(), body)
	req := (&http.Request{
		Method:     http.MethodPost,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Host:       u.Host,
	}).WithContext(ctx)
	setBody(req, body)
	resp, err := d.roundTrip(req)
	if err != nil {
		err = stripURL(err)
		if ctx.Err() == context.DeadlineExceeded {
			err = fmt.Errorf("timed out after %s: %w", d.cfg.Timeout, context.DeadlineExceeded)
		}
		return &AttemptError{Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		// Read what a well-behaved receiver sends so the connection can be
		// reused; give up on anything longer.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, MaxResponseBytes))
		return nil
	}
	ae := &AttemptError{StatusCode: resp.StatusCode}
	buf := make([]byte, ErrorBodyBytes)
	n, _ := io.ReadFull(resp.Body, buf)
	ae.Body = buf[:n]
	if n == len(buf) {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, MaxResponseBytes-int64(n)))
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		ae.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	return ae
}

// setBody gives req the body bytes as http.NewRequest does for a
// *bytes.Reader: the Transport knows it is in memory (no separate header
// flush) and can send it again on a fresh connection (GetBody).
func setBody(req *http.Request, body []byte) {
	if len(body) == 0 {
		req.Body = http.NoBody
		req.GetBody = func() (io.ReadCloser, error) { return http.NoBody, nil }
		return
	}
	req.ContentLength = int64(len(body))
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
}

// roundTrip sends req on the dispatcher's RoundTripper, or through the
// http.Client when that one has a Timeout or a cookie jar to apply.
func (d *Dispatcher) roundTrip(req *http.Request) (*http.Response, error) {
	if d.rt == nil {
		return d.client.Do(req)
	}
	resp, err := d.rt.RoundTrip(req)
	if err != nil {
		// As http.Client does: an https URL answered by a plain HTTP server.
		if tlsErr, ok := err.(tls.RecordHeaderError); ok && string(tlsErr.RecordHeader[:]) == "HTTP/" {
			err = http.ErrSchemeMismatch
		}
		return nil, err
	}
	if resp.Body == nil {
		resp.Body = http.NoBody
	}
	return resp, nil
}

// stripURL drops the *url.Error wrapper, whose message repeats the URL
// (which may carry a token).
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// parseRetryAfter reads a Retry-After value: delay seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s <= 0 {
			return 0
		}
		if s > int64(24*time.Hour/time.Second) {
			s = int64(24 * time.Hour / time.Second)
		}
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
