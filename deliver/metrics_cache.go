package deliver

import (
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// counterCache holds the children of DeliveriesTotal by endpoint and
// outcome, so an attempt neither formats the id nor hashes the labels. It
// grows with the (endpoint, outcome) pairs ever counted, as
// DeliveriesTotal's children do.
type counterCache struct {
	mu sync.RWMutex
	m  map[counterKey]prometheus.Counter
}

type counterKey struct {
	endpoint int64
	outcome  string
}

// delivered returns the DeliveriesTotal child of (endpoint, outcome).
func (d *Dispatcher) delivered(endpoint int64, outcome string) prometheus.Counter {
	c, k := &d.deliveries, counterKey{endpoint, outcome}
	c.mu.RLock()
	ctr := c.m[k]
	c.mu.RUnlock()
	if ctr != nil {
		return ctr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if ctr = c.m[k]; ctr == nil {
		ctr = d.m.DeliveriesTotal.WithLabelValues(strconv.FormatInt(endpoint, 10), outcome)
		if c.m == nil {
			c.m = make(map[counterKey]prometheus.Counter)
		}
		c.m[k] = ctr
	}
	return ctr
}
