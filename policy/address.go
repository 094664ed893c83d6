package policy

import "strings"

// The envelope addresses an SMTP client writes are not the addresses the
// MTA uses: Postfix 3.7 (measured, docs/security.md) takes <"">, < >,
// <@a,@b:> and <@a:""> as the null sender, and relays them as MAIL
// FROM:<>; its cleanup makes any sender that rewrites to
// MAILER-DAEMON@$myorigin the null sender too; and it delivers
// alice@example.com. (a trailing dot), <@x:alice@example.com> (a source
// route), "alice"@example.com (a quoted local part),
// alice%example.com@[192.0.2.1] (the percent hack on the host's own
// address) and example.com!alice (a bang path) to alice@example.com. The
// rules below judge an address as the MTA will use it, whatever the
// spelling, erring towards "bounce" and towards "protected": a front end
// that used the raw string would let a forged bounce through.

// NullSender reports whether the MTA relays a transaction with the MAIL
// FROM address sender (angle brackets included or not) as a bounce: the
// address is empty once angle brackets, blanks, a source route and an
// empty quoted string are removed, or its local part is MAILER-DAEMON.
func NullSender(sender string) bool {
	s := stripRoute(unbracket(sender))
	if s == "" || s == `""` {
		return true
	}
	local, _ := splitAddr(s)
	return strings.EqualFold(unquote(local), "mailer-daemon")
}

// unbracket removes blanks and any number of enclosing angle brackets,
// paired or not. Postfix and Sendmail refuse unbalanced ones before a
// milter sees them; from anything else, batv errs towards reading "<" as
// the null sender and "<alice@example.com" as alice's address.
func unbracket(s string) string {
	for {
		t := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s), "<"), ">")
		if t == s {
			return s
		}
		s = t
	}
}

// stripRoute removes an RFC 5321 source route ("@a,@b:"): everything up
// to the first colon outside an address literal, when the path starts
// with "@".
func stripRoute(s string) string {
	if !strings.HasPrefix(s, "@") {
		return s
	}
	depth := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '[':
			depth++
		case ']':
			depth--
		case ':':
			if depth <= 0 {
				return strings.TrimSpace(s[i+1:])
			}
		}
	}
	return s
}

// unquote returns the content of a quoted-string local part, with its
// backslash escapes resolved; anything else is returned as it is.
func unquote(local string) string {
	if len(local) < 2 || local[0] != '"' || local[len(local)-1] != '"' {
		return local
	}
	var b strings.Builder
	in := local[1 : len(local)-1]
	for i := 0; i < len(in); i++ {
		if in[i] == '\\' && i+1 < len(in) {
			i++
		}
		b.WriteByte(in[i])
	}
	return b.String()
}

// splitPath splits a path at its last "@" outside a quoted local part;
// domain is "" without one.
func splitPath(s string) (local, domain string) {
	if strings.HasPrefix(s, `"`) {
		for i := 1; i < len(s); i++ {
			switch s[i] {
			case '\\':
				i++
			case '"':
				if j := strings.LastIndexByte(s[i:], '@'); j >= 0 {
					return s[:i+j], s[i+j+1:]
				}
				return s, ""
			}
		}
	}
	return splitAddr(s)
}

// maxResolve bounds the percent-hack and bang-path steps of mailbox.
const maxResolve = 4

// Mailbox returns the address rcpt (as the client wrote it) will be
// delivered to if one of its spellings names a protected domain, and
// whether it does. Otherwise it returns rcpt. The local part keeps its
// case (the tag's MAC covers it); the domain keeps its case but loses a
// trailing dot.
func (p *Policy) Mailbox(rcpt string) (string, bool) {
	if _, domain := splitAddr(rcpt); p.verifyDomains.has(domain) && !strings.ContainsAny(rcpt, "<\"") && !strings.HasPrefix(rcpt, "@") {
		return rcpt, true // the usual spelling
	}
	s := unbracket(rcpt)
	for strings.HasPrefix(s, "@") {
		t := stripRoute(s)
		if t == s {
			break
		}
		s = t
	}
	local, domain := splitPath(s)
	local = unquote(local)
	for range maxResolve {
		domain = strings.TrimSuffix(domain, ".")
		if p.verifyDomains.has(domain) {
			return local + "@" + domain, true
		}
		// The rest of the spellings name a mailbox elsewhere only when the
		// domain is the MTA's own; the MTA knows which domains those are,
		// batv does not: it takes them all as its own.
		switch {
		case strings.Contains(local, "@"):
			local, domain = splitAddr(local)
		case strings.Contains(local, "%"):
			i := strings.LastIndexByte(local, '%')
			local, domain = local[:i], local[i+1:]
		case strings.Contains(local, "!"):
			i := strings.IndexByte(local, '!')
			domain, local = local[:i], local[i+1:]
		default:
			return rcpt, false
		}
	}
	return rcpt, false
}
