package policy

import (
	"strings"
	"time"

	"github.com/batv/batv/batv"
)

// Table is a lookup table the daemon serves to the MTA (Postfix
// socketmap), so that tagged recipients pass its recipient validation and
// reach the untagged mailbox. See docs/postfix.md for where each goes in
// main.cf.
type Table uint8

// The tables.
const (
	// TableUntag maps a validly tagged address in a protected domain to
	// the untagged address, for recipient_canonical_maps: mail that
	// passed the milter and bounces Postfix makes itself (which skip
	// milters) reach the real mailbox.
	TableUntag Table = iota + 1
	// TableStrip maps a tagged address in a protected domain whose tag is
	// well formed and names a key of the keyring to the untagged address,
	// and such a tagged local part to the untagged local part. It is for
	// recipient validation (pipemap before the site's recipient table), so
	// that a tagged address is a recipient exactly when its untagged
	// address is. It does not check the MAC: smtpd asks in lower case,
	// and the MAC covers the case the sender's address had. The milter or
	// the policy service checks it at RCPT, on the address as the client
	// wrote it, and refuses a tag that does not verify.
	TableStrip
)

// Tables are every table, for documentation and metrics.
var Tables = []Table{TableUntag, TableStrip}

// String returns the table's name as Postfix asks for it ("untag").
func (t Table) String() string {
	switch t {
	case TableUntag:
		return "untag"
	case TableStrip:
		return "strip"
	}
	return "unknown"
}

// ParseTable returns the table of a name, or false.
func ParseTable(name string) (Table, bool) {
	for _, t := range Tables {
		if name == t.String() {
			return t, true
		}
	}
	return 0, false
}

// Lookup answers a lookup of key in table t at now: the value and true if
// found, "" and false if not.
func (p *Policy) Lookup(t Table, key string, now time.Time) (string, bool) {
	switch t {
	case TableUntag:
		if _, domain := splitAddr(key); !p.verifyDomains.has(domain) {
			return "", false
		}
		r, _ := p.verifier.VerifyAt(key, now)
		if r.Status != batv.Valid {
			return "", false
		}
		return r.Untagged(), true
	case TableStrip:
		if !strings.Contains(key, "@") {
			// A local part alone, as Postfix asks local recipient tables:
			// its tag must name a key for one of the protected domains.
			for _, d := range p.verifyDomains.list {
				if r := p.stripped(key+"@"+d, now); r != "" {
					return r[:len(r)-len(d)-1], true
				}
			}
			return "", false
		}
		if _, domain := splitAddr(key); !p.verifyDomains.has(domain) {
			return "", false
		}
		if r := p.stripped(key, now); r != "" {
			return r, true
		}
	}
	return "", false
}

// stripped is the untagged address of addr if its tag is well formed and
// names a key of the keyring, whatever its MAC and expiry; "" if not.
func (p *Policy) stripped(addr string, now time.Time) string {
	r, _ := p.noExpiry.VerifyIgnoringExpiryAt(addr, now)
	switch r.Status {
	case batv.Valid, batv.BadSignature:
		return r.Untagged()
	}
	return ""
}
