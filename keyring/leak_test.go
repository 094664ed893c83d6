package keyring

import (
	"bytes"
	"crypto/sha256"
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
			if _, err := (File{Path: path}).Load(); err != nil {
				keyringtest.AssertNone(t, "Load error", err.Error(), secrets)
			}
			res := File{Path: path}.Check(t0)
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

// TestMisplacedSecretNotEchoed pastes a key's base64 secret into every
// other field of a key entry, and into field names, as a careless edit
// would: no error of Parse, Load or Check quotes it. The values of key
// entries are never echoed; errors name the field and what is wrong.
func TestMisplacedSecretNotEchoed(t *testing.T) {
	sum := sha256.Sum256([]byte("a secret pasted in the wrong place"))
	secret := sum[:]
	b64 := base64.StdEncoding.EncodeToString(secret)
	good := validFile
	dir := t.TempDir()
	path := filepath.Join(dir, "keyring.json")
	for _, tc := range []struct{ name, from, to string }{
		{"created", `"created": "2025-01-08T12:00:00Z"`, `"created": "` + b64 + `"`},
		{"not_before", `"not_before": "2025-01-08T13:00:00Z"`, `"not_before": "` + b64 + `"`},
		{"stopped_signing", `"stopped_signing": "2025-01-08T13:00:00Z"`, `"stopped_signing": "` + b64 + `"`},
		{"keyring created", `"created": "2025-01-01T12:00:00Z",
  "max_lifetime_days"`, `"created": "` + b64 + `",
  "max_lifetime_days"`},
		{"check", `"check": "a0a5639d1216"`, `"check": "` + b64 + `"`},
		{"id as a string", `"id": 1,`, `"id": "` + b64 + `",`},
		{"field name", `"check": "a0a5639d1216"`, `"` + b64 + `": "a0a5639d1216"`},
		{"version", `"version": 1`, `"version": "` + b64 + `"`},
		{"time before 1970", `"not_before": "2025-01-08T13:00:00Z"`, `"not_before": "1969-12-31T23:59:59Z"`},
	} {
		data := strings.Replace(good, tc.from, tc.to, 1)
		if data == good {
			t.Fatalf("%s: the test did not change the file", tc.name)
		}
		_, err := Parse([]byte(data))
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		keyringtest.AssertNone(t, tc.name+": Parse error", err.Error(), [][]byte{secret})
		os.WriteFile(path, []byte(data), 0o600)
		if _, err := (File{Path: path}).Load(); err != nil {
			keyringtest.AssertNone(t, tc.name+": Load error", err.Error(), [][]byte{secret})
		}
		res := File{Path: path}.Check(t0)
		keyringtest.AssertNone(t, tc.name+": Check problems", strings.Join(res.Problems, "\n"), [][]byte{secret})
		if tc.name == "time before 1970" && strings.Contains(err.Error(), "1969") {
			t.Errorf("%s: the value is quoted: %v", tc.name, err)
		}
	}
	// A field name that is a name is still named.
	_, err := Parse([]byte(strings.Replace(good, `"check": "a0a5639d1216"`, `"chek": "a0a5639d1216"`, 1)))
	if err == nil || !strings.Contains(err.Error(), `unknown field "chek"`) {
		t.Errorf("a misspelt field: %v", err)
	}
}
