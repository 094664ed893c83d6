package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/postfixtest"
)

// Checks both front ends' tests make: the milter's site (newSite) and the
// policy service's (newPolicySite) behave alike in these.

// makeSocketDir makes the directory of batv's sockets under Postfix's
// queue directory, as docs/postfix.md says (group postfix, 0750), and
// returns it.
func makeSocketDir(t *testing.T, pf *postfixtest.Instance) string {
	t.Helper()
	dir := filepath.Join(pf.QueueDir(), "batv")
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 0, pf.PostfixGID()); err != nil {
		t.Fatal(err)
	}
	return dir
}

// expectChrooted checks that the MX smtpd and batvcleanup, and only they
// of the smtpd and cleanup services, run chrooted.
func expectChrooted(t *testing.T, pf *postfixtest.Instance) {
	t.Helper()
	master, err := pf.Command("postconf", "-M")
	if err != nil {
		t.Fatal(err)
	}
	chrooted := 0
	for _, line := range strings.Split(master, "\n") {
		if f := strings.Fields(line); len(f) >= 8 && f[4] == "y" && (f[7] == "smtpd" || f[0] == "batvcleanup") {
			chrooted++
		}
	}
	if chrooted != 2 {
		t.Fatalf("want the MX smtpd and batvcleanup chrooted:\n%s", master)
	}
}

// expectLocalSigned submits a message with sendmail on the host and
// checks that it goes out signed.
func (s *site) expectLocalSigned(t *testing.T) {
	t.Helper()
	if err := s.pf.Sendmail(user, []string{"dave@remote.test"}, message(user, "dave@remote.test", "local")); err != nil {
		t.Fatal(err)
	}
	m := s.pf.WaitMessage(t, wait, postfixtest.ToRcpt("dave@remote.test"))
	if out, code := s.batvCode("verify", "--keyring", s.keyring, m.From); code != 0 {
		t.Fatalf("sender %q: %s", m.From, out)
	}
}

// expectCallouts runs the two callout dialogues of issue 13 to an
// untagged address: one that ends with QUIT (swaks), and one that ends
// with RSET and goes on with a bounce to a valid tag, which must be
// delivered to the untagged mailbox (the callout left nothing behind).
func (s *site) expectCallouts(t *testing.T) {
	t.Helper()
	out, code := swaks(t, s.pf.MXAddr(), "--from", "<>", "--to", user, "--quit-after", "RCPT")
	t.Logf("swaks:\n%s", out)
	if r := swaksReply(out, "RCPT TO:<"+user+">"); code != 0 || !strings.HasPrefix(r, "250 ") {
		t.Fatalf("RCPT: %q (swaks exit %d), want 250", r, code)
	}
	valid := s.sign(user, 1)
	c := converse(t, s.pf.MXAddr(),
		step{"EHLO mx.remote.test", 250},
		step{"MAIL FROM:<>", 250},
		step{"RCPT TO:<" + user + ">", 250},
		step{"RSET", 250},
		step{"MAIL FROM:<>", 250},
		step{"RCPT TO:<" + valid + ">", 250},
		step{"DATA", 354},
	)
	if r, err := c.Body(message("MAILER-DAEMON@remote.test", valid, "after the callout")); err != nil || r.Code != 250 {
		t.Fatalf("end of data: %v %v", r, err)
	}
	if m := s.pf.WaitMessage(t, wait, withText("after the callout")); len(m.Rcpts) != 1 || m.Rcpts[0] != user {
		t.Fatalf("delivered to %v, want [%s]", m.Rcpts, user)
	}
}

