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
	// TableStrip maps any well-formed tagged address in a protected
	// domain to the untagged address without checking the tag, and a
	// tagged local part to the untagged local part. It is for recipient
	// validation only (pipemap before the site's recipient table), so that
	// the untagged user must exist and the milter judges the tag at RCPT
	// with its own reply.
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
		_, domain := splitAddr(key)
		if !p.verifyDomains.has(domain) {
			return "", false
		}
		v := p.verifier
		v.Now = func() time.Time { return now }
		r, _ := v.Verify(key)
		if r.Status != batv.Valid {
			return "", false
		}
		return r.Untagged(), true
	case TableStrip:
		if !strings.Contains(key, "@") {
			// A local part alone, as Postfix asks local recipient tables:
			// strip with any protected domain, the tag is not checked.
			tg, err := batv.Parse(key+"@x", p.delimiter())
			if err != nil {
				return "", false
			}
			return tg.Local(), true
		}
		_, domain := splitAddr(key)
		if !p.verifyDomains.has(domain) {
			return "", false
		}
		tg, err := batv.Parse(key, p.delimiter())
		if err != nil {
			return "", false
		}
		return tg.Original, true
	}
	return "", false
}

// delimiter is the sub-address delimiter tags are recognised with.
func (p *Policy) delimiter() byte {
	if p.verifier.Delimiter == 0 {
		return '+'
	}
	return p.verifier.Delimiter
}
