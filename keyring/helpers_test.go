package keyring

import (
	"encoding/base64"
	"encoding/hex"
	"strings"
)

// secretForms returns the ways a secret could leak into text: its bytes,
// hex in both cases, and base64 with and without padding.
func secretForms(secret []byte) []string {
	h := hex.EncodeToString(secret)
	return []string{
		string(secret),
		h,
		strings.ToUpper(h),
		base64.StdEncoding.EncodeToString(secret),
		base64.RawStdEncoding.EncodeToString(secret),
		base64.URLEncoding.EncodeToString(secret),
	}
}
