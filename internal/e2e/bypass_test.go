package e2e

import (
	"strings"
	"testing"

	"github.com/batv/batv/internal/testenv/postfixtest"
)

// The spellings of issue 14 through the real Postfix: what Postfix relays
// as a bounce is a bounce for batv, and what Postfix delivers to a
// protected mailbox is judged as that mailbox.

// spelling is one SMTP transaction with a sender and a recipient written
// exactly so.
type spelling struct {
	from, rcpt string // the arguments of MAIL FROM: and RCPT TO:
	// rcptCode is the RCPT reply code; data the start of the DATA reply
	// ("" when the message is sent); deliveredTo the sink's recipient
	// ("" when nothing may be delivered).
	rcptCode    int
	data        string
	deliveredTo string
}

const refusedUntagged = "550 5.7.1 Bounce refused: this address sends only tagged mail"

// try runs sp against the site's MX and checks every reply, the refusal's
// log line and count, and the delivery.
func (s *site) try(t *testing.T, sp spelling) {
	t.Helper()
	refusedBefore := s.metric(t, "batv_bounces_refused_at_data_total")
	subject := "spelling " + sp.from + " " + sp.rcpt
	c := converse(t, s.pf.MXAddr(), step{"EHLO mx.remote.test", 250}, step{"MAIL FROM:" + sp.from, 250}, step{"RCPT TO:" + sp.rcpt, sp.rcptCode})
	if sp.rcptCode != 250 {
		return
	}
	r, err := c.Cmd("DATA")
	if err != nil {
		t.Fatal(err)
	}
	if sp.data != "" {
		if !strings.HasPrefix(r.String(), sp.data) {
			t.Fatalf("DATA: %v, want %q", r, sp.data)
		}
		if n := s.metric(t, "batv_bounces_refused_at_data_total"); n != refusedBefore+1 {
			t.Errorf("batv_bounces_refused_at_data_total went from %v to %v, want one more", refusedBefore, n)
		}
		return
	}
	if r.Code != 354 {
		t.Fatalf("DATA: %v, want 354", r)
	}
	if r, err := c.Body(message("someone@remote.test", "alice@example.com", subject)); err != nil || r.Code != 250 {
		t.Fatalf("end of data: %v %v", r, err)
	}
	if m := s.pf.WaitMessage(t, wait, withText(subject)); len(m.Rcpts) != 1 || m.Rcpts[0] != sp.deliveredTo {
		t.Fatalf("delivered to %v, want [%s]", m.Rcpts, sp.deliveredTo)
	}
}

// lastRecipientLine is batv's last "recipient" log line for rcpt (as
// logged: quoted when it has to be).
func (s *site) lastRecipientLine(rcpt string) string {
	var last string
	for _, line := range strings.Split(s.daemon.LogWith("msg=recipient ", "rcpt="+rcpt+" "), "\n") {
		if strings.Contains(line, "msg=recipient ") && strings.Contains(line, "rcpt="+rcpt+" ") {
			last = line
		}
	}
	return last
}

func TestNullSenderSpellings(t *testing.T) {
	s := newSite(t, "tempfail")
	for _, from := range []string{
		`<"">`, `<@evil.test:>`, `<@a,@b:>`, `< >`, `<"" >`, `<@a:"">`,
		// Postfix's cleanup queues these with the null sender
		// (MAILER-DAEMON@$myorigin), and relays them as MAIL FROM:<>.
		`<mailer-daemon>`, `<MAILER-DAEMON@mx.postfix.test>`,
	} {
		t.Run(from, func(t *testing.T) {
			s.try(t, spelling{from: from, rcpt: "<" + user + ">", rcptCode: 250, data: refusedUntagged})
			line := s.lastRecipientLine(user)
			if !strings.Contains(line, "outcome=missing action=reject") || !strings.Contains(line, "stage=data") || !strings.Contains(line, "bounce=true") {
				t.Errorf("batv's log line for the recipient: %s", line)
			}
		})
	}
	t.Run("a sender with a source route is no bounce", func(t *testing.T) {
		s.try(t, spelling{from: "<@relay.test:carol@remote.test>", rcpt: "<" + user + ">", rcptCode: 250, deliveredTo: user})
		line := s.lastRecipientLine(user)
		if !strings.Contains(line, "action=pass") || !strings.Contains(line, `reason="not a bounce"`) || !strings.Contains(line, "bounce=false") {
			t.Errorf("batv's log line for the recipient: %s", line)
		}
		if n := s.metric(t, "batv_inbound_recipients_total", `outcome="missing"`, `action="pass"`); n != 1 {
			t.Errorf("not-a-bounce recipients counted: %v, want 1", n)
		}
	})
	if n := s.metric(t, "batv_inbound_recipients_total", `outcome="missing"`, `action="reject"`); n != 8 {
		t.Errorf("untagged bounce recipients counted: %v, want 8", n)
	}
}

