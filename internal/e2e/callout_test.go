package e2e

import (
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/postfixtest"
)

// Sender address verification, the one-transaction rule and the stage of
// each refusal, through the real Postfix of docs/postfix.md (issue 13).
// A callout is MAIL FROM:<>, RCPT TO:<address>, then RSET or QUIT, never
// DATA: untagged addresses must pass it, so their refusal as bounce
// recipients waits for DATA; tags that do not verify are refused at RCPT.

// newRemote starts a second Postfix, mx.remote.test, as the site our users
// write to (remote.test, and lists.remote.test for a mailing list). It
// verifies senders as many sites do: reject_unverified_sender with the
// null sender as the probe's sender (address_verify_sender =, as Exim's
// callouts), probing our MX. The two sites send each other's mail
// directly, by transport_maps.
func newRemote(t *testing.T, s *site) *postfixtest.Instance {
	t.Helper()
	remote := postfixtest.Start(t, postfixtest.Options{
		Domains:    []string{"remote.test", "lists.remote.test"},
		Recipients: []string{"carol@remote.test", "list@lists.remote.test"},
		Users:      map[string]string{},
		Hostname:   "mx.remote.test",
		Main: map[string]string{
			"smtpd_sender_restrictions": "reject_unverified_sender",
			"address_verify_sender":     "",
			// The probe takes a fraction of a second here; look at its
			// result every second, for up to 10 s.
			"address_verify_poll_delay": "1s",
			"address_verify_poll_count": "10",
			"transport_maps":            "inline:{example.com=smtp:[127.0.0.1]:" + strconv.Itoa(s.pf.MXPort()) + "}",
		},
	})
	next := "smtp:[127.0.0.1]:" + strconv.Itoa(remote.MXPort())
	if err := s.pf.Postconf(map[string]string{"transport_maps": "inline:{remote.test=" + next + ", lists.remote.test=" + next + "}"}); err != nil {
		t.Fatal(err)
	}
	if err := s.pf.Reload(); err != nil {
		t.Fatal(err)
	}
	return remote
}

