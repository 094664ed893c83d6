// Package metrics holds the Prometheus collectors of batv's front ends
// (milter, lookup tables, policy service) and of their listeners.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/batv/batv/policy"
)

// Metrics are the daemon's Prometheus collectors. Every method is safe on
// a nil *Metrics, which records nothing (for tests and tools).
type Metrics struct {
	outbound    *prometheus.CounterVec
	inbound     *prometheus.CounterVec
	multiRcpt   prometheus.Counter
	dataRefused prometheus.Counter
	latency     *prometheus.HistogramVec
	conns       *prometheus.GaugeVec
	connsTotal  *prometheus.CounterVec
	sessionEnds *prometheus.CounterVec
	lookups     *prometheus.CounterVec
}

// New creates the collectors and registers them with reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		outbound: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "batv_outbound_messages_total",
			Help: "Outbound messages by result: signed, or the reason they were left unsigned.",
		}, []string{"result"}),
		inbound: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "batv_inbound_recipients_total",
			Help: "Recipients in protected domains by verification outcome and action taken.",
		}, []string{"outcome", "action"}),
		multiRcpt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "batv_bounces_multiple_recipients_total",
			Help: "Null-sender messages with more than one recipient in a protected domain (genuine bounces have one).",
		}),
		dataRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "batv_bounces_refused_at_data_total",
			Help: "Bounce transactions refused at DATA because of their untagged recipients (accepted at RCPT so that callouts succeed).",
		}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "batv_decision_seconds",
			Help:    "Time spent deciding, per decision.",
			Buckets: []float64{1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2},
		}, []string{"direction"}),
		conns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "batv_connections_open",
			Help: "Open MTA connections per listener.",
		}, []string{"listener"}),
		connsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "batv_connections_total",
			Help: "MTA connections per listener: accepted, or refused over the connection limit.",
		}, []string{"listener", "result"}),
		sessionEnds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "batv_sessions_ended_total",
			Help: "MTA sessions ended, by how: quit, closed, timeout, error, shutdown.",
		}, []string{"listener", "how"}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "batv_socketmap_lookups_total",
			Help: "Socketmap lookups by map and result.",
		}, []string{"map", "result"}),
	}
	reg.MustRegister(m.outbound, m.inbound, m.multiRcpt, m.dataRefused, m.latency, m.conns, m.connsTotal, m.sessionEnds, m.lookups)
	return m
}

// Signed counts an outbound message: signed, or why not.
func (m *Metrics) Signed(skip policy.Skip) {
	if m != nil {
		result := "signed"
		if skip != policy.NotSkipped {
			result = skip.String()
		}
		m.outbound.WithLabelValues(result).Inc()
	}
}

// Recipient counts an inbound decision for a recipient in a protected
// domain.
func (m *Metrics) Recipient(d *policy.Decision) {
	if m != nil {
		m.inbound.WithLabelValues(d.Status.String(), d.Action.String()).Inc()
	}
}

// MultipleRecipients counts a bounce with several protected recipients.
func (m *Metrics) MultipleRecipients() {
	if m != nil {
		m.multiRcpt.Inc()
	}
}

// DataRefusal counts a bounce transaction refused at DATA.
func (m *Metrics) DataRefusal() {
	if m != nil {
		m.dataRefused.Inc()
	}
}

// Decision observes the time one decision took.
func (m *Metrics) Decision(direction string, seconds float64) {
	if m != nil {
		m.latency.WithLabelValues(direction).Observe(seconds)
	}
}

// ConnOpened counts a connection accepted on listener.
func (m *Metrics) ConnOpened(listener string) {
	if m != nil {
		m.conns.WithLabelValues(listener).Inc()
		m.connsTotal.WithLabelValues(listener, "accepted").Inc()
	}
}

// ConnRefused counts a connection refused over listener's limit.
func (m *Metrics) ConnRefused(listener string) {
	if m != nil {
		m.connsTotal.WithLabelValues(listener, "refused").Inc()
	}
}

// ConnClosed counts the end of a connection on listener, and how it ended.
func (m *Metrics) ConnClosed(listener, how string) {
	if m != nil {
		m.conns.WithLabelValues(listener).Dec()
		m.sessionEnds.WithLabelValues(listener, how).Inc()
	}
}

// Lookup counts a socketmap lookup of mapName with its result.
func (m *Metrics) Lookup(mapName, result string) {
	if m != nil {
		m.lookups.WithLabelValues(mapName, result).Inc()
	}
}
