package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// explainOut runs batv explain with args, as on 2026-11-28 (the keyring of
// newKeyring is from 2026-10-01: the grace period is over), and returns
// its output; it fails the test unless the status is 0.
func explainOut(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := runCLI(t, append([]string{"explain", "--at", "2026-11-28"}, args...)...)
	if code != 0 {
		t.Fatalf("explain %q: exit %d\n%s", args, code, errOut)
	}
	return out
}

// sectionOf is the part of explain's output about addr.
func sectionOf(t *testing.T, out, addr string) string {
	t.Helper()
	for _, s := range strings.Split(out, "\n\n") {
		if strings.HasPrefix(s, addr+"\n") {
			return s
		}
	}
	t.Fatalf("no section for %s in:\n%s", addr, out)
	return ""
}

func wantLines(t *testing.T, what, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s: lacks %q:\n%s", what, w, out)
		}
	}
}

func TestExplainCLI(t *testing.T) {
	kr := newKeyring(t)
	sign := func(addr, at string) string {
		t.Helper()
		code, out, errOut := runCLI(t, "sign", "--keyring", kr, "--at", at, addr)
		if code != 0 {
			t.Fatalf("sign: %d %s", code, errOut)
		}
		return strings.TrimSpace(out)
	}
	expired := sign("alice@example.com", "2026-11-20")
	valid := sign("nobody@example.com", "2026-11-27")
	forged := tagForge(valid)

	out := explainOut(t, "--keyring", kr, expired, valid, forged, "alice@example.com")
	wantLines(t, "expired tag", sectionOf(t, out, expired),
		"form: standard", "untagged address alice@example.com", "key: id 0, signing, stops signing 20",
		"expired at the end of 2026-11-27 (1 day ago)", "signature: matches the address exactly", "outcome: expired",
		"a bounce (MAIL FROM:<>) to it: batv refuses it at RCPT: 550 5.7.1 Bounce refused: the recipient address tag is expired",
		"callout (MAIL FROM:<>, RCPT, QUIT): batv refuses it at RCPT: 550 5.7.1",
		"other mail to it: batv accepts it and removes the tag: for alice@example.com (the tag has expired, but a reply needs only the MAC)")
	// batv cannot know whether nobody@ exists: it says what it decides,
	// and that Postfix decides whether the user exists.
	wantLines(t, "valid tag of any user", sectionOf(t, out, valid),
		"outcome: valid", "a bounce (MAIL FROM:<>) to it: batv accepts it and removes the tag: for nobody@example.com\n",
		"callout (MAIL FROM:<>, RCPT, QUIT): batv answers 250 at RCPT\n")
	wantLines(t, "the note", out, "Whether a user exists is Postfix's to decide, not batv's", "550 5.1.1")
	if strings.Contains(out, "delivered to") || strings.Contains(out, "accepted, delivered") {
		t.Errorf("explain says delivered, which only Postfix knows:\n%s", out)
	}
	// A tag that fails names the keyring it was checked with.
	wantLines(t, "forged tag", sectionOf(t, out, forged),
		"outcome: bad-signature", "checked with: keyring "+kr+" (from --keyring)")
	// Untagged, refused at DATA (the default): a callout gets 250.
	wantLines(t, "untagged", sectionOf(t, out, "alice@example.com"),
		"no BATV tag", "outcome: missing",
		"a bounce (MAIL FROM:<>) to it: batv answers 250 at RCPT, then refuses the message at DATA: 550 5.7.1 Bounce refused: this address sends only tagged mail",
		"callout (MAIL FROM:<>, RCPT, QUIT): batv answers 250 at RCPT: the callout succeeds (it quits before DATA)",
		"other mail to it: batv lets it through untouched")

	// With refuse_untagged_at = "rcpt", the callout is refused too.
	cfg := filepath.Join(t.TempDir(), "batv.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("keyring = %q\n[sign]\ndomains = [\"example.com\"]\n[verify]\nrefuse_untagged_at = \"rcpt\"\n", kr)), 0o600); err != nil {
		t.Fatal(err)
	}
	out = explainOut(t, "-c", cfg, "alice@example.com")
	wantLines(t, "refused at RCPT", out,
		"a bounce (MAIL FROM:<>) to it: batv refuses it at RCPT: 550 5.7.1 Bounce refused: this address sends only tagged mail",
		"callout (MAIL FROM:<>, RCPT, QUIT): batv refuses it at RCPT: 550 5.7.1")
}

