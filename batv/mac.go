package batv

import (
	"crypto/hmac"
	"crypto/sha1"
)

// tagMAC returns the first three bytes of HMAC-SHA1(key, kddd || original),
// with original's local part and domain ASCII-lowercased if fold is set.
//
// It is RFC 2104 HMAC written out over one SHA-1 digest, which stays on the
// stack: verification allocates nothing, and no buffer of the address's
// size is needed, so that a milter session's goroutine does not outgrow
// its 4 KiB (the depths measured are in docs/performance.md, Stacks).
// TestTagMACMatchesCryptoHMAC checks it against crypto/hmac for every key
// and message length that matters.
func tagMAC(key []byte, kddd [4]byte, original string, fold bool) [3]byte {
	var pad [sha1.BlockSize]byte
	keyPad(&pad, key, 0x36)
	h := sha1.New()
	h.Write(pad[:])
	h.Write(kddd[:])
	// The address goes in through pad, which the hash has consumed, a
	// block at a time, folded if asked.
	for rest := original; rest != ""; {
		n := copy(pad[:], rest)
		if fold {
			lowerASCIIBytes(pad[:n])
		}
		h.Write(pad[:n])
		rest = rest[n:]
	}
	var sum [sha1.Size]byte
	h.Sum(sum[:0])
	keyPad(&pad, key, 0x5c)
	h.Reset()
	h.Write(pad[:])
	h.Write(sum[:])
	h.Sum(sum[:0])
	return [3]byte{sum[0], sum[1], sum[2]}
}

// keyPad sets pad to HMAC's key block XORed with x: the key, or its SHA-1
// if it is longer than a block, padded with zeros.
func keyPad(pad *[sha1.BlockSize]byte, key []byte, x byte) {
	clear(pad[:])
	if len(key) > len(pad) {
		sum := sha1.Sum(key)
		copy(pad[:], sum[:])
	} else {
		copy(pad[:], key)
	}
	for i := range pad {
		pad[i] ^= x
	}
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
