package batv

import (
	"errors"
	"fmt"
	"strings"
)

// Errors returned by Parse. They are wrapped with the detail of what is
// wrong; test them with errors.Is.
var (
	// ErrNotTagged means the address carries no prvs tag in any form.
	ErrNotTagged = errors.New("batv: address is not tagged")
	// ErrMalformed means the address starts like a tag but its shape is wrong.
	ErrMalformed = errors.New("batv: malformed tag")
)

// Form is the spelling of a tagged address.
type Form uint8

// The forms of a tagged address. Only FormStandard is produced unless the
// signer is asked for the sub-address form; FormDraft00 is only recognised.
const (
	// FormStandard is prvs=KDDDSSSSSS=loc-core@domain.
	FormStandard Form = iota + 1
	// FormDraft00 is prvs=loc-core/KDDDSSSSSS@domain, the order of
	// draft-levine-mass-batv-00 and Exim 4.52-4.67.
	FormDraft00
	// FormSubAddress is loc-core+prvs=KDDDSSSSSS@domain, with a
	// configurable delimiter in place of "+".
	FormSubAddress
)

// String returns "standard", "draft00" or "subaddress" ("" for the zero Form).
func (f Form) String() string {
	switch f {
	case FormStandard:
		return "standard"
	case FormDraft00:
		return "draft00"
	case FormSubAddress:
		return "subaddress"
	}
	return ""
}

const (
	tagType   = "prvs="
	tagValLen = 10                           // KDDDSSSSSS
	prefixLen = len(tagType) + tagValLen + 1 // "prvs=KDDDSSSSSS=" and "+prvs=KDDDSSSSSS"

	// MaxLocalPart is the RFC 5321 limit on a local part, in octets.
	MaxLocalPart = 64
)

// Tag is a parsed tagged address. Parse fills it; String formats it back in
// its form, always with lowercase "prvs" and hex digits.
type Tag struct {
	Form      Form
	Delimiter byte    // the sub-address delimiter, for FormSubAddress
	KeyID     int     // K, 0-9
	Expiry    int     // DDD, the expiry day number modulo 1000
	MAC       [3]byte // SSSSSS, decoded
	// Original is the untagged address loc-core@domain, exactly as it
	// appears in the tagged one: the bytes the MAC covers after K and DDD.
	Original string
	// At is the index of the "@" in Original.
	At int
}

// Local returns the original local part (loc-core).
func (t Tag) Local() string { return t.Original[:t.At] }

// Domain returns the domain.
func (t Tag) Domain() string { return t.Original[t.At+1:] }

// String formats the tagged address in its form.
func (t Tag) String() string {
	var val [tagValLen]byte
	t.putVal(val[:])
	switch t.Form {
	case FormDraft00:
		return tagType + t.Local() + "/" + string(val[:]) + "@" + t.Domain()
	case FormSubAddress:
		return t.Local() + string(t.Delimiter) + tagType + string(val[:]) + "@" + t.Domain()
	}
	return tagType + string(val[:]) + "=" + t.Original
}

// putVal writes KDDDSSSSSS into dst, which must hold tagValLen bytes.
func (t Tag) putVal(dst []byte) {
	putKDDD(dst, t.KeyID, t.Expiry)
	const hexdigits = "0123456789abcdef"
	for i, b := range t.MAC {
		dst[4+2*i] = hexdigits[b>>4]
		dst[5+2*i] = hexdigits[b&0x0f]
	}
}

// putKDDD writes the four ASCII characters K and DDD into dst.
func putKDDD(dst []byte, id, expiry int) {
	dst[0] = byte('0' + id)
	dst[1] = byte('0' + expiry/100)
	dst[2] = byte('0' + expiry/10%10)
	dst[3] = byte('0' + expiry%10)
}

// Parse parses a tagged envelope address (without angle brackets) in any of
// the three forms. delim is the sub-address delimiter to recognise, or 0 to
// recognise only the prvs= forms. The tag is located by position, never by
// searching for "=" (VERP and SRS local parts contain "="). Upper-case
// "PRVS=" and hex digits are accepted.
//
// The error wraps ErrNotTagged or ErrMalformed.
func Parse(addr string, delim byte) (Tag, error) {
	t, st, reason := parse(addr, delim)
	switch st {
	case Missing:
		return Tag{}, ErrNotTagged
	case Malformed:
		return Tag{}, fmt.Errorf("%w: %s", ErrMalformed, reason)
	}
	return t, nil
}

