package e2e

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/batv/batv/internal/testenv/postfixtest"
)

// When batv is down, Postfix applies milter_default_action, and the
// lookups of the strip table fail. docs/postfix.md sets tempfail for the
// MX (main.cf) and accept for the submission service (-o): inbound mail
// waits in its senders' queues, users can still send. This test runs
// that, with a second Postfix as the sender that retries, and then the
// alternative of accept on the MX, whose replies docs/postfix.md lists.
func TestPostfixWhileBatvIsDown(t *testing.T) {
	s := newSite(t, "tempfail")
	pf := s.pf
	remote := newRemote(t, s)
	tagged := s.sign(user, 1)
	s.daemon.stop(t)

	mx := func(t *testing.T, from, rcpt, subject string) *postfixtest.Result {
		t.Helper()
		res, err := pf.SendMX(from, []string{rcpt}, message(from, rcpt, subject))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s -> %s:\n%s", from, rcpt, res)
		return res
	}

	t.Run("tempfail on the MX: every message waits", func(t *testing.T) {
		for _, tt := range []struct{ from, rcpt string }{
			{"", user}, {"", tagged}, {"carol@remote.test", "bob@example.com"}, {"carol@remote.test", "nobody@example.com"},
		} {
			res := mx(t, tt.from, tt.rcpt, "while batv is down")
			if res.Mail == nil || res.Mail.String() != "451 4.7.1 Service unavailable - try again later" || res.Accepted() {
				t.Errorf("MAIL: %v, want 451 4.7.1", res.Mail)
			}
		}
		if q, err := pf.Queue(); err != nil || len(q) != 0 {
			t.Fatalf("queue %+v %v: nothing may be queued", q, err)
		}
	})

	t.Run("a sending MTA keeps its mail and retries", func(t *testing.T) {
		// The remote site's Postfix sends a message and a bounce to a
		// valid tag; our MX defers both.
		remoteSendsWhileDown(t, remote, tagged, "451 4.7.1 Service unavailable")
	})

	t.Run("accept on submission: users still send, unsigned", s.expectSubmissionUnsigned)

	t.Run("local submission waits in the maildrop queue", func(t *testing.T) {
		// non_smtpd_milters take main.cf's tempfail: pickup keeps the
		// message and tries again.
		if err := pf.Sendmail(user, []string{"erin@elsewhere.test"}, message(user, "erin@elsewhere.test", "local while down")); err != nil {
			t.Fatal(err)
		}
		if err := pf.WaitLog("warning: connect to Milter service unix:batv/milter.sock", wait); err != nil {
			t.Fatal(err)
		}
		if q, err := pf.Queue(); err != nil || len(q) != 1 || q[0].QueueName != "maildrop" {
			t.Fatalf("queue %+v %v: want the message in maildrop", q, err)
		}
	})

	t.Run("batv back: the retried mail is delivered", func(t *testing.T) {
		sock := filepath.Join(pf.QueueDir(), "batv")
		s.daemon = startDaemon(t, s.config, filepath.Join(sock, "milter.sock"), filepath.Join(sock, "map.sock"))
		s.expectRetriedDelivered(t, remote)
		// postqueue -f makes pickup look at the maildrop queue at once.
		if err := pf.Flush(); err != nil {
			t.Fatal(err)
		}
		if m := pf.WaitMessage(t, wait, withText("local while down")); !strings.HasPrefix(m.From, "prvs=") {
			t.Fatalf("the local message went out as %v, want signed", m)
		}
	})
}

// TestPostfixWhileBatvIsDownAcceptOnMX: the alternative of
// docs/postfix.md, milter_default_action = accept on the MX. Mail flows
// unverified, and the strip table's lookups fail.
func TestPostfixWhileBatvIsDownAcceptOnMX(t *testing.T) {
	s := newSite(t, "accept")
	pf := s.pf
	tagged := s.sign(user, 1)
	forged := tagged[:9] + flip(tagged[9:15]) + tagged[15:]
	s.daemon.stop(t)
	const lookupFailure = "451 4.3.0 <%s>: Temporary lookup failure"
	for _, tt := range []struct {
		name, from, rcpt string
		// rcpt is the RCPT reply, "" when the message is delivered.
		reply string
	}{
		{"an untagged bounce gets through", "", user, ""},
		{"mail with a sender to a known user is delivered", "carol@remote.test", "bob@example.com", ""},
		{"a bounce to a valid tag waits", "", tagged, lookupFailure},
		{"a bounce to a forged tag waits", "", forged, lookupFailure},
		{"mail to an unknown user waits", "carol@remote.test", "nobody@example.com", lookupFailure},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res, err := pf.SendMX(tt.from, []string{tt.rcpt}, message(tt.from, tt.rcpt, tt.name))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("replies:\n%s", res)
			if tt.reply == "" {
				if !res.Accepted() {
					t.Fatalf("not accepted")
				}
				pf.WaitMessage(t, wait, withText(tt.name))
				return
			}
			want := strings.Replace(tt.reply, "%s", tt.rcpt, 1)
			if r := res.Rcpt(tt.rcpt); r == nil || r.String() != want || res.Accepted() {
				t.Fatalf("RCPT: %v, want %q", r, want)
			}
		})
	}
}
