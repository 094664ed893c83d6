package keyring

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

func perDomainKeyring(t *testing.T) *Keyring {
	t.Helper()
	opts := DefaultOptions()
	opts.PerDomain = true
	return newTestKeyring(t, opts)
}

func TestDomainKeys(t *testing.T) {
	r := perDomainKeyring(t)
	stored, err := r.Export(0, "")
	if err != nil {
		t.Fatal(err)
	}

	sign, err := r.SigningKey(t0, "Example.COM")
	if err != nil {
		t.Fatal(err)
	}
	// The documented derivation, computed directly.
	want, err := hkdf.Key(sha256.New, stored, nil, "batv-prvs-domain-key-v1:example.com", 32)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sign.Secret, want) {
		t.Fatal("signing key differs from HKDF-SHA256(secret, info \"batv-prvs-domain-key-v1:example.com\")")
	}
	if bytes.Equal(sign.Secret, stored) {
		t.Fatal("a per-domain keyring signs with its stored secret")
	}

	// Verification uses the same rule, whatever the case.
	for _, d := range []string{"example.com", "EXAMPLE.COM", "eXaMpLe.CoM"} {
		k, ok := r.VerificationKey(t0, 0, d)
		if !ok || !bytes.Equal(k.Secret, want) {
			t.Errorf("VerificationKey(%q) differs from the signing key", d)
		}
		exp, err := r.Export(0, d)
		if err != nil || !bytes.Equal(exp, want) {
			t.Errorf("Export(0, %q) = %v", d, err)
		}
	}

	// Different domains, different keys; and only ASCII letters fold.
	seen := map[string]string{}
	for _, d := range []string{"example.com", "example.org", "mail.example.com", "example.com.", "exämple.com", "EXÄMPLE.com"} {
		k, _ := r.VerificationKey(t0, 0, d)
		if other, dup := seen[string(k.Secret)]; dup {
			t.Errorf("%q and %q derive the same key", d, other)
		}
		seen[string(k.Secret)] = d
	}

	// Keys of different ids differ for one domain.
	r2, _, err := r.Rotate(t0.Add(day), 0, &countingReader{next: 77})
	if err != nil {
		t.Fatal(err)
	}
	k0, _ := r2.VerificationKey(t0.Add(day), 0, "example.com")
	k1, _ := r2.SigningKey(t0.Add(day), "example.com")
	if k1.ID != 1 || bytes.Equal(k0.Secret, k1.Secret) {
		t.Error("keys 0 and 1 derive the same domain key")
	}

	if _, err := r.SigningKey(t0, ""); !errors.Is(err, ErrNoDomain) {
		t.Errorf("SigningKey with no domain: err %v", err)
	}
	if _, ok := r.VerificationKey(t0, 0, ""); ok {
		t.Error("VerificationKey with no domain succeeded")
	}
}

func TestNotPerDomain(t *testing.T) {
	r := newTestKeyring(t, DefaultOptions())
	stored, _ := r.Export(0, "")
	for _, d := range []string{"example.com", "other.example", ""} {
		k, err := r.SigningKey(t0, d)
		if err != nil || !bytes.Equal(k.Secret, stored) {
			t.Errorf("SigningKey(%q): %v", d, err)
		}
	}
	if _, err := r.Export(0, "example.com"); !errors.Is(err, ErrNotPerDomain) {
		t.Errorf("Export with a domain: err %v", err)
	}
	if _, err := r.Export(5, ""); !errors.Is(err, ErrNoKey) {
		t.Errorf("Export of a missing key: err %v", err)
	}
	// Export returns a copy.
	stored[0] ^= 0xff
	if again, _ := r.Export(0, ""); again[0] == stored[0] {
		t.Error("Export returned the keyring's own slice")
	}
}

func TestDomainCacheBound(t *testing.T) {
	r := perDomainKeyring(t)
	stored, _ := r.Export(0, "")
	n := domainCacheLimit + 100
	for i := range n {
		d := fmt.Sprintf("d%d.example", i)
		k, ok := r.VerificationKey(t0, 0, d)
		if !ok || !bytes.Equal(k.Secret, deriveDomainKey(stored, d)) {
			t.Fatalf("domain %d: wrong key", i)
		}
	}
	if got := r.cache.len(); got != domainCacheLimit {
		t.Errorf("cache holds %d keys, want the limit %d", got, domainCacheLimit)
	}
	// Beyond the limit keys are still right, just not stored.
	k, _ := r.SigningKey(t0, "late.example")
	if !bytes.Equal(k.Secret, deriveDomainKey(stored, "late.example")) || r.cache.len() != domainCacheLimit {
		t.Error("uncached derivation wrong, or the cache grew")
	}
}

func TestDomainCacheConcurrent(t *testing.T) {
	r := perDomainKeyring(t)
	stored, _ := r.Export(0, "")
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				d := fmt.Sprintf("d%d.Example", (i*7+g)%50)
				k, ok := r.VerificationKey(t0, 0, d)
				if !ok || !bytes.Equal(k.Secret, deriveDomainKey(stored, asciiLower(d))) {
					t.Errorf("goroutine %d: wrong key for %s", g, d)
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := r.cache.len(); got != 50 {
		t.Errorf("cache holds %d keys, want 50", got)
	}
}

// TestVerificationKeyAllocs: the hot path does not allocate once a
// lower-case domain's key is cached.
func TestVerificationKeyAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts")
	}
	r := perDomainKeyring(t)
	now := t0.Add(time.Hour)
	r.VerificationKey(now, 0, "example.com")
	if n := testing.AllocsPerRun(100, func() { r.VerificationKey(now, 0, "example.com") }); n != 0 {
		t.Errorf("VerificationKey allocates %.0f times per call on a cached domain", n)
	}
	if n := testing.AllocsPerRun(100, func() { r.SigningKey(now, "example.com") }); n != 0 {
		t.Errorf("SigningKey allocates %.0f times per call on a cached domain", n)
	}
	plain := newTestKeyring(t, DefaultOptions())
	if n := testing.AllocsPerRun(100, func() { plain.VerificationKey(now, 0, "example.com") }); n != 0 {
		t.Errorf("VerificationKey allocates %.0f times per call without derivation", n)
	}
}

func TestASCIILower(t *testing.T) {
	for in, want := range map[string]string{
		"": "", "example.com": "example.com", "Example.COM": "example.com",
		"ÄB.example": "Äb.example", "xn--BCHER-KVA.example": "xn--bcher-kva.example",
	} {
		if got := asciiLower(in); got != want {
			t.Errorf("asciiLower(%q) = %q, want %q", in, got, want)
		}
	}
}
