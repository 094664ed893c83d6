package policyd

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/metrics"
	"github.com/batv/batv/internal/serve"
	"github.com/batv/batv/internal/testenv/tagtest"
	"github.com/batv/batv/policy"
)

var (
	testKeys = batv.SingleKey{ID: 4, Secret: []byte("policy test key, 32 bytes long!!")}
	// testNow is 2026-11-28 10:00 UTC; the grace period is over unless a
	// test says otherwise.
	testNow = time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
)

// testPolicy is the default policy for example.com, with mod applied and
// the grace period over.
func testPolicy(t testing.TB, mod func(*policy.Config)) *policy.Policy {
	t.Helper()
	cfg := policy.DefaultConfig("example.com")
	cfg.Verify.GraceUntil = testNow.Add(-365 * 24 * time.Hour)
	if mod != nil {
		mod(&cfg)
	}
	p, err := policy.New(cfg, testKeys)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// tag signs addr with the test key, daysAgo days before testNow.
func tag(t testing.TB, addr string, daysAgo int) string {
	t.Helper()
	return tagtest.Sign(t, testKeys, addr, testNow.AddDate(0, 0, -daysAgo))
}

// frontend serves a Frontend with the test policy (mod applied) and
// returns a function that opens connections to it as smtpd does, the
// metrics registry and the log.
type frontend struct {
	t      *testing.T
	ts     *testServer
	reg    *prometheus.Registry
	log    *logBuf
	policy atomic.Pointer[policy.Policy]
}

func newFrontend(t *testing.T, mod func(*policy.Config)) *frontend {
	t.Helper()
	f := &frontend{t: t, reg: prometheus.NewRegistry(), log: &logBuf{}}
	f.policy.Store(testPolicy(t, mod))
	fe := &Frontend{Policy: f.policy.Load, Metrics: metrics.New(f.reg), Now: func() time.Time { return testNow }}
	f.ts = newTestServer(t, &Server{Handler: fe}, serve.Options{Logger: f.log.logger()})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", f.log)
		}
	})
	return f
}

// smtpd is one policy connection, as one smtpd process has.
type smtpd struct {
	*client
	seq int
}

func (f *frontend) connect() *smtpd {
	conn, _ := f.ts.connect()
	return &smtpd{client: newClient(f.t, conn)}
}

// transaction is one mail transaction of a smtpd connection: its requests
// share an instance.
type transaction struct {
	s        *smtpd
	instance string
	sender   string
	client   string
	accepted []string
}

// mail starts a transaction from sender ("" for <>), from the client
// 192.0.2.25.
func (s *smtpd) mail(sender string) *transaction {
	s.seq++
	return &transaction{s: s, instance: fmt.Sprintf("1a2b.6b106e3e.%x.%d", s.seq, s.seq), sender: sender, client: "192.0.2.25"}
}

// on moves the transaction to another connection, as smtpd does after
// its connection broke.
func (tr *transaction) on(s *smtpd) *transaction {
	tr.s = s
	return tr
}

// rcpt asks about a recipient and returns the action; a recipient not
// refused counts as accepted by smtpd.
func (tr *transaction) rcpt(addr string) string {
	tr.s.t.Helper()
	queueID := ""
	if len(tr.accepted) > 0 {
		queueID = "4ABC123"
	}
	a := tr.s.ask("protocol_state=RCPT", "protocol_name=ESMTP", "client_address="+tr.client, "sender="+tr.sender,
		"recipient="+addr, "recipient_count=0", "queue_id="+queueID, "instance="+tr.instance, "sasl_username=")
	if !refuses(a) {
		tr.accepted = append(tr.accepted, addr)
	}
	return a
}

// data asks at DATA, as smtpd does: recipient is set only with one
// accepted recipient.
func (tr *transaction) data() string {
	tr.s.t.Helper()
	rcpt := ""
	if len(tr.accepted) == 1 {
		rcpt = tr.accepted[0]
	}
	return tr.s.ask("protocol_state=DATA", "protocol_name=ESMTP", "client_address="+tr.client, "sender="+tr.sender,
		"recipient="+rcpt, fmt.Sprintf("recipient_count=%d", len(tr.accepted)), "queue_id=4ABC123", "instance="+tr.instance)
}

