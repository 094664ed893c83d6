package e2e

import (
	"net"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/postfixtest"
)

// The inbound behaviours of the milter's tests, through the real Postfix
// of docs/postfix.md's "An MX without a milter" (newPolicySite): batv's
// policy service decides at RCPT and DATA, the untag table in the MX's
// cleanup delivers valid tags to the untagged mailbox, the submission
// service signs with the milter.

// The replies of batv's policy service, as smtpd words them: at RCPT
// "<address>: Recipient address rejected:", at DATA "<DATA>: Data
// command rejected:", before batv's text.
const (
	policyUntagged = "Bounce refused: this address sends only tagged mail, so it did not send the message you are bouncing (BATV)"
	policyForged   = "Bounce refused: the recipient address tag is not valid (BATV)"
	policyExpired  = "Bounce refused: the recipient address tag is expired (BATV)"
	policySplit    = "Too many recipients for one bounce: send this one in a transaction of its own (BATV)"
)

// atRcpt is smtpd's reply at RCPT to rcpt for a policy action "code
// enhanced text".
func atRcpt(code, rcpt, text string) string {
	return code + " <" + rcpt + ">: Recipient address rejected: " + text
}

// atData is smtpd's reply at DATA for a policy action "code enhanced
// text".
func atData(code, text string) string {
	return code + " <DATA>: Data command rejected: " + text
}

