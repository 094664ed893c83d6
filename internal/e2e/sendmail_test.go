package e2e

import (
	"os"
	osuser "os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/postfixtest"
	"github.com/batv/batv/internal/testenv/sendmailtest"
)

// smSite is a Sendmail configured as docs/sendmail.md says, with batv in
// front of it. batv runs as user nobody, as it would under its own user:
// its socket (mode 0600, docs/sendmail.md) is then not the test's, and
// Sendmail reaches it because its daemon runs as root.
type smSite struct {
	*site
	sm   *sendmailtest.Instance
	sock string
	as   *syscall.Credential
}

// docBlock returns the fenced block of docs/sendmail.md whose opening line
// is fence, after the heading.
func docBlock(t *testing.T, heading, fence string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "docs", "sendmail.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	at := strings.Index(doc, "\n"+heading+"\n")
	if at < 0 {
		t.Fatalf("docs/sendmail.md has no heading %q", heading)
	}
	doc = doc[at:]
	start := strings.Index(doc, "\n"+fence+"\n")
	if start < 0 {
		t.Fatalf("docs/sendmail.md: no %s block under %q", fence, heading)
	}
	block := doc[start+len(fence)+2:]
	end := strings.Index(block, "\n```\n")
	if end < 0 {
		t.Fatalf("docs/sendmail.md: unterminated block under %q", heading)
	}
	return block[:end+1]
}

const docSocket = "/run/batv/milter.sock"

