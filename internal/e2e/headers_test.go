package e2e

import (
	"path/filepath"
	"strings"
	"testing"
)

// With invalid_tag_reply = "deliver-mark", a reply to a tag with a wrong
// MAC is delivered untagged and marked with X-BATV-Status. A status header the sender put in the message must not
// reach the mailbox: batv removes it by default, and with
// remove_forged_headers = false Postfix's header_checks do, as
// docs/postfix.md says, without removing batv's own.
func TestPostfixForgedStatusHeaders(t *testing.T) {
	s := newSite(t, "accept")
	s.reconfigure(t, `invalid_tag_reply = "deliver-mark"`)

	send := func(t *testing.T, subject string) string {
		t.Helper()
		tagged := s.sign(user, 1)
		tagged = tagged[:9] + flip(tagged[9:15]) + tagged[15:]
		msg := []byte("From: <carol@remote.test>\r\nTo: <" + tagged + ">\r\nSubject: " + subject +
			"\r\nX-BATV-Status: valid; rcpt=<" + user + ">\r\nX-Batv-Status: valid\r\n\r\nHello.\r\n")
		res, err := s.pf.SendMX("carol@remote.test", []string{tagged}, msg)
		if err != nil || !res.Accepted() {
			t.Fatalf("send: %v %v", res, err)
		}
		m := s.pf.WaitMessage(t, wait, withText(subject))
		if len(m.Rcpts) != 1 || m.Rcpts[0] != user {
			t.Fatalf("delivered to %v, want [%s]", m.Rcpts, user)
		}
		return string(m.Data)
	}
	want := "bad-signature; rcpt=<"

	t.Run("removed by batv", func(t *testing.T) {
		got := statusHeaderValues(send(t, "forged header, batv removes"))
		if len(got) != 1 || !strings.HasPrefix(got[0], want) {
			t.Fatalf("X-BATV-Status headers delivered: %q, want only batv's %q...", got, want)
		}
	})

	t.Run("removed by header_checks", func(t *testing.T) {
		checks := filepath.Join(s.dir, "batv_header_checks")
		writeTable(t, checks, "/^X-BATV-Status:/ IGNORE\n")
		if err := s.pf.Postconf(map[string]string{"header_checks": "regexp:" + checks}); err != nil {
			t.Fatal(err)
		}
		if err := s.pf.Reload(); err != nil {
			t.Fatal(err)
		}
		s.reconfigure(t, "remove_forged_headers = false")
		got := statusHeaderValues(send(t, "forged header, header_checks remove"))
		if len(got) != 1 || !strings.HasPrefix(got[0], want) {
			t.Fatalf("X-BATV-Status headers delivered: %q, want only batv's %q...", got, want)
		}
	})
}