func TestPolicyEndToEnd(t *testing.T) {
	s := newPolicySite(t, policySiteConfig{chroot: true})
	pf := s.pf

	t.Run("the MX smtpd and batvcleanup run chrooted, as the page's lines say", func(t *testing.T) {
		expectChrooted(t, pf)
		// No milter on the MX.
		if v, err := pf.PostconfValue("smtpd_milters", false); err != nil || v != "" {
			t.Fatalf("smtpd_milters = %q %v, want none", v, err)
		}
	})

	t.Run("authenticated submission is signed by the milter", func(t *testing.T) {
		res, err := pf.Submit("alice", password, user, []string{"carol@remote.test"}, message(user, "carol@remote.test", "signed"))
		if err != nil || !res.Accepted() {
			t.Fatalf("submit: %v %v", res, err)
		}
		m := pf.WaitMessage(t, wait, withText("signed"))
		if out := s.batv("verify", "--keyring", s.keyring, m.From); out != "valid "+user {
			t.Fatalf("envelope sender %q: %s", m.From, out)
		}
	})

	t.Run("local submission with sendmail is signed", s.expectLocalSigned)

	t.Run("a bounce to a valid tag is delivered to the untagged address", func(t *testing.T) {
		tagged := s.sign(user, 1)
		res, err := pf.SendMX("", []string{tagged}, message("MAILER-DAEMON@remote.test", tagged, "bounce valid"))
		if err != nil || !res.Accepted() {
			t.Fatalf("send: %v %v", res, err)
		}
		m := pf.WaitMessage(t, wait, withText("bounce valid"))
		if m.From != "" || len(m.Rcpts) != 1 || m.Rcpts[0] != user {
			t.Fatalf("delivered as %v, want a bounce to %s", m, user)
		}
		if err := pf.WaitLog("to=<"+user+">, orig_to=<"+tagged+">", wait); err != nil {
			t.Error(err)
		}
	})

	t.Run("forged and expired bounces are refused at RCPT, untagged ones at DATA", func(t *testing.T) {
		valid := s.sign(user, 1)
		forged := valid[:9] + flip(valid[9:15]) + valid[15:]
		expired := s.sign(user, 9)
		for _, tt := range []struct{ rcpt, reply string }{
			{forged, atRcpt("550 5.7.1", forged, policyForged)},
			{expired, atRcpt("550 5.7.1", expired, policyExpired)},
		} {
			res, err := pf.SendMX("", []string{tt.rcpt}, message("MAILER-DAEMON@remote.test", tt.rcpt, "bounce refused"))
			if err != nil {
				t.Fatal(err)
			}
			if r := res.Rcpt(tt.rcpt); r == nil || r.String() != tt.reply || res.Accepted() {
				t.Errorf("RCPT %s: %v, want %q", tt.rcpt, r, tt.reply)
			}
		}
		res, err := pf.SendMX("", []string{user}, message("MAILER-DAEMON@remote.test", user, "bounce refused at DATA"))
		if err != nil {
			t.Fatal(err)
		}
		want := atData("550 5.7.1", policyUntagged)
		if r := res.Rcpt(user); r == nil || r.Code != 250 || res.Data == nil || res.Data.String() != want || res.Accepted() {
			t.Errorf("untagged bounce: %v, want 250 at RCPT and %q at DATA", res, want)
		}
	})

	t.Run("an unknown user is refused as unknown, tagged or not", func(t *testing.T) {
		// A valid tag of a user who does not exist: smtpd does not take
		// it as a recipient through the untag table, which only the
		// cleanup service knows.
		for _, rcpt := range []string{"nobody@example.com", s.sign("nobody@example.com", 1)} {
			res, err := pf.SendMX("", []string{rcpt}, message("MAILER-DAEMON@remote.test", rcpt, "unknown"))
			if err != nil {
				t.Fatal(err)
			}
			want := "550 5.1.1 <" + rcpt + ">: Recipient address rejected: User unknown in relay recipient table"
			if r := res.Rcpt(rcpt); r == nil || r.String() != want {
				t.Errorf("RCPT %s: %v, want %q", rcpt, r, want)
			}
		}
	})

	t.Run("a bounce Postfix makes for a signed message reaches the sender", func(t *testing.T) {
		pf.Sink().Refuse("nosuch@remote.test")
		res, err := pf.Submit("alice", password, user, []string{"nosuch@remote.test"}, message(user, "nosuch@remote.test", "will bounce"))
		if err != nil || !res.Accepted() {
			t.Fatalf("submit: %v %v", res, err)
		}
		pf.WaitMessage(t, wait, postfixtest.All(postfixtest.FromSender(""), postfixtest.ToRcpt(user), withText("will bounce")))
	})

	t.Run("postmaster accepts an untagged bounce", func(t *testing.T) {
		res, err := pf.SendMX("", []string{"postmaster@example.com"}, message("MAILER-DAEMON@remote.test", "postmaster@example.com", "to postmaster"))
		if err != nil || !res.Accepted() {
			t.Fatalf("send: %v %v", res, err)
		}
		pf.WaitMessage(t, wait, withText("to postmaster"))
	})

	t.Run("a multi-recipient bounce is decided per recipient", s.expectMultiRecipientBounce)

	t.Run("replies to tags are delivered to the untagged address", func(t *testing.T) {
		for _, tt := range []struct {
			name    string
			daysAgo int
		}{
			{"a reply to a tag", 1},
			{"a reply to an expired tag", 20}, // replies only need the MAC: redirected at DATA
		} {
			tagged := s.sign(user, tt.daysAgo)
			res, err := pf.SendMX("carol@remote.test", []string{tagged}, message("carol@remote.test", tagged, tt.name))
			if err != nil || !res.Accepted() {
				t.Fatalf("%s: %v %v", tt.name, res, err)
			}
			if m := pf.WaitMessage(t, wait, withText(tt.name)); len(m.Rcpts) != 1 || m.Rcpts[0] != user {
				t.Fatalf("%s: delivered to %v, want [%s]", tt.name, m.Rcpts, user)
			}
		}
		if err := pf.WaitLog("Data command triggers REDIRECT "+user, wait); err != nil {
			t.Error(err)
		}
	})

	t.Run("a reply to an expired tag with another recipient stays tagged", func(t *testing.T) {
		// What the policy service cannot do (docs/postfix.md): change one
		// recipient of several.
		tagged := s.sign(user, 20)
		res, err := pf.SendMX("carol@remote.test", []string{tagged, "bob@example.com"}, message("carol@remote.test", tagged, "expired and bob"))
		if err != nil || !res.Accepted() {
			t.Fatalf("send: %v %v", res, err)
		}
		m := pf.WaitMessage(t, wait, withText("expired and bob"))
		if !m.HasRcpt(tagged) || !m.HasRcpt("bob@example.com") {
			t.Fatalf("delivered to %v, want [%s bob@example.com]", m.Rcpts, tagged)
		}
	})

	t.Run("one policy connection per smtpd process, not per session", func(t *testing.T) {
		connects := regexp.MustCompile(` postfix/smtpd\[(\d+)\]: connect from`).FindAllStringSubmatch(pf.MailLog(), -1)
		pids := map[string]bool{}
		for _, m := range connects {
			pids[m[1]] = true
		}
		conns := int(s.metric(t, "batv_connections_total", `listener="policy_service"`, `result="accepted"`))
		t.Logf("%d SMTP sessions on the MX, %d smtpd processes, %d policy connections", len(connects), len(pids), conns)
		if conns < 1 || conns > len(pids) || conns >= len(connects) {
			t.Errorf("%d policy connections for %d sessions of %d smtpd processes", conns, len(connects), len(pids))
		}
	})

	t.Run("metrics and logs", func(t *testing.T) {
		for _, tt := range []struct {
			labels []string
			want   float64
		}{
			{[]string{`outcome="valid"`, `action="accept"`}, 3},         // the valid bounces and the reply
			{[]string{`outcome="bad-signature"`, `action="reject"`}, 2}, // the forged bounces
			{[]string{`outcome="expired"`, `action="reject"`}, 1},
			{[]string{`outcome="missing"`, `action="reject"`}, 1},
			{[]string{`outcome="missing"`, `action="exempt"`}, 1},
			{[]string{`outcome="expired"`, `action="accept"`}, 2}, // the replies to expired tags
		} {
			if got := s.metric(t, "batv_inbound_recipients_total", tt.labels...); got != tt.want {
				t.Errorf("batv_inbound_recipients_total%v = %v, want %v", tt.labels, got, tt.want)
			}
		}
		if n := s.metric(t, "batv_bounces_refused_at_data_total"); n != 1 {
			t.Errorf("batv_bounces_refused_at_data_total = %v, want 1", n)
		}
		if !strings.Contains(s.daemon.Log(), `msg="bounce refused at DATA" listener=policy_service`) {
			t.Errorf("batv did not log the refusal at DATA")
		}
	})

	t.Run("Postfix has no complaint about batv", func(t *testing.T) {
		for _, line := range strings.Split(pf.MailLog(), "\n") {
			if strings.Contains(line, "warning:") || strings.Contains(line, "error:") || strings.Contains(line, "fatal:") {
				t.Errorf("Postfix: %s", line)
			}
		}
	})
}