// recipientSpellings are the spellings of alice@example.com Postfix 3.7
// delivers to alice@example.com by default, as bounce recipients; closed
// are those docs/postfix.md's main.cf lines make Postfix refuse.
func recipientSpellings(s *site) (open, closed []spelling) {
	refused := func(rcpt string) spelling {
		return spelling{from: "<>", rcpt: rcpt, rcptCode: 250, data: refusedUntagged}
	}
	open = []spelling{
		refused("<alice@example.com.>"),
		refused(`<"alice"@example.com>`),
		refused(`<"alice@example.com">`),
		refused(`<"alice@example.com"@[127.0.0.1]>`),
		refused("<@x.test:alice@example.com>"),
		refused("<@x.test,@y.test:alice@example.com>"),
		refused("<@[127.0.0.1]:alice@example.com>"),
		refused("<ALICE@EXAMPLE.COM>"),
		refused("alice@example.com"),
		refused("< alice@example.com >"),
		// A valid tag, spelled with a trailing dot, is delivered.
		{from: "<>", rcpt: "<" + s.sign(user, 1) + ".>", rcptCode: 250, deliveredTo: user},
	}
	closed = []spelling{
		refused("<alice%example.com@[127.0.0.1]>"),
		refused("<alice%example.com>"),
		refused("<alice%example.com.@[127.0.0.1]>"),
		refused(`<"alice%example.com"@[127.0.0.1]>`),
		refused("<example.com!alice@[127.0.0.1]>"),
		refused("<example.com!alice>"),
	}
	return open, closed
}

func TestRecipientSpellings(t *testing.T) {
	t.Run("with the lines of docs/postfix.md", func(t *testing.T) {
		s := newSite(t, "tempfail")
		open, closed := recipientSpellings(s)
		for _, sp := range open {
			t.Run(sp.rcpt, func(t *testing.T) { s.try(t, sp) })
		}
		// allow_percent_hack = no and swap_bangpath = no: Postfix no
		// longer takes these as alice's.
		for _, sp := range closed {
			sp.rcptCode, sp.data = 554, ""
			t.Run(sp.rcpt, func(t *testing.T) { s.try(t, sp) })
		}
	})
	t.Run("without them batv refuses every spelling", func(t *testing.T) {
		s := newSiteWith(t, siteConfig{action: "tempfail", main: map[string]string{"allow_percent_hack": "yes", "swap_bangpath": "yes"}})
		open, closed := recipientSpellings(s)
		for _, sp := range append(open, closed...) {
			t.Run(sp.rcpt, func(t *testing.T) { s.try(t, sp) })
		}
	})
}