func TestCalloutsFromAVerifyingSite(t *testing.T) {
	// Mail to the list is not signed ([sign] exempt_recipients: the list
	// knows its members by their untagged address).
	s := newSiteWith(t, siteConfig{action: "tempfail", sign: `exempt_recipients = ["lists.remote.test"]`})
	remote := newRemote(t, s)

	t.Run("unsigned mail from an untagged user is accepted", func(t *testing.T) {
		const to = "list@lists.remote.test"
		res, err := s.pf.Submit("alice", password, user, []string{to}, message(user, to, "to the list"))
		if err != nil || !res.Accepted() {
			t.Fatalf("submit: %v %v", res, err)
		}
		m := remote.WaitMessage(t, wait, withText("to the list"))
		if m.From != user {
			t.Fatalf("the remote site got envelope sender %q, want %q (unsigned)", m.From, user)
		}
		expectProbe(t, s, user)
	})

	t.Run("signed mail is accepted", func(t *testing.T) {
		const to = "carol@remote.test"
		res, err := s.pf.Submit("alice", password, user, []string{to}, message(user, to, "signed to the remote site"))
		if err != nil || !res.Accepted() {
			t.Fatalf("submit: %v %v", res, err)
		}
		m := remote.WaitMessage(t, wait, withText("signed to the remote site"))
		if !strings.HasPrefix(m.From, "prvs=") || !strings.HasSuffix(m.From, "="+user) {
			t.Fatalf("the remote site got envelope sender %q, want a tag of %s", m.From, user)
		}
		expectProbe(t, s, m.From)
	})

	t.Run("a forged tag as sender is refused", func(t *testing.T) {
		valid := s.sign(user, 1)
		forged := valid[:9] + flip(valid[9:15]) + valid[15:]
		res, err := remote.SendMX(forged, []string{"carol@remote.test"}, message(forged, "carol@remote.test", "forged sender"))
		if err != nil {
			t.Fatal(err)
		}
		r := res.Rcpt("carol@remote.test")
		t.Logf("the remote site's reply: %v", r)
		const why = "550 5.7.1 Bounce refused: the recipient address tag is not valid (BATV)"
		if r == nil || r.Code/100 == 2 || !strings.Contains(r.Text, why) || res.Accepted() {
			t.Fatalf("RCPT: %v, want a refusal that quotes our %q", r, why)
		}
	})

	t.Run("a real MTA sends the recipient deferred with 452 4.5.3 again, alone", func(t *testing.T) {
		// A bounce from the remote site's Postfix to an untagged address
		// and to a valid tag, in one transaction: the untagged one is
		// refused at DATA, the tag is deferred, and the remote Postfix
		// delivers it in a transaction of its own.
		validBob := s.sign("bob@example.com", 1)
		if err := remote.Sendmail("<>", []string{user, validBob}, message("MAILER-DAEMON@remote.test", validBob, "split by a real MTA")); err != nil {
			t.Fatal(err)
		}
		m := s.pf.WaitMessage(t, wait, withText("split by a real MTA"))
		if m.From != "" || len(m.Rcpts) != 1 || m.Rcpts[0] != "bob@example.com" {
			t.Fatalf("delivered as %v, want a bounce to bob@example.com", m)
		}
		log := remote.MailLog()
		for _, want := range []string{
			"to=<" + user + ">, relay=127.0.0.1[127.0.0.1]:" + strconv.Itoa(s.pf.MXPort()),
			"status=bounced (host 127.0.0.1[127.0.0.1] said: 550 5.7.1 Bounce refused: this address sends only tagged mail",
			"to=<" + validBob + ">, relay=127.0.0.1[127.0.0.1]:" + strconv.Itoa(s.pf.MXPort()),
			"status=deferred (host 127.0.0.1[127.0.0.1] said: 452 4.5.3 Too many recipients for one bounce",
		} {
			if !strings.Contains(log, want) {
				t.Errorf("the remote site's log has no %q", want)
			}
		}
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "status=") && strings.Contains(line, "to=<") {
				t.Logf("remote: %s", line)
			}
		}
		if err := remote.WaitQueueEmpty(wait); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("with refuse_untagged_at = rcpt the untagged user's mail is refused", func(t *testing.T) {
		// What the DATA stage avoids: the probe is refused at RCPT, and the
		// remote site refuses bob's mail. (bob, not alice: the remote site
		// remembers alice's probe.)
		s.reconfigure(t, `refuse_untagged_at = "rcpt"`)
		const from = "bob@example.com"
		res, err := remote.SendMX(from, []string{"list@lists.remote.test"}, message(from, "list@lists.remote.test", "refused at RCPT"))
		if err != nil {
			t.Fatal(err)
		}
		r := res.Rcpt("list@lists.remote.test")
		t.Logf("the remote site's reply: %v", r)
		if r == nil || r.Code/100 == 2 || !strings.Contains(r.Text, "Bounce refused: this address sends only tagged mail") {
			t.Fatalf("RCPT: %v, want a refusal that quotes batv's", r)
		}
	})
}

// expectProbe checks that our Postfix logged no refusal of the remote
// site's probe for addr, and that batv accepted it at RCPT (the refusal
// of an untagged one waits for a DATA that never comes).
func expectProbe(t *testing.T, s *site, addr string) {
	t.Helper()
	for _, line := range strings.Split(s.pf.MailLog(), "\n") {
		if strings.Contains(line, "reject: RCPT") && strings.Contains(line, "<"+addr+">") {
			t.Errorf("our Postfix refused the probe: %s", line)
		}
	}
	rcpt := regexp.MustCompile(`msg=recipient .*rcpt="?` + regexp.QuoteMeta(addr) + `"? .*sender=<> bounce=true`)
	for _, line := range strings.Split(s.daemon.LogWith("msg=recipient ", addr), "\n") {
		if rcpt.MatchString(line) && (strings.Contains(line, "action=accept") || strings.Contains(line, "stage=data")) {
			t.Logf("batv: %s", line)
			return
		}
	}
	t.Errorf("batv logged no acceptance of the probe to %s:\n%s", addr, s.daemon.Log())
}

// swaks runs swaks against addr and returns its transcript and exit code.
func swaks(t *testing.T, addr string, args ...string) (string, int) {
	t.Helper()
	bin, err := exec.LookPath("swaks")
	if err != nil {
		postfixtest.SkipOrFail(t, "swaks not installed (apt-get install swaks)")
	}
	host, port, _ := strings.Cut(addr, ":")
	cmd := exec.Command(bin, append([]string{"--server", host, "--port", port, "--helo", "mx.remote.test", "--timeout", "30s"}, args...)...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// swaksReply returns the reply swaks got to the command line cmd ("->
// RCPT TO:<...>").
func swaksReply(transcript, cmd string) string {
	lines := strings.Split(transcript, "\n")
	for i, l := range lines {
		if strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "->")) == cmd && i+1 < len(lines) {
			return strings.TrimSpace(strings.TrimLeft(strings.TrimSpace(lines[i+1]), "<*-"))
		}
	}
	return ""
}

