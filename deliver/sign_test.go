package deliver

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestStandardWebhooksVector(t *testing.T) {
	got := Signature("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("signature = %s, want %s", got, want)
	}
}

func TestHashedKeyVector(t *testing.T) {
	got := HashedKey("It's a Secret to Everybody", []byte("Hello, World!"))
	if want := "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"; got != want {
		t.Fatalf("x-hashed-key = %s, want %s", got, want)
	}
	if !VerifyHashedKey("It's a Secret to Everybody", []byte("Hello, World!"), got) {
		t.Fatal("VerifyHashedKey refuses the test vector")
	}
}

func TestSigningKey(t *testing.T) {
	tests := []struct {
		name, secret, want string
	}{
		{"whsec decodes", "whsec_aGVsbG8=", "hello"},
		{"whsec not base64 falls back", "whsec_not base64!", "whsec_not base64!"},
		{"whsec empty rest falls back", "whsec_", "whsec_"},
		{"plain secret", "It's a Secret", "It's a Secret"},
		{"prefix is case sensitive", "WHSEC_aGVsbG8=", "WHSEC_aGVsbG8="},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(SigningKey(tt.secret)); got != tt.want {
				t.Fatalf("SigningKey(%q) = %q, want %q", tt.secret, got, tt.want)
			}
		})
	}
	// A fallback secret signs with its full bytes, like a plain one.
	body := []byte(`{}`)
	if a, b := Signature("whsec_not base64!", "m", 1, body), NewSigner("whsec_not base64!").Signature("m", 1, body); a != b {
		t.Fatalf("fallback signatures differ: %s %s", a, b)
	}
}

func TestSignerRotation(t *testing.T) {
	s := NewSigner("whsec_bmV3", "whsec_b2xk")
	sig := s.Signature("msg_1", 1700000000, []byte("x"))
	parts := strings.Split(sig, " ")
	if len(parts) != 2 || parts[0] != Signature("whsec_bmV3", "msg_1", 1700000000, []byte("x")) ||
		parts[1] != Signature("whsec_b2xk", "msg_1", 1700000000, []byte("x")) {
		t.Fatalf("rotation signature = %q", sig)
	}
	if got, want := s.HashedKey([]byte("x")), HashedKey("whsec_bmV3", []byte("x")); got != want {
		t.Fatalf("x-hashed-key uses %s, want the current secret's %s", got, want)
	}
	now := time.Unix(1700000000, 0)
	h := http.Header{}
	s.SetHeaders(h, "msg_1", now, []byte("x"))
	for _, secret := range []string{"whsec_bmV3", "whsec_b2xk"} {
		if err := VerifyWebhook(secret, h, []byte("x"), now, 0); err != nil {
			t.Errorf("receiver with %s: %v", secret, err)
		}
	}
	if err := VerifyWebhook("whsec_b3RoZXI=", h, []byte("x"), now, 0); !errors.Is(err, ErrNoMatchingSig) {
		t.Errorf("receiver with another secret: %v, want ErrNoMatchingSig", err)
	}
}

func TestVerify(t *testing.T) {
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	body := []byte(`{"id":"e1","group":{"name":"<b>&</b>"}}`)
	now := time.Unix(1700000000, 0)
	h := http.Header{}
	NewSigner(secret).SetHeaders(h, "e1", now, body)

	if !VerifyHashedKey(secret, body, h.Get(HeaderHashedKey)) {
		t.Fatal("x-hashed-key does not verify")
	}
	if err := VerifyWebhook(secret, h, body, now.Add(4*time.Minute), 0); err != nil {
		t.Fatalf("signature does not verify: %v", err)
	}

	tampered := append([]byte(nil), body...)
	tampered[len(tampered)-3] = 'X'
	if VerifyHashedKey(secret, tampered, h.Get(HeaderHashedKey)) {
		t.Error("x-hashed-key accepts a tampered body")
	}
	if VerifyHashedKey("other", body, h.Get(HeaderHashedKey)) {
		t.Error("x-hashed-key accepts the wrong secret")
	}
	if VerifyHashedKey(secret, body, "zz") || VerifyHashedKey(secret, body, "") {
		t.Error("x-hashed-key accepts garbage")
	}
	if err := VerifyWebhook(secret, h, tampered, now, 0); !errors.Is(err, ErrNoMatchingSig) {
		t.Errorf("tampered body: %v", err)
	}
	if err := VerifyWebhook("whsec_b3RoZXI=", h, body, now, 0); !errors.Is(err, ErrNoMatchingSig) {
		t.Errorf("wrong secret: %v", err)
	}
	if err := VerifyWebhook(secret, h, body, now.Add(6*time.Minute), 0); !errors.Is(err, ErrTimestampOutside) {
		t.Errorf("stale timestamp: %v", err)
	}
	if err := VerifyWebhook(secret, h, body, now.Add(-6*time.Minute), 0); !errors.Is(err, ErrTimestampOutside) {
		t.Errorf("future timestamp: %v", err)
	}
	if err := VerifyWebhook(secret, h, body, now.Add(time.Minute), 30*time.Second); !errors.Is(err, ErrTimestampOutside) {
		t.Errorf("custom tolerance: %v", err)
	}

	// The signature covers id and timestamp too.
	h2 := h.Clone()
	h2.Set(HeaderWebhookID, "e2")
	if err := VerifyWebhook(secret, h2, body, now, 0); !errors.Is(err, ErrNoMatchingSig) {
		t.Errorf("changed id: %v", err)
	}
	h3 := h.Clone()
	h3.Set(HeaderWebhookTimestamp, strconv.FormatInt(now.Unix()+1, 10))
	if err := VerifyWebhook(secret, h3, body, now, 0); !errors.Is(err, ErrNoMatchingSig) {
		t.Errorf("changed timestamp: %v", err)
	}
	h4 := h.Clone()
	h4.Set(HeaderWebhookTimestamp, "soon")
	if err := VerifyWebhook(secret, h4, body, now, 0); !errors.Is(err, ErrInvalidTimestamp) {
		t.Errorf("bad timestamp: %v", err)
	}
	h5 := h.Clone()
	h5.Del(HeaderWebhookSignature)
	if err := VerifyWebhook(secret, h5, body, now, 0); !errors.Is(err, ErrMissingHeaders) {
		t.Errorf("missing signature: %v", err)
	}
	h6 := h.Clone()
	h6.Set(HeaderWebhookSignature, "v2,"+strings.TrimPrefix(h.Get(HeaderWebhookSignature), "v1,"))
	if err := VerifyWebhook(secret, h6, body, now, 0); !errors.Is(err, ErrNoMatchingSig) {
		t.Errorf("unknown version: %v", err)
	}
}

func BenchmarkSign(b *testing.B) {
	ev := benchEvent()
	body := AppendBody(nil, &ev, true)
	s := NewSigner("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	b.Run("HashedKey", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			_ = s.HashedKey(body)
		}
	})
	b.Run("Signature", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			_ = s.Signature(ev.ID, 1700000000, body)
		}
	})
	b.Run("SetHeaders", func(b *testing.B) {
		b.ReportAllocs()
		now := time.Unix(1700000000, 0)
		for b.Loop() {
			h := make(http.Header, 8)
			s.SetHeaders(h, ev.ID, now, body)
		}
	})
}
