package keyring

import (
	"bytes"
	"encoding/base64"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/batv/batv/keyring/keyringtest"
)

// TestDamagedFileErrorsShowNoSecret damages a keyring file in every place
// and every way a disk, an editor or a careless copy would (truncation,
// a deleted byte, a replaced byte, an inserted quote), and checks that no
// error from Parse, Load or Check quotes any part of a secret, even when
// the damage is inside the secret itself.
func TestDamagedFileErrorsShowNoSecret(t *testing.T) {
	rng := rand.New(rand.NewChaCha8([32]byte{'b', 'a', 't', 'v'}))
	secrets := [][]byte{make([]byte, 32), make([]byte, 32), make([]byte, 24)}
	for _, s := range secrets {
		for i := range s {
			s[i] = byte(rng.Uint32())
		}
	}
	r, err := New(t0, &fixedReader{b: append(append([]byte{}, secrets[0]...), secrets[1]...)}, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if r, _, err = r.Rotate(t0.Add(day), 0, &fixedReader{b: secrets[1]}); err != nil {
		t.Fatal(err)
	}
	if r, err = r.Import(t0.Add(day), 5, secrets[2], ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	good, err := r.encode()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets {
		if !strings.Contains(string(good), base64.StdEncoding.EncodeToString(s)) {
			t.Fatal("the test keyring does not hold the test secrets")
		}
	}

	var variants [][]byte
	for i := range good {
		variants = append(variants, good[:i])                                             // truncated
		variants = append(variants, append(append([]byte{}, good[:i]...), good[i+1:]...)) // byte deleted
		for _, c := range []byte{'!', '"', '\\', '}', '=', 'A', 0, '\n'} {
			v := append([]byte{}, good...)
			v[i] = c
			variants = append(variants, v) // byte replaced
		}
		variants = append(variants, append(append(append([]byte{}, good[:i]...), '"'), good[i:]...)) // quote inserted
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "keyring.json")
	want := map[int][]byte{}
	for _, k := range r.keys {
		want[k.id] = k.secret
	}
	errs := 0
	for n, v := range variants {
		got, err := Parse(v)
		if err == nil {
			// Damage that leaves a file batv accepts (in white space, say)
			// must leave every secret as it was, as far as HMAC can tell:
			// the check values catch a secret damaged into other valid
			// base64. (The padding "=" replaced by "A" appends a zero
			// byte, which HMAC's zero padding of the key cannot see: the
			// same key for HMAC, its check value and every tag.)
			for _, k := range got.keys {
				if !bytes.Equal(bytes.TrimRight(k.secret, "\x00"), bytes.TrimRight(want[k.id], "\x00")) || len(k.secret) > 64 {
					t.Fatalf("variant %d loads key %d with a different secret", n, k.id)
				}
			}
			continue
		}
		errs++
		keyringtest.AssertNone(t, "Parse error", err.Error(), secrets)
		// Through the file as well, for a sample (each is a file write).
		if n%7 == 0 {
			if err := os.WriteFile(path, v, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := Load(path); err != nil {
				keyringtest.AssertNone(t, "Load error", err.Error(), secrets)
			}
			res := Check(path, t0)
			keyringtest.AssertNone(t, "Check problems", strings.Join(res.Problems, "\n"), secrets)
		}
	}
	t.Logf("%d damaged files, %d refused, none quoting a secret", len(variants), errs)
	if errs < len(variants)/2 {
		t.Errorf("only %d of %d damaged files refused", errs, len(variants))
	}
}

// fixedReader yields its bytes, then zeros.
type fixedReader struct{ b []byte }

func (f *fixedReader) Read(p []byte) (int, error) {
	n := copy(p, f.b)
	f.b = f.b[n:]
	clear(p[n:])
	return len(p), nil
}