// TestPolicyCallouts: sender address verification against the policy
// service (issue 13): callouts to untagged addresses get 250, a real
// untagged bounce gets its refusal at DATA with no body sent, and a
// second Postfix that verifies senders takes our users' mail.
func TestPolicyCallouts(t *testing.T) {
	s := newPolicySite(t, policySiteConfig{sign: `exempt_recipients = ["lists.remote.test"]`})
	pf := s.pf

	t.Run("callouts that end with QUIT and with RSET get 250 for an untagged address", s.expectCallouts)

	t.Run("callouts to tags that do not verify fail at RCPT", func(t *testing.T) {
		valid := s.sign(user, 1)
		forged, expired := valid[:9]+flip(valid[9:15])+valid[15:], s.sign(user, 9)
		for _, tt := range []struct{ rcpt, reply string }{
			{forged, atRcpt("550 5.7.1", forged, policyForged)},
			{expired, atRcpt("550 5.7.1", expired, policyExpired)},
			{"prvs=5" + valid[6:], "550 5.1.1 <prvs=5" + valid[6:] + ">: Recipient address rejected: User unknown in relay recipient table"},
		} {
			out, _ := swaks(t, pf.MXAddr(), "--from", "<>", "--to", tt.rcpt, "--quit-after", "RCPT")
			if r := swaksReply(out, "RCPT TO:<"+tt.rcpt+">"); r != tt.reply {
				t.Errorf("RCPT %s: %q, want %q\n%s", tt.rcpt, r, tt.reply, out)
			}
		}
	})

	t.Run("a real untagged bounce gets 550 at DATA and sends no body", func(t *testing.T) {
		const subject = "untagged bounce, refused at DATA by the policy service"
		out, code := swaks(t, pf.MXAddr(), "--from", "<>", "--to", user,
			"--header", "Subject: "+subject, "--body", "The body of the bounce.")
		t.Logf("SMTP transcript (swaks):\n%s", out)
		if r := swaksReply(out, "RCPT TO:<"+user+">"); !strings.HasPrefix(r, "250 ") {
			t.Errorf("RCPT: %q, want 250", r)
		}
		want := atData("550 5.7.1", policyUntagged)
		if r := swaksReply(out, "DATA"); r != want || code == 0 {
			t.Errorf("DATA: %q (swaks exit %d), want %q", r, code, want)
		}
		if strings.Contains(out, subject) || strings.Contains(out, "The body of the bounce") {
			t.Errorf("swaks sent the message: the refusal came too late")
		}
		expectNothingQueued(t, pf, "reject: DATA from", policyUntagged)
	})

	t.Run("a verifying site takes unsigned and signed mail from our users", func(t *testing.T) {
		remote := newRemote(t, s)
		const list = "list@lists.remote.test"
		res, err := pf.Submit("alice", password, user, []string{list}, message(user, list, "to the list"))
		if err != nil || !res.Accepted() {
			t.Fatalf("submit: %v %v", res, err)
		}
		if m := remote.WaitMessage(t, wait, withText("to the list")); m.From != user {
			t.Fatalf("the remote site got envelope sender %q, want %q (unsigned)", m.From, user)
		}
		expectProbe(t, s, user)
		res, err = pf.Submit("alice", password, user, []string{"carol@remote.test"}, message(user, "carol@remote.test", "signed to the remote site"))
		if err != nil || !res.Accepted() {
			t.Fatalf("submit: %v %v", res, err)
		}
		m := remote.WaitMessage(t, wait, withText("signed to the remote site"))
		if !strings.HasPrefix(m.From, "prvs=") {
			t.Fatalf("the remote site got envelope sender %q, want a tag", m.From)
		}
		expectProbe(t, s, m.From)

		// A bounce from the remote Postfix to an untagged address and to a
		// valid tag in one transaction: the tag is deferred with 452 4.5.3
		// and sent again alone, and delivered.
		validBob := s.sign("bob@example.com", 1)
		if err := remote.Sendmail("<>", []string{user, validBob}, message("MAILER-DAEMON@remote.test", validBob, "split by a real MTA")); err != nil {
			t.Fatal(err)
		}
		if m := pf.WaitMessage(t, wait, withText("split by a real MTA")); m.From != "" || len(m.Rcpts) != 1 || m.Rcpts[0] != "bob@example.com" {
			t.Fatalf("delivered as %v, want a bounce to bob@example.com", m)
		}
		for _, want := range []string{
			"said: " + atData("550 5.7.1", policyUntagged),
			"status=deferred (host 127.0.0.1[127.0.0.1] said: " + atRcpt("452 4.5.3", validBob, policySplit),
		} {
			if !strings.Contains(remote.MailLog(), want) {
				t.Errorf("the remote site's log has no %q", want)
			}
		}
		if err := remote.WaitQueueEmpty(wait); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("untagged_bounce = tempfail defers at DATA too", func(t *testing.T) {
		s.reconfigure(t, `untagged_bounce = "tempfail"`)
		res, err := pf.SendMX("", []string{user}, message("MAILER-DAEMON@remote.test", user, "untagged, tempfail"))
		if err != nil {
			t.Fatal(err)
		}
		want := atData("451 4.7.1", "Bounce deferred: the recipient address is not tagged (BATV)")
		if r := res.Rcpt(user); r == nil || r.Code != 250 || res.Data == nil || res.Data.String() != want {
			t.Fatalf("%v, want 250 at RCPT and %q at DATA", res, want)
		}
	})
}

// TestPolicyOneTransactionRule: the one-transaction rule
// (policy.Transaction) through the policy service.
func TestPolicyOneTransactionRule(t *testing.T) {
	s := newPolicySite(t, policySiteConfig{})
	validBob := s.sign("bob@example.com", 1)
	forged := s.sign(user, 1)
	forged = forged[:9] + flip(forged[9:15]) + forged[15:]
	untagged := atData("550 5.7.1", policyUntagged)
	s.expectOneTransactionRule(t, []transactionCase{
		{"valid then untagged: the untagged one is refused at RCPT", []string{validBob, user},
			[]string{"250 ", atRcpt("550 5.7.1", user, policyUntagged)}, "", "bob@example.com"},
		{"untagged then valid: the valid one waits for a transaction of its own", []string{user, validBob},
			[]string{"250 ", atRcpt("452 4.5.3", validBob, policySplit)}, untagged, ""},
		{"untagged twice: both refused at DATA", []string{user, "bob@example.com"}, []string{"250 ", "250 "}, untagged, ""},
		{"forged then untagged", []string{forged, "bob@example.com"}, []string{atRcpt("550 5.7.1", forged, policyForged), "250 "}, untagged, ""},
		{"untagged then forged", []string{"bob@example.com", forged}, []string{"250 ", atRcpt("550 5.7.1", forged, policyForged)}, untagged, ""},
		{"untagged then postmaster: postmaster waits too", []string{user, "postmaster@example.com"},
			[]string{"250 ", atRcpt("452 4.5.3", "postmaster@example.com", policySplit)}, untagged, ""},
	})
}

// TestPolicyLostState: batv restarts between the RCPT and DATA commands
// of a bounce, so smtpd sends the DATA request over a new connection,
// where the transaction has no state. An untagged bounce is still
// refused; one with several recipients is deferred.
func TestPolicyLostState(t *testing.T) {
	s := newPolicySite(t, policySiteConfig{})
	outer := t
	pf := s.pf
	for _, tt := range []struct {
		name  string
		rcpts []string
		data  string
	}{
		{"one untagged recipient: decided again, refused", []string{user}, atData("550 5.7.1", policyUntagged)},
		{"two untagged recipients: deferred", []string{user, "bob@example.com"},
			atData("451 4.3.0", "Bounce deferred: its recipients must be checked again, please send it again (BATV)")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", pf.MXAddr(), 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(wait))
			tp := textproto.NewConn(c)
			cmd := func(code int, line string) string {
				t.Helper()
				if line != "" {
					if err := tp.PrintfLine("%s", line); err != nil {
						t.Fatal(err)
					}
				}
				got, msg, err := tp.ReadResponse(code)
				if err != nil {
					t.Fatalf("%s: %v %d %s", line, err, got, msg)
				}
				return strconv.Itoa(got) + " " + msg
			}
			cmd(220, "")
			cmd(250, "EHLO mx.remote.test")
			cmd(250, "MAIL FROM:<>")
			for _, r := range tt.rcpts {
				cmd(250, "RCPT TO:<"+r+">")
			}
			s.daemon.stop(t)
			s.daemon = startDaemon(outer, s.config, s.sockets()...)
			if got := cmd(0, "DATA"); got != tt.data {
				t.Fatalf("DATA: %q, want %q", got, tt.data)
			}
			cmd(221, "QUIT")
		})
	}
	if q, err := pf.Queue(); err != nil || len(q) != 0 {
		t.Fatalf("queue %+v %v: nothing may be queued", q, err)
	}
}

// TestPolicyWhileBatvIsDown: smtpd applies
// smtpd_policy_service_default_action, the page's 451 4.3.5 on the MX,
// and the submission service does not ask the policy service. Then the
// alternative, DUNNO, which lets nothing in either: the untag lookup of
// the MX's cleanup fails.
func TestPolicyWhileBatvIsDown(t *testing.T) {
	s := newPolicySite(t, policySiteConfig{})
	outer := t
	pf := s.pf
	remote := newRemote(t, s)
	tagged := s.sign(user, 1)
	s.daemon.stop(t)

	t.Run("every message on the MX waits", func(t *testing.T) {
		for _, tt := range []struct{ from, rcpt, reply string }{
			{"", user, "451 4.3.5 <" + user + ">: Recipient address rejected: Server configuration problem"},
			{"carol@remote.test", "bob@example.com", "451 4.3.5 <bob@example.com>: Recipient address rejected: Server configuration problem"},
			// strip cannot answer for a tag, nor for an unknown user.
			{"", tagged, "451 4.3.0 <" + tagged + ">: Temporary lookup failure"},
			{"carol@remote.test", "nobody@example.com", "451 4.3.0 <nobody@example.com>: Temporary lookup failure"},
		} {
			res, err := pf.SendMX(tt.from, []string{tt.rcpt}, message(tt.from, tt.rcpt, "while batv is down"))
			if err != nil {
				t.Fatal(err)
			}
			if r := res.Rcpt(tt.rcpt); r == nil || r.String() != tt.reply || res.Accepted() {
				t.Errorf("RCPT %s: %v, want %q", tt.rcpt, r, tt.reply)
			}
		}
		if q, err := pf.Queue(); err != nil || len(q) != 0 {
			t.Fatalf("queue %+v %v: nothing may be queued", q, err)
		}
	})

	t.Run("a sending MTA keeps its mail and retries", func(t *testing.T) {
		remoteSendsWhileDown(t, remote, tagged, "451 4.3.")
	})

	t.Run("users still send on the submission service, unsigned", s.expectSubmissionUnsigned)

	t.Run("batv back: the retried mail is delivered", func(t *testing.T) {
		s.daemon = startDaemon(outer, s.config, s.sockets()...)
		s.expectRetriedDelivered(t, remote)
	})

	t.Run("the alternative, DUNNO: the MX still takes nothing", func(t *testing.T) {
		if err := pf.Postconf(map[string]string{"smtpd_policy_service_default_action": "DUNNO"}); err != nil {
			t.Fatal(err)
		}
		if err := pf.Reload(); err != nil {
			t.Fatal(err)
		}
		s.daemon.stop(t)
		for _, from := range []string{"", "carol@remote.test"} {
			res, err := pf.SendMX(from, []string{user}, message(from, user, "while down, DUNNO"))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("replies:\n%s", res)
			if r := res.Rcpt(user); r == nil || r.Code != 250 || res.Data == nil || res.Data.Code != 354 ||
				res.Message == nil || res.Message.String() != "451 4.3.0 Error: queue file write error" {
				t.Fatalf("MAIL FROM:<%s>: %v, want 250 at RCPT and 451 4.3.0 at the end of the data", from, res)
			}
		}
		res, err := pf.SendMX("", []string{tagged}, message("MAILER-DAEMON@remote.test", tagged, "tagged while down"))
		if err != nil {
			t.Fatal(err)
		}
		if r := res.Rcpt(tagged); r == nil || r.String() != "451 4.3.0 <"+tagged+">: Temporary lookup failure" {
			t.Fatalf("a tag with DUNNO: %v", r)
		}
		if q, err := pf.Queue(); err != nil || len(q) != 0 {
			t.Fatalf("queue %+v %v: nothing may be queued", q, err)
		}
	})
}

// TestPolicyStatusHeaders: the marks batv adds with PREPEND, the hold
// queue, and the page's header_checks, which remove forged status
// headers and batv's marks alike.
func TestPolicyStatusHeaders(t *testing.T) {
	forged := "X-BATV-Status: valid; rcpt=<" + user + ">\r\n"
	send := func(t *testing.T, s *site, subject string) (postfixtest.Message, []string) {
		t.Helper()
		msg := []byte("From: <MAILER-DAEMON@remote.test>\r\nSubject: " + subject + "\r\n" + forged + "\r\nA bounce.\r\n")
		res, err := s.pf.SendMX("", []string{user}, msg)
		if err != nil || !res.Accepted() {
			t.Fatalf("send: %v %v", res, err)
		}
		m := s.pf.WaitMessage(t, wait, withText(subject))
		return m, statusHeaderValues(string(m.Data))
	}

	t.Run("the page's header_checks remove forged headers and batv's marks", func(t *testing.T) {
		s := newPolicySite(t, policySiteConfig{verify: `untagged_bounce = "tag"`})
		m, got := send(t, s, "forged header, tag")
		if len(got) != 0 || len(m.Rcpts) != 1 || m.Rcpts[0] != user {
			t.Fatalf("delivered to %v with X-BATV-Status %q, want none", m.Rcpts, got)
		}
		if line := s.lastRecipientLine(user); !strings.Contains(line, "action=tag") {
			t.Fatalf("batv's line: %s", line)
		}
	})

	t.Run("without header_checks batv's mark is added", func(t *testing.T) {
		s := newPolicySite(t, policySiteConfig{main: map[string]string{"header_checks": ""}, verify: `untagged_bounce = "tag"`})
		_, got := send(t, s, "forged header, no header_checks")
		want := []string{"untagged; rcpt=<" + user + ">", "valid; rcpt=<" + user + ">"}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("X-BATV-Status %q, want batv's first, then the forged one: %q", got, want)
		}
	})

	t.Run("quarantine: the bounce waits in the hold queue", func(t *testing.T) {
		s := newPolicySite(t, policySiteConfig{verify: `untagged_bounce = "quarantine"`})
		res, err := s.pf.SendMX("", []string{user}, message("MAILER-DAEMON@remote.test", user, "to quarantine"))
		if err != nil || !res.Accepted() {
			t.Fatalf("send: %v %v", res, err)
		}
		if err := s.pf.WaitLog("hold: DATA from", wait); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(wait)
		for {
			q, err := s.pf.Queue()
			if err == nil && len(q) == 1 && q[0].QueueName == "hold" && len(q[0].Recipients) == 1 && q[0].Recipients[0].Address == user {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("queue %+v %v: want the bounce in the hold queue", q, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !strings.Contains(s.pf.MailLog(), "Data command BATV: untagged bounce to <"+user+">") {
			t.Errorf("Postfix did not log batv's reason")
		}
	})
}

// TestPolicySpellings: the null sender and recipient spellings of issue
// 14 through the policy service.
func TestPolicySpellings(t *testing.T) {
	s := newPolicySite(t, policySiteConfig{unicodeDomain: true})
	data := atData("550 5.7.1", policyUntagged)
	for _, from := range []string{`<"">`, `<@evil.test:>`, `<@a,@b:>`, `< >`, `<"" >`, `<@a:"">`, `<mailer-daemon>`, `<MAILER-DAEMON@mx.postfix.test>`} {
		t.Run(from, func(t *testing.T) {
			s.try(t, spelling{from: from, rcpt: "<" + user + ">", rcptCode: 250, data: data})
		})
	}
	open, closed := recipientSpellings(s)
	for _, sp := range open {
		if sp.data != "" {
			sp.data = data
		}
		t.Run(sp.rcpt, func(t *testing.T) { s.try(t, sp) })
	}
	for _, sp := range closed {
		sp.rcptCode, sp.data = 554, ""
		t.Run(sp.rcpt, func(t *testing.T) { s.try(t, sp) })
	}
	for _, sp := range unicodeSpellings(s, data) {
		t.Run(sp.rcpt, func(t *testing.T) { s.try(t, sp) })
	}
}
