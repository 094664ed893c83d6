package batv

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The known-answer vectors in testvectors/ come from an implementation
// other than this package; see testvectors/README.md.

type signVector struct {
	Name       string `json:"name"`
	KeyHex     string `json:"key_hex"`
	KeyID      int    `json:"key_id"`
	Date       string `json:"date"`
	Lifetime   int    `json:"lifetime"`
	Address    string `json:"address"`
	SubAddress string `json:"sub_address"`
	Expected   string `json:"expected"`
	Skip       string `json:"skip"`
}

type verifyVector struct {
	Name string `json:"name"`
	Keys []struct {
		ID     int    `json:"id"`
		KeyHex string `json:"key_hex"`
	} `json:"keys"`
	Date        string `json:"date"`
	MaxLifetime int    `json:"max_lifetime"`
	Strict      bool   `json:"strict"`
	Delimiter   string `json:"delimiter"`
	Address     string `json:"address"`
	Outcome     string `json:"outcome"`
	KeyID       int    `json:"key_id"`
	Original    string `json:"original"`
	Form        string `json:"form"`
	Match       string `json:"match"`
	Expiry      int    `json:"expiry"`
}

func loadVectors[V any](t *testing.T, name string) []V {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "testvectors", name))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Description string `json:"description"`
		Vectors     []V    `json:"vectors"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&file); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if len(file.Vectors) == 0 {
		t.Fatalf("%s: no vectors", name)
	}
	return file.Vectors
}

func vectorDate(t *testing.T, date string) time.Time {
	t.Helper()
	d, err := time.Parse(time.DateOnly, date)
	if err != nil {
		t.Fatal(err)
	}
	return d.Add(13 * time.Hour)
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// vectorKeys is a Keyring of fixed keys by id.
type vectorKeys map[int][]byte

func (k vectorKeys) SigningKey(time.Time, string) (Key, error) { panic("not used") }
func (k vectorKeys) VerificationKey(_ time.Time, id int, _ string) (Key, bool) {
	s, ok := k[id]
	return Key{ID: id, Secret: s}, ok
}

func TestSignVectors(t *testing.T) {
	for _, v := range loadVectors[signVector](t, "sign.json") {
		t.Run(v.Name, func(t *testing.T) {
			s := Signer{
				Keys:     SingleKey{ID: v.KeyID, Secret: mustHex(t, v.KeyHex)},
				Lifetime: v.Lifetime,
				Now:      fixed(vectorDate(t, v.Date)),
			}
			if v.SubAddress != "" {
				s.SubAddress = v.SubAddress[0]
			}
			got, err := s.Sign(v.Address)
			if err != nil {
				t.Fatal(err)
			}
			if got.Skip.String() != v.Skip {
				t.Fatalf("skip %q, want %q", got.Skip, v.Skip)
			}
			if v.Skip == "" && got.Address != v.Expected {
				t.Fatalf("Sign(%q) = %q, want %q", v.Address, got.Address, v.Expected)
			}
		})
	}
}

func TestVerifyVectors(t *testing.T) {
	for _, v := range loadVectors[verifyVector](t, "verify.json") {
		t.Run(v.Name, func(t *testing.T) {
			keys := vectorKeys{}
			for _, k := range v.Keys {
				keys[k.ID] = mustHex(t, k.KeyHex)
			}
			ver := Verifier{Keys: keys, MaxLifetime: v.MaxLifetime, Strict: v.Strict, Now: fixed(vectorDate(t, v.Date))}
			if v.Delimiter != "" {
				ver.Delimiter = v.Delimiter[0]
			}
			r, err := ver.Verify(v.Address)
			if err != nil {
				t.Fatal(err)
			}
			if r.Status.String() != v.Outcome || r.Match.String() != v.Match {
				t.Fatalf("Verify(%q) = %v/%v (%s), want %s/%s", v.Address, r.Status, r.Match, r.Reason, v.Outcome, v.Match)
			}
			if r.Untagged() != v.Original || r.Tag.Form.String() != v.Form {
				t.Fatalf("untagged %q form %q, want %q %q", r.Untagged(), r.Tag.Form, v.Original, v.Form)
			}
			if v.Original != "" && (r.Tag.KeyID != v.KeyID || r.Tag.Expiry != v.Expiry) {
				t.Fatalf("key %d expiry %d, want %d %d", r.Tag.KeyID, r.Tag.Expiry, v.KeyID, v.Expiry)
			}
			// VerifyTo gives what VerifyAt and VerifyIgnoringExpiryAt return,
			// whatever r held before.
			now := vectorDate(t, v.Date)
			for _, ignore := range []bool{false, true} {
				want, _ := ver.VerifyAt(v.Address, now)
				if ignore {
					want, _ = ver.VerifyIgnoringExpiryAt(v.Address, now)
				}
				got := Result{Status: Malformed, Reason: "stale", Tag: Tag{Original: "stale@example.com", KeyID: 9}, DaysLeft: 7}
				if err := ver.VerifyTo(&got, v.Address, now, ignore); err != nil || got != want {
					t.Errorf("VerifyTo(ignoreExpiry %v) = %+v, %v; want %+v", ignore, got, err, want)
				}
			}
		})
	}
}