func TestCalloutDialogues(t *testing.T) {
	s := newSite(t, "tempfail")
	pf := s.pf

	t.Run("callouts that end with QUIT and with RSET get 250 for an untagged address", s.expectCallouts)

	t.Run("callouts to tags that do not verify fail at RCPT", func(t *testing.T) {
		valid := s.sign(user, 1)
		for _, tt := range []struct{ rcpt, reply string }{
			{valid[:9] + flip(valid[9:15]) + valid[15:], "550 5.7.1 Bounce refused: the recipient address tag is not valid (BATV)"},
			{s.sign(user, 9), "550 5.7.1 Bounce refused: the recipient address tag is expired (BATV)"},
			// strip answers only for a well-formed tag whose key is in the
			// keyring: Postfix's recipient validation refuses the others.
			{"prvs=5" + valid[6:], "550 5.1.1 <prvs=5" + valid[6:] + ">: Recipient address rejected: User unknown in relay recipient table"},
			{"prvs=0795zzzzzz=" + user, "550 5.1.1 <prvs=0795zzzzzz=" + user + ">: Recipient address rejected: User unknown in relay recipient table"},
		} {
			out, _ := swaks(t, pf.MXAddr(), "--from", "<>", "--to", tt.rcpt, "--quit-after", "RCPT")
			if r := swaksReply(out, "RCPT TO:<"+tt.rcpt+">"); r != tt.reply {
				t.Errorf("RCPT %s: %q, want %q\n%s", tt.rcpt, r, tt.reply, out)
			}
		}
	})

	t.Run("a real untagged bounce gets 550 at DATA and sends no body", func(t *testing.T) {
		const subject = "untagged bounce, refused at DATA"
		out, code := swaks(t, pf.MXAddr(), "--from", "<>", "--to", user,
			"--header", "Subject: "+subject, "--body", "The body of the bounce.")
		t.Logf("SMTP transcript (swaks):\n%s", out)
		const text = "550 5.7.1 Bounce refused: this address sends only tagged mail, so it did not send the message you are bouncing (BATV)"
		if r := swaksReply(out, "RCPT TO:<"+user+">"); !strings.HasPrefix(r, "250 ") {
			t.Errorf("RCPT: %q, want 250", r)
		}
		if r := swaksReply(out, "DATA"); r != text || code == 0 {
			t.Errorf("DATA: %q (swaks exit %d), want %q", r, code, text)
		}
		if strings.Contains(out, subject) || strings.Contains(out, "The body of the bounce") {
			t.Errorf("swaks sent the message: the refusal came too late")
		}
		expectNothingQueued(t, pf, "milter-reject: DATA from", text)
	})

	t.Run("a bounce refused at DATA is logged and counted", func(t *testing.T) {
		if !strings.Contains(s.daemon.LogWith(`msg="bounce refused at DATA"`), `msg="bounce refused at DATA"`) {
			t.Errorf("batv did not log the refusal at DATA:\n%s", s.daemon.Log())
		}
		if n := s.metric(t, "batv_bounces_refused_at_data_total"); n != 1 {
			t.Errorf("batv_bounces_refused_at_data_total = %v, want 1", n)
		}
		// Every untagged bounce recipient, the callouts' and the bounce's.
		if n := s.metric(t, "batv_inbound_recipients_total", `outcome="missing"`, `action="reject"`); n != 3 {
			t.Errorf("untagged bounce recipients counted: %v, want 3", n)
		}
	})

	t.Run("untagged_bounce = tempfail defers at DATA too", func(t *testing.T) {
		s.reconfigure(t, `untagged_bounce = "tempfail"`)
		res, err := pf.SendMX("", []string{user}, message("MAILER-DAEMON@remote.test", user, "untagged, tempfail"))
		if err != nil {
			t.Fatal(err)
		}
		const text = "451 4.7.1 Bounce deferred: the recipient address is not tagged (BATV)"
		if r := res.Rcpt(user); r == nil || r.Code != 250 || res.Data == nil || res.Data.String() != text {
			t.Fatalf("%v, want 250 at RCPT and %q at DATA", res, text)
		}
	})
}