// newSendmailSite starts batv with the configuration of docs/sendmail.md
// and a Sendmail with its sendmail.mc lines. The milter's F= flag is
// replaced by flags.
func newSendmailSite(t *testing.T, flags string) *smSite {
	t.Helper()
	s := &smSite{site: &site{t: t, dir: postfixtest.TempDir(t)}}
	s.keyring = filepath.Join(s.dir, "keyring.json")
	s.sock = filepath.Join(s.dir, "milter.sock")
	// The keyring dates from a month ago, so tests can sign as on past days.
	s.batv("keys", "--at", time.Now().UTC().AddDate(0, -1, 0).Format(time.RFC3339), "init", "--keyring", s.keyring)

	conf := docBlock(t, "## Use the sub-address form", "```toml")
	if !strings.Contains(conf, docSocket) || !strings.Contains(conf, "\n[sign]\n") {
		t.Fatalf("docs/sendmail.md's configuration changed shape:\n%s", conf)
	}
	conf = strings.ReplaceAll(conf, docSocket, s.sock)
	// Every test client connects from 127.0.0.1, which is an internal
	// network by default: here only the MSA port counts as ours.
	conf = strings.Replace(conf, "\n[sign]\n", "\n[sign]\ninternal_networks = []\n", 1)
	s.config = filepath.Join(s.dir, "batv.toml")
	writeFile(t, s.config, "keyring = \""+s.keyring+"\"\n"+conf+`
[verify]
# The keyring is new: end the grace period for untagged bounces now.
grace_until = 2000-01-01T00:00:00Z

[log]
level = "debug"
`)

	mc := docBlock(t, "## sendmail.mc", "```")
	if !strings.Contains(mc, "S=local:"+docSocket+", F=,") {
		t.Fatalf("docs/sendmail.md's INPUT_MAIL_FILTER changed shape:\n%s", mc)
	}
	mc = strings.ReplaceAll(mc, "S=local:"+docSocket+", F=,", "S=local:"+s.sock+", F="+flags+",")
	// Sendmail first: it skips the test when Sendmail is missing, and
	// connects to the milter only when mail comes.
	s.sm = sendmailtest.Start(t, sendmailtest.Options{MC: mc})

	nobody, err := osuser.Lookup("nobody")
	if err != nil {
		t.Fatalf("user nobody: %v", err)
	}
	uid, err1 := strconv.ParseUint(nobody.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(nobody.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		t.Fatalf("user nobody: uid %q gid %q", nobody.Uid, nobody.Gid)
	}
	for _, p := range []string{s.dir, s.keyring, s.config} {
		if err := os.Chown(p, int(uid), int(gid)); err != nil {
			t.Fatal(err)
		}
	}
	s.as = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	s.start()
	return s
}

// start starts batv as user nobody.
func (s *smSite) start() {
	s.t.Helper()
	s.daemon = startDaemonAs(s.t, s.as, s.config, s.sock)
	if fi, err := os.Stat(s.sock); err != nil || fi.Sys().(*syscall.Stat_t).Uid != s.as.Uid || fi.Mode().Perm() != 0o600 {
		s.t.Fatalf("socket %s: %v %v, want mode 0600 owned by nobody", s.sock, fi, err)
	}
}

// signSub signs addr in the sub-address form, daysAgo days ago.
func (s *smSite) signSub(addr string, daysAgo int) string {
	s.t.Helper()
	at := time.Now().UTC().AddDate(0, 0, -daysAgo).Format(time.DateOnly)
	return s.batv("sign", "--keyring", s.keyring, "--at", at, "--sub-address", "+", addr)
}

// forgeSub changes the last hex digit of a sub-address tag's MAC.
func forgeSub(tagged string) string {
	at := strings.Index(tagged, "@")
	return tagged[:at-1] + flip(tagged[at-1:at]) + tagged[at:]
}

// subTag matches a sub-address tag of alice@example.com.
var subTag = regexp.MustCompile(`^alice\+prvs=[0-9][0-9]{3}[0-9a-f]{6}@example\.com$`)

func TestSendmailEndToEnd(t *testing.T) {
	s := newSendmailSite(t, "")
	sm := s.sm

	t.Run("mail on the submission port is signed in the sub-address form", func(t *testing.T) {
		res, err := sm.Send(sm.MSAAddr(), user, []string{"carol@remote.test"}, message(user, "carol@remote.test", "signed"))
		if err != nil || !res.Accepted() {
			t.Fatalf("submit: %v %v", res, err)
		}
		m := sm.WaitMessage(t, wait, withText("signed"))
		if !subTag.MatchString(m.From) {
			t.Fatalf("envelope sender %q is not a sub-address tag", m.From)
		}
		if out := s.batv("verify", "--keyring", s.keyring, m.From); out != "valid "+user {
			t.Fatalf("batv verify %s: %q", m.From, out)
		}
	})

	t.Run("mail from an outside client on the MTA port is not signed", func(t *testing.T) {
		res, err := sm.Send(sm.MTAAddr(), user, []string{"carol@remote.test"}, message(user, "carol@remote.test", "outsider"))
		if err != nil || !res.Accepted() {
			t.Fatalf("send: %v %v", res, err)
		}
		if m := sm.WaitMessage(t, wait, withText("outsider")); m.From != user {
			t.Fatalf("envelope sender %q, want %q unchanged", m.From, user)
		}
	})

	t.Run("a bounce to a valid tag is delivered to the mailbox", func(t *testing.T) {
		tagged := s.signSub(user, 1)
		res, err := sm.Send(sm.MTAAddr(), "", []string{tagged}, message("MAILER-DAEMON@remote.test", tagged, "bounce valid"))
		if err != nil || !res.Accepted() {
			t.Fatalf("send: %v %v", res, err)
		}
		m := sm.WaitMessage(t, wait, withText("bounce valid"))
		if m.From != "" || len(m.Rcpts) != 1 || m.Rcpts[0] != "alice@sink.test" {
			t.Fatalf("delivered as %v, want a bounce to alice's mailbox (alice@sink.test)", m)
		}
	})

	t.Run("forged and expired bounces are refused at RCPT, untagged ones at DATA", func(t *testing.T) {
		res, err := sm.Send(sm.MTAAddr(), "", []string{user}, message("MAILER-DAEMON@remote.test", user, "bounce refused at DATA"))
		if err != nil {
			t.Fatal(err)
		}
		const text = "550 5.7.1 Bounce refused: this address sends only tagged mail"
		if r := res.Rcpt(user); r == nil || r.Code != 250 || res.Data == nil || !strings.HasPrefix(res.Data.String(), text) || res.Accepted() {
			t.Errorf("untagged bounce: %v, want 250 at RCPT and %q at DATA", res, text)
		}
		for _, tt := range []struct{ rcpt, reason string }{
			{forgeSub(s.signSub(user, 1)), "Bounce refused: the recipient address tag is not valid (BATV)"},
			{s.signSub(user, 9), "Bounce refused: the recipient address tag is expired (BATV)"},
		} {
			res, err := sm.Send(sm.MTAAddr(), "", []string{tt.rcpt}, message("MAILER-DAEMON@remote.test", tt.rcpt, "bounce refused"))
			if err != nil {
				t.Fatal(err)
			}
			want := "550 5.7.1 <" + tt.rcpt + ">... " + tt.reason
			if r := res.Rcpt(tt.rcpt); r == nil || !strings.HasPrefix(r.String(), want) || res.Accepted() {
				t.Errorf("RCPT %s: %v, want %q", tt.rcpt, r, want)
			}
		}
	})

	t.Run("a callout to an untagged address gets 250", func(t *testing.T) {
		converse(t, sm.MTAAddr(), step{"EHLO mx.remote.test", 250}, step{"MAIL FROM:<>", 250},
			step{"RCPT TO:<" + user + ">", 250}, step{"RSET", 250})
	})

	t.Run("an untagged recipient and then a valid one: 452 4.5.3, refused at DATA, the retry delivered", func(t *testing.T) {
		valid := s.signSub("bob@example.com", 1)
		res, err := sm.Send(sm.MTAAddr(), "", []string{user, valid}, message("MAILER-DAEMON@remote.test", valid, "split bounce"))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("replies:\n%s", res)
		const split = "452 4.5.3 "
		if r := res.Rcpt(valid); r == nil || !strings.HasPrefix(r.String(), split) || !strings.Contains(r.Text, "Too many recipients for one bounce") {
			t.Errorf("RCPT %s: %v, want %q...", valid, r, split)
		}
		if r := res.Rcpt(user); r == nil || r.Code != 250 || res.Data == nil || !strings.HasPrefix(res.Data.String(), "550 5.7.1 Bounce refused: this address sends only tagged mail") || res.Accepted() {
			t.Fatalf("untagged recipient and DATA: %v", res)
		}
		res, err = sm.Send(sm.MTAAddr(), "", []string{valid}, message("MAILER-DAEMON@remote.test", valid, "split bounce, retried"))
		if err != nil || !res.Accepted() {
			t.Fatalf("retry: %v %v", res, err)
		}
		if m := sm.WaitMessage(t, wait, withText("split bounce, retried")); len(m.Rcpts) != 1 || m.Rcpts[0] != "bob@sink.test" {
			t.Fatalf("delivered to %v, want [bob@sink.test]", m.Rcpts)
		}
		for _, m := range sm.Sink().Messages() {
			if strings.Contains(string(m.Data), "split bounce\r\n") {
				t.Errorf("the refused transaction was delivered: %v", m)
			}
		}
	})

	t.Run("an unknown user is refused as unknown, tagged or not", func(t *testing.T) {
		for _, rcpt := range []string{"nobody1@example.com", s.signSub("nobody1@example.com", 1)} {
			res, err := sm.Send(sm.MTAAddr(), "", []string{rcpt}, message("MAILER-DAEMON@remote.test", rcpt, "unknown"))
			if err != nil {
				t.Fatal(err)
			}
			if r := res.Rcpt(rcpt); r == nil || r.Code != 550 || r.Enhanced != "5.1.1" || !strings.Contains(r.Text, "User unknown") {
				t.Errorf("RCPT %s: %v, want 550 5.1.1 User unknown", rcpt, r)
			}
		}
	})

	t.Run("a bounce Sendmail makes for a signed message reaches the sender", func(t *testing.T) {
		sm.Sink().Refuse("nosuch@remote.test")
		res, err := sm.Send(sm.MSAAddr(), user, []string{"nosuch@remote.test"}, message(user, "nosuch@remote.test", "will bounce"))
		if err != nil || !res.Accepted() {
			t.Fatalf("submit: %v %v", res, err)
		}
		m := sm.WaitMessage(t, wait, postfixtest.All(postfixtest.FromSender(""), withText("will bounce")))
		if len(m.Rcpts) != 1 || m.Rcpts[0] != "alice@sink.test" {
			t.Fatalf("Sendmail's bounce went to %v, want alice's mailbox (alice@sink.test)", m.Rcpts)
		}
	})

	t.Run("postmaster accepts an untagged bounce", func(t *testing.T) {
		res, err := sm.Send(sm.MTAAddr(), "", []string{"postmaster@example.com"}, message("MAILER-DAEMON@remote.test", "postmaster@example.com", "to postmaster"))
		if err != nil || !res.Accepted() {
			t.Fatalf("send: %v %v", res, err)
		}
		sm.WaitMessage(t, wait, withText("to postmaster"))
	})

	t.Run("a multi-recipient bounce is decided per recipient", func(t *testing.T) {
		valid := s.signSub("bob@example.com", 2)
		forged := forgeSub(s.signSub(user, 2))
		res, err := sm.Send(sm.MTAAddr(), "", []string{forged, valid}, message("MAILER-DAEMON@remote.test", valid, "two recipients"))
		expectSplit(t, res, err, forged, valid)
		m := sm.WaitMessage(t, wait, withText("two recipients"))
		if len(m.Rcpts) != 1 || m.Rcpts[0] != "bob@sink.test" {
			t.Fatalf("delivered to %v, want [bob@sink.test]", m.Rcpts)
		}
	})

	t.Run("a forged status header is removed", func(t *testing.T) {
		tagged := s.signSub(user, 1)
		data := append([]byte("X-BATV-Status: valid\r\n"), message("MAILER-DAEMON@remote.test", tagged, "forged header")...)
		res, err := sm.Send(sm.MTAAddr(), "", []string{tagged}, data)
		if err != nil || !res.Accepted() {
			t.Fatalf("send: %v %v", res, err)
		}
		m := sm.WaitMessage(t, wait, withText("forged header"))
		if strings.Contains(string(m.Data), "X-BATV-Status: valid") {
			t.Fatalf("the forged header was delivered:\n%s", m.Data)
		}
	})

	t.Run("Sendmail agreed not to wait for the replies batv leaves out", func(t *testing.T) {
		if log := s.daemon.LogWith("no_reply=connect+mail+header"); !strings.Contains(log, "no_reply=connect+mail+header") {
			t.Errorf("batv's log has no connection with no_reply=connect+mail+header:\n%s", log)
		}
	})

	t.Run("milter stopped: F= lets mail through, unsigned and unverified", func(t *testing.T) {
		s.daemon.stop(t)
		res, err := sm.Send(sm.MTAAddr(), "carol@remote.test", []string{"bob@example.com"}, message("carol@remote.test", "bob@example.com", "milter down, inbound"))
		if err != nil || !res.Accepted() {
			t.Fatalf("inbound with the milter down: %v %v", res, err)
		}
		sm.WaitMessage(t, wait, withText("milter down, inbound"))
		res, err = sm.Send(sm.MSAAddr(), user, []string{"carol@remote.test"}, message(user, "carol@remote.test", "milter down, outbound"))
		if err != nil || !res.Accepted() {
			t.Fatalf("submission with the milter down: %v %v", res, err)
		}
		if m := sm.WaitMessage(t, wait, withText("milter down, outbound")); m.From != user {
			t.Fatalf("sender %q: with the milter down mail goes out unsigned", m.From)
		}
		// Nothing is verified either: an untagged bounce gets through.
		res, err = sm.Send(sm.MTAAddr(), "", []string{user}, message("MAILER-DAEMON@remote.test", user, "milter down, untagged bounce"))
		if err != nil || !res.Accepted() {
			t.Fatalf("untagged bounce with the milter down: %v %v", res, err)
		}
		sm.WaitMessage(t, wait, withText("milter down, untagged bounce"))
	})
}

func TestSendmailMilterDownTempfail(t *testing.T) {
	s := newSendmailSite(t, "T")
	s.daemon.stop(t)
	res, err := s.sm.Send(s.sm.MTAAddr(), "carol@remote.test", []string{"bob@example.com"}, message("carol@remote.test", "bob@example.com", "retry me"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Accepted() || res.Mail == nil || res.Mail.Code != 451 {
		t.Fatalf("with the milter down and F=T: %v, want 451 at MAIL", res)
	}
	// The sender retries once batv is back: the mail is delivered.
	s.start()
	res, err = s.sm.Send(s.sm.MTAAddr(), "carol@remote.test", []string{"bob@example.com"}, message("carol@remote.test", "bob@example.com", "retry me"))
	if err != nil || !res.Accepted() {
		t.Fatalf("retry: %v %v", res, err)
	}
	s.sm.WaitMessage(t, wait, withText("retry me"))
}
