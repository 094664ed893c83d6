package keyring

import (
	"bytes"
	"testing"
	"time"
)

// FuzzParse checks that Parse never panics, and that whatever it accepts
// encodes to a file that parses to the same keyring and encodes the same
// way again. Seeds are in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(validFile))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse(data)
		if err != nil {
			if r != nil {
				t.Fatal("Parse returned a keyring and an error")
			}
			return
		}
		enc, err := r.encode()
		if err != nil {
			t.Fatalf("a parsed keyring does not encode: %v", err)
		}
		r2, err := Parse(enc)
		if err != nil {
			t.Fatalf("the encoding of a parsed keyring does not parse: %v\n%s", err, enc)
		}
		enc2, err := r2.encode()
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding is not stable:\n%s\n%s", enc, enc2)
		}
		if r.PerDomain() != r2.PerDomain() || r.Grace() != r2.Grace() ||
			r.MaxLifetimeDays() != r2.MaxLifetimeDays() || !r.Created().Equal(r2.Created()) {
			t.Fatal("settings differ after a round trip")
		}
		// Same keys and states at instants around every key's times.
		for _, k := range r.Keys(r.Created()) {
			for _, at := range []time.Time{k.NotBefore, k.StoppedSigning, k.Retires, k.Created} {
				if at.IsZero() {
					continue
				}
				if !equalInfos(r.Keys(at), r2.Keys(at)) {
					t.Fatalf("keys differ at %s after a round trip", at)
				}
				for id := 0; id <= 9; id++ {
					a, okA := r.VerificationKey(at, id, "Example.com")
					b, okB := r2.VerificationKey(at, id, "example.COM")
					if okA != okB || !bytes.Equal(a.Secret, b.Secret) {
						t.Fatalf("key %d verifies differently at %s", id, at)
					}
				}
				r.SigningKey(at, "example.com")
				r.NextChange(at)
				r.Warnings(at)
			}
		}
	})
}
