package deliver

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

var generatedSecret = regexp.MustCompile(`^whsec_[A-Za-z0-9+/]{43}=$`)

func TestGenerateSecret(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		s, err := GenerateSecret()
		if err != nil {
			t.Fatal(err)
		}
		key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, "whsec_"))
		if !generatedSecret.MatchString(s) || err != nil || len(key) != 32 || !slices.Equal(SigningKey(s), key) {
			t.Fatalf("GenerateSecret = %q: want whsec_ and the base64 of 32 bytes", s)
		}
		if seen[s] {
			t.Fatal("GenerateSecret repeated itself")
		}
		seen[s] = true
		if err := ValidateSecret(s); err != nil {
			t.Fatalf("a generated secret does not validate: %v", err)
		}
	}
}

func countEndpoints(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM grouphook.endpoints`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func secretOf(t *testing.T, pool *pgxpool.Pool, id int64) (current string, previous *string, expires *time.Time) {
	t.Helper()
	if err := pool.QueryRow(context.Background(), `SELECT secret_key, previous_secret_key, previous_secret_expires_at
		FROM grouphook.endpoints WHERE id = $1`, id).Scan(&current, &previous, &expires); err != nil {
		t.Fatal(err)
	}
	return
}

// Every invalid input is refused with a message naming the field, without
// repeating a secret, and nothing is written.
func TestAddEndpointValidation(t *testing.T) {
	ctx := context.Background()
	pool := newDB(t)
	long := "https://example.com/" + strings.Repeat("a", MaxURLLength)
	for _, c := range []struct {
		name  string
		e     NewEndpoint
		field string
	}{
		{"empty url", NewEndpoint{URL: ""}, "url"},
		{"relative url", NewEndpoint{URL: "/hooks"}, "url"},
		{"ftp url", NewEndpoint{URL: "ftp://example.com/x"}, "url"},
		{"no host", NewEndpoint{URL: "https:///x"}, "url"},
		{"user info", NewEndpoint{URL: "https://user:hunter2pass@example.com/"}, "url"},
		{"too long", NewEndpoint{URL: long}, "url"},
		{"bad parse", NewEndpoint{URL: "http://[::1"}, "url"},
		{"empty client", NewEndpoint{URL: "https://e.example/", ClientID: ptr("")}, "client_id"},
		{"spaced client", NewEndpoint{URL: "https://e.example/", ClientID: ptr(" acme")}, "client_id"},
		{"control client", NewEndpoint{URL: "https://e.example/", ClientID: ptr("ac\x00me")}, "client_id"},
		{"long client", NewEndpoint{URL: "https://e.example/", ClientID: ptr(strings.Repeat("c", MaxClientIDLength+1))}, "client_id"},
		{"no events", NewEndpoint{URL: "https://e.example/", Events: []string{}}, "events"},
		{"bad event", NewEndpoint{URL: "https://e.example/", Events: []string{"CREATE", "TRUNCATE"}}, "events"},
		{"short secret", NewEndpoint{URL: "https://e.example/", Secret: "shortsecret12"}, "secret"},
		{"space in secret", NewEndpoint{URL: "https://e.example/", Secret: "a secret with spaces inside"}, "secret"},
		{"bad whsec", NewEndpoint{URL: "https://e.example/", Secret: "whsec_notbase64!!!!!!!!!!!!"}, "secret"},
		{"short whsec", NewEndpoint{URL: "https://e.example/", Secret: "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789"))}, "secret"},
		{"long secret", NewEndpoint{URL: "https://e.example/", Secret: strings.Repeat("s", MaxSecretLength+1)}, "secret"},
	} {
		_, secret, err := AddEndpoint(ctx, pool, c.e)
		var ie *InputError
		if !errors.As(err, &ie) {
			t.Errorf("%s: err %v, want an *InputError", c.name, err)
			continue
		}
		if !strings.HasPrefix(ie.Msg, c.field) {
			t.Errorf("%s: message %q does not start with the field %q", c.name, ie.Msg, c.field)
		}
		if secret != "" {
			t.Errorf("%s: a secret was returned", c.name)
		}
		if c.e.Secret != "" && strings.Contains(ie.Msg, c.e.Secret) || strings.Contains(ie.Msg, "hunter2pass") {
			t.Errorf("%s: message repeats a secret: %q", c.name, ie.Msg)
		}
	}
	if n := countEndpoints(t, pool); n != 0 {
		t.Fatalf("%d endpoints were written by invalid requests", n)
	}
}

func TestEndpointStoreLifecycle(t *testing.T) {
	ctx := context.Background()
	pool := newDB(t)

	// Add with defaults: a generated secret, every event, include_data.
	a, secretA, err := AddEndpoint(ctx, pool, NewEndpoint{URL: "https://a.example/hooks"})
	if err != nil {
		t.Fatal(err)
	}
	if !generatedSecret.MatchString(secretA) {
		t.Errorf("generated secret %q", secretA)
	}
	if cur, _, _ := secretOf(t, pool, a.ID); cur != secretA {
		t.Error("the returned secret is not the stored one")
	}
	if a.ClientID != nil || !slices.Equal(a.Events, []string{"CREATE", "UPDATE", "DELETE"}) || !a.IncludeData || !a.Enabled ||
		a.PreviousSecretExpiresAt != nil || a.URL != "https://a.example/hooks" || a.CreatedAt.IsZero() {
		t.Errorf("added %+v", a)
	}
	// Add with everything given; events are normalised.
	given := "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	b, secretB, err := AddEndpoint(ctx, pool, NewEndpoint{URL: "http://b.example/h", ClientID: ptr("acme"),
		Events: []string{"delete", " create ", "DELETE"}, NoData: true, Secret: given})
	if err != nil {
		t.Fatal(err)
	}
	if secretB != given || *b.ClientID != "acme" || !slices.Equal(b.Events, []string{"CREATE", "DELETE"}) || b.IncludeData {
		t.Errorf("added %+v (secret given back: %v)", b, secretB == given)
	}
	c, _, err := AddEndpoint(ctx, pool, NewEndpoint{URL: "https://c.example/", ClientID: ptr("globex"), Disabled: true})
	if err != nil || c.Enabled {
		t.Fatalf("add disabled: %+v, %v", c, err)
	}

	// List, filtered by client.
	all, err := ListEndpoints(ctx, pool, EndpointFilter{})
	if err != nil || len(all) != 3 || all[0].ID != a.ID || all[2].ID != c.ID {
		t.Fatalf("list: %+v, %v", all, err)
	}
	acme, err := ListEndpoints(ctx, pool, EndpointFilter{ClientID: ptr("acme")})
	if err != nil || len(acme) != 1 || acme[0].ID != b.ID {
		t.Fatalf("list acme: %+v, %v", acme, err)
	}
	none, err := ListEndpoints(ctx, pool, EndpointFilter{ClientID: ptr("nobody")})
	if err != nil || none == nil || len(none) != 0 {
		t.Fatalf("list nobody: %#v, %v", none, err)
	}

	// Show.
	got, err := GetEndpoint(ctx, pool, b.ID)
	if err != nil || got.ID != b.ID || got.URL != b.URL {
		t.Fatalf("get: %+v, %v", got, err)
	}

	// Update some fields; the rest stay.
	u, err := UpdateEndpoint(ctx, pool, b.ID, EndpointUpdate{URL: ptr("https://b2.example/h"), Events: []string{"UPDATE"}})
	if err != nil || u.URL != "https://b2.example/h" || !slices.Equal(u.Events, []string{"UPDATE"}) || *u.ClientID != "acme" || u.IncludeData {
		t.Fatalf("update: %+v, %v", u, err)
	}
	u, err = UpdateEndpoint(ctx, pool, b.ID, EndpointUpdate{ClearClient: true, IncludeData: ptr(true)})
	if err != nil || u.ClientID != nil || !u.IncludeData || u.URL != "https://b2.example/h" {
		t.Fatalf("update clear client: %+v, %v", u, err)
	}
	u, err = UpdateEndpoint(ctx, pool, b.ID, EndpointUpdate{ClientID: ptr("initech")})
	if err != nil || u.ClientID == nil || *u.ClientID != "initech" {
		t.Fatalf("update client: %+v, %v", u, err)
	}
	for _, bad := range []EndpointUpdate{{}, {URL: ptr("nope")}, {ClientID: ptr("")}, {Events: []string{}},
		{ClientID: ptr("x"), ClearClient: true}} {
		if _, err := UpdateEndpoint(ctx, pool, b.ID, bad); !errors.As(err, new(*InputError)) {
			t.Errorf("update %+v: %v, want an *InputError", bad, err)
		}
	}
	if after, _ := GetEndpoint(ctx, pool, b.ID); after.URL != "https://b2.example/h" || *after.ClientID != "initech" {
		t.Errorf("a refused update changed the row: %+v", after)
	}

	// Disable and enable.
	dis, err := SetEndpointEnabled(ctx, pool, a.ID, false)
	if err != nil || dis.Enabled || dis.DisabledReason == nil || *dis.DisabledReason != OperatorDisabledReason || dis.DisabledAt == nil {
		t.Fatalf("disable: %+v, %v", dis, err)
	}
	en, err := SetEndpointEnabled(ctx, pool, a.ID, true)
	if err != nil || !en.Enabled || en.DisabledReason != nil || en.DisabledAt != nil {
		t.Fatalf("enable: %+v, %v", en, err)
	}

	// Rotate: generated, with an overlap; then given, without one.
	before := time.Now()
	r, newSecret, err := RotateSecret(ctx, pool, a.ID, "", time.Hour)
	if err != nil || !generatedSecret.MatchString(newSecret) || newSecret == secretA {
		t.Fatalf("rotate: %v (new secret valid: %v)", err, generatedSecret.MatchString(newSecret))
	}
	cur, prev, exp := secretOf(t, pool, a.ID)
	if cur != newSecret || prev == nil || *prev != secretA || exp == nil || exp.Before(before.Add(59*time.Minute)) || exp.After(time.Now().Add(61*time.Minute)) {
		t.Errorf("after rotate: current ok %v, previous %v, expires %v", cur == newSecret, prev != nil && *prev == secretA, exp)
	}
	if r.PreviousSecretExpiresAt == nil {
		t.Error("rotate does not report the overlap's end")
	}
	r, s2, err := RotateSecret(ctx, pool, a.ID, given, 0)
	if err != nil || s2 != given || r.PreviousSecretExpiresAt != nil {
		t.Fatalf("rotate without overlap: %+v, %v", r, err)
	}
	if cur, prev, exp := secretOf(t, pool, a.ID); cur != given || prev != nil || exp != nil {
		t.Error("rotation without overlap kept the old secret")
	}
	if _, _, err := RotateSecret(ctx, pool, a.ID, "tooshort", time.Hour); !errors.As(err, new(*InputError)) {
		t.Errorf("rotate to a short secret: %v", err)
	}
	if _, _, err := RotateSecret(ctx, pool, a.ID, "", -time.Second); !errors.As(err, new(*InputError)) {
		t.Errorf("rotate with a negative overlap: %v", err)
	}
	if cur, _, _ := secretOf(t, pool, a.ID); cur != given {
		t.Error("a refused rotation changed the secret")
	}

	// Remove.
	if err := RemoveEndpoint(ctx, pool, c.ID); err != nil {
		t.Fatal(err)
	}
	if n := countEndpoints(t, pool); n != 2 {
		t.Errorf("%d endpoints after remove, want 2", n)
	}

	// Unknown ids.
	const missing = 999999
	if _, err := GetEndpoint(ctx, pool, missing); !IsNotFound(err) {
		t.Errorf("get missing: %v", err)
	}
	if _, err := UpdateEndpoint(ctx, pool, missing, EndpointUpdate{URL: ptr("https://x.example/")}); !IsNotFound(err) {
		t.Errorf("update missing: %v", err)
	}
	if _, err := SetEndpointEnabled(ctx, pool, missing, false); !IsNotFound(err) {
		t.Errorf("disable missing: %v", err)
	}
	if _, err := SetEndpointEnabled(ctx, pool, missing, true); !IsNotFound(err) {
		t.Errorf("enable missing: %v", err)
	}
	if err := RemoveEndpoint(ctx, pool, missing); !IsNotFound(err) {
		t.Errorf("remove missing: %v", err)
	}
	if _, _, err := RotateSecret(ctx, pool, missing, "", time.Hour); !IsNotFound(err) {
		t.Errorf("rotate missing: %v", err)
	}
	if err := (&NotFoundError{ID: missing}).Error(); !strings.Contains(err, "999999") {
		t.Errorf("not found message %q", err)
	}
}

// During a rotation's overlap the registry signs with both secrets; after
// it, with the new one only. x-hashed-key always uses the new one.
func TestRegistryRotationOverlap(t *testing.T) {
	ctx := context.Background()
	pool := newDB(t)
	old := "whsec_" + base64.StdEncoding.EncodeToString([]byte("old-secret-0123456789abcdef01234"))
	info, _, err := AddEndpoint(ctx, pool, NewEndpoint{URL: "https://r.example/", Secret: old})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := newMetrics()
	reg := NewRegistry(pool, testLogger(t, nil), m)
	sign := func() (http.Header, []byte) {
		t.Helper()
		if err := reg.Load(ctx); err != nil {
			t.Fatal(err)
		}
		ep, ok := reg.Snapshot().Endpoint(info.ID)
		if !ok {
			t.Fatal("endpoint not loaded")
		}
		body := []byte(`{"id":"evt_1","event":"CREATE"}`)
		h := http.Header{}
		ep.Signer().SetHeaders(h, "evt_1", time.Now(), body)
		return h, body
	}
	h, body := sign()
	if VerifyWebhook(old, h, body, time.Now(), 0) != nil || !VerifyHashedKey(old, body, h.Get(HeaderHashedKey)) {
		t.Fatal("before rotation the old secret does not verify")
	}

	_, fresh, err := RotateSecret(ctx, pool, info.ID, "", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	h, body = sign()
	if n := len(strings.Fields(h.Get(HeaderWebhookSignature))); n != 2 {
		t.Errorf("during the overlap webhook-signature has %d signatures, want 2", n)
	}
	if err := VerifyWebhook(old, h, body, time.Now(), 0); err != nil {
		t.Errorf("during the overlap the old secret does not verify: %v", err)
	}
	if err := VerifyWebhook(fresh, h, body, time.Now(), 0); err != nil {
		t.Errorf("during the overlap the new secret does not verify: %v", err)
	}
	if !VerifyHashedKey(fresh, body, h.Get(HeaderHashedKey)) || VerifyHashedKey(old, body, h.Get(HeaderHashedKey)) {
		t.Error("x-hashed-key does not use the new secret during the overlap")
	}

	eventually(t, 10*time.Second, "the overlap to end", func() bool {
		h, _ := sign()
		return len(strings.Fields(h.Get(HeaderWebhookSignature))) == 1
	})
	h, body = sign()
	if err := VerifyWebhook(old, h, body, time.Now(), 0); err == nil {
		t.Error("after the overlap the old secret still verifies")
	}
	if err := VerifyWebhook(fresh, h, body, time.Now(), 0); err != nil || !VerifyHashedKey(fresh, body, h.Get(HeaderHashedKey)) {
		t.Errorf("after the overlap the new secret does not verify: %v", err)
	}
}