// Postfix's recipient-keyed restrictions see the recipient as the client
// wrote it: a tagged address is not bob@example.com to
// check_recipient_access. docs/postfix.md chains the access table through
// the strip table, so that it sees the untagged address too.
func TestRecipientAccessSeesTags(t *testing.T) {
	dir := postfixtest.TempDir(t)
	access := dir + "/recipient_access"
	writeTable(t, access, "bob@example.com REJECT bob takes no mail from outside\n")
	plain := "check_recipient_access texthash:" + access
	s := newSiteWith(t, siteConfig{action: "tempfail", main: map[string]string{
		"smtpd_recipient_restrictions": plain + ", reject_unlisted_recipient",
	}})
	validBob := s.sign("bob@example.com", 1)
	madeUp := []string{
		"prvs=0000000000=bob@example.com",
		"bob+prvs=0000000000@example.com", // the sub-address form
		"prvs=bob/0000000000@example.com", // the form of draft 00
	}
	send := func(t *testing.T, rcpt, subject string) *postfixtest.Result {
		t.Helper()
		res, err := s.pf.SendMX("carol@remote.test", []string{rcpt}, message("carol@remote.test", rcpt, subject))
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	refused := func(t *testing.T, rcpt, text string) {
		t.Helper()
		res := send(t, rcpt, "refused")
		if r := res.Rcpt(rcpt); r == nil || !strings.HasPrefix(r.String(), text) || res.Accepted() {
			t.Errorf("RCPT %s: %v, want %q", rcpt, r, text)
		}
	}
	const accessText = "554 5.7.1 <%s>: Recipient address rejected: bob takes no mail from outside"
	rejectedByAccess := func(t *testing.T, rcpt string) {
		t.Helper()
		refused(t, rcpt, strings.Replace(accessText, "%s", rcpt, 1))
	}

	t.Run("the access table alone does not see tagged addresses", func(t *testing.T) {
		rejectedByAccess(t, "bob@example.com")
		// A valid tag of bob's (the Return-Path of any message bob sent)
		// passes the access table and is delivered to bob.
		if res := send(t, validBob, "valid tag, plain access"); !res.Accepted() {
			t.Fatalf("%v", res)
		}
		if m := s.pf.WaitMessage(t, wait, withText("valid tag, plain access")); m.Rcpts[0] != "bob@example.com" {
			t.Fatalf("delivered to %v", m.Rcpts)
		}
		// Made-up tags are refused by batv (invalid_tag_reply = "reject").
		for _, rcpt := range madeUp {
			refused(t, rcpt, "550 5.7.1 The recipient address tag is not valid (BATV)")
		}
	})

	// The lines of docs/postfix.md.
	chained := plain + ", check_recipient_access pipemap:{socketmap:unix:batv/map.sock:strip, texthash:" + access + "}"
	if err := s.pf.Postconf(map[string]string{"smtpd_recipient_restrictions": chained + ", reject_unlisted_recipient"}); err != nil {
		t.Fatal(err)
	}
	if err := s.pf.Reload(); err != nil {
		t.Fatal(err)
	}

	t.Run("chained through strip, the access table sees every tag of bob's", func(t *testing.T) {
		rejectedByAccess(t, "bob@example.com")
		rejectedByAccess(t, validBob)
		for _, rcpt := range madeUp {
			rejectedByAccess(t, rcpt)
		}
		// alice is not in the table: her mail and her tags pass.
		for _, rcpt := range []string{user, s.sign(user, 1)} {
			subject := "to alice as " + rcpt
			if res := send(t, rcpt, subject); !res.Accepted() {
				t.Fatalf("%v", res)
			}
			if m := s.pf.WaitMessage(t, wait, withText(subject)); m.Rcpts[0] != user {
				t.Fatalf("delivered to %v", m.Rcpts)
			}
		}
	})

	t.Run("with invalid_tag_reply = deliver-mark made-up tags are still refused", func(t *testing.T) {
		s.reconfigure(t, `invalid_tag_reply = "deliver-mark"`)
		for _, rcpt := range madeUp {
			rejectedByAccess(t, rcpt)
		}
	})
	t.Run("batv down, accept on the MX: recipients not in the table wait", func(t *testing.T) {
		// The chained lookup fails for every address the first table does
		// not list.
		s.daemon.stop(t)
		if err := s.pf.SetServiceOption(postfixtest.MX, "milter_default_action", "accept"); err != nil {
			t.Fatal(err)
		}
		if err := s.pf.Reload(); err != nil {
			t.Fatal(err)
		}
		rejectedByAccess(t, "bob@example.com")
		refused(t, user, "451 4.3.5 <"+user+">: Recipient address rejected: Server configuration error")
	})
	for _, m := range s.pf.Sink().Messages() {
		if m.HasRcpt("bob@example.com") && !strings.Contains(string(m.Data), "valid tag, plain access") {
			t.Errorf("delivered to bob: %v", m)
		}
	}
}

// unicodeMailbox is the mailbox of siteDomains' internationalised domain.
const unicodeMailbox = "alice@bücher.example"

// unicodeSpellings are bounces to unicodeMailbox. An SMTPUTF8 client may
// write a domain as its U-label, and Postfix 3.7 matches relay_domains as
// written: a site that lists bücher.example receives mail for
// alice@bücher.example and refuses alice@xn--bcher-kva.example as a relay
// (the last case). batv, configured with the A-label, must judge
// alice@bücher.example as that domain's.
func unicodeSpellings(s *site, refused string) []spelling {
	return []spelling{
		{from: "<> SMTPUTF8", rcpt: "<" + unicodeMailbox + ">", rcptCode: 250, data: refused},
		{from: "<> SMTPUTF8", rcpt: "<alice@BÜCHER.example>", rcptCode: 250, data: refused},
		{from: "<> SMTPUTF8", rcpt: "<" + s.sign(unicodeMailbox, 1) + ">", rcptCode: 250, deliveredTo: unicodeMailbox},
		{from: "<> SMTPUTF8", rcpt: "<alice@xn--bcher-kva.example>", rcptCode: 554},
	}
}

func TestUnicodeDomainSpellings(t *testing.T) {
	s := newSiteWith(t, siteConfig{action: "tempfail", unicodeDomain: true})
	for _, sp := range unicodeSpellings(s, refusedUntagged) {
		t.Run(sp.rcpt, func(t *testing.T) { s.try(t, sp) })
	}
	t.Run("a callout passes", func(t *testing.T) {
		converse(t, s.pf.MXAddr(), step{"EHLO verifier.remote.test", 250}, step{"MAIL FROM:<> SMTPUTF8", 250},
			step{"RCPT TO:<" + unicodeMailbox + ">", 250}, step{"RSET", 250})
	})
}
