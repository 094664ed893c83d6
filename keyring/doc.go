// Package keyring stores the BATV keys of a site in one versioned JSON file
// and rotates them without ever rejecting a genuine bounce.
//
// A keyring holds up to ten keys, one per key id 0-9 (the digit K of a prvs
// tag). Each key has a signing period [not_before, stopped_signing): at any
// instant at most one key signs, and a key that signed within the last
// maximum lifetime + one day + grace still verifies. After that it is
// retired, verifies nothing, and its id may be given to a new key. A key
// scheduled to sign later (pending) verifies at once, which is what makes
// staged rotation safe on a fleet: every host that loads the new file can
// verify the new key before any host signs with it.
//
// No key signs for longer than Keyring.MaxSigningPeriod (981 days with the
// default settings), so that every key retires within RetireWithinDays (990)
// days of starting to sign: the three-digit expiry day of a tag repeats
// every 1000 days, and a key that still verified then would accept its
// first tags again. Warnings says so from SigningLimitNotice (90 days)
// before a key reaches the limit with no key to follow it. A key shorter
// than MinKeySize (16 bytes), which only an import can bring, never signs.
//
// The file format, the key states and the operating procedures are
// documented in docs/keyring.md.
//
// # Snapshots and the file
//
// A *Keyring is an immutable snapshot, safe for concurrent use, that
// implements batv.Keyring and batv.LifetimeKeyring. Parse validates bytes
// without touching the file system. The mutating methods (Rotate, Prune,
// Import) are pure: they take the instant and the randomness as arguments
// and return a new snapshot.
//
// A File is the keyring file: its Load reads and validates it (refusing one
// that group or others can access, or that is not a regular file), Check
// reports every problem at once, and Create, Rotate, Prune and Import apply
// the pure methods to the file under a lock file beside it and replace it
// atomically, through a symbolic link if Path is one.
//
// A daemon keeps the current snapshot in a Watcher, which reloads the file
// when it changes and keeps the old snapshot if the new file is unusable.
// A Watcher is a batv.Keyring too, always using the current snapshot.
//
// # Per-domain keys
//
// A keyring created with per-domain derivation never signs with its stored
// secrets directly. For a sender domain D the key with id N is
//
//	HKDF-SHA256(secret = stored secret N, salt = none,
//	            info = "batv-prvs-domain-key-v1:" + ASCII-lowercase(D),
//	            length = 32 bytes)
//
// so the key for one domain can be handed to a partner system without
// giving it the keys of the other domains. The domain is used as given apart
// from ASCII case folding: an internationalised domain must be presented in
// one form (A-labels or U-labels) consistently.
//
// # Secrets
//
// No function of this package puts key bytes in an error or a string
// representation: errors name the file, the key id, the field and what is
// wrong, and never quote a value of a key entry (a secret pasted into the
// wrong field would show). The only ways to obtain secret bytes are
// SigningKey, VerificationKey and Export.
package keyring