// refuses reports whether an action refuses.
func refuses(action string) bool {
	return action != "" && (action[0] == '4' || action[0] == '5')
}

// metric returns the value of a counter or the count of a histogram, by
// name and labels ("name{a=\"b\"}" as the exposition format writes it).
func (f *frontend) metric(series string) float64 {
	f.t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		f.t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			name := mf.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case name == series && m.Counter != nil:
				return m.Counter.GetValue()
			case strings.Replace(series, "_count", "", 1) == name && m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

const (
	refusedUntagged = "550 5.7.1 Bounce refused: this address sends only tagged mail, so it did not send the message you are bouncing (BATV)"
	deferredSplit   = "452 4.5.3 Too many recipients for one bounce: send this one in a transaction of its own (BATV)"
	refusedForged   = "550 5.7.1 Bounce refused: the recipient address tag is not valid (BATV)"
	refusedExpired  = "550 5.7.1 Bounce refused: the recipient address tag is expired (BATV)"
)

// TestFrontendDecisions: each inbound case of the milter, as actions at
// RCPT and DATA.
func TestFrontendDecisions(t *testing.T) {
	const alice, bob = "alice@example.com", "bob@example.com"
	validBob := tag(t, bob, 1)
	forged := tagtest.Forge(tag(t, alice, 1))
	for _, tt := range []struct {
		name   string
		mod    func(*policy.Config)
		sender string
		rcpts  []string
		want   []string // the RCPT actions
		data   string   // the DATA action
	}{
		{"bounce to a valid tag", nil, "", []string{validBob}, []string{"DUNNO"}, "DUNNO"},
		{"bounce to a forged tag", nil, "", []string{forged}, []string{refusedForged}, ""},
		{"bounce to an expired tag", nil, "", []string{tag(t, alice, 9)}, []string{refusedExpired}, ""},
		{"untagged bounce: refused at DATA", nil, "", []string{alice}, []string{"DUNNO"}, refusedUntagged},
		{"untagged bounce, tempfail", func(c *policy.Config) { c.Verify.UntaggedBounce = "tempfail" }, "",
			[]string{alice}, []string{"DUNNO"}, "451 4.7.1 Bounce deferred: the recipient address is not tagged (BATV)"},
		{"untagged bounce refused at RCPT", func(c *policy.Config) { c.Verify.RefuseUntaggedAt = "rcpt" }, "",
			[]string{alice}, []string{refusedUntagged}, ""},
		{"untagged bounce, tag", func(c *policy.Config) { c.Verify.UntaggedBounce = "tag" }, "",
			[]string{alice}, []string{"PREPEND X-BATV-Status: untagged; rcpt=<alice@example.com>"}, "DUNNO"},
		{"untagged bounce, quarantine", func(c *policy.Config) { c.Verify.UntaggedBounce = "quarantine" }, "",
			[]string{alice, bob}, []string{"PREPEND X-BATV-Status: untagged; rcpt=<alice@example.com>",
				"PREPEND X-BATV-Status: untagged; rcpt=<bob@example.com>"}, "HOLD BATV: untagged bounce to <alice@example.com>"},
		{"untagged bounce, off", func(c *policy.Config) { c.Verify.UntaggedBounce = "off" }, "",
			[]string{alice}, []string{"DUNNO"}, "DUNNO"},
		{"untagged bounce in the grace period", func(c *policy.Config) { c.Verify.GraceUntil = testNow.Add(time.Hour) }, "",
			[]string{alice}, []string{"DUNNO"}, "DUNNO"},
		{"postmaster is exempt", nil, "", []string{"postmaster@example.com"}, []string{"DUNNO"}, "DUNNO"},
		{"an exempt client", func(c *policy.Config) { c.Verify.ExemptClients = []string{"192.0.2.0/24"} }, "",
			[]string{alice}, []string{"DUNNO"}, "DUNNO"},
		{"a forged tag from an exempt client is marked and redirected", func(c *policy.Config) { c.Verify.ExemptClients = []string{"192.0.2.25"} }, "",
			[]string{forged}, []string{"PREPEND X-BATV-Status: bad-signature; rcpt=<" + forged + ">"}, "REDIRECT alice@example.com"},
		{"a bounce to another domain", nil, "", []string{"carol@example.org"}, []string{"DUNNO"}, "DUNNO"},
		{"valid, then untagged: refused at RCPT", nil, "", []string{validBob, alice},
			[]string{"DUNNO", refusedUntagged}, "DUNNO"},
		{"untagged, then valid: 452 4.5.3", nil, "", []string{alice, validBob},
			[]string{"DUNNO", deferredSplit}, refusedUntagged},
		{"untagged, then postmaster: 452 4.5.3", nil, "", []string{alice, "postmaster@example.com"},
			[]string{"DUNNO", deferredSplit}, refusedUntagged},
		{"untagged twice: both refused at DATA", nil, "", []string{alice, bob}, []string{"DUNNO", "DUNNO"}, refusedUntagged},
		{"forged, then untagged", nil, "", []string{forged, alice}, []string{refusedForged, "DUNNO"}, refusedUntagged},
		{"a reply to a tag", nil, "carol@example.org", []string{tag(t, alice, 1)}, []string{"DUNNO"}, "DUNNO"},
		{"a reply to an expired tag: redirected", nil, "carol@example.org", []string{tag(t, alice, 20)}, []string{"DUNNO"}, "REDIRECT alice@example.com"},
		{"a reply to an expired tag and another recipient: left tagged", nil, "carol@example.org", []string{tag(t, alice, 20), bob},
			[]string{"DUNNO", "DUNNO"}, "DUNNO"},
		{"a reply to another recipient and an expired tag: left tagged", nil, "carol@example.org", []string{bob, tag(t, alice, 20)},
			[]string{"DUNNO", "DUNNO"}, "DUNNO"},
		{"a reply to a forged tag", nil, "carol@example.org", []string{forged},
			[]string{"550 5.7.1 The recipient address tag is not valid (BATV)"}, ""},
		{"a reply to a forged tag, deliver-mark", func(c *policy.Config) { c.Verify.InvalidTagReply = "deliver-mark" }, "carol@example.org",
			[]string{forged}, []string{"PREPEND X-BATV-Status: bad-signature; rcpt=<" + forged + ">"}, "REDIRECT alice@example.com"},
		{"a reply to a forged tag, deliver", func(c *policy.Config) { c.Verify.InvalidTagReply = "deliver" }, "carol@example.org",
			[]string{forged}, []string{"DUNNO"}, "REDIRECT alice@example.com"},
		{"a reply to a forged tag, pass", func(c *policy.Config) { c.Verify.InvalidTagReply = "pass" }, "carol@example.org",
			[]string{forged}, []string{"DUNNO"}, "DUNNO"},
		{"mail to an untagged user", nil, "carol@example.org", []string{alice}, []string{"DUNNO"}, "DUNNO"},
		{"a null sender spelled MAILER-DAEMON", nil, "mailer-daemon@mx.example.org", []string{alice}, []string{"DUNNO"}, refusedUntagged},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFrontend(t, tt.mod)
			tr := f.connect().mail(tt.sender)
			for i, rcpt := range tt.rcpts {
				if got := tr.rcpt(rcpt); got != tt.want[i] {
					t.Errorf("RCPT %s: %q, want %q", rcpt, got, tt.want[i])
				}
			}
			if len(tr.accepted) == 0 {
				return // smtpd does not get as far as DATA
			}
			if got := tr.data(); got != tt.data {
				t.Errorf("DATA: %q, want %q", got, tt.data)
			}
		})
	}
}

