// Package deliver turns events into signed HTTP callbacks. It owns the
// endpoint registry (grouphook.endpoints), routing (event type and tenant),
// per (endpoint, group) ordered lanes, signing (x-hashed-key and Standard
// Webhooks) and retries. It knows HTTP and nothing of WAL: completions go
// back to the caller through the done function given with each event, which
// is called exactly once, when every matching endpoint has the event.
//
// # Endpoints
//
// A Registry holds an immutable Snapshot of the enabled endpoints and
// re-reads the table every second (Registry.Run), so row changes take effect
// within about two seconds. A row with an unusable URL is skipped, logged
// once per (id, url) and counted; the others are unaffected. A failed read
// keeps the last good snapshot.
//
// # Routing
//
// See Router: event type filter, and with tenant routing on, an endpoint
// with a client_id only gets that tenant's events. A client never receives
// another client's group.
//
// # Delivery
//
// Dispatcher.Submit routes an event and queues one delivery per endpoint in
// a FIFO lane keyed by (endpoint, Event.GroupKey). A lane has at most one
// attempt in flight, so an endpoint gets a group's events in submit order;
// lanes run in parallel on a fixed pool of workers. A failed attempt (any
// non-2xx, a redirect, a timeout, a connection error) is retried with
// exponential backoff and jitter, honouring Retry-After on 429 and 503,
// without holding a worker. Each attempt re-reads its endpoint: a new URL or
// secret is used at once, and a delivery whose endpoint was disabled,
// deleted or unsubscribed meanwhile is dropped (counted and logged). Bodies
// are built once per event and variant (full or thin) and signed afresh on
// every attempt with the same webhook-id.
//
// # Durable queue
//
// Queue (queue.go) is the Dispatcher's Parker: a lane whose head has failed
// for ParkAfter, or got 410 Gone, moves with its backlog into
// grouphook.deliveries in one transaction, and the events are done. Its
// Run loop (queue_worker.go) is the queue workers every replica runs: they
// claim due lane heads with FOR UPDATE SKIP LOCKED and a lease, attempt
// them through the dispatcher's client and signing outside any
// transaction, and record the outcome in a short one (delete when
// delivered, next delay of the schedule, dead, or endpoint disabled on
// 410). Maintenance (queue_maint.go) deletes expired dead rows, disables
// endpoints failing for DisableAfter and refreshes the gauges. The
// operator functions (queue_admin.go) list, show and replay. Queue's doc
// comment gives the ordering and crash arguments.
//
// # Endpoint management and safety
//
// endpoint_store.go holds the operations behind "grouphook endpoints" and
// the admin API (add, list, show, update, enable, disable, remove,
// rotate-secret): each validates its whole input (ValidateURL and friends)
// before writing, and only add and rotate-secret return a secret. A
// rotation keeps the previous secret until previous_secret_expires_at; the
// registry loads it while valid, and the endpoint's Signer signs
// webhook-signature with both (x-hashed-key with the current one), on the
// in-memory path and from the queue alike. ssrf.go's DialGuard is the
// net.Dialer Control hook that refuses private, loopback, link-local and
// similar destinations after DNS resolution; HTTPOptions.RequireHTTPS
// refuses plain http.
//
// # Never
//
// This package never writes to the database on the happy path, never logs
// a secret or an endpoint URL (which may carry a token), never follows a
// redirect, and never calls done for an event that some endpoint has not
// received (or, with a Parker, that was not durably parked).
package deliver
