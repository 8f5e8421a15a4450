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
	hashedKey []byte   // current secret, UTF-8 bytes
	keys      [][]byte // Standard Webhooks keys, current first
}

// NewSigner returns a Signer for the current secret and any older secrets
// that receivers may still verify with during a rotation.
func NewSigner(current string, older ...string) *Signer {
	s := &Signer{hashedKey: []byte(current), keys: make([][]byte, 0, 1+len(older))}
	s.keys = append(s.keys, SigningKey(current))
	for _, o := range older {
		s.keys = append(s.keys, SigningKey(o))
	}
	return s
}

// HashedKey returns the x-hashed-key value for body: lowercase hex
// HMAC-SHA256 keyed with the current secret's UTF-8 bytes.
func (s *Signer) HashedKey(body []byte) string {
	return hashedKey(s.hashedKey, body)
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
	var sum [sha256.Size]byte
	for i, key := range s.keys {
		if i > 0 {
			dst = append(dst, ' ')
		}
		dst = append(dst, "v1,"...)
		mac := standardMAC(key, id, tsb, body, sum[:0])
		dst = base64.StdEncoding.AppendEncode(dst, mac)
	}
	return dst
}

// SetHeaders sets x-hashed-key and the three Standard Webhooks headers of
// one attempt made at t.
func (s *Signer) SetHeaders(h http.Header, id string, t time.Time, body []byte) {
	ts := t.Unix()
	h[HeaderHashedKey] = []string{s.HashedKey(body)}
	h[HeaderWebhookID] = []string{id}
	h[HeaderWebhookTimestamp] = []string{strconv.FormatInt(ts, 10)}
	h[HeaderWebhookSignature] = []string{s.Signature(id, ts, body)}
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
