package batv

import (
	"fmt"
	"strings"
	"time"
)

// Lifetimes, in days. A tag signed on day D expires at the end of day
// D + lifetime.
const (
	DefaultLifetime = 7
	MinLifetime     = 1
	MaxLifetime     = 30
)

// Skip says why a Signer left an address unsigned. Skips are ordinary
// outcomes, not errors: the mail goes out with the address unchanged.
type Skip uint8

// The reasons for leaving an address unsigned, checked in this order.
const (
	NotSkipped Skip = iota
	// SkipNullSender: the null sender <> is never signed.
	SkipNullSender
	// SkipMalformedAddress: no "@", an empty local part or domain, or a
	// control character or space in an unquoted local part.
	SkipMalformedAddress
	// SkipQuoted: a quoted-string local part. prvs=TAG="quoted" is not a
	// valid RFC 5321 local part, so such senders are not signed.
	SkipQuoted
	// SkipSRS: an SRS0= or SRS1= forwarding address.
	SkipSRS
	// SkipTagged: already tagged (prvs in any form, or any other
	// tag-type=tag-val=rest local part, as the draft asks).
	SkipTagged
	// SkipTooLong: the tagged local part would exceed 64 octets.
	SkipTooLong
)

var skipNames = [...]string{
	NotSkipped:           "",
	SkipNullSender:       "null-sender",
	SkipMalformedAddress: "malformed-address",
	SkipQuoted:           "quoted",
	SkipSRS:              "srs",
	SkipTagged:           "tagged",
	SkipTooLong:          "too-long",
}

// String returns the reason as a word for logs and metrics ("too-long"),
// or "" for NotSkipped.
func (s Skip) String() string {
	if int(s) < len(skipNames) {
		return skipNames[s]
	}
	return fmt.Sprintf("skip(%d)", uint8(s))
}

// Signer signs envelope sender addresses. The zero value is not usable:
// set Keys. A Signer is safe for concurrent use if its Keys is.
type Signer struct {
	// Keys supplies the signing key.
	Keys Keyring
	// Lifetime is the number of days a tag stays valid after the day it
	// was made, MinLifetime..MaxLifetime; 0 means DefaultLifetime.
	Lifetime int
	// SubAddress, if not 0, is the delimiter of the sub-address form
	// loc-core<SubAddress>prvs=KDDDSSSSSS@domain, for sites whose MTA
	// can only route user+detail. 0 signs in the standard form.
	SubAddress byte
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// Signed is the result of signing one address.
type Signed struct {
	// Address is the tagged address, or the input unchanged if skipped.
	Address string
	// Skip is NotSkipped if the address was signed.
	Skip Skip
	// KeyID and Expiry are the K and DDD of the tag, if signed.
	KeyID  int
	Expiry int
}

// Sign tags addr, an envelope sender without angle brackets, at the
// time the Now field gives. The MAC covers the address bytes exactly as
// given. An address that must not be signed comes back unchanged with a
// Skip reason; the error is for misuse (no signing key, invalid Lifetime or
// SubAddress) and wraps ErrNoSigningKey, ErrInvalidKey, ErrInvalidLifetime
// or ErrInvalidDelimiter.
func (s *Signer) Sign(addr string) (Signed, error) {
	return s.sign(addr, time.Time{}, false)
}

// SignAt is Sign at the instant now, for a caller that already holds the
// time (one reading per message, say); the Now field is not used.
func (s *Signer) SignAt(addr string, now time.Time) (Signed, error) {
	return s.sign(addr, now, true)
}

// sign is Sign at now if haveNow, else at the Now field's time, read only
// once the address is known to need a signature.
func (s *Signer) sign(addr string, now time.Time, haveNow bool) (Signed, error) {
	lifetime, err := checkLifetime(s.Lifetime)
	if err != nil {
		return Signed{}, err
	}
	if s.SubAddress != 0 && !ValidDelimiter(s.SubAddress) {
		return Signed{}, fmt.Errorf("%w: %q", ErrInvalidDelimiter, s.SubAddress)
	}
	if skip := s.skip(addr); skip != NotSkipped {
		return Signed{Address: addr, Skip: skip}, nil
	}
	at := strings.LastIndexByte(addr, '@')
	if !haveNow {
		now = timeNow(s.Now)
	}
	key, err := s.Keys.SigningKey(now, addr[at+1:])
	if err != nil {
		return Signed{}, err
	}
	if err := key.validate(); err != nil {
		return Signed{}, err
	}
	t := Tag{
		KeyID:    key.ID,
		Expiry:   dayMod1000(dayNumber(now) + int64(lifetime)),
		Original: addr,
		At:       at,
	}
	var kddd [4]byte
	putKDDD(kddd[:], t.KeyID, t.Expiry)
	t.MAC = tagMAC(key.Secret, kddd, addr, false)
	return Signed{Address: t.format(s.SubAddress), KeyID: t.KeyID, Expiry: t.Expiry}, nil
}

// Validate reports what would make every Sign fail, so that a program can
// refuse its configuration at start rather than at the first message: no
// Keys, an invalid Lifetime or SubAddress, or a Lifetime longer than Keys
// keeps its keys for, when Keys is a LifetimeKeyring (see CheckLifetime).
// Sign does not repeat the keyring check.
func (s *Signer) Validate() error {
	return validate("signer", s.Keys, s.Lifetime, s.SubAddress)
}

// validate is Signer.Validate and Verifier.Validate: delim 0 is none.
func validate(who string, keys Keyring, lifetime int, delim byte) error {
	if keys == nil {
		return fmt.Errorf("%w: the %s has no Keys", ErrNoKeyring, who)
	}
	days, err := checkLifetime(lifetime)
	if err != nil {
		return err
	}
	if delim != 0 && !ValidDelimiter(delim) {
		return fmt.Errorf("%w: %q", ErrInvalidDelimiter, delim)
	}
	return CheckLifetime(keys, days)
}

// format builds the signed address in one allocation.
func (t Tag) format(delim byte) string {
	var b strings.Builder
	b.Grow(prefixLen + len(t.Original))
	var val [tagValLen]byte
	t.putVal(val[:])
	if delim == 0 {
		b.WriteString(tagType)
		b.Write(val[:])
		b.WriteByte('=')
		b.WriteString(t.Original)
	} else {
		b.WriteString(t.Local())
		b.WriteByte(delim)
		b.WriteString(tagType)
		b.Write(val[:])
		b.WriteString(t.Original[t.At:])
	}
	return b.String()
}

// skip returns why addr must not be signed, or NotSkipped.
func (s *Signer) skip(addr string) Skip {
	if addr == "" {
		return SkipNullSender
	}
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return SkipMalformedAddress
	}
	local := addr[:at]
	if local[0] == '"' {
		return SkipQuoted
	}
	for i := 0; i < len(local); i++ {
		if c := local[i]; c <= ' ' || c == 0x7f {
			return SkipMalformedAddress
		}
	}
	if hasPrefixFold(local, "srs0=") || hasPrefixFold(local, "srs1=") {
		return SkipSRS
	}
	if hasTagShape(local) || isTagged(addr, '+') || (s.SubAddress != 0 && isTagged(addr, s.SubAddress)) {
		return SkipTagged
	}
	if len(local)+prefixLen > MaxLocalPart {
		return SkipTooLong
	}
	return NotSkipped
}