// step is an SMTP command and the reply code it must get.
type step struct {
	cmd  string
	code int
}

// converse connects to addr, checks the greeting and runs steps; the
// connection is ended with QUIT, and its transcript logged, when the test
// ends.
func converse(t *testing.T, addr string, steps ...step) *postfixtest.Conn {
	t.Helper()
	c, greeting, err := postfixtest.Dial(addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Quit(); t.Logf("transcript:\n%s", c.Transcript()) })
	if greeting.Code != 220 {
		t.Fatalf("greeting %v", greeting)
	}
	run(t, c, steps...)
	return c
}

// run runs steps on c and fails the test at the first reply with another
// code.
func run(t *testing.T, c *postfixtest.Conn, steps ...step) {
	t.Helper()
	for _, st := range steps {
		if r, err := c.Cmd(st.cmd); err != nil || r.Code != st.code {
			t.Fatalf("%s: %v %v, want %d", st.cmd, r, err, st.code)
		}
	}

}

// expectNothingQueued finds the log line of Postfix that has both marker
// and text and checks that its message went no further: no cleanup, no
// queue manager line for its queue id, an empty queue. Postfix's postlogd
// writes the log after the fact, so the line is waited for.
func expectNothingQueued(t *testing.T, pf *postfixtest.Instance, marker, text string) {
	t.Helper()
	idOf := regexp.MustCompile(`: ([0-9A-F]{6,}): ` + regexp.QuoteMeta(marker))
	var log, id string
	for deadline := time.Now().Add(wait); id == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		log = pf.MailLog()
		for _, line := range strings.Split(log, "\n") {
			if m := idOf.FindStringSubmatch(line); m != nil && strings.Contains(line, text) {
				t.Logf("postfix: %s", line)
				id = m[1]
			}
		}
	}
	if id == "" {
		t.Fatalf("the log has no %q line with %q:\n%s", marker, text, pf.LogTail(20))
	}
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, id+": ") && !strings.Contains(line, id+": client=") && !strings.Contains(line, id+": "+marker) {
			t.Errorf("the refused message %s went on: %s", id, line)
		}
	}
	if q, err := pf.Queue(); err != nil || len(q) != 0 {
		t.Errorf("queue %+v %v: nothing may be queued", q, err)
	}
}

// metric returns the sum of the samples of batv's metric name that have
// every one of labels (`name="value"`).
func (s *site) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	found := false
	for _, line := range strings.Split(string(body), "\n") {
		series, value, ok := strings.Cut(line, " ")
		if !ok || (series != name && !strings.HasPrefix(series, name+"{")) {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(series, l)
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		sum, found = sum+v, true
	}
	if !found {
		t.Logf("no sample of %s%v", name, labels)
	}
	return sum
}

// The one-transaction rule (policy.Transaction) through Postfix: a bounce
// transaction holds either recipients that will be delivered or untagged
// recipients refused at DATA, never both, and every recipient gets a reply.
func TestOneTransactionRule(t *testing.T) {
	s := newSite(t, "tempfail")
	const (
		untaggedText = "550 5.7.1 Bounce refused: this address sends only tagged mail"
		splitText    = "452 4.5.3 Too many recipients for one bounce: send this one in a transaction of its own (BATV)"
		forgedText   = "550 5.7.1 Bounce refused: the recipient address tag is not valid (BATV)"
	)
	validBob := s.sign("bob@example.com", 1)
	forged := s.sign(user, 1)
	forged = forged[:9] + flip(forged[9:15]) + forged[15:]

	s.expectOneTransactionRule(t, []transactionCase{
		{"valid then untagged: the untagged one is refused at RCPT", []string{validBob, user},
			[]string{"250 ", untaggedText}, "", "bob@example.com"},
		{"untagged then valid: the valid one waits for a transaction of its own", []string{user, validBob},
			[]string{"250 ", splitText}, untaggedText, ""},
		{"untagged twice: both refused at DATA", []string{user, "bob@example.com"},
			[]string{"250 ", "250 "}, untaggedText, ""},
		{"forged then untagged", []string{forged, "bob@example.com"},
			[]string{forgedText, "250 "}, untaggedText, ""},
		{"untagged then forged", []string{"bob@example.com", forged},
			[]string{"250 ", forgedText}, untaggedText, ""},
		{"untagged then postmaster: postmaster waits too", []string{user, "postmaster@example.com"},
			[]string{"250 ", splitText}, untaggedText, ""},
	})
}
