package deliver

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestRouter(t *testing.T) {
	snap := NewSnapshot([]Endpoint{
		{ID: 1, URL: "http://a.example/", Events: AllEvents},                                      // shared, everything
		{ID: 2, URL: "http://b.example/", Events: EventCreate},                                    // shared, creates only
		{ID: 3, URL: "http://c.example/", Events: AllEvents, ClientID: "acme", HasClient: true},   // client acme
		{ID: 4, URL: "http://d.example/", Events: EventDelete, ClientID: "acme", HasClient: true}, // acme, deletes
		{ID: 5, URL: "http://e.example/", Events: AllEvents, ClientID: "globex", HasClient: true}, // client globex
		{ID: 6, URL: "http://f.example/", Events: AllEvents, ClientID: "", HasClient: true},       // client "" (not NULL)
	})
	tests := []struct {
		name   string
		tenant bool
		ev     Event
		want   []int64
	}{
		{"tenant acme create", true, Event{Type: TypeCreate, Tenant: "acme"}, []int64{1, 2, 3}},
		{"tenant acme delete", true, Event{Type: TypeDelete, Tenant: "acme"}, []int64{1, 3, 4}},
		{"tenant globex update", true, Event{Type: TypeUpdate, Tenant: "globex"}, []int64{1, 5}},
		{"unknown tenant gets shared only", true, Event{Type: TypeUpdate, Tenant: "initech"}, []int64{1}},
		{"NULL tenant gets shared only", true, Event{Type: TypeCreate, TenantNull: true}, []int64{1, 2}},
		{"NULL tenant is not the empty client", true, Event{Type: TypeUpdate, TenantNull: true, Tenant: ""}, []int64{1}},
		{"empty tenant matches empty client", true, Event{Type: TypeUpdate, Tenant: ""}, []int64{1, 6}},
		{"case matters", true, Event{Type: TypeUpdate, Tenant: "ACME"}, []int64{1}},
		{"routing off: everyone subscribed", false, Event{Type: TypeUpdate, Tenant: "acme"}, []int64{1, 3, 5, 6}},
		{"routing off: event filter still applies", false, Event{Type: TypeDelete, TenantNull: true}, []int64{1, 3, 4, 5, 6}},
		{"unknown type", true, Event{Type: "TRUNCATE", Tenant: "acme"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Router{TenantRouting: tt.tenant}
			var got []int64
			for _, e := range r.Route(snap, &tt.ev, nil) {
				got = append(got, e.ID)
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("Route = %v, want %v", got, tt.want)
			}
			// Matches agrees with Route for every endpoint.
			for _, e := range snap.Endpoints() {
				if m := r.Matches(e, &tt.ev); m != slices.Contains(tt.want, e.ID) {
					t.Errorf("Matches(endpoint %d) = %v, Route disagrees", e.ID, m)
				}
			}
		})
	}
}

// No client ever gets another client's event, whatever the mix.
func TestRouterTenantIsolation(t *testing.T) {
	var eps []Endpoint
	for i := range 60 {
		e := Endpoint{ID: int64(i + 1), URL: "http://x.example/", Events: EventSet(i%7 + 1)}
		if i%3 != 0 {
			e.ClientID, e.HasClient = fmt.Sprintf("client-%d", i%10), true
		}
		eps = append(eps, e)
	}
	snap := NewSnapshot(eps)
	r := Router{TenantRouting: true}
	for i := range 400 {
		ev := Event{Type: []string{TypeCreate, TypeUpdate, TypeDelete}[i%3], Tenant: fmt.Sprintf("client-%d", i%13), TenantNull: i%17 == 0}
		got := r.Route(snap, &ev, nil)
		seen := map[int64]bool{}
		for _, e := range got {
			if seen[e.ID] {
				t.Fatalf("endpoint %d routed twice", e.ID)
			}
			seen[e.ID] = true
			if e.HasClient && (ev.TenantNull || e.ClientID != ev.Tenant) {
				t.Fatalf("event of tenant %q (null %v) routed to endpoint %d of %s", ev.Tenant, ev.TenantNull, e.ID, e.ClientID)
			}
			if !e.Events.Has(ev.Type) {
				t.Fatalf("%s routed to endpoint %d subscribed to %s", ev.Type, e.ID, e.Events)
			}
		}
		for _, e := range snap.Endpoints() {
			if !seen[e.ID] && r.Matches(e, &ev) {
				t.Fatalf("endpoint %d should get %+v", e.ID, ev)
			}
		}
	}
}

func TestEventSet(t *testing.T) {
	s, err := ParseEventSet([]string{"CREATE", "DELETE"})
	if err != nil || s != EventCreate|EventDelete || s.String() != "CREATE,DELETE" {
		t.Fatalf("ParseEventSet = %v %v", s, err)
	}
	if !s.Has(TypeCreate) || s.Has(TypeUpdate) || s.Has("create") || s.Has("") {
		t.Fatal("Has is wrong")
	}
	if _, err := ParseEventSet([]string{"TRUNCATE"}); err == nil {
		t.Fatal("unknown type accepted")
	}
}

func TestValidateURL(t *testing.T) {
	long := "https://example.com/" + strings.Repeat("a", MaxURLLength)
	tests := []struct {
		url string
		ok  bool
	}{
		{"https://example.com/hook", true},
		{"http://10.0.0.1:8080/hook?x=1", true},
		{"HTTPS://Example.com", true},
		{"http://[::1]:9000/", true},
		{"", false},
		{"example.com/hook", false},
		{"/relative", false},
		{"ftp://example.com/", false},
		{"http:example.com", false},
		{"http://", false},
		{"http://:80/", false},
		{"http://user:secret@example.com/", false},
		{"http://user@example.com/", false},
		{"http://exa mple.com/", false},
		{"http://example.com:port/", false},
		{"http://example.com/\x7f", false},
		{long, false},
	}
	for _, tt := range tests {
		err := ValidateURL(tt.url)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateURL(%.40q) = %v, want ok=%v", tt.url, err, tt.ok)
		}
		if err != nil && len(tt.url) > 8 && strings.Contains(err.Error(), tt.url) {
			t.Errorf("error repeats the url: %v", err)
		}
	}
}

func BenchmarkRoute(b *testing.B) {
	var eps []Endpoint
	for i := range 100 {
		e := Endpoint{ID: int64(i + 1), URL: "http://x.example/", Events: AllEvents}
		if i >= 10 { // 10 shared endpoints, 90 spread over 30 clients
			e.ClientID, e.HasClient = fmt.Sprintf("client-%d", i%30), true
		}
		eps = append(eps, e)
	}
	snap := NewSnapshot(eps)
	ev := Event{Type: TypeUpdate, Tenant: "client-7"}
	for _, tenant := range []bool{true, false} {
		b.Run(fmt.Sprintf("tenant=%v", tenant), func(b *testing.B) {
			r := Router{TenantRouting: tenant}
			var buf [128]*Endpoint
			b.ReportAllocs()
			for b.Loop() {
				_ = r.Route(snap, &ev, buf[:0])
			}
		})
	}
}
