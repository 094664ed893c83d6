package keyringtest

import (
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
)

func TestFindsEveryEncoding(t *testing.T) {
	secret := []byte("0123456789abcdef-secret-bytes!!!")
	for _, text := range []string{
		"err: " + string(secret[5:14]),
		"key " + hex.EncodeToString(secret)[7:20],
		"KEY " + strings.ToUpper(hex.EncodeToString(secret))[3:16],
		"b64 " + base64.StdEncoding.EncodeToString(secret[1:])[2:15],
		"url " + base64.RawURLEncoding.EncodeToString(secret[2:])[0:13],
	} {
		if w, _ := Find(text, [][]byte{secret}); w == "" {
			t.Errorf("no window of the secret found in %q", text)
		}
	}
	if w, i := Find("nothing to see: "+hex.EncodeToString(secret)[:11], [][]byte{secret}); w != "" {
		t.Errorf("11 hex digits reported as a leak: %q at %d", w, i)
	}
}
