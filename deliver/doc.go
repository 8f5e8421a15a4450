// Package deliver turns events into signed HTTP callbacks. It owns the
// endpoint registry (grouphook.endpoints), routing (event type and tenant),
// per (endpoint, group) ordered lanes, signing (x-hashed-key and Standard
// Webhooks) and retries. It knows HTTP and nothing of WAL: completions go
// back to the caller through the done function given with each event, which
// is called exactly once, when every matching endpoint has the event.
package deliver