// TestFrontendCallout: a callout (RCPT, then RSET or QUIT) to an untagged
// address gets DUNNO, and leaves nothing behind for the next transaction
// on the connection.
func TestFrontendCallout(t *testing.T) {
	f := newFrontend(t, nil)
	s := f.connect()
	if got := s.mail("").rcpt("alice@example.com"); got != "DUNNO" {
		t.Fatalf("callout: %q", got)
	}
	tr := s.mail("")
	if got := tr.rcpt(tag(t, "bob@example.com", 1)); got != "DUNNO" {
		t.Fatalf("a valid tag after the callout: %q", got)
	}
	if got := tr.data(); got != "DUNNO" {
		t.Fatalf("DATA after the callout: %q", got)
	}
}

// TestFrontendLostState: a transaction continued on another connection
// (after a reconnect) never lets an untagged bounce in, and defers only
// what it cannot decide.
func TestFrontendLostState(t *testing.T) {
	const alice = "alice@example.com"
	validBob := tag(t, "bob@example.com", 1)
	forged := tagtest.Forge(tag(t, alice, 1))
	deliver := func(c *policy.Config) { c.Verify.InvalidTagReply = "deliver" }
	for _, tt := range []struct {
		name string
		// mod is the policy of the first connection; the second has the
		// default one.
		mod         func(*policy.Config)
		sender      string
		before      []string // recipients on the first connection
		after       []string // recipients on the second
		data        string
		logs        []string
		dataRefused float64
	}{
		{"one untagged recipient: decided again and refused", nil, "", []string{alice}, nil, refusedUntagged,
			[]string{"level=INFO", `msg="bounce refused at DATA"`, `state="decided again from its one recipient"`}, 1},
		{"one valid tag: decided again and accepted", nil, "", []string{validBob}, nil, "DUNNO",
			[]string{"level=DEBUG", `msg="accepted at DATA"`}, 0},
		{"untagged, then valid on the new connection: deferred", nil, "", []string{alice}, []string{validBob},
			"451 4.3.0 Bounce deferred: its recipients must be checked again, please send it again (BATV)",
			[]string{"level=WARN", "bounce deferred at DATA", "recipients=2", "seen=1"}, 0},
		{"two untagged on the old connection: deferred", nil, "", []string{alice, "bob@example.com"}, nil,
			"451 4.3.0 Bounce deferred: its recipients must be checked again, please send it again (BATV)",
			[]string{"level=WARN", "bounce deferred at DATA", "recipients=2", "seen=0"}, 0},
		{"mail with a sender is not a bounce", nil, "carol@example.org", []string{alice, "bob@example.com"}, nil, "DUNNO", nil, 0},
		{"a reply to an expired tag: decided again and redirected", nil, "carol@example.org", []string{tag(t, alice, 20)}, nil,
			"REDIRECT alice@example.com", []string{"level=INFO", `msg="redirected to the untagged address at DATA"`, "untagged=alice@example.com"}, 0},
		{"a reply to a forged tag accepted before: not refused at DATA", deliver, "carol@example.org", []string{forged}, nil, "DUNNO",
			[]string{"level=DEBUG", `msg="accepted at DATA"`, "outcome=bad-signature"}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFrontend(t, tt.mod)
			tr := f.connect().mail(tt.sender)
			for _, r := range tt.before {
				if got := tr.rcpt(r); got != "DUNNO" {
					t.Fatalf("RCPT %s: %q", r, got)
				}
			}
			f.policy.Store(testPolicy(t, nil))
			tr.on(f.connect())
			for _, r := range tt.after {
				if got := tr.rcpt(r); got != "DUNNO" {
					t.Fatalf("RCPT %s on the new connection: %q", r, got)
				}
			}
			if got := tr.data(); got != tt.data {
				t.Fatalf("DATA: %q, want %q", got, tt.data)
			}
			if len(tt.logs) > 0 {
				f.log.waitFor(t, tt.logs...)
			}
			if n := f.metric("batv_bounces_refused_at_data_total"); n != tt.dataRefused {
				t.Errorf("batv_bounces_refused_at_data_total = %v, want %v", n, tt.dataRefused)
			}
		})
	}
}

