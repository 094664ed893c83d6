package milter

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/batv/batv/batv"
)

// Lookup tables the daemon serves to the MTA (Postfix socketmap), so that
// tagged recipients pass its recipient validation and reach the untagged
// mailbox. See docs/postfix.md for where each goes in main.cf.
const (
	// MapUntag maps a validly tagged address in a protected domain to the
	// untagged address, for recipient_canonical_maps: mail that passed
	// the milter and bounces Postfix makes itself (which skip milters)
	// reach the real mailbox.
	MapUntag = "untag"
	// MapStrip maps any well-formed tagged address in a protected domain
	// to the untagged address without checking the tag, and a tagged
	// local part to the untagged local part. It is for recipient
	// validation only (pipemap before the site's recipient table), so
	// that the untagged user must exist and the milter judges the tag at
	// RCPT with its own reply.
	MapStrip = "strip"
)

// ErrUnknownMap is returned by Lookup for a table name it does not serve.
var ErrUnknownMap = errors.New("milter: unknown lookup table")

// Lookup answers a lookup of key in table name at now: the value and true
// if found, "" and false if not.
func (p *Policy) Lookup(name, key string, now time.Time) (string, bool, error) {
	switch name {
	case MapUntag:
		_, domain := splitAddr(key)
		if !p.verifyDomains.has(domain) {
			return "", false, nil
		}
		v := p.verifier
		v.Now = func() time.Time { return now }
		r, _ := v.Verify(key)
		if r.Status != batv.Valid {
			return "", false, nil
		}
		return r.Untagged(), true, nil
	case MapStrip:
		if !strings.Contains(key, "@") {
			// A local part alone, as Postfix asks local recipient tables:
			// strip with any protected domain, the tag is not checked.
			t, err := batv.Parse(key+"@x", p.delimiter())
			if err != nil {
				return "", false, nil
			}
			return t.Local(), true, nil
		}
		_, domain := splitAddr(key)
		if !p.verifyDomains.has(domain) {
			return "", false, nil
		}
		t, err := batv.Parse(key, p.delimiter())
		if err != nil {
			return "", false, nil
		}
		return t.Original, true, nil
	}
	return "", false, fmt.Errorf("%w %q (want %s or %s)", ErrUnknownMap, name, MapUntag, MapStrip)
}

// delimiter is the sub-address delimiter tags are recognised with.
func (p *Policy) delimiter() byte {
	if p.verifier.Delimiter == 0 {
		return '+'
	}
	return p.verifier.Delimiter
}
