// Package batv implements the prvs tag of Bounce Address Tag Validation
// (draft-levine-smtp-batv-01): it signs envelope senders and verifies the
// tagged recipients of bounces. It is pure: no I/O, no global state, only
// the standard library. Keys come from a Keyring and the time from a Now
// function, both supplied by the caller.
//
// A tagged address has the form
//
//	prvs=KDDDSSSSSS=loc-core@domain
//
// where K is the key id (0-9), DDD the low three digits of the UTC day
// number (days since 1970-01-01) on which the tag expires, and SSSSSS the
// first three bytes, in hex, of HMAC-SHA1(key, K || DDD || loc-core@domain).
// Tags are byte-compatible with Exim's ${prvs}, batv-tools and Halon for
// the same key.
//
// # Safe use
//
//   - Keys are at least 16 random bytes from crypto/rand (32 is a good
//     size). Key and SingleKey print their id only, never the secret; keep
//     it that way in your own logs and errors.
//   - Sign only senders in domains whose inbound mail you verify, and only
//     mail your own users send: a tag says "we sent this".
//   - Verify recipients of null-sender mail (bounces). The MAC is 24 bits:
//     an attacker has a 1 in 2^24 chance per guess (2 in 2^24 with the
//     case-folded attempt), and any genuine tag can be replayed until it
//     expires. BATV limits backscatter; it does not authenticate people.
//   - MACs are compared in constant time (crypto/hmac.Equal), and a
//     verification does the same work whichever bytes of a MAC match.
//
// # Where this package departs from or adds to the draft
//
//   - Expiry window: a tag is within its window iff
//     (DDD - today) mod 1000 is between 0 and the longest lifetime the site
//     signs with (Verifier.MaxLifetime). The expiry day is the tag's last
//     valid day. Exim and Halon accept any DDD from today to the end of the
//     1000-day cycle, so they accept a captured tag again for most of each
//     later cycle; this package accepts it on L + 1 days of each cycle only.
//   - No verifier can refuse it on those days: three digits cannot tell one
//     1000-day cycle from the next, so a tag made on day D is within its
//     window again from day D + 1000 (a tag of 2026-12-02 verifies as valid
//     on 2029-08-28 if its key still does). What stops the replay is the
//     key: it must retire before its first tags come round again. Package
//     keyring does that by default (a key signs for at most about 980 days
//     and retires within 990 days of starting to sign); a Keyring of your
//     own must do the same, and SingleKey, which never retires, must not be
//     used for longer than that.
//   - Case: the MAC covers the address exactly as given. Because some MTAs
//     change case in transit, verification also accepts a MAC over the
//     ASCII-lowercased address, unless Verifier.Strict is set; Result.Match
//     says which form matched.
//   - Older spellings are recognised when verifying and never produced:
//     prvs=loc-core/KDDDSSSSSS@domain (draft -00, Exim 4.52-4.67). The
//     sub-address form loc-core+prvs=KDDDSSSSSS@domain (configurable
//     delimiter) is recognised, and produced only if Signer.SubAddress is
//     set. The MAC input is the same in every form.
//   - "PRVS=" and upper-case hex are accepted; tags are written lowercase.
//   - Senders that are already tagged (any tag-type=tag-val=rest local
//     part, as the draft asks), SRS addresses, quoted-string local parts
//     (prvs=TAG="quoted" is not a valid RFC 5321 local part) and local
//     parts that would exceed 64 octets once tagged are left unsigned and
//     reported as a Skip, not an error.
//   - Keys longer than 64 bytes are hashed first, as RFC 2104 says (Exim
//     refuses them; batv-tools hashes them).
//   - Verifier.ClockSkew, off by default, accepts tags that are within
//     their window a little before or after now, for hosts that disagree
//     about the date near midnight.
package batv