// TestFrontendLogsAndMetrics: one line per recipient in a protected
// domain, in the milter's format, and the milter's metrics.
func TestFrontendLogsAndMetrics(t *testing.T) {
	f := newFrontend(t, nil)
	s := f.connect()
	valid := tag(t, "bob@example.com", 1)
	tr := s.mail("")
	tr.rcpt(valid)
	tr.rcpt("carol@example.org") // not protected: no line, not counted
	tr.rcpt("alice@example.com") // after one to deliver: refused at RCPT
	tr.data()
	tr = s.mail("")
	tr.rcpt("alice@example.com")
	tr.data()
	tr = s.mail("")
	tr.rcpt(valid)
	tr.rcpt("postmaster@example.com")
	tr.data()

	f.log.waitFor(t, "level=INFO", "msg=recipient", "listener=policy", "conn=1", `queue_id=""`, "direction=inbound",
		"outcome=valid", "action=accept", `rcpt="`+valid+`"`, "key_id=4", "untagged=bob@example.com", "sender=<>", "bounce=true", "client=192.0.2.25")
	f.log.waitFor(t, "msg=recipient", "outcome=missing", "action=reject", "queue_id=4ABC123", "rcpt=alice@example.com",
		"transaction has a recipient that will be delivered")
	f.log.waitFor(t, "msg=recipient", "outcome=missing", "action=reject", "rcpt=alice@example.com", "stage=data")
	f.log.waitFor(t, "level=INFO", `msg="bounce refused at DATA"`, "direction=inbound", "recipients=1", "client=192.0.2.25",
		`reply="550 5.7.1 Bounce refused: this address sends only tagged mail`)
	f.log.waitFor(t, "level=INFO", `msg="bounce with several protected recipients"`, "recipients=2")
	if strings.Contains(f.log.String(), "carol@example.org") {
		t.Errorf("a recipient in another domain was logged:\n%s", f.log)
	}
	for series, want := range map[string]float64{
		`batv_inbound_recipients_total{action="accept",outcome="valid"}`:   2,
		`batv_inbound_recipients_total{action="reject",outcome="missing"}`: 2,
		`batv_inbound_recipients_total{action="exempt",outcome="missing"}`: 1,
		`batv_bounces_refused_at_data_total`:                               1,
		`batv_bounces_multiple_recipients_total`:                           2,
		`batv_decision_seconds_count{direction="inbound"}`:                 6,
	} {
		if got := f.metric(series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
}

// TestFrontendPolicyPerTransaction: a transaction keeps the policy in
// force at its first request; the next one takes the new policy.
func TestFrontendPolicyPerTransaction(t *testing.T) {
	f := newFrontend(t, nil)
	s := f.connect()
	tr := s.mail("")
	tr.rcpt("alice@example.com")
	f.policy.Store(testPolicy(t, func(c *policy.Config) { c.Verify.UntaggedBounce = "off" }))
	if got := tr.data(); got != refusedUntagged {
		t.Fatalf("DATA of the transaction begun before the change: %q", got)
	}
	tr = s.mail("")
	tr.rcpt("alice@example.com")
	if got := tr.data(); got != "DUNNO" {
		t.Fatalf("DATA of a transaction begun after: %q", got)
	}
}

// TestFrontendOtherRequests: requests at other stages, and requests that
// are not smtpd's, get DUNNO.
func TestFrontendOtherRequests(t *testing.T) {
	f := newFrontend(t, nil)
	s := f.connect()
	for _, attrs := range [][]string{
		{"protocol_state=CONNECT", "client_address=192.0.2.25"},
		{"protocol_state=MAIL", "sender=", "instance=a.1"},
		{"protocol_state=VRFY", "recipient=alice@example.com"},
		{"protocol_state=END-OF-MESSAGE", "sender=", "recipient=alice@example.com", "recipient_count=1", "instance=a.1"},
	} {
		if got := s.ask(attrs...); got != "DUNNO" {
			t.Errorf("%v: %q", attrs, got)
		}
	}
	s.send("request=something_else\nprotocol_state=RCPT\nsender=\nrecipient=alice@example.com\ninstance=b.2\n\n")
	if got, err := s.reply(); err != nil || got != "DUNNO" {
		t.Errorf("another request type: %q %v", got, err)
	}
}
