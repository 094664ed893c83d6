// Package tagtest makes tags for tests: signed ones and forged ones.
package tagtest

import (
	"testing"
	"time"

	"github.com/batv/batv/batv"
)

// Sign signs addr with keys as on at, and fails the test if it cannot.
func Sign(t testing.TB, keys batv.Keyring, addr string, at time.Time) string {
	t.Helper()
	s := batv.Signer{Keys: keys, Now: func() time.Time { return at }}
	r, err := s.Sign(addr)
	if err != nil || r.Skip != batv.NotSkipped {
		t.Fatalf("sign %q: %v %v", addr, r.Skip, err)
	}
	return r.Address
}

// Forge changes the last hex digit of the MAC of a tag in the standard
// form, so that it no longer verifies.
func Forge(tagged string) string {
	b := []byte(tagged)
	if b[14] == '0' {
		b[14] = '1'
	} else {
		b[14] = '0'
	}
	return string(b)
}
