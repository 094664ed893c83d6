package batv

import (
	"errors"
	"fmt"
	"time"
)

// MinKeyID and MaxKeyID bound the key id, the single decimal digit K of a tag.
const (
	MinKeyID = 0
	MaxKeyID = 9
)

// Key is one BATV secret and the id that selects it. Its String and
// GoString methods print the id only, so a Key passed to a logger or a
// formatted error never shows the secret bytes.
type Key struct {
	ID     int
	Secret []byte
}

// String returns "key N" and never the secret.
func (k Key) String() string { return fmt.Sprintf("key %d", k.ID) }

// GoString returns the same as String, so %#v does not print the secret.
func (k Key) GoString() string { return k.String() }

// Keyring is what the package needs from a key store: the key that signs for
// a sender domain at an instant, and the key that verifies a given id for a
// domain at an instant. Implementations must be safe for concurrent use and
// must not retain or modify the slices they return. The domain is passed as
// it appears in the address; a keyring that derives a key per domain does
// its own case folding.
type Keyring interface {
	// SigningKey returns the key that signs mail from domain at now, or an
	// error wrapping ErrNoSigningKey if none does.
	SigningKey(now time.Time, domain string) (Key, error)
	// VerificationKey returns the key with the given id that verifies tags
	// for domain at now; ok is false if the id has no key (never issued, or
	// retired).
	VerificationKey(now time.Time, id int, domain string) (key Key, ok bool)
}

// LifetimeKeyring is a Keyring that retires keys on the assumption that no
// tag outlives a maximum lifetime: once a key stops signing it keeps
// verifying for MaxLifetimeDays days (and a margin), then no longer. A
// signer or verifier that uses a longer lifetime with it would see genuine
// tags become unknown-key before they expire. Package keyring's Keyring and
// Watcher implement it.
type LifetimeKeyring interface {
	Keyring
	// MaxLifetimeDays returns the longest tag lifetime, in days, that the
	// keyring keeps keys for.
	MaxLifetimeDays() int
}

// CheckLifetime reports whether tags of lifetime days can be used with
// keys: if keys is a LifetimeKeyring whose MaxLifetimeDays is shorter, the
// error wraps ErrInvalidLifetime and says both numbers. Any other Keyring
// (SingleKey, say) never retires keys and passes. Signer.Validate and
// Verifier.Validate call it; a program that builds its signer and verifier
// from a configuration calls them once, at start and at each reload.
func CheckLifetime(keys Keyring, lifetime int) error {
	lk, ok := keys.(LifetimeKeyring)
	if !ok {
		return nil
	}
	if max := lk.MaxLifetimeDays(); lifetime > max {
		return fmt.Errorf("%w: tags of %d days outlive the keyring's keys, which it keeps for tags of at most %d days (its maximum lifetime)",
			ErrInvalidLifetime, lifetime, max)
	}
	return nil
}

// Errors for misuse of the package. Verification and signing outcomes are
// results, not errors: see Status and Skip.
var (
	// ErrNoSigningKey means the keyring has no key that signs now.
	ErrNoSigningKey = errors.New("batv: no signing key")
	// ErrNoKeyring means a Signer or Verifier has no Keys.
	ErrNoKeyring = errors.New("batv: no keyring")
	// ErrInvalidKey means a key is unusable: id outside 0-9 or empty secret.
	ErrInvalidKey = errors.New("batv: invalid key")
	// ErrInvalidLifetime means a lifetime outside MinLifetime..MaxLifetime.
	ErrInvalidLifetime = errors.New("batv: invalid lifetime")
	// ErrInvalidDelimiter means a sub-address delimiter that cannot be used.
	ErrInvalidDelimiter = errors.New("batv: invalid sub-address delimiter")
)

// SingleKey is a Keyring holding one key that signs and verifies at any
// instant and for every domain. It suits the command line (a key file and an
// id) and tests; a daemon uses a rotating keyring such as package keyring.
type SingleKey Key

// SigningKey returns the key, or an error if it is unusable.
func (s SingleKey) SigningKey(time.Time, string) (Key, error) {
	if err := Key(s).validate(); err != nil {
		return Key{}, err
	}
	return Key(s), nil
}

// VerificationKey returns the key if id is its id.
func (s SingleKey) VerificationKey(_ time.Time, id int, _ string) (Key, bool) {
	if id != s.ID || Key(s).validate() != nil {
		return Key{}, false
	}
	return Key(s), true
}

// String returns "key N" and never the secret.
func (s SingleKey) String() string { return Key(s).String() }

// GoString returns the same as String.
func (s SingleKey) GoString() string { return Key(s).String() }

func (k Key) validate() error {
	if k.ID < MinKeyID || k.ID > MaxKeyID {
		return fmt.Errorf("%w: key id %d is not a digit 0-9", ErrInvalidKey, k.ID)
	}
	if len(k.Secret) == 0 {
		return fmt.Errorf("%w: key %d has an empty secret", ErrInvalidKey, k.ID)
	}
	return nil
}
