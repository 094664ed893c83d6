package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/policy"
)

// BenchmarkMetrics is the cost of the counters and the histogram one
// message updates.
func BenchmarkMetrics(b *testing.B) {
	m := New(prometheus.NewRegistry())
	d := policy.Decision{Action: policy.ActAccept, Protected: true, Status: batv.Valid}
	b.ReportAllocs()
	for b.Loop() {
		m.Decision("inbound", 2e-6)
		m.Recipient(&d)
	}
}
