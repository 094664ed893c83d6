package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPostfixMetricsAndLogs: what the metrics and the log say about mail
// through a real Postfix, on a site whose internal networks include
// loopback (the default, and docs/postfix.md's), so that the test's
// clients count as ours: each signed message is one outbound decision and
// one outbound message; a bounce, from an internal network or not, is no
// outbound message; the null sender has one spelling in the log.
func TestPostfixMetricsAndLogs(t *testing.T) {
	s := newSite(t, "accept")
	pf := s.pf
	s.daemon.stop(t)
	cfg, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.Replace(string(cfg), "internal_networks = []", `internal_networks = ["127.0.0.0/8", "::1/128"]`, 1)
	writeFile(t, s.config, conf)
	s.daemon = startDaemon(t, s.config, filepath.Join(pf.QueueDir(), "batv", "milter.sock"))

	const signed = 3
	for i := range signed {
		subject := "signed " + strconv.Itoa(i)
		res, err := pf.Submit("alice", password, user, []string{"carol@remote.test"}, message(user, "carol@remote.test", subject))
		if err != nil || !res.Accepted() {
			t.Fatalf("submit: %v %v", res, err)
		}
		pf.WaitMessage(t, wait, withText(subject))
	}
	// Bounces from loopback, an internal network: to a valid tag, and
	// untagged (refused at DATA).
	tagged := s.sign(user, 1)
	res, err := pf.SendMX("", []string{tagged}, message("MAILER-DAEMON@remote.test", tagged, "bounce valid"))
	if err != nil || !res.Accepted() {
		t.Fatalf("bounce: %v %v", res, err)
	}
	pf.WaitMessage(t, wait, withText("bounce valid"))
	if _, err := pf.SendMX("", []string{user}, message("MAILER-DAEMON@remote.test", user, "bounce untagged")); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"batv_decision_seconds_count", []string{`direction="outbound"`}, signed},
		{"batv_outbound_messages_total", []string{`result="signed"`}, signed},
		{"batv_outbound_messages_total", []string{`result="null-sender"`}, 0},
		{"batv_inbound_recipients_total", []string{`action="accept"`, `outcome="valid"`}, 1},
		{"batv_inbound_recipients_total", []string{`action="reject"`, `outcome="missing"`}, 1},
	} {
		if got := s.metric(t, tt.name, tt.labels...); got != tt.want {
			t.Errorf("%s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	for _, line := range strings.Split(s.daemon.Log(), "\n") {
		if strings.Contains(line, `sender=""`) || strings.Contains(line, "level=INFO") && strings.Contains(line, "null-sender") {
			t.Errorf("log line: %s", line)
		}
	}
}
