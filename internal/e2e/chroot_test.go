package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/batv/batv/internal/testenv/postfixtest"
)

// TestPostfixChrooted: with the MX smtpd and the cleanup of Postfix's own
// bounces chrooted in the queue directory, as Debian's stock master.cf
// runs smtpd, the milter and the lookup table are reached by the relative
// socket paths of docs/postfix.md: bounces are verified, valid ones
// delivered untagged, and a bounce Postfix makes reaches the sender.
func TestPostfixChrooted(t *testing.T) {
	s := newSiteChroot(t, "tempfail", true)
	pf := s.pf
	expectChrooted(t, pf)

	valid := s.sign(user, 1)
	res, err := pf.SendMX("", []string{valid}, message("MAILER-DAEMON@remote.test", valid, "chrooted valid bounce"))
	if err != nil || !res.Accepted() {
		t.Fatalf("valid bounce: %v %v", res, err)
	}
	m := pf.WaitMessage(t, wait, withText("chrooted valid bounce"))
	if len(m.Rcpts) != 1 || m.Rcpts[0] != user {
		t.Fatalf("delivered to %v, want [%s]", m.Rcpts, user)
	}

	// The smtpd that took the bounce runs with the queue directory as its
	// root.
	if roots := smtpdRoots(t, pf.MXAddr()); len(roots) == 0 || slices.ContainsFunc(roots, func(r string) bool { return r != pf.QueueDir() }) {
		t.Fatalf("MX smtpd roots %q, want %s", roots, pf.QueueDir())
	}

	forged := valid[:9] + flip(valid[9:15]) + valid[15:]
	res, err = pf.SendMX("", []string{forged}, message("MAILER-DAEMON@remote.test", forged, "chrooted forged bounce"))
	if err != nil {
		t.Fatal(err)
	}
	if r := res.Rcpt(forged); r == nil || r.Code != 550 || res.Accepted() {
		t.Fatalf("forged bounce: %v", r)
	}

	pf.Sink().Refuse("nosuch@remote.test")
	res, err = pf.Submit("alice", password, user, []string{"nosuch@remote.test"}, message(user, "nosuch@remote.test", "chrooted will bounce"))
	if err != nil || !res.Accepted() {
		t.Fatalf("submit: %v %v", res, err)
	}
	pf.WaitMessage(t, wait, postfixtest.All(postfixtest.FromSender(""), postfixtest.ToRcpt(user), func(m postfixtest.Message) bool {
		return strings.Contains(string(m.Data), "chrooted will bounce")
	}))

	for _, line := range strings.Split(pf.MailLog(), "\n") {
		if strings.Contains(line, "warning:") && (strings.Contains(line, "milter") || strings.Contains(line, "batv") || strings.Contains(line, "socketmap")) {
			t.Errorf("Postfix: %s", line)
		}
	}
}

// smtpdRoots returns the root directory of every smtpd process serving
// addr (its master.cf service name).
func smtpdRoots(t *testing.T, addr string) []string {
	t.Helper()
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	var roots []string
	for _, p := range procs {
		cmd, err := os.ReadFile(p)
		if err != nil || !bytes.HasPrefix(cmd, []byte("smtpd\x00")) || !bytes.Contains(cmd, []byte("\x00"+addr+"\x00")) {
			continue
		}
		if root, err := os.Readlink(filepath.Join(filepath.Dir(p), "root")); err == nil {
			roots = append(roots, root)
		}
	}
	return roots
}
