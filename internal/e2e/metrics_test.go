package e2e

import (
	"bufio"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
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
	writeFile(t, s.config, conf+"\n[metrics]\nlisten = \"127.0.0.1:0\"\n")
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

	m := s.metrics(t)
	for series, want := range map[string]float64{
		`batv_decision_seconds_count{direction="outbound"}`:                signed,
		`batv_outbound_messages_total{result="signed"}`:                    signed,
		`batv_outbound_messages_total{result="null-sender"}`:               0,
		`batv_inbound_recipients_total{action="accept",outcome="valid"}`:   1,
		`batv_inbound_recipients_total{action="reject",outcome="missing"}`: 1,
	} {
		if got := m[series]; got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	for _, line := range strings.Split(s.daemon.Log(), "\n") {
		if strings.Contains(line, `sender=""`) || strings.Contains(line, "level=INFO") && strings.Contains(line, "null-sender") {
			t.Errorf("log line: %s", line)
		}
	}
}

var metricLine = regexp.MustCompile(`^([a-z_]+(?:\{[^}]*\})?) (\S+)$`)

// metrics reads the daemon's metrics endpoint: series → value.
func (s *site) metrics(t *testing.T) map[string]float64 {
	t.Helper()
	addr := regexp.MustCompile(`msg="metrics listening" address=(\S+)`).FindStringSubmatch(s.daemon.Log())
	if addr == nil {
		t.Fatalf("no metrics address in the log:\n%s", s.daemon.Log())
	}
	resp, err := http.Get("http://" + addr[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if m := metricLine.FindStringSubmatch(sc.Text()); m != nil {
			v, _ := strconv.ParseFloat(m[2], 64)
			out[m[1]] = v
		}
	}
	return out
}
