package milter

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the daemon's Prometheus collectors. Every method is safe on
// a nil *Metrics, which records nothing (for tests and tools).
type Metrics struct {
	outbound    *prometheus.CounterVec
	inbound     *prometheus.CounterVec
	multiRcpt   prometheus.Counter
	latency     *prometheus.HistogramVec
	conns       *prometheus.GaugeVec
	connsTotal  *prometheus.CounterVec
	sessionEnds *prometheus.CounterVec
	lookups     *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
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
	reg.MustRegister(m.outbound, m.inbound, m.multiRcpt, m.latency, m.conns, m.connsTotal, m.sessionEnds, m.lookups)
	return m
}

func (m *Metrics) signed(result string) {
	if m != nil {
		m.outbound.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) recipient(outcome, action string) {
	if m != nil {
		m.inbound.WithLabelValues(outcome, action).Inc()
	}
}

func (m *Metrics) multipleRecipients() {
	if m != nil {
		m.multiRcpt.Inc()
	}
}

func (m *Metrics) decision(direction string, seconds float64) {
	if m != nil {
		m.latency.WithLabelValues(direction).Observe(seconds)
	}
}

func (m *Metrics) connOpened(listener string) {
	if m != nil {
		m.conns.WithLabelValues(listener).Inc()
		m.connsTotal.WithLabelValues(listener, "accepted").Inc()
	}
}

func (m *Metrics) connRefused(listener string) {
	if m != nil {
		m.connsTotal.WithLabelValues(listener, "refused").Inc()
	}
}

func (m *Metrics) connClosed(listener, how string) {
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
