package deliver

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func testEvent() Event {
	return Event{
		ID:         "0000000001A2B3C8-0",
		Type:       TypeUpdate,
		Table:      "public.groups",
		OccurredAt: time.Date(2024, 1, 2, 4, 4, 5, 123456789, time.FixedZone("CET", 3600)),
		Row:        []byte(`{"id":7,"name":"<b>Tom & Jerry</b>","tags":["a"]}`),
		Key:        []byte(`{"id":7}`),
		Previous:   []byte(`{"name":"old"}`),
		GroupKey:   `{"id":7}`,
	}
}

func TestAppendBody(t *testing.T) {
	ev := testEvent()
	tests := []struct {
		name string
		mod  func(*Event)
		full bool
		want string
	}{
		{"full with previous", nil, true,
			`{"id":"0000000001A2B3C8-0","event":"UPDATE","table":"public.groups","occurred_at":"2024-01-02T03:04:05.123456Z","group":{"id":7,"name":"<b>Tom & Jerry</b>","tags":["a"]},"previous":{"name":"old"}}`},
		{"thin drops previous", nil, false,
			`{"id":"0000000001A2B3C8-0","event":"UPDATE","table":"public.groups","occurred_at":"2024-01-02T03:04:05.123456Z","group":{"id":7}}`},
		{"full without previous", func(e *Event) { e.Type, e.Previous = TypeCreate, nil }, true,
			`{"id":"0000000001A2B3C8-0","event":"CREATE","table":"public.groups","occurred_at":"2024-01-02T03:04:05.123456Z","group":{"id":7,"name":"<b>Tom & Jerry</b>","tags":["a"]}}`},
		{"whole seconds keep microseconds", func(e *Event) { e.OccurredAt = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC); e.Previous = nil }, true,
			`{"id":"0000000001A2B3C8-0","event":"UPDATE","table":"public.groups","occurred_at":"2024-01-02T03:04:05.000000Z","group":{"id":7,"name":"<b>Tom & Jerry</b>","tags":["a"]}}`},
		{"strings are escaped, HTML is not", func(e *Event) { e.Table = "we\"ird\\<t>&\n\x01é\u2028"; e.Previous = nil }, false,
			`{"id":"0000000001A2B3C8-0","event":"UPDATE","table":"we\"ird\\<t>&\n\u0001é` + "\u2028" + `","occurred_at":"2024-01-02T03:04:05.123456Z","group":{"id":7}}`},
		{"invalid UTF-8 becomes U+FFFD", func(e *Event) { e.Table = "a\xffb" }, false,
			`{"id":"0000000001A2B3C8-0","event":"UPDATE","table":"a` + "\uFFFD" + `b","occurred_at":"2024-01-02T03:04:05.123456Z","group":{"id":7}}`},
		{"missing key is null", func(e *Event) { e.Key = nil }, false,
			`{"id":"0000000001A2B3C8-0","event":"UPDATE","table":"public.groups","occurred_at":"2024-01-02T03:04:05.123456Z","group":null}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := ev
			if tt.mod != nil {
				tt.mod(&e)
			}
			got := string(AppendBody([]byte("prefix"), &e, tt.full))
			if got != "prefix"+tt.want {
				t.Fatalf("body\n got %s\nwant prefix%s", got, tt.want)
			}
			if !json.Valid([]byte(tt.want)) {
				t.Fatalf("not valid JSON: %s", tt.want)
			}
			if n := bodyLen(&e, tt.full); n < len(tt.want) {
				t.Errorf("bodyLen = %d < %d: the body needs a second allocation", n, len(tt.want))
			}
		})
	}
}

// The escaping matches encoding/json without HTML escaping (except U+2028
// and U+2029, which JSON.stringify leaves alone), so the bodies round-trip.
func TestAppendStringRoundTrip(t *testing.T) {
	for _, s := range []string{"", "plain", `"quoted"`, `back\slash`, "<>&", "tab\tnl\ncr\r\b\f", "\x00\x1f\x7f", "日本語", "emoji 🎉"} {
		b := appendString(nil, s)
		var back string
		if err := json.Unmarshal(b, &back); err != nil || back != s {
			t.Errorf("appendString(%q) = %s, decodes to %q, %v", s, b, back, err)
		}
		var sb strings.Builder
		enc := json.NewEncoder(&sb)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(s)
		if want := strings.TrimSuffix(sb.String(), "\n"); string(b) != want {
			t.Errorf("appendString(%q) = %s, encoding/json says %s", s, b, want)
		}
	}
}

func TestBodiesCached(t *testing.T) {
	ev := testEvent()
	var bs bodies
	full, thin := bs.get(&ev, true), bs.get(&ev, false)
	if &full[0] != &bs.get(&ev, true)[0] || &thin[0] != &bs.get(&ev, false)[0] {
		t.Fatal("bodies are built again")
	}
	if strings.Contains(string(thin), "previous") || !strings.Contains(string(full), "previous") {
		t.Fatalf("variants mixed up: full %s thin %s", full, thin)
	}
}

func benchEvent() Event {
	ev := testEvent()
	ev.Row = []byte(`{"id":1234567,"name":"Engineering – Platform","description":"The platform team owns the build, the deploy pipeline and the shared libraries.","client_id":"acme","created_at":"2024-01-02T03:04:05.123456Z","member_count":42,"settings":{"visibility":"private","notify":true}}`)
	ev.Previous = []byte(`{"member_count":41}`)
	return ev
}

func BenchmarkAppendBody(b *testing.B) {
	ev := benchEvent()
	for _, full := range []bool{true, false} {
		name := "thin"
		if full {
			name = "full"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = AppendBody(make([]byte, 0, bodyLen(&ev, full)), &ev, full)
			}
		})
	}
}
