package batv

import (
	"crypto/hmac"
	"crypto/sha1"
)

// macInputMax is the longest MAC input computed in stack buffers: K, DDD
// and an address of up to 508 octets, well above the 256-octet RFC 5321
// path limit. Longer inputs (never valid mail) take the allocating path.
const macInputMax = 512

// tagMAC returns the first three bytes of HMAC-SHA1(key, kddd || original),
// with original's local part and domain ASCII-lowercased if fold is set.
//
// It is RFC 2104 HMAC computed with crypto/sha1.Sum on stack buffers, so
// that verification allocates nothing; TestTagMACMatchesCryptoHMAC checks
// it against crypto/hmac for every key and message length that matters.
func tagMAC(key []byte, kddd [4]byte, original string, fold bool) [3]byte {
	const block = sha1.BlockSize
	if len(kddd)+len(original) > macInputMax {
		return tagMACSlow(key, kddd, original, fold)
	}
	var k [block]byte
	if len(key) > block {
		sum := sha1.Sum(key)
		copy(k[:], sum[:])
	} else {
		copy(k[:], key)
	}

	var inner [block + macInputMax]byte
	for i := range block {
		inner[i] = k[i] ^ 0x36
	}
	n := block + copy(inner[block:], kddd[:])
	n += copy(inner[n:], original)
	if fold {
		lowerASCIIBytes(inner[block+len(kddd) : n])
	}
	innerSum := sha1.Sum(inner[:n])

	var outer [block + sha1.Size]byte
	for i := range block {
		outer[i] = k[i] ^ 0x5c
	}
	copy(outer[block:], innerSum[:])
	sum := sha1.Sum(outer[:])
	return [3]byte{sum[0], sum[1], sum[2]}
}

// tagMACSlow is tagMAC through crypto/hmac, for oversized inputs.
func tagMACSlow(key []byte, kddd [4]byte, original string, fold bool) [3]byte {
	msg := append(kddd[:], original...)
	if fold {
		lowerASCIIBytes(msg[len(kddd):])
	}
	h := hmac.New(sha1.New, key)
	h.Write(msg)
	sum := h.Sum(nil)
	return [3]byte{sum[0], sum[1], sum[2]}
}

// macEqual compares two MACs in constant time.
func macEqual(a, b [3]byte) bool {
	return hmac.Equal(a[:], b[:])
}

func lowerASCIIBytes(b []byte) {
	for i, c := range b {
		b[i] = lowerASCII(c)
	}
}
