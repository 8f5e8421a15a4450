package deliver

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Header names set on every attempt. Go sends them in canonical case;
// HTTP header names are case-insensitive.
const (
	HeaderHashedKey        = "X-Hashed-Key"
	HeaderWebhookID        = "Webhook-Id"
	HeaderWebhookTimestamp = "Webhook-Timestamp"
	HeaderWebhookSignature = "Webhook-Signature"
)

// DefaultTolerance is how far a webhook-timestamp may be from the
// receiver's clock before VerifyWebhook refuses it, as Standard Webhooks
// recommends.
const DefaultTolerance = 5 * time.Minute

const whsecPrefix = "whsec_"

// SigningKey returns the Standard Webhooks HMAC key of secret: for a secret
// that starts with "whsec_", the base64 decoding of the rest; otherwise, or
// when the rest is not valid base64, the secret's UTF-8 bytes.
func SigningKey(secret string) []byte {
	if rest, ok := strings.CutPrefix(secret, whsecPrefix); ok {
		if key, err := base64.StdEncoding.DecodeString(rest); err == nil && len(key) > 0 {
			return key
		}
	}
	return []byte(secret)
}

// Signer signs bodies for one endpoint. It holds the keys of every secret
// that is valid right now: the current one first, then older ones still in
// their rotation overlap. x-hashed-key always uses the current secret;
// webhook-signature carries one "v1," signature per valid secret, space
// separated, as Standard Webhooks defines for key rotation. A Signer is
// immutable and safe for concurrent use.
type Signer struct {
	hashedKey *macPool   // current secret, UTF-8 bytes
	keys      []*macPool // Standard Webhooks keys, current first
}

// NewSigner returns a Signer for the current secret and any older secrets
// that receivers may still verify with during a rotation.
func NewSigner(current string, older ...string) *Signer {
	s := &Signer{hashedKey: newMACPool([]byte(current)), keys: make([]*macPool, 0, 1+len(older))}
	s.keys = append(s.keys, newMACPool(SigningKey(current)))
	for _, o := range older {
		s.keys = append(s.keys, newMACPool(SigningKey(o)))
	}
	return s
}

// macPool keeps keyed HMAC-SHA256 states of one key for reuse: hmac.New
// (two digests, the padded key, the keyed state) costs more than hashing a
// typical body, and every attempt of an endpoint signs with the same keys.
type macPool struct {
	key  []byte
	pool sync.Pool // of *keyedMAC
}

// keyedMAC is an HMAC state, Reset to its keyed start, with scratch space
// so that signing allocates nothing.
type keyedMAC struct {
	h   hash.Hash
	sum [sha256.Size]byte
	buf [96]byte // "<id>.<timestamp>." when it fits
}

func newMACPool(key []byte) *macPool {
	p := &macPool{key: key}
	p.pool.New = func() any { return &keyedMAC{h: hmac.New(sha256.New, p.key)} }
	return p
}

// appendHashedKey appends the lowercase hex x-hashed-key of body to dst.
func (p *macPool) appendHashedKey(dst, body []byte) []byte {
	m := p.pool.Get().(*keyedMAC)
	m.h.Write(body)
	dst = hex.AppendEncode(dst, m.h.Sum(m.sum[:0]))
	m.h.Reset()
	p.pool.Put(m)
	return dst
}

// appendSignature appends the base64 Standard Webhooks signature of
// "<id>.<ts>.<body>" to dst.
func (p *macPool) appendSignature(dst []byte, id string, ts, body []byte) []byte {
	m := p.pool.Get().(*keyedMAC)
	prefix := append(append(append(append(m.buf[:0], id...), '.'), ts...), '.')
	m.h.Write(prefix)
	m.h.Write(body)
	dst = base64.StdEncoding.AppendEncode(dst, m.h.Sum(m.sum[:0]))
	m.h.Reset()
	p.pool.Put(m)
	return dst
}

// HashedKey returns the x-hashed-key value for body: lowercase hex
// HMAC-SHA256 keyed with the current secret's UTF-8 bytes.
func (s *Signer) HashedKey(body []byte) string {
	var buf [2 * sha256.Size]byte
	return string(s.hashedKey.appendHashedKey(buf[:0], body))
}

// Signature returns the webhook-signature value for one attempt.
func (s *Signer) Signature(id string, timestamp int64, body []byte) string {
	return string(s.AppendSignature(make([]byte, 0, len(s.keys)*48), id, timestamp, body))
}

