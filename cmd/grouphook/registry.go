package main

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/grouphook/grouphook/metrics"
)

// newMetricsRegistry builds the registry /metrics serves: grouphook's
// collectors, grouphook_build_info set to 1, and the Go runtime, process
// and Go build-info collectors.
func newMetricsRegistry() (*prometheus.Registry, *metrics.Metrics) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
	)
	m := metrics.New(reg)
	m.BuildInfo.WithLabelValues(version, vcsRevision(), runtime.Version()).Set(1)
	return reg, m
}

// vcsRevision is the VCS revision the binary was built from ("" when the
// build has none).
func vcsRevision() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return ""
}
