package keyring

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/batv/batv/batv"
)

// DefaultPath is where the batv commands and the daemon look for the
// keyring unless told otherwise.
const DefaultPath = "/var/lib/batv/keyring.json"

// Limits and defaults of a keyring.
const (
	// FormatVersion is the version of the file format this package reads
	// and writes.
	FormatVersion = 1

	// DefaultMaxLifetimeDays is the maximum tag lifetime recorded by
	// default: the signers of the site make tags that expire at most this
	// many days after the day they were made.
	DefaultMaxLifetimeDays = 7
	// MaxLifetimeDaysLimit is the largest maximum lifetime a keyring accepts.
	MaxLifetimeDaysLimit = batv.MaxLifetime

	// DefaultGrace is the grace period recorded by default: how long a key
	// keeps verifying after the last tag it made has expired, to absorb
	// clock differences between hosts and a verifier's clock-skew margin.
	DefaultGrace = 24 * time.Hour
	// MaxGrace is the longest grace period a keyring accepts.
	MaxGrace = 30 * 24 * time.Hour

	// DefaultPropagationDelay is how far ahead a staged rotation schedules
	// the new key: the time the site has to copy the file to every host.
	DefaultPropagationDelay = time.Hour

	// GeneratedKeySize is the length in bytes of the keys this package
	// generates.
	GeneratedKeySize = 32
	// MinKeySize is the shortest key length considered strong. Shorter
	// (imported) keys are accepted with a warning.
	MinKeySize = 16
	// MaxKeySize is the longest secret a keyring accepts.
	MaxKeySize = 1024

	// RetireWithinDays bounds how long any key of a keyring verifies: it
	// retires at most this many days after it starts signing. The
	// three-digit expiry day of a tag repeats every 1000 days, so a tag
	// made on day D is within its window again from day D + 1000; a key
	// that retired before then cannot accept it. The 10 days of margin
	// cover a verifier's clock-skew allowance and hosts that disagree on
	// the date. MaxSigningPeriod follows from it.
	RetireWithinDays = 990
	// SigningLimitNotice is how long before a key reaches the end of its
	// longest signing period (MaxSigningPeriod) Warnings starts saying so,
	// if no key is scheduled to follow it.
	SigningLimitNotice = 90 * 24 * time.Hour
)

// Errors returned by this package. Each error it returns wraps one of them
// (or an error of package os), with the detail after a colon.
var (
	// ErrInvalid means a keyring file or value is damaged or inconsistent:
	// not JSON, truncated, unknown or missing fields, bad values.
	ErrInvalid = errors.New("keyring: invalid keyring")
	// ErrUnsupportedVersion means the file has a format version this
	// package does not read.
	ErrUnsupportedVersion = errors.New("keyring: unsupported keyring version")
	// ErrInsecureMode means the file is not a private file: group or others
	// have some access to it.
	ErrInsecureMode = errors.New("keyring: keyring file is not private")
	// ErrExists means Create found a file already at the path.
	ErrExists = errors.New("keyring: keyring file already exists")
	// ErrLocked means another process held the lock for too long.
	ErrLocked = errors.New("keyring: keyring is locked")
	// ErrWrite means the new keyring could not be written; the old file
	// is left as it was.
	ErrWrite = errors.New("keyring: cannot write keyring")
	// ErrIDInUse means a key id cannot be given to a new key yet, because
	// tags made with the key that has it could still be valid.
	ErrIDInUse = errors.New("keyring: key id in use")
	// ErrRotationPending means a staged rotation was asked for while a
	// scheduled key has not started signing yet.
	ErrRotationPending = errors.New("keyring: a rotation is already pending")
	// ErrNoKey means the keyring has no key with the requested id.
	ErrNoKey = errors.New("keyring: no such key")
	// ErrNotPerDomain means a per-domain key was requested from a keyring
	// that does not derive per-domain keys.
	ErrNotPerDomain = errors.New("keyring: keyring does not derive per-domain keys")
	// ErrNoDomain means a per-domain keyring was asked for a key without a
	// domain.
	ErrNoDomain = errors.New("keyring: per-domain keyring needs a domain")
	// ErrInvalidOption means an argument of an operation is out of range:
	// a key id, a lifetime, a grace period, a delay or a secret.
	ErrInvalidOption = errors.New("keyring: invalid option")
)

// State is the state of a key at an instant.
type State int

// Key states.
const (
	// Pending keys will sign from their not_before time and verify already.
	Pending State = iota + 1
	// Signing is the state of the one key that signs now; it also verifies.
	Signing
	// Verifying keys no longer sign (or never did: imported keys) and
	// verify until they retire.
	Verifying
	// Retired keys verify nothing; Prune removes them and their id may be
	// given to a new key.
	Retired
)

