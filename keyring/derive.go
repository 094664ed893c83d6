package keyring

import (
	"crypto/hkdf"
	"crypto/sha256"
	"strings"
	"sync"
)

// domainKeyInfo is the HKDF info prefix for per-domain keys; the
// ASCII-lowercased domain follows it. The version label changes if the
// derivation ever does.
const domainKeyInfo = "batv-prvs-domain-key-v1:"

// domainKeySize is the length of a derived key.
const domainKeySize = 32

// domainCacheLimit bounds the number of derived keys a snapshot keeps.
// Beyond it keys are derived on every call and not stored.
const domainCacheLimit = 4096

// deriveDomainKey derives the key for an already lower-cased domain.
func deriveDomainKey(secret []byte, domain string) []byte {
	k, err := hkdf.Key(sha256.New, secret, nil, domainKeyInfo+domain, domainKeySize)
	if err != nil {
		// hkdf.Key fails only for a length beyond 255 hash sizes.
		panic("keyring: HKDF: " + err.Error())
	}
	return k
}

// asciiLower lower-cases the ASCII letters of s, returning s itself (no
// allocation) when it has none.
func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			return lowerFrom(s, i)
		}
	}
	return s
}

func lowerFrom(s string, i int) string {
	b := []byte(s)
	for ; i < len(b); i++ {
		if c := b[i]; 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// domainCache holds the derived keys of one snapshot, by key id and
// lower-cased domain. The keys of a snapshot never change, so entries never
// go stale; the cache dies with the snapshot.
type domainCache struct {
	mu sync.RWMutex
	m  map[domainCacheKey][]byte
}

type domainCacheKey struct {
	id     int
	domain string
}

func newDomainCache() *domainCache {
	return &domainCache{m: make(map[domainCacheKey][]byte)}
}

// get returns the key derived from secret (the secret of key id) for
// domain, from the cache when it is there.
func (c *domainCache) get(id int, secret []byte, domain string) []byte {
	domain = asciiLower(domain)
	ck := domainCacheKey{id, domain}
	c.mu.RLock()
	v, ok := c.m[ck]
	full := len(c.m) >= domainCacheLimit
	c.mu.RUnlock()
	if ok {
		return v
	}
	v = deriveDomainKey(secret, domain)
	if full {
		return v
	}
	// Own copy of the domain: the caller's string may share memory with a
	// much larger buffer.
	ck.domain = strings.Clone(domain)
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.m[ck]; ok {
		return old
	}
	if len(c.m) < domainCacheLimit {
		c.m[ck] = v
	}
	return v
}

// len returns the number of cached keys.
func (c *domainCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
