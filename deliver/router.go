package deliver

// Router decides which endpoints get an event.
//
// An endpoint gets an event when it is enabled (in the snapshot) and its
// events contain the event's type. With TenantRouting (GROUPHOOK_TENANT_COLUMN
// is set), additionally:
//   - an endpoint without a client (client_id NULL) gets every tenant's events;
//   - an endpoint with a client gets an event only when the event's tenant is
//     not NULL and equals its client_id exactly.
//
// So a client never receives another client's group, nor a group without a
// tenant. Without TenantRouting there is no tenant to compare, and every
// subscribed endpoint gets every event whatever its client_id: client_id is
// then only a label.
type Router struct {
	TenantRouting bool
}

func eventIndex(typ string) int {
	switch typ {
	case TypeCreate:
		return 0
	case TypeUpdate:
		return 1
	case TypeDelete:
		return 2
	}
	return -1
}

// Route appends the endpoints of s that get ev to dst and returns it. An
// unknown event type matches nothing.
func (r Router) Route(s *Snapshot, ev *Event, dst []*Endpoint) []*Endpoint {
	i := eventIndex(ev.Type)
	if i < 0 {
		return dst
	}
	if !r.TenantRouting {
		return append(dst, s.all[i]...)
	}
	dst = append(dst, s.shared[i]...)
	if !ev.TenantNull {
		dst = append(dst, s.byClient[i][ev.Tenant]...)
	}
	return dst
}

// Matches reports whether e gets ev, by the same rule as Route. The
// dispatcher asks again before every attempt, so an endpoint whose events
// or client changed meanwhile stops receiving what no longer matches.
func (r Router) Matches(e *Endpoint, ev *Event) bool {
	if !e.Events.Has(ev.Type) {
		return false
	}
	if !r.TenantRouting || !e.HasClient {
		return true
	}
	return !ev.TenantNull && e.ClientID == ev.Tenant
}
