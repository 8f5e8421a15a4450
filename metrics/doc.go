// Package metrics owns grouphook's Prometheus collectors. Every stage counts
// into one Metrics value built on a Registerer passed in by main; nothing
// here registers on the global registry. Labels name endpoints by id, never
// by URL, and never carry a secret.
package metrics
