package keyring

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/batv/batv/batv"
)

// Options are the settings of a new keyring. Start from DefaultOptions.
type Options struct {
	// MaxLifetimeDays is the longest tag lifetime the site signs with,
	// from 1 to MaxLifetimeDaysLimit.
	MaxLifetimeDays int
	// Grace is how long a key keeps verifying after its last tag has
	// expired, from 0 to MaxGrace, in whole seconds.
	Grace time.Duration
	// PerDomain makes the keyring derive a distinct key per sender domain.
	PerDomain bool
	// FirstID is the id of the first key, 0 to 9. Choose another id than
	// the one an old system used if its keys will be imported.
	FirstID int
}

// DefaultOptions returns the default settings: 7 days, 24 hours of grace,
// no per-domain keys, first key id 0.
func DefaultOptions() Options {
	return Options{MaxLifetimeDays: DefaultMaxLifetimeDays, Grace: DefaultGrace}
}

func (opts Options) validate() error {
	if opts.MaxLifetimeDays < 1 || opts.MaxLifetimeDays > MaxLifetimeDaysLimit {
		return fmt.Errorf("%w: maximum lifetime %d days is not from 1 to %d", ErrInvalidOption, opts.MaxLifetimeDays, MaxLifetimeDaysLimit)
	}
	if opts.Grace < 0 || opts.Grace > MaxGrace || opts.Grace%time.Second != 0 {
		return fmt.Errorf("%w: grace %s is not a whole number of seconds from 0 to %s", ErrInvalidOption, opts.Grace, MaxGrace)
	}
	return checkID(opts.FirstID)
}

// ImportOptions say how an imported key is used.
type ImportOptions struct {
	// Sign makes the imported key the signing key from now on, as a
	// rotation with no delay would; the secret must then be at least
	// MinKeySize bytes. By default an imported key only verifies.
	Sign bool
	// Until is when the old system stopped, or will stop, signing with
	// the key; a verify-only imported key verifies until Until + maximum
	// lifetime + one day + grace. The zero value means now. It must be
	// zero when Sign is set.
	Until time.Time
}

// New returns a keyring with one key, of GeneratedKeySize bytes read from
// rand, that signs from now.
func New(now time.Time, rand io.Reader, opts Options) (*Keyring, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	now = instant(now)
	secret, err := generate(rand)
	if err != nil {
		return nil, err
	}
	r := &Keyring{
		created:   now,
		lifetime:  opts.MaxLifetimeDays,
		grace:     opts.Grace,
		perDomain: opts.PerDomain,
		keys:      []key{{id: opts.FirstID, secret: secret, created: now, notBefore: now}},
	}
	return r.checked()
}

// Rotate returns a copy of the keyring with a new key, of GeneratedKeySize
// bytes read from rand, that verifies at once and signs from now + delay;
// the key signing until then stops at that instant. With a delay of zero
// the new key signs at once and a pending key, if any, is superseded
// before it ever signs (it still verifies, in case a host signed with it).
// With a positive delay, a pending key is an error wrapping
// ErrRotationPending.
//
// The new key takes the first id after the newest key's whose previous key
// is retired; if every id is still in use the error wraps ErrIDInUse and
// says when one becomes free.
func (r *Keyring) Rotate(now time.Time, delay time.Duration, rand io.Reader) (*Keyring, int, error) {
	if delay < 0 {
		return nil, 0, fmt.Errorf("%w: negative delay %s", ErrInvalidOption, delay)
	}
	now = instant(now)
	if delay > 0 {
		if p := r.pending(now); p != nil {
			return nil, 0, fmt.Errorf("%w: key %d starts signing at %s; rotate again after that, or rotate with no delay to replace it now",
				ErrRotationPending, p.id, formatTime(p.notBefore))
		}
	}
	start := 0
	if n := r.newest(); n != nil {
		start = n.id + 1
	}
	id, err := r.freeID(now, start)
	if err != nil {
		return nil, 0, err
	}
	secret, err := generate(rand)
	if err != nil {
		return nil, 0, err
	}
	nr := r.with(key{id: id, secret: secret, created: now, notBefore: now.Add(delay)})
	nr, err = nr.checked()
	if err != nil {
		return nil, 0, err
	}
	return nr, id, nil
}

// Prune returns a copy of the keyring without the keys retired at now, and
// their ids. It returns r itself if no key is retired.
func (r *Keyring) Prune(now time.Time) (*Keyring, []int) {
	var removed []int
	var keep []key
	for i := range r.keys {
		if r.state(&r.keys[i], now) == Retired {
			removed = append(removed, r.keys[i].id)
		} else {
			keep = append(keep, r.keys[i])
		}
	}
	if len(removed) == 0 {
		return r, nil
	}
	nr := r.copyWithKeys(keep)
	return nr, removed
}

