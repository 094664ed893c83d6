package policy

import "testing"

// TestNullSender: the spellings Postfix 3.7 relays as MAIL FROM:<>
// (measured on a real Postfix: docs/security.md) are bounces, and the
// ones it relays with a sender are not.
func TestNullSender(t *testing.T) {
	for _, s := range []string{
		"", "<>", `""`, `<"">`, `"" `, " ", "< >", "< <> >", "<<>>", " <>", "<", ">", "<<>", "< <",
		"@evil.test:", "<@evil.test:>", "@a,@b:", "<@a,@b:>", "@:", `@a:""`, `<@example.com:"">`,
		"mailer-daemon", "MAILER-DAEMON@example.com", `"Mailer-Daemon"`, "@x:mailer-daemon@mx.example.com",
	} {
		if !NullSender(s) {
			t.Errorf("NullSender(%q) = false, but the MTA relays it as <>", s)
		}
	}
	for _, s := range []string{
		`"\""`, `" "`, `"\\"`, `\"\"`, `""@example.com`, "@a:@b:", "alice@example.com",
		"<alice@example.com>", "@x:alice@example.com", "mailer-daemon-x@example.com", "postmaster@example.com",
		"<alice@example.com", "alice@example.com>",
	} {
		if NullSender(s) {
			t.Errorf("NullSender(%q) = true, but the MTA relays it with a sender", s)
		}
	}
}

// TestMailbox: the spellings Postfix delivers to alice@example.com are
// judged as alice@example.com; others of the domain are left alone.
func TestMailbox(t *testing.T) {
	p := testPolicy(t, nil)
	for _, tt := range []struct{ rcpt, want string }{
		{"alice@example.com", "alice@example.com"},
		{"Alice@EXAMPLE.COM", "Alice@EXAMPLE.COM"},
		{"alice@example.com.", "alice@example.com"},
		{"<alice@example.com>", "alice@example.com"},
		{"<alice@example.com", "alice@example.com"},
		{"< <alice@example.com> >", "alice@example.com"},
		{"@x.test:alice@example.com", "alice@example.com"},
		{"@[IPv6:::1]:alice@example.com", "alice@example.com"},
		{`"alice"@example.com`, "alice@example.com"},
		{`"alice@example.com"`, "alice@example.com"},
		{`"alice@example.com"@[127.0.0.1]`, "alice@example.com"},
		{"alice%example.com@[127.0.0.1]", "alice@example.com"},
		{"alice%example.com.@[127.0.0.1]", "alice@example.com"},
		{"alice%example.com", "alice@example.com"},
		{"example.com!alice@[127.0.0.1]", "alice@example.com"},
		{"example.com!alice", "alice@example.com"},
		{"alice%example.com@localhost", "alice@example.com"},
		{"prvs=4123abcdef=alice%example.com@[127.0.0.1]", "prvs=4123abcdef=alice@example.com"},
		{"alice+prvs=4123abcdef@example.com.", "alice+prvs=4123abcdef@example.com"},
		{"@x.test:@y.test:alice@example.com", "alice@example.com"},
	} {
		got, ok := p.Mailbox(tt.rcpt)
		if !ok || got != tt.want {
			t.Errorf("mailbox(%q) = %q, %v; want %q, protected", tt.rcpt, got, ok, tt.want)
		}
	}
	for _, rcpt := range []string{"alice@example.org", "alice%example.org@[127.0.0.1]", "alice", "example.org!alice", ""} {
		if got, ok := p.Mailbox(rcpt); ok || got != rcpt {
			t.Errorf("mailbox(%q) = %q, %v; want it unprotected and unchanged", rcpt, got, ok)
		}
	}
}
