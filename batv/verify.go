package batv

import (
	"fmt"
	"time"
)

// Status is the outcome of verifying an address. The zero Status is not
// an outcome, so a zero Result never reads as valid.
type Status uint8

// The verification outcomes, in the order the checks run: shape, key,
// window, MAC.
const (
	// Valid: well-formed, key known, within the window, MAC matches.
	Valid Status = iota + 1
	// Missing: the address has no tag.
	Missing
	// Malformed: it starts like a tag but the shape is wrong.
	Malformed
	// UnknownKey: the key id has no key (never issued, or retired).
	UnknownKey
	// Expired: the expiry day is outside the window.
	Expired
	// BadSignature: the MAC does not match.
	BadSignature
)

var statusNames = [...]string{
	Valid:        "valid",
	Missing:      "missing",
	Malformed:    "malformed",
	UnknownKey:   "unknown-key",
	Expired:      "expired",
	BadSignature: "bad-signature",
}

// String returns the outcome word used in logs, metrics, headers and
// documentation: "valid", "missing", "malformed", "unknown-key", "expired"
// or "bad-signature".
func (s Status) String() string {
	if s != 0 && int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// Match says which form of the address the MAC matched.
type Match uint8

const (
	// MatchNone: no MAC matched (the result is not Valid).
	MatchNone Match = iota
	// MatchExact: the MAC covers the address exactly as received.
	MatchExact
	// MatchFolded: the MAC covers the address with its local part and
	// domain lowercased (ASCII); the case changed in transit. Strict
	// verification never reports it.
	MatchFolded
)

// String returns "exact", "folded" or "".
func (m Match) String() string {
	switch m {
	case MatchExact:
		return "exact"
	case MatchFolded:
		return "folded"
	}
	return ""
}

// Result is the outcome of verifying one address.
type Result struct {
	Status Status
	// Reason is a short static explanation for logs when the status is
	// Malformed, UnknownKey, Expired or BadSignature.
	Reason string
	// Tag is the parsed tag: set for every status but Missing and
	// Malformed. Tag.Original is the untagged address, Tag.KeyID the key
	// id and Tag.Expiry the expiry day number modulo 1000.
	Tag Tag
	// Match is the form the MAC matched, for Valid.
	Match Match
	// DaysLeft is the number of whole days after today that the tag stays
	// valid (0 on its last day) when it is within the window; a negative
	// number is how many days ago it expired, reading an out-of-window
	// expiry as past. Set whenever Tag is.
	DaysLeft int
}

// Untagged returns the address without its tag if the address parsed as a
// tag, and "" otherwise.
func (r Result) Untagged() string { return r.Tag.Original }

// Verifier checks tagged recipient addresses. The zero value is not
// usable: set Keys. A Verifier is safe for concurrent use if its Keys is.
type Verifier struct {
	// Keys supplies the verification keys by id.
	Keys Keyring
	// MaxLifetime is the longest lifetime, in days, that this site signs
	// with: the window is today to today+MaxLifetime. 0 means
	// DefaultLifetime.
	MaxLifetime int
	// Strict disables the second MAC attempt over the lowercased address.
	Strict bool
	// ClockSkew, if positive, also accepts a tag that is within its window
	// at now-ClockSkew or now+ClockSkew, for sites whose signing and
	// verifying hosts may disagree about the date near midnight. Off by
	// default.
	ClockSkew time.Duration
	// Delimiter is the sub-address delimiter to recognise; 0 means "+".
	Delimiter byte
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// Verify checks addr, an envelope recipient without angle brackets, at the
// time the Now field gives, and says whether it carries a valid tag. Every
// outcome is a Result; the error is for misuse only (invalid MaxLifetime or
// Delimiter). Verify does not allocate for a standard-form address, and
// reads the clock only for an address that carries a tag.
func (v *Verifier) Verify(addr string) (r Result, err error) {
	err = v.verifyTo(&r, addr, time.Time{}, false, true)
	return r, err
}

// VerifyAt is Verify at the instant now, for a caller that already holds
// the time (one reading per message, say); the Now field is not used.
func (v *Verifier) VerifyAt(addr string, now time.Time) (r Result, err error) {
	err = v.verifyTo(&r, addr, now, true, true)
	return r, err
}

// VerifyIgnoringExpiry is Verify without the window check: Valid means the
// tag is well-formed, its key known and its MAC correct, whatever its
// expiry day; DaysLeft is negative if it has expired. It suits mail that is
// not a bounce (a reply to the Return-Path, an auto-reply), whose tag only
// needs to be removed before delivery.
func (v *Verifier) VerifyIgnoringExpiry(addr string) (r Result, err error) {
	err = v.verifyTo(&r, addr, time.Time{}, false, false)
	return r, err
}

// VerifyIgnoringExpiryAt is VerifyIgnoringExpiry at the instant now.
func (v *Verifier) VerifyIgnoringExpiryAt(addr string, now time.Time) (r Result, err error) {
	err = v.verifyTo(&r, addr, now, true, false)
	return r, err
}

// VerifyTo is VerifyAt, or VerifyIgnoringExpiryAt if ignoreExpiry, with
// the result written to r rather than returned: a Result is about 100
// bytes, and a caller that keeps its results in place (a milter session,
// whose goroutine should keep a small stack) saves a copy in each frame.
func (v *Verifier) VerifyTo(r *Result, addr string, now time.Time, ignoreExpiry bool) error {
	*r = Result{}
	return v.verifyTo(r, addr, now, true, !ignoreExpiry)
}

// Validate reports what would make every Verify fail, so that a program
// can refuse its configuration at start: no Keys, an invalid MaxLifetime or
// Delimiter, or a MaxLifetime longer than Keys keeps its keys for, when
// Keys is a LifetimeKeyring (see CheckLifetime). Verify does not repeat the
// keyring check.
func (v *Verifier) Validate() error {
	return validate("verifier", v.Keys, v.MaxLifetime, v.Delimiter)
}

// verifyTo verifies addr into r, which is zero, at now if haveNow, else
// at the Now field's time, read only once the address is known to carry a
// tag. It writes to the caller's Result rather than return one, so that
// the frames under a verification stay small (see tagMAC).
func (v *Verifier) verifyTo(r *Result, addr string, now time.Time, haveNow, checkWindow bool) error {
	maxLife, err := checkLifetime(v.MaxLifetime)
	if err != nil {
		return err
	}
	delim := v.Delimiter
	if delim == 0 {
		delim = '+'
	} else if !ValidDelimiter(delim) {
		return fmt.Errorf("%w: %q", ErrInvalidDelimiter, delim)
	}
	if r.Status, r.Reason = parseTo(&r.Tag, addr, delim); r.Status != Valid {
		return nil
	}
	if !haveNow {
		now = timeNow(v.Now)
	}
	r.DaysLeft = daysLeft(r.Tag.Expiry, now, maxLife)
	key, ok := v.Keys.VerificationKey(now, r.Tag.KeyID, r.Tag.Domain())
	switch {
	case !ok || key.validate() != nil:
		r.Status, r.Reason = UnknownKey, "no key with this id"
	case checkWindow && !v.inWindow(r.Tag.Expiry, now, maxLife):
		r.Status, r.Reason = Expired, "expiry day outside the window"
	default:
		var kddd [4]byte
		putKDDD(kddd[:], r.Tag.KeyID, r.Tag.Expiry)
		switch {
		case macEqual(tagMAC(key.Secret, kddd, r.Tag.Original, false), r.Tag.MAC):
			r.Match = MatchExact
		case !v.Strict && hasUpperASCII(r.Tag.Original) &&
			macEqual(tagMAC(key.Secret, kddd, r.Tag.Original, true), r.Tag.MAC):
			r.Match = MatchFolded
		default:
			r.Status, r.Reason = BadSignature, "signature does not match"
		}
	}
	return nil
}

func (v *Verifier) inWindow(expiry int, now time.Time, maxLife int) bool {
	if daysLeft(expiry, now, maxLife) >= 0 {
		return true
	}
	return v.ClockSkew > 0 &&
		(daysLeft(expiry, now.Add(-v.ClockSkew), maxLife) >= 0 ||
			daysLeft(expiry, now.Add(v.ClockSkew), maxLife) >= 0)
}

// daysLeft applies the draft's window rule: d = (DDD - today) mod 1000 is
// within the window iff 0 <= d <= maxLife. It returns d when within the
// window and d-1000 (the expiry read as past) otherwise.
func daysLeft(expiry int, now time.Time, maxLife int) int {
	d := (expiry - dayMod1000(dayNumber(now)) + 1000) % 1000
	if d <= maxLife {
		return d
	}
	return d - 1000
}

func hasUpperASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}