// Import returns a copy of the keyring with secret as key id, a key made by
// another system (batv-tools, Exim) whose tags must keep verifying. The
// secret is kept byte for byte. By default the key only verifies, as a key
// that stopped signing at opts.Until (or now); with opts.Sign it becomes
// the signing key now. A secret shorter than MinKeySize may only verify
// (see Warnings): with opts.Sign it is refused. The id must be free, or its
// key retired (ErrIDInUse otherwise, saying when it will be).
func (r *Keyring) Import(now time.Time, id int, secret []byte, opts ImportOptions) (*Keyring, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	if len(secret) == 0 || len(secret) > MaxKeySize {
		return nil, fmt.Errorf("%w: the secret is %d bytes; it must be 1 to %d", ErrInvalidOption, len(secret), MaxKeySize)
	}
	if opts.Sign && !opts.Until.IsZero() {
		return nil, fmt.Errorf("%w: an imported key cannot both sign now and have stopped signing", ErrInvalidOption)
	}
	if looksLikeKeyMap(secret) {
		return nil, fmt.Errorf("%w: the secret is the text of a batv-tools key map (lines of a sender and a key file), not a key: import the key files it names",
			ErrInvalidOption)
	}
	if opts.Sign && len(secret) < MinKeySize {
		return nil, fmt.Errorf("%w: the secret is %d bytes; a key shorter than %d bytes may be imported to verify the old system's tags, never to sign",
			ErrInvalidOption, len(secret), MinKeySize)
	}
	now = instant(now)
	if k := r.find(id); k != nil && r.state(k, now) != Retired {
		return nil, r.inUse(k, now)
	}
	k := key{id: id, secret: slices.Clone(secret), created: now, notBefore: now}
	if !opts.Sign {
		until := now
		if !opts.Until.IsZero() {
			until = instant(opts.Until)
		}
		k.notBefore, k.stopped = until, until
		if retires := r.retires(&k); !now.Before(retires) {
			return nil, fmt.Errorf("%w: a key that stopped signing at %s retired at %s; tags made with it can no longer be valid",
				ErrInvalidOption, formatTime(until), formatTime(retires))
		}
	}
	return r.with(k).checked()
}

// with returns a copy of the keyring where k replaces any key with its id
// and, if k signs, ends every other signing period at k's not_before.
func (r *Keyring) with(k key) *Keyring {
	keys := make([]key, 0, len(r.keys)+1)
	for _, o := range r.keys {
		if o.id == k.id {
			continue
		}
		if k.signs() && o.signs() && r.stop(&o).After(k.notBefore) {
			if o.notBefore.Before(k.notBefore) {
				o.stopped = k.notBefore
			} else {
				// Scheduled at or after the new key: superseded before
				// it signed. It keeps verifying until it retires.
				o.stopped = o.notBefore
			}
		}
		keys = append(keys, o)
	}
	return r.copyWithKeys(append(keys, k))
}

func (r *Keyring) copyWithKeys(keys []key) *Keyring {
	nr := &Keyring{
		created:   r.created,
		lifetime:  r.lifetime,
		grace:     r.grace,
		perDomain: r.perDomain,
		keys:      keys,
	}
	nr.finish()
	return nr
}

// checked validates a keyring built by a mutation, as Parse would.
func (r *Keyring) checked() (*Keyring, error) {
	if problems := r.consistency(); len(problems) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrInvalidOption, strings.Join(problems, "; "))
	}
	r.finish()
	return r, nil
}

// pending returns a key scheduled to sign after now, or nil.
func (r *Keyring) pending(now time.Time) *key {
	for i := range r.keys {
		if k := &r.keys[i]; r.state(k, now) == Pending {
			return k
		}
	}
	return nil
}

// newest returns the key whose signing period starts last, or nil if no
// key signs or will.
func (r *Keyring) newest() *key {
	var n *key
	for i := range r.keys {
		if k := &r.keys[i]; k.signs() && (n == nil || k.notBefore.After(n.notBefore)) {
			n = k
		}
	}
	return n
}

// freeID returns the first id, from start upwards and wrapping from 9 to
// 0, that has no key or a retired one.
func (r *Keyring) freeID(now time.Time, start int) (int, error) {
	const n = batv.MaxKeyID - batv.MinKeyID + 1
	var soonest *key
	for i := range n {
		id := batv.MinKeyID + (start-batv.MinKeyID+i)%n
		k := r.find(id)
		if k == nil || r.state(k, now) == Retired {
			return id, nil
		}
		if soonest == nil || r.retires(k).Before(r.retires(soonest)) {
			soonest = k
		}
	}
	return 0, fmt.Errorf("%w: all ten key ids are in use; the first to become free is %d, at %s, when tags made with its key can no longer be valid",
		ErrIDInUse, soonest.id, formatTime(r.retires(soonest)))
}

// inUse explains why k's id cannot be reused at now.
func (r *Keyring) inUse(k *key, now time.Time) error {
	if st := r.state(k, now); st == Signing || st == Pending {
		return fmt.Errorf("%w: key %d is %s; rotate it out first, then its id can be reused %d days + %s after it stops signing",
			ErrIDInUse, k.id, st, r.lifetime+1, r.grace)
	}
	return fmt.Errorf("%w: key %d is %s until %s; its id can be reused from then, when tags made with it can no longer be valid",
		ErrIDInUse, k.id, r.state(k, now), formatTime(r.retires(k)))
}

func checkID(id int) error {
	if id < batv.MinKeyID || id > batv.MaxKeyID {
		return fmt.Errorf("%w: key id %d is not a digit from %d to %d", ErrInvalidOption, id, batv.MinKeyID, batv.MaxKeyID)
	}
	return nil
}

// instant normalises a time for the file: UTC, whole seconds, no
// monotonic reading.
func instant(t time.Time) time.Time { return t.UTC().Truncate(time.Second) }

func generate(rand io.Reader) ([]byte, error) {
	b := make([]byte, GeneratedKeySize)
	if _, err := io.ReadFull(rand, b); err != nil {
		return nil, fmt.Errorf("keyring: generate a key: %w", err)
	}
	return b, nil
}
