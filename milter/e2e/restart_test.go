package e2e

import (
	"net"
	"net/textproto"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/postfixtest"
)

// TestPostfixRestartWhileBatvRuns: Postfix stops and starts again while
// batv runs, with a bounce in the middle of its SMTP transaction (so the
// milter connection is in the middle of a message when smtpd dies). batv
// notes each session's end, keeps running, and serves the new Postfix:
// mail is signed and verified as before. milter_default_action is
// tempfail here, so a milter that did not answer would show as 451.
func TestPostfixRestartWhileBatvRuns(t *testing.T) {
	s := newSite(t, "tempfail")
	pf := s.pf

	submit := func(subject string) {
		t.Helper()
		res, err := pf.Submit("alice", password, user, []string{"carol@remote.test"}, message(user, "carol@remote.test", subject))
		if err != nil || !res.Accepted() {
			t.Fatalf("submit %q: %v %v", subject, res, err)
		}
		m := pf.WaitMessage(t, wait, withText(subject))
		if out := s.batv("verify", "--keyring", s.keyring, m.From); out != "valid "+user {
			t.Fatalf("%q: envelope sender %q: %s", subject, m.From, out)
		}
	}
	submit("before the restart")

	// A bounce stops after RCPT: its smtpd holds a milter connection in
	// the middle of a message.
	tagged := s.sign(user, 1)
	c, err := net.DialTimeout("tcp", pf.MXAddr(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	tp := textproto.NewConn(c)
	expect := func(code int, cmd string) {
		t.Helper()
		if cmd != "" {
			if err := tp.PrintfLine("%s", cmd); err != nil {
				t.Fatal(err)
			}
		}
		if _, msg, err := tp.ReadResponse(code); err != nil {
			t.Fatalf("%s: %v %s", cmd, err, msg)
		}
	}
	expect(220, "")
	expect(250, "EHLO remote.test")
	expect(250, "MAIL FROM:<>")
	expect(250, "RCPT TO:<"+tagged+">")
	before := strings.Count(s.daemon.Log(), "the MTA closed the connection in the middle of a message")

	if err := pf.Restart(); err != nil {
		t.Fatalf("restarting Postfix: %v", err)
	}
	// The interrupted client sees its connection go; the message was
	// never accepted, so its sender still has it and retries.
	if _, err := tp.ReadLine(); err == nil {
		t.Log("the old smtpd answered after the restart")
	}
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(s.daemon.Log(), "the MTA closed the connection in the middle of a message") <= before {
		if time.Now().After(deadline) {
			t.Fatalf("batv did not log the interrupted session:\n%s", s.daemon.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, line := range strings.Split(s.daemon.Log(), "\n") {
		if strings.Contains(line, "in the middle of a message") {
			t.Logf("batv: %s", line)
		}
	}
	if s.daemon.cmd.ProcessState != nil {
		t.Fatal("batv exited when Postfix restarted")
	}

	// The new Postfix is served: signing, and the bounce retried.
	submit("after the restart")
	res, err := pf.SendMX("", []string{tagged}, message("MAILER-DAEMON@remote.test", tagged, "bounce retried"))
	if err != nil || !res.Accepted() {
		t.Fatalf("the retried bounce: %v %v", res, err)
	}
	m := pf.WaitMessage(t, wait, withText("bounce retried"))
	if len(m.Rcpts) != 1 || m.Rcpts[0] != user {
		t.Fatalf("the retried bounce went to %v, want [%s]", m.Rcpts, user)
	}
	forged := tagged[:9] + flip(tagged[9:15]) + tagged[15:]
	res, err = pf.SendMX("", []string{forged}, message("MAILER-DAEMON@remote.test", forged, "forged after restart"))
	if err != nil {
		t.Fatal(err)
	}
	if r := res.Rcpt(forged); r == nil || r.Code != 550 {
		t.Fatalf("a forged bounce after the restart: %v", r)
	}
	for _, line := range strings.Split(s.daemon.Log(), "\n") {
		if strings.Contains(line, "level=ERROR") {
			t.Errorf("batv logged an error: %s", line)
		}
	}
}

// TestPostfixBounceWhileBatvDown: Postfix makes a bounce for a signed
// message while batv (and so the untag lookup of the bounce cleanup) is
// down. The bounce is not lost and not sent to the tagged address: Postfix
// keeps it, and delivers it untagged once batv is back.
func TestPostfixBounceWhileBatvDown(t *testing.T) {
	s := newSite(t, "accept")
	pf := s.pf
	const rcpt = "later@remote.test"
	// First the next hop defers the message, so that it waits in the
	// queue, signed.
	pf.Sink().SetRcptReply(rcpt, postfixtest.Reply{Code: 450, Enhanced: "4.2.0", Text: "try later"})
	res, err := pf.Submit("alice", password, user, []string{rcpt}, message(user, rcpt, "bounced while batv is down"))
	if err != nil || !res.Accepted() {
		t.Fatalf("submit: %v %v", res, err)
	}
	deadline := time.Now().Add(wait)
	for {
		q, _ := pf.Queue()
		if len(q) == 1 && q[0].QueueName == "deferred" {
			if !strings.HasPrefix(q[0].Sender, "prvs=") {
				t.Fatalf("queued with sender %q, want a tagged one", q[0].Sender)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the message was not deferred: %+v", q)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// batv goes down; the next hop now refuses the message for good, and
	// Postfix must bounce it to the tagged sender.
	s.daemon.stop(t)
	pf.Sink().Refuse(rcpt)
	if err := pf.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := pf.WaitLog("lookup error", wait); err != nil {
		t.Logf("no lookup error logged: %v\n%s", err, pf.LogTail(30))
	}
	time.Sleep(2 * time.Second)
	for _, m := range pf.Sink().Messages() {
		if m.IsBounce() {
			t.Fatalf("a bounce was delivered while batv was down: to %v", m.Rcpts)
		}
	}
	q, _ := pf.Queue()
	t.Logf("queue with batv down: %+v", q)
	for _, line := range strings.Split(pf.MailLog(), "\n") {
		if strings.Contains(line, "batvcleanup") || strings.Contains(line, "bounce") && strings.Contains(line, "warning") {
			t.Logf("postfix: %s", line)
		}
	}
	if len(q) == 0 {
		t.Fatalf("nothing left in the queue while batv is down: the bounce is lost\n%s", pf.LogTail(40))
	}

	// batv is back: the bounce reaches the untagged address.
	s.daemon = startDaemon(t, s.config, filepath.Join(pf.QueueDir(), "batv", "milter.sock"), filepath.Join(pf.QueueDir(), "batv", "map.sock"))
	bounceArrived := func(m postfixtest.Message) bool {
		return m.IsBounce() && strings.Contains(string(m.Data), "bounced while batv is down")
	}
	var m postfixtest.Message
	for deadline := time.Now().Add(2 * wait); ; {
		_ = pf.Flush()
		if m, err = pf.Sink().WaitTimeout(2*time.Second, bounceArrived); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the bounce never arrived: %v\n%s", err, pf.LogTail(40))
		}
	}
	if len(m.Rcpts) != 1 || m.Rcpts[0] != user {
		t.Fatalf("the bounce went to %v, want [%s]", m.Rcpts, user)
	}
	if err := pf.WaitQueueEmpty(wait); err != nil {
		t.Fatal(err)
	}
}
