package batv

import (
	"crypto/hmac"
	"crypto/sha1"
	"testing"
)

// The benchmarks sign and verify the same address, so their cost can be
// set against BenchmarkHMACSHA1Floor: one HMAC-SHA1 over the same message
// bytes, the work no implementation can avoid.
const benchAddr = "john.doe@example.com"

func BenchmarkSign(b *testing.B) {
	s := Signer{Keys: testKey, Now: fixed(testDay)}
	b.ReportAllocs()
	for b.Loop() {
		if r, err := s.Sign(benchAddr); err != nil || r.Skip != NotSkipped {
			b.Fatal(r, err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	s := Signer{Keys: testKey, Now: fixed(testDay)}
	signed, _ := s.Sign(benchAddr)
	v := Verifier{Keys: testKey, Now: fixed(testDay)}
	b.ReportAllocs()
	for b.Loop() {
		if r, err := v.Verify(signed.Address); err != nil || r.Status != Valid {
			b.Fatal(r, err)
		}
	}
}

// BenchmarkVerifyAt is Verify with the time passed in, as a caller that
// reads the clock once per message does.
func BenchmarkVerifyAt(b *testing.B) {
	s := Signer{Keys: testKey}
	signed, _ := s.SignAt(benchAddr, testDay)
	v := Verifier{Keys: testKey}
	b.ReportAllocs()
	for b.Loop() {
		if r, err := v.VerifyAt(signed.Address, testDay); err != nil || r.Status != Valid {
			b.Fatal(r, err)
		}
	}
}

// BenchmarkVerifyBadSignature is the cost of a forged bounce in non-strict
// mode: two MAC computations when the address has upper-case letters.
func BenchmarkVerifyBadSignature(b *testing.B) {
	v := Verifier{Keys: testKey, Now: fixed(testDay)}
	forged := "prvs=3792000000=John.Doe@example.com"
	b.ReportAllocs()
	for b.Loop() {
		if r, _ := v.Verify(forged); r.Status != BadSignature {
			b.Fatal(r)
		}
	}
}

// BenchmarkHMACSHA1Floor computes one HMAC-SHA1 over the message a tag of
// benchAddr covers (K, DDD and the address), with crypto/hmac.
func BenchmarkHMACSHA1Floor(b *testing.B) {
	msg := []byte("3792" + benchAddr)
	var sum [sha1.Size]byte
	b.ReportAllocs()
	for b.Loop() {
		h := hmac.New(sha1.New, testKey.Secret)
		h.Write(msg)
		h.Sum(sum[:0])
	}
}

// BenchmarkHMACSHA1FloorReused is the same HMAC with the key schedule
// computed once and the hash reset between messages: cheaper than any
// one-shot HMAC, shown for comparison.
func BenchmarkHMACSHA1FloorReused(b *testing.B) {
	msg := []byte("3792" + benchAddr)
	var sum [sha1.Size]byte
	h := hmac.New(sha1.New, testKey.Secret)
	b.ReportAllocs()
	for b.Loop() {
		h.Reset()
		h.Write(msg)
		h.Sum(sum[:0])
	}
}