// String returns the lower-case name of the state.
func (s State) String() string {
	switch s {
	case Pending:
		return "pending"
	case Signing:
		return "signing"
	case Verifying:
		return "verifying"
	case Retired:
		return "retired"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// KeyInfo describes one key at an instant, without its secret.
type KeyInfo struct {
	ID    int
	State State
	// Size is the length of the secret in bytes.
	Size int
	// Created is when the key was generated or imported.
	Created time.Time
	// NotBefore is when the key starts (or started) signing.
	NotBefore time.Time
	// StoppedSigning is when the key stops (or stopped) signing: the
	// stopped_signing of the file, or NotBefore + the keyring's
	// MaxSigningPeriod if that comes first or the file schedules no end.
	// A key whose StoppedSigning equals its NotBefore never signs here (an
	// imported verify-only key, or a pending key a rotation with no delay
	// superseded).
	StoppedSigning time.Time
	// Limited is true when StoppedSigning is the end of the key's longest
	// signing period rather than a stop the file schedules.
	Limited bool
	// Retires is when the key stops verifying: StoppedSigning + maximum
	// lifetime + one day + grace.
	Retires time.Time
	// Weak is true for a key shorter than MinKeySize: it never signs,
	// whatever its signing period, and only verifies.
	Weak bool
}

// Keyring is an immutable snapshot of a keyring file. It is safe for
// concurrent use and implements batv.Keyring. The zero value is not usable;
// obtain one from Load, Parse, New or a Watcher.
type Keyring struct {
	created   time.Time
	lifetime  int // maximum tag lifetime, days
	grace     time.Duration
	perDomain bool
	keys      []key // sorted by id, ids unique
	cache     *domainCache
}

var _ batv.LifetimeKeyring = (*Keyring)(nil)

// key is one stored key. The zero stopped time means "no end scheduled".
type key struct {
	id        int
	secret    []byte
	created   time.Time
	notBefore time.Time
	stopped   time.Time
}

// signs reports whether the key's signing period, as the file gives it, is
// not empty.
func (k *key) signs() bool {
	return k.stopped.IsZero() || k.notBefore.Before(k.stopped)
}

// weak reports whether the key is too short ever to sign: it may only
// verify the tags of the system it was imported from.
func (k *key) weak() bool { return len(k.secret) < MinKeySize }

// MaxSigningPeriod returns the longest time any key of the keyring signs:
// RetireWithinDays days less the time a key keeps verifying after it stops
// signing (the maximum lifetime + one day + the grace period). A key signs
// from its not_before until its stopped_signing or until not_before +
// MaxSigningPeriod, whichever comes first, so that it retires before the
// first tags it made can be valid again in the next 1000-day cycle of the
// expiry day. With the default settings it is 981 days.
func (r *Keyring) MaxSigningPeriod() time.Duration {
	return RetireWithinDays*24*time.Hour - r.verifyTail()
}

// verifyTail is how long a key keeps verifying after it stops signing.
func (r *Keyring) verifyTail() time.Duration {
	return time.Duration(r.lifetime+1)*24*time.Hour + r.grace
}

// limit returns when the key's longest signing period ends.
func (r *Keyring) limit(k *key) time.Time { return k.notBefore.Add(r.MaxSigningPeriod()) }

// stop returns when the key stops (or stopped) signing: its stopped_signing,
// or the end of its longest signing period if that comes first or the file
// schedules no end. It is never the zero time.
func (r *Keyring) stop(k *key) time.Time {
	if l := r.limit(k); k.stopped.IsZero() || l.Before(k.stopped) {
		return l
	}
	return k.stopped
}

// limited reports whether the key stops signing because of its longest
// signing period rather than a stopped_signing of its own.
func (r *Keyring) limited(k *key) bool { return !r.stop(k).Equal(k.stopped) }

// signsAt reports whether the key signs at t: it is not weak and t is in
// its signing period.
func (r *Keyring) signsAt(k *key, t time.Time) bool {
	return !k.weak() && !t.Before(k.notBefore) && t.Before(r.stop(k))
}

// retires returns when the key stops verifying.
func (r *Keyring) retires(k *key) time.Time { return r.stop(k).Add(r.verifyTail()) }

func (r *Keyring) state(k *key, now time.Time) State {
	switch {
	case !now.Before(r.retires(k)):
		return Retired
	case r.signsAt(k, now):
		return Signing
	case now.Before(k.notBefore) && k.signs() && !k.weak():
		return Pending
	default:
		return Verifying
	}
}

func (r *Keyring) find(id int) *key {
	for i := range r.keys {
		if r.keys[i].id == id {
			return &r.keys[i]
		}
	}
	return nil
}

// String describes the keyring without any secret.
func (r *Keyring) String() string {
	if r == nil {
		return "keyring(nil)"
	}
	ids := make([]int, len(r.keys))
	for i := range r.keys {
		ids[i] = r.keys[i].id
	}
	return fmt.Sprintf("keyring(keys %v, max lifetime %d days, grace %s, per-domain %t)",
		ids, r.lifetime, r.grace, r.perDomain)
}

// GoString returns the same as String, so %#v shows no secret.
func (r *Keyring) GoString() string { return r.String() }

// Created returns when the keyring was created. A daemon can use it to
// tolerate untagged bounces of mail sent before BATV was deployed.
func (r *Keyring) Created() time.Time { return r.created }

// MaxLifetimeDays returns the longest tag lifetime, in days, the site signs
// with. Signers must not use a longer lifetime: keys retire on the
// assumption that no tag outlives it.
func (r *Keyring) MaxLifetimeDays() int { return r.lifetime }

// Grace returns how long a key keeps verifying after the last tag it made
// has expired.
func (r *Keyring) Grace() time.Duration { return r.grace }

// PerDomain reports whether the keyring derives a distinct key per sender
// domain.
func (r *Keyring) PerDomain() bool { return r.perDomain }

// Keys describes every key at now, ordered by id.
func (r *Keyring) Keys(now time.Time) []KeyInfo {
	infos := make([]KeyInfo, len(r.keys))
	for i := range r.keys {
		k := &r.keys[i]
		infos[i] = KeyInfo{
			ID:             k.id,
			State:          r.state(k, now),
			Size:           len(k.secret),
			Created:        k.created,
			NotBefore:      k.notBefore,
			StoppedSigning: r.stop(k),
			Limited:        r.limited(k),
			Retires:        r.retires(k),
			Weak:           k.weak(),
		}
	}
	return infos
}

// SigningKeyID returns the id of the key that signs at now; ok is false if
// no key does.
func (r *Keyring) SigningKeyID(now time.Time) (id int, ok bool) {
	if k := r.signer(now); k != nil {
		return k.id, true
	}
	return 0, false
}

func (r *Keyring) signer(now time.Time) *key {
	for i := range r.keys {
		if r.signsAt(&r.keys[i], now) {
			return &r.keys[i]
		}
	}
	return nil
}

// NextChange returns the first instant after now at which the signing key
// changes (a key starts or stops signing, the end of its longest signing
// period included); ok is false if none is scheduled.
func (r *Keyring) NextChange(now time.Time) (t time.Time, ok bool) {
	consider := func(c time.Time) {
		if c.After(now) && (!ok || c.Before(t)) {
			t, ok = c, true
		}
	}
	for i := range r.keys {
		k := &r.keys[i]
		if !k.signs() || k.weak() {
			continue
		}
		consider(k.notBefore)
		consider(r.stop(k))
	}
	return t, ok
}

// SigningKey returns the key that signs mail from domain at now: the stored
// secret, or for a per-domain keyring the key derived for the domain. The
// error wraps batv.ErrNoSigningKey if no key signs at now, and ErrNoDomain
// if a per-domain keyring gets an empty domain.
func (r *Keyring) SigningKey(now time.Time, domain string) (batv.Key, error) {
	k := r.signer(now)
	if k == nil {
		return batv.Key{}, fmt.Errorf("%w: no key of the keyring signs at %s",
			batv.ErrNoSigningKey, now.UTC().Format(time.RFC3339))
	}
	if !r.perDomain {
		return batv.Key{ID: k.id, Secret: k.secret}, nil
	}
	if domain == "" {
		return batv.Key{}, ErrNoDomain
	}
	return batv.Key{ID: k.id, Secret: r.cache.get(k.id, k.secret, domain)}, nil
}

// VerificationKey returns the key with the given id that verifies tags for
// domain at now. Pending, signing and verifying keys verify; ok is false if
// the id has no key or its key is retired, or if a per-domain keyring gets
// an empty domain. It does not allocate when the derived key is cached.
func (r *Keyring) VerificationKey(now time.Time, id int, domain string) (batv.Key, bool) {
	k := r.find(id)
	if k == nil || r.state(k, now) == Retired {
		return batv.Key{}, false
	}
	if !r.perDomain {
		return batv.Key{ID: k.id, Secret: k.secret}, true
	}
	if domain == "" {
		return batv.Key{}, false
	}
	return batv.Key{ID: k.id, Secret: r.cache.get(k.id, k.secret, domain)}, true
}

// Export returns a copy of the secret of key id, in any state. With a
// domain, it returns the key derived for that domain instead, which only a
// per-domain keyring has (ErrNotPerDomain otherwise). This is the only way,
// besides the batv.Keyring methods, to obtain secret bytes: handle the
// result with care.
func (r *Keyring) Export(id int, domain string) ([]byte, error) {
	k := r.find(id)
	if k == nil {
		return nil, fmt.Errorf("%w: the keyring has no key %d", ErrNoKey, id)
	}
	if domain == "" {
		return slices.Clone(k.secret), nil
	}
	if !r.perDomain {
		return nil, fmt.Errorf("%w: cannot export a key for domain %q", ErrNotPerDomain, domain)
	}
	return deriveDomainKey(k.secret, asciiLower(domain)), nil
}

// Warnings returns the things about the keyring at now that are allowed
// but deserve attention: weak keys, retired keys not yet pruned, no key
// signing, signing that ends with no key to follow (from SigningLimitNotice
// before the end of a key's longest signing period), every id in use. Each
// is one sentence without secrets.
func (r *Keyring) Warnings(now time.Time) []string {
	var w []string
	if len(r.keys) == 0 {
		w = append(w, "the keyring has no keys")
	}
	for i := range r.keys {
		k := &r.keys[i]
		if k.weak() {
			w = append(w, fmt.Sprintf("key %d is only %d bytes long; keys shorter than %d bytes are weak: keep it only as long as the old system's tags need it",
				k.id, len(k.secret), MinKeySize))
			if k.signs() && now.Before(r.stop(k)) {
				w = append(w, fmt.Sprintf("key %d has a signing period until %s, but a key shorter than %d bytes never signs: it only verifies",
					k.id, formatTime(r.stop(k)), MinKeySize))
			}
		}
		if looksLikeKeyMap(k.secret) {
			w = append(w, fmt.Sprintf("key %d is the text of a batv-tools key map (lines of a sender and a key file), not a key: it was imported by mistake and verifies nothing batv-tools signed; import the key file the map names (batv keys import --id 0 FILE)",
				k.id))
		}
		if r.state(k, now) == Retired {
			w = append(w, fmt.Sprintf("key %d is retired since %s; run \"batv keys prune\" to remove it",
				k.id, formatTime(r.retires(k))))
		}
		if k.created.After(now) {
			w = append(w, fmt.Sprintf("key %d was created in the future (%s): check the clock",
				k.id, formatTime(k.created)))
		}
	}
	last := r.lastSigner()
	switch {
	case len(r.keys) == 0:
	case r.signer(now) == nil:
		if t, ok := r.NextChange(now); ok && r.signerFrom(t) {
			w = append(w, fmt.Sprintf("no key signs now; a key starts signing at %s", formatTime(t)))
		} else if last != nil && r.limited(last) && !now.Before(r.stop(last)) {
			w = append(w, fmt.Sprintf("no key signs now: key %d reached the end of its longest signing period (%s) at %s and no key follows it; add one now (batv keys rotate --now)",
				last.id, days(r.MaxSigningPeriod()), formatTime(r.stop(last))))
		} else {
			w = append(w, "no key signs now: signing mail is impossible until a key is added (batv keys rotate)")
		}
	case !r.limited(last):
		w = append(w, fmt.Sprintf("signing stops at %s and no key follows: rotate before then", formatTime(r.stop(last))))
	case !now.Before(r.stop(last).Add(-SigningLimitNotice)):
		w = append(w, fmt.Sprintf("key %d has signed since %s and stops signing at %s, %s from now, with no key to follow it: "+
			"a key signs for at most %s, so that it retires before the three-digit expiry day of its first tags comes round again "+
			"(every 1000 days); rotate before then (batv keys rotate)",
			last.id, formatTime(last.notBefore), formatTime(r.stop(last)), days(r.stop(last).Sub(now)), days(r.MaxSigningPeriod())))
	}
	if len(r.keys) == batv.MaxKeyID-batv.MinKeyID+1 {
		if _, err := r.freeID(now, 0); err != nil {
			w = append(w, "every key id is in use, so no key can be added now")
		}
	}
	return w
}

func (r *Keyring) signerFrom(t time.Time) bool { return r.signer(t) != nil }

// lastSigner returns the key whose signing period ends last, among the keys
// that can sign, or nil if none can.
func (r *Keyring) lastSigner() *key {
	var last *key
	for i := range r.keys {
		k := &r.keys[i]
		if !k.signs() || k.weak() {
			continue
		}
		if last == nil || r.stop(k).After(r.stop(last)) {
			last = k
		}
	}
	return last
}

// days formats a duration as a number of days, rounded down, with its unit.
func days(d time.Duration) string {
	n := int(d / (24 * time.Hour))
	if n == 1 {
		return "1 day"
	}
	return fmt.Sprintf("%d days", n)
}

// formatTime formats t the way the file and the messages show instants.
func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