// Postfix's log lines, as an argument or on standard input: the
// addresses of to=<...> and orig_to=<...> are explained.
func TestExplainPostfixLogLines(t *testing.T) {
	kr := newKeyring(t)
	code, tagged, _ := runCLI(t, "sign", "--keyring", kr, "--at", "2026-11-27", "alice@example.com")
	if code != 0 {
		t.Fatal(code)
	}
	tagged = strings.TrimSpace(tagged)
	lines := []string{
		"Nov 28 10:00:01 mx postfix/smtp[3263]: 649B898817E: to=<carol@example.com>, orig_to=<" + tagged + ">, relay=127.0.0.1[127.0.0.1]:25, status=sent (250 2.0.0 OK)",
		"Nov 28 10:00:02 mx postfix/smtpd[3271]: 709CB988180: milter-reject: DATA from unknown[192.0.2.25]: 550 5.7.1 Bounce refused: this address sends only tagged mail, so it did not send the message you are bouncing (BATV); from=<> to=<bob@example.com> proto=ESMTP helo=<client.test>",
		"Nov 28 10:00:03 mx postfix/smtpd[3271]: NOQUEUE: reject: RCPT from unknown[192.0.2.25]: 550 5.7.1 <dave@example.com>: Recipient address rejected: whatever; from=<> to=<dave@example.com> proto=ESMTP helo=<client.test>",
	}
	want := []string{tagged + "\n  form: standard", "carol@example.com\n  no BATV tag", "bob@example.com\n  no BATV tag", "dave@example.com\n  no BATV tag"}
	out := explainOut(t, append([]string{"--keyring", kr}, lines...)...)
	wantLines(t, "log lines as arguments", out, want...)
	if n := strings.Count(out, "outcome: "); n != 4 {
		t.Errorf("%d addresses explained, want 4:\n%s", n, out)
	}
	var stdout, stderr strings.Builder
	code = run([]string{"batv", "explain", "--keyring", kr, "--at", "2026-11-28"}, strings.NewReader(strings.Join(lines, "\n")), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("log on standard input: %d %s", code, stderr.String())
	}
	wantLines(t, "log on standard input", stdout.String(), want...)

	// A bounce message on standard input.
	msg := "Return-Path: <>\nTo: " + tagged + "\nSubject: Undelivered Mail\n\nbody\n"
	stdout.Reset()
	code = run([]string{"batv", "explain", "--keyring", kr, "--at", "2026-11-28"}, strings.NewReader(msg), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("message on standard input: %d %s", code, stderr.String())
	}
	wantLines(t, "message on standard input", stdout.String(), "outcome: valid", "batv accepts it and removes the tag: for alice@example.com")

	// An argument with no address in it is an error that says what to give.
	code, _, errOut := runCLI(t, "explain", "--keyring", kr, "Nov 28 mx postfix/qmgr[1]: 649B898817E: removed")
	if code != exitUsage || !strings.Contains(errOut, "Postfix log line with to=<...>") {
		t.Errorf("a line without an address: %d %q", code, errOut)
	}
}

// tagForge changes the last character of the MAC of a tag, standard
// (prvs=KDDDSSSSSS=user@domain) or in the sub-address form
// (user+prvs=KDDDSSSSSS@domain).
func tagForge(tagged string) string {
	b := []byte(tagged)
	i := strings.Index(strings.ToLower(tagged), "prvs=") + len("prvs=KDDDSSSSS")
	if b[i] == '0' {
		b[i] = '1'
	} else {
		b[i] = '0'
	}
	return string(b)
}
