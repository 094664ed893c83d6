// Package keyringtest helps tests prove that no key material leaks into
// text a person or a log collector sees: log lines, error messages,
// metrics output.
package keyringtest

import (
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
)

// Windows returns every run of secret that would show in text as part of
// a leak: 8 raw bytes, 12 hex digits (either case) or 12 base64
// characters (standard or URL alphabet, at each of the three alignments),
// taken from anywhere in the secret. A message quoting a damaged secret
// in part contains one of them.
func Windows(secret []byte) []string {
	var out []string
	add := func(s string, n int) {
		for i := 0; i+n <= len(s); i++ {
			out = append(out, s[i:i+n])
		}
	}
	add(string(secret), 8)
	h := hex.EncodeToString(secret)
	add(h, 12)
	add(strings.ToUpper(h), 12)
	for off := range min(3, len(secret)) {
		for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
			s := enc.EncodeToString(secret[off:])
			add(s[:len(s)-1], 12) // the last character depends on what follows
		}
	}
	return out
}

// Find returns the first window of any of secrets found in text, and its
// index, or "" and -1.
func Find(text string, secrets [][]byte) (string, int) {
	for _, s := range secrets {
		for _, w := range Windows(s) {
			if i := strings.Index(text, w); i >= 0 {
				return w, i
			}
		}
	}
	return "", -1
}

// AssertNone fails the test if text, described by what, shows a window
// of any of secrets; the failure quotes the text around it.
func AssertNone(t testing.TB, what, text string, secrets [][]byte) {
	t.Helper()
	if w, i := Find(text, secrets); w != "" {
		lo, hi := max(0, i-200), min(len(text), i+200)
		t.Fatalf("%s shows part of a secret (%q) in:\n%s", what, w, text[lo:hi])
	}
}
