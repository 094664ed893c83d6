package daemon

import (
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// daemonMetrics are the metrics of the daemon itself: reloads, and the
// keyring state read at each scrape.
type daemonMetrics struct {
	reloads     *prometheus.CounterVec
	lastSuccess *prometheus.GaugeVec
}

func newDaemonMetrics(reg prometheus.Registerer, d *Daemon, version string) *daemonMetrics {
	m := &daemonMetrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "batv_reloads_total",
			Help: "Reloads by what was reloaded (config on SIGHUP, keyring on a file change) and result.",
		}, []string{"what", "result"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "batv_last_load_success_timestamp_seconds",
			Help: "When the configuration or the keyring in force was loaded: at start or at the last successful reload (Unix time).",
		}, []string{"what"}),
	}
	if version == "" {
		version = "dev"
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "batv_build_info",
		Help:        "Always 1; the labels say which batv runs.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	info.Set(1)
	reg.MustRegister(m.reloads, m.lastSuccess, info, keyringCollector{d})
	now := float64(d.now().Unix())
	m.lastSuccess.WithLabelValues("config").Set(now)
	m.lastSuccess.WithLabelValues("keyring").Set(now)
	// Start every series at zero, so a dashboard sees them before the
	// first reload.
	for _, what := range []string{"config", "keyring"} {
		for _, result := range []string{"success", "failure"} {
			m.reloads.WithLabelValues(what, result)
		}
	}
	return m
}

func (m *daemonMetrics) reload(what string, ok bool, at time.Time) {
	result := "success"
	if !ok {
		result = "failure"
	}
	m.reloads.WithLabelValues(what, result).Inc()
	if ok {
		m.lastSuccess.WithLabelValues(what).Set(float64(at.Unix()))
		if what == "config" {
			// A configuration reload reloads the keyring too.
			m.lastSuccess.WithLabelValues("keyring").Set(float64(at.Unix()))
		}
	}
}

var (
	descSigningKey = prometheus.NewDesc("batv_keyring_signing_key_id",
		"Id of the key that signs now; -1 if none does.", nil, nil)
	descKeys = prometheus.NewDesc("batv_keyring_keys",
		"Keys in the keyring by state (pending, signing, verifying, retired).", []string{"state"}, nil)
	descNextChange = prometheus.NewDesc("batv_keyring_next_signing_change_seconds",
		"Seconds until a scheduled key starts signing; absent when none is scheduled.", nil, nil)
	descGrace = prometheus.NewDesc("batv_grace_period_remaining_seconds",
		"Seconds until the grace period for untagged bounces ends; 0 once it has.", nil, nil)
)

// keyringCollector reports the keyring and policy state in force.
type keyringCollector struct{ d *Daemon }

func (c keyringCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descSigningKey
	ch <- descKeys
	ch <- descNextChange
	ch <- descGrace
}

func (c keyringCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.d.now()
	kr := c.d.keys.Current()
	id, ok := kr.SigningKeyID(now)
	if !ok {
		id = -1
	}
	ch <- prometheus.MustNewConstMetric(descSigningKey, prometheus.GaugeValue, float64(id))
	counts := map[string]int{"pending": 0, "signing": 0, "verifying": 0, "retired": 0}
	for _, k := range kr.Keys(now) {
		counts[k.State.String()]++
	}
	for state, n := range counts {
		ch <- prometheus.MustNewConstMetric(descKeys, prometheus.GaugeValue, float64(n), state)
	}
	if next, ok := kr.NextChange(now); ok {
		ch <- prometheus.MustNewConstMetric(descNextChange, prometheus.GaugeValue, next.Sub(now).Seconds())
	}
	grace := max(c.d.state.Load().policy.GraceUntil().Sub(now), 0)
	ch <- prometheus.MustNewConstMetric(descGrace, prometheus.GaugeValue, grace.Seconds())
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, for systemd's
// RELOADING=1 notification.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return time.Now().UnixMicro()
	}
	return ts.Nano() / 1000
}