// parse is Parse without allocation on success: the status is Valid, Missing
// or Malformed, with a static reason for Malformed.
func parse(addr string, delim byte) (Tag, Status, string) {
	var t Tag
	st, reason := parseTo(&t, addr, delim)
	return t, st, reason
}

// parseTo is parse with the tag written to t, which is zero, and left zero
// unless the status is Valid.
func parseTo(t *Tag, addr string, delim byte) (Status, string) {
	at := strings.LastIndexByte(addr, '@')
	local := addr
	if at >= 0 {
		local = addr[:at]
	}
	if hasPrefixFold(local, tagType) {
		if at < 0 {
			return Malformed, "no @domain"
		}
		if at == len(addr)-1 {
			return Malformed, "empty domain"
		}
		// Standard form: the value sits at a fixed position.
		if len(local) >= prefixLen && local[prefixLen-1] == '=' {
			if len(local) == prefixLen {
				return Malformed, "empty local part after the tag"
			}
			if reason := parseVal(t, local[len(tagType):prefixLen-1]); reason != "" {
				return Malformed, reason
			}
			t.Form = FormStandard
			t.Original = addr[prefixLen:]
			t.At = at - prefixLen
			return Valid, ""
		}
		// Draft-00 form: prvs=loc-core/KDDDSSSSSS.
		if n := len(local); n >= len(tagType)+1+1+tagValLen && local[n-tagValLen-1] == '/' {
			if reason := parseVal(t, local[n-tagValLen:]); reason != "" {
				return Malformed, reason
			}
			t.Form = FormDraft00
			core := local[len(tagType) : n-tagValLen-1]
			t.Original = core + addr[at:]
			t.At = len(core)
			return Valid, ""
		}
		if len(local) < prefixLen {
			return Malformed, "tag too short"
		}
		return Malformed, "no \"=\" after the tag value"
	}
	// Sub-address form: loc-core<delim>prvs=KDDDSSSSSS.
	n := len(local)
	if delim != 0 && at > 0 && n >= prefixLen && local[n-prefixLen] == delim &&
		hasPrefixFold(local[n-prefixLen+1:], tagType) {
		if n == prefixLen {
			return Malformed, "empty local part before the tag"
		}
		if at == len(addr)-1 {
			return Malformed, "empty domain"
		}
		if reason := parseVal(t, local[n-tagValLen:]); reason != "" {
			return Malformed, reason
		}
		t.Form = FormSubAddress
		t.Delimiter = delim
		core := local[:n-prefixLen]
		t.Original = core + addr[at:]
		t.At = len(core)
		return Valid, ""
	}
	return Missing, ""
}

// parseVal parses KDDDSSSSSS into t; it returns a non-empty reason, and
// leaves t zero, if malformed.
func parseVal(t *Tag, v string) string {
	for i := range 4 {
		if v[i] < '0' || v[i] > '9' {
			if i == 0 {
				return "key id is not a digit"
			}
			return "expiry is not three digits"
		}
	}
	var mac [3]byte
	for i := range mac {
		hi, ok1 := unhex(v[4+2*i])
		lo, ok2 := unhex(v[5+2*i])
		if !ok1 || !ok2 {
			return "signature is not six hex digits"
		}
		mac[i] = hi<<4 | lo
	}
	t.KeyID = int(v[0] - '0')
	t.Expiry = int(v[1]-'0')*100 + int(v[2]-'0')*10 + int(v[3]-'0')
	t.MAC = mac
	return ""
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// hasPrefixFold reports whether s begins with the lowercase ASCII prefix,
// ignoring ASCII case only (strings.EqualFold would also fold some
// non-ASCII letters).
func hasPrefixFold(s, prefix string) bool {
	if len(s) < len(prefix) {
		return false
	}
	for i := range len(prefix) {
		if lowerASCII(s[i]) != prefix[i] {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