// isTagged reports whether addr parses as a tag, well-formed or not.
func isTagged(addr string, delim byte) bool {
	_, st, _ := parse(addr, delim)
	return st != Missing
}

// hasTagShape reports whether local has the draft's general shape
// tag-type=tag-val=rest: letters and digits, "=", at least one octet other
// than "=", "=", and at least one more octet.
func hasTagShape(local string) bool {
	i := 0
	for i < len(local) && isAlnum(local[i]) {
		i++
	}
	if i == 0 || i == len(local) || local[i] != '=' {
		return false
	}
	rest := local[i+1:]
	j := strings.IndexByte(rest, '=')
	return j > 0 && j < len(rest)-1
}

func isAlnum(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

// ValidDelimiter reports whether c can separate loc-core from the tag in
// the sub-address form: a printable atext character that is not a letter,
// digit, "=" or "/" (those would make the tag ambiguous).
func ValidDelimiter(c byte) bool {
	return strings.IndexByte("+-_.!#$%&'*?^`{|}~", c) >= 0
}

func checkLifetime(days int) (int, error) {
	if days == 0 {
		return DefaultLifetime, nil
	}
	if days < MinLifetime || days > MaxLifetime {
		return 0, fmt.Errorf("%w: %d days (allowed %d to %d)", ErrInvalidLifetime, days, MinLifetime, MaxLifetime)
	}
	return days, nil
}

// dayNumber returns floor(unix seconds / 86400): UTC days since 1970-01-01.
func dayNumber(t time.Time) int64 {
	s := t.Unix()
	d := s / 86400
	if s%86400 < 0 {
		d--
	}
	return d
}

// dayMod1000 returns day modulo 1000 in 0..999, also for days before 1970.
func dayMod1000(day int64) int {
	return int((day%1000 + 1000) % 1000)
}

func timeNow(now func() time.Time) time.Time {
	if now == nil {
		return time.Now()
	}
	return now()
}