// AppendSignature appends the webhook-signature value for one attempt to
// dst: "v1,<base64>" per valid secret, separated by spaces.
func (s *Signer) AppendSignature(dst []byte, id string, timestamp int64, body []byte) []byte {
	var ts [20]byte
	tsb := strconv.AppendInt(ts[:0], timestamp, 10)
	for i, key := range s.keys {
		if i > 0 {
			dst = append(dst, ' ')
		}
		dst = append(dst, "v1,"...)
		dst = key.appendSignature(dst, id, tsb, body)
	}
	return dst
}

// SetHeaders sets x-hashed-key and the three Standard Webhooks headers of
// one attempt made at t.
func (s *Signer) SetHeaders(h http.Header, id string, t time.Time, body []byte) {
	ts := t.Unix()
	// The three computed values share one string, and the four header
	// values one array: two allocations per attempt.
	var stack [256]byte
	buf := s.hashedKey.appendHashedKey(stack[:0], body)
	n1 := len(buf)
	buf = strconv.AppendInt(buf, ts, 10)
	n2 := len(buf)
	buf = s.AppendSignature(buf, id, ts, body)
	all := string(buf)
	v := &[4]string{all[:n1], id, all[n1:n2], all[n2:]}
	h[HeaderHashedKey] = v[0:1:1]
	h[HeaderWebhookID] = v[1:2:2]
	h[HeaderWebhookTimestamp] = v[2:3:3]
	h[HeaderWebhookSignature] = v[3:4:4]
}

// HashedKey returns lowercase hex HMAC-SHA256(secret's UTF-8 bytes, body),
// the x-hashed-key header value.
func HashedKey(secret string, body []byte) string {
	return hashedKey([]byte(secret), body)
}

func hashedKey(key, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write(body)
	var sum [sha256.Size]byte
	return hex.EncodeToString(m.Sum(sum[:0]))
}

// Signature returns the Standard Webhooks signature "v1,<base64>" of body
// for one secret.
func Signature(secret, id string, timestamp int64, body []byte) string {
	return NewSigner(secret).Signature(id, timestamp, body)
}

func standardMAC(key []byte, id string, ts, body, dst []byte) []byte {
	m := hmac.New(sha256.New, key)
	writeSigned(m, id, ts, body)
	return m.Sum(dst)
}

// writeSigned writes "<id>.<timestamp>.<body>" without building it.
func writeSigned(h hash.Hash, id string, ts, body []byte) {
	h.Write([]byte(id))
	h.Write([]byte{'.'})
	h.Write(ts)
	h.Write([]byte{'.'})
	h.Write(body)
}

// VerifyHashedKey reports whether header is the x-hashed-key of body for
// secret. It compares in constant time. Receivers must pass the raw body
// bytes, before any JSON parsing.
func VerifyHashedKey(secret string, body []byte, header string) bool {
	got, err := hex.DecodeString(strings.TrimSpace(header))
	if err != nil || len(got) != sha256.Size {
		return false
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return hmac.Equal(got, m.Sum(nil))
}

// Errors returned by VerifyWebhook.
var (
	ErrMissingHeaders   = errors.New("webhook-id, webhook-timestamp or webhook-signature is missing")
	ErrInvalidTimestamp = errors.New("webhook-timestamp is not a unix time in seconds")
	ErrTimestampOutside = errors.New("webhook-timestamp is outside the tolerance window")
	ErrNoMatchingSig    = errors.New("no webhook-signature matches the body")
)

// VerifyWebhook checks the Standard Webhooks headers in h against the raw
// body for secret (a "whsec_" secret is base64-decoded as the spec says).
// The timestamp must be within tolerance of now (DefaultTolerance when
// tolerance <= 0); any one "v1," signature in the space-separated list may
// match. Signatures are compared in constant time.
func VerifyWebhook(secret string, h http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	id, tsText, sigs := h.Get(HeaderWebhookID), h.Get(HeaderWebhookTimestamp), h.Get(HeaderWebhookSignature)
	if id == "" || tsText == "" || sigs == "" {
		return ErrMissingHeaders
	}
	ts, err := strconv.ParseInt(tsText, 10, 64)
	if err != nil {
		return ErrInvalidTimestamp
	}
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	if d := now.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: %s from now", ErrTimestampOutside, -d.Round(time.Second))
	}
	want := standardMAC(SigningKey(secret), id, []byte(tsText), body, nil)
	for sig := range strings.FieldsSeq(sigs) {
		b64, ok := strings.CutPrefix(sig, "v1,")
		if !ok {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(b64)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return ErrNoMatchingSig
}
