package keyring

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestParseKeyMap(t *testing.T) {
	for _, tc := range []struct {
		name, data string
		want       string // entries as "line:sender=file;...", or "" if not a key map
	}{
		{"one domain", "@example.com /etc/batv-key\n", "1:@example.com=/etc/batv-key"},
		{"the sample file", "# Sample batv-keys.conf file.\n\n@example.com\t\t/etc/batv-key.example.com\n" +
			"andrew@example.com\t/etc/batv-key.andrew\nbob@example.com\t/dev/null\n",
			"3:@example.com=/etc/batv-key.example.com;4:andrew@example.com=/etc/batv-key.andrew;5:bob@example.com=/dev/null"},
		{"no final newline, CRLF", "@a.example /k a\r\n@b.example  /k b", "1:@a.example=/k a;2:@b.example=/k b"},
		{"comments only", "# nothing\n\n", ""},
		{"no @", "example.com /etc/batv-key\n", ""},
		{"no file", "@example.com\n", ""},
		{"a passphrase", "correct horse battery staple\n", ""},
		{"control character", "@example.com /etc/key\x01\n", ""},
		{"not UTF-8", "@example.com /etc/k\xff\n", ""},
	} {
		entries, ok := ParseKeyMap([]byte(tc.data))
		var got []string
		for _, e := range entries {
			got = append(got, fmt.Sprintf("%d:%s=%s", e.Line, e.Sender, e.KeyFile))
		}
		if s := strings.Join(got, ";"); s != tc.want || ok != (tc.want != "") {
			t.Errorf("%s: %q, %t; want %q", tc.name, s, ok, tc.want)
		}
	}
	// Random keys, as batv-keygen makes them (64 bytes), are never taken
	// for a key map.
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 100000 {
		key := make([]byte, 64)
		for j := range key {
			key[j] = byte(rng.Uint32())
		}
		if _, ok := ParseKeyMap(key); ok {
			t.Fatalf("random key %d taken for a key map", i)
		}
	}
}

// TestKeyMapIsNotAKey: the text of a key map is refused as a key, and a
// keyring that holds one (imported before this check) says so.
func TestKeyMapIsNotAKey(t *testing.T) {
	keyMap := []byte("@example.com /etc/batv-key\n")
	r := newTestKeyring(t, DefaultOptions())
	for _, opts := range []ImportOptions{{}, {Sign: true}} {
		if _, err := r.Import(t0, 3, keyMap, opts); !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), "batv-tools key map") {
			t.Errorf("import of a key map as a key (%+v): %v", opts, err)
		}
	}
	data := strings.Replace(validFile, `"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="`,
		`"`+base64.StdEncoding.EncodeToString(keyMap)+`"`, 1)
	data = strings.Replace(data, `"check": "03ecfb28e8a6",`, "", 1)
	old, err := Parse([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	w := strings.Join(old.Warnings(t0), "\n")
	if !strings.Contains(w, "key 0 is the text of a batv-tools key map") || strings.Contains(w, "/etc/batv-key") {
		t.Errorf("warnings %q", w)
	}
}