// remoteSendsWhileDown has the remote site's Postfix send a message and a
// bounce to tagged, and waits until our MX has deferred both with a reply
// that starts with deferred.
func remoteSendsWhileDown(t *testing.T, remote *postfixtest.Instance, tagged, deferred string) {
	t.Helper()
	if err := remote.Sendmail("carol@remote.test", []string{"bob@example.com"}, message("carol@remote.test", "bob@example.com", "retried message")); err != nil {
		t.Fatal(err)
	}
	if err := remote.Sendmail("<>", []string{tagged}, message("MAILER-DAEMON@remote.test", tagged, "retried bounce")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	for strings.Count(remote.MailLog(), "status=deferred (host 127.0.0.1[127.0.0.1] said: "+deferred) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the remote site did not defer both:\n%s", remote.LogTail(30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// expectRetriedDelivered flushes the remote site's queue and checks that
// what remoteSendsWhileDown sent is delivered: the message to bob, the
// bounce to alice's mailbox.
func (s *site) expectRetriedDelivered(t *testing.T, remote *postfixtest.Instance) {
	t.Helper()
	if err := remote.Flush(); err != nil {
		t.Fatal(err)
	}
	if m := s.pf.WaitMessage(t, wait, withText("retried message")); len(m.Rcpts) != 1 || m.Rcpts[0] != "bob@example.com" {
		t.Fatalf("delivered to %v", m.Rcpts)
	}
	if m := s.pf.WaitMessage(t, wait, withText("retried bounce")); m.From != "" || len(m.Rcpts) != 1 || m.Rcpts[0] != user {
		t.Fatalf("the bounce was delivered as %v, want to %s", m, user)
	}
	if err := remote.WaitQueueEmpty(wait); err != nil {
		t.Fatal(err)
	}
}

// expectSubmissionUnsigned submits a message on the submission service
// while batv is down and checks that it goes out unsigned.
func (s *site) expectSubmissionUnsigned(t *testing.T) {
	t.Helper()
	const to = "dave@elsewhere.test"
	res, err := s.pf.Submit("alice", password, user, []string{to}, message(user, to, "sent while batv is down"))
	if err != nil || !res.Accepted() {
		t.Fatalf("submit: %v %v", res, err)
	}
	if m := s.pf.WaitMessage(t, wait, withText("sent while batv is down")); m.From != user {
		t.Fatalf("envelope sender %q, want %q unsigned", m.From, user)
	}
}

// statusHeaderValues are the values of the X-BATV-Status headers of a
// message, in order.
func statusHeaderValues(data string) []string {
	head, _, _ := strings.Cut(data, "\r\n\r\n")
	var got []string
	for _, line := range strings.Split(head, "\r\n") {
		if name, value, ok := strings.Cut(line, ":"); ok && strings.EqualFold(name, "X-BATV-Status") {
			got = append(got, strings.TrimSpace(value))
		}
	}
	return got
}

// transactionCase is one bounce transaction of the one-transaction rule
// (policy.Transaction).
type transactionCase struct {
	name  string
	rcpts []string
	// replies are the starts of the RCPT replies, in order; data is the
	// start of the DATA reply, "" if the message is accepted.
	replies []string
	data    string
	// deliveredTo is the envelope recipient the sink gets, if any.
	deliveredTo string
}

// expectOneTransactionRule sends each case as a bounce to s's MX and
// checks every reply and the delivery; each recipient deferred with 452,
// sent again alone as its sender will, must be delivered; and nothing
// else may reach the sink.
func (s *site) expectOneTransactionRule(t *testing.T, cases []transactionCase) {
	t.Helper()
	pf := s.pf
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			subject := "one transaction: " + tt.name
			res, err := pf.SendMX("", tt.rcpts, message("MAILER-DAEMON@remote.test", tt.rcpts[0], subject))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("replies:\n%s", res)
			for i, want := range tt.replies {
				if r := res.Rcpt(tt.rcpts[i]); r == nil || !strings.HasPrefix(r.String(), want) {
					t.Errorf("RCPT %s: %v, want %q", tt.rcpts[i], r, want)
				}
			}
			switch {
			case tt.data == "" && !res.Accepted():
				t.Fatalf("the message was not accepted")
			case tt.data != "" && (res.Data == nil || !strings.HasPrefix(res.Data.String(), tt.data) || res.Accepted()):
				t.Fatalf("DATA: %v, want %q", res.Data, tt.data)
			}
			if tt.deliveredTo != "" {
				if m := pf.WaitMessage(t, wait, withText(subject)); len(m.Rcpts) != 1 || m.Rcpts[0] != tt.deliveredTo {
					t.Fatalf("delivered to %v, want [%s]", m.Rcpts, tt.deliveredTo)
				}
			}
			for i, want := range tt.replies {
				if !strings.HasPrefix(want, "452 ") {
					continue
				}
				retry := subject + ", retried"
				res, err := pf.SendMX("", tt.rcpts[i:i+1], message("MAILER-DAEMON@remote.test", tt.rcpts[i], retry))
				if err != nil || !res.Accepted() {
					t.Fatalf("retry of %s: %v %v", tt.rcpts[i], res, err)
				}
				pf.WaitMessage(t, wait, withText(retry))
			}
		})
	}
	if err := pf.WaitQueueEmpty(wait); err != nil {
		t.Fatal(err)
	}
	// Only the accepted messages reached the sink.
	for _, m := range pf.Sink().Messages() {
		if d := string(m.Data); strings.Contains(d, "one transaction:") && !strings.Contains(d, "retried") && !strings.Contains(d, "valid then untagged") {
			t.Errorf("delivered: %v\n%s", m, d)
		}
	}
}

// expectMultiRecipientBounce sends a bounce to a forged tag and a valid
// tag: the forged one is refused, the message delivered to the other's
// untagged address.
func (s *site) expectMultiRecipientBounce(t *testing.T) {
	t.Helper()
	valid := s.sign("bob@example.com", 2)
	forged := s.sign(user, 2)
	forged = forged[:9] + flip(forged[9:15]) + forged[15:]
	res, err := s.pf.SendMX("", []string{forged, valid}, message("MAILER-DAEMON@remote.test", valid, "two recipients"))
	expectSplit(t, res, err, forged, valid)
	m := s.pf.WaitMessage(t, wait, withText("two recipients"))
	if len(m.Rcpts) != 1 || m.Rcpts[0] != "bob@example.com" {
		t.Fatalf("delivered to %v, want [bob@example.com]", m.Rcpts)
	}
}
