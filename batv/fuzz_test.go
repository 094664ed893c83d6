package batv

import (
	"crypto/hmac"
	"crypto/sha1"
	"fmt"
	"strings"
	"testing"
)

// FuzzParse checks that whatever parses formats back to the same address,
// apart from the case of "prvs" and of the hex digits, and parses again to
// the same tag.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"prvs=3792abcdef=user@example.com", "PRVS=3792ABCDEF=a=b=c@example.com",
		"prvs=user/3792abcdef@example.com", "user+prvs=3792abcdef@example.com",
		"prvs=@", "prvs=3792abcdef=", "+prvs=3792abcdef@x", "user@example.com", "",
	} {
		f.Add(s, byte('+'))
	}
	f.Fuzz(func(t *testing.T, addr string, delim byte) {
		tag, err := Parse(addr, delim)
		if err != nil {
			return
		}
		out := tag.String()
		if !strings.EqualFold(out, addr) {
			t.Fatalf("Parse(%q).String() = %q", addr, out)
		}
		if !strings.Contains(out, tag.Original[:tag.At]) || !strings.HasSuffix(out, tag.Original[tag.At:]) {
			t.Fatalf("original %q not kept exactly in %q", tag.Original, out)
		}
		again, err := Parse(out, delim)
		if err != nil || again != tag {
			t.Fatalf("reparse of %q: %+v, %v; want %+v", out, again, err, tag)
		}
	})
}

// FuzzVerify checks that Verify never panics and reports Valid only when
// crypto/hmac agrees that the MAC covers the address, and that the tag is
// within its window.
func FuzzVerify(f *testing.F) {
	s := Signer{Keys: testKey, Now: fixed(testDay)}
	for _, a := range []string{"user@example.com", "John.Doe@Example.COM", "a=b@x", "jürgen@example.com"} {
		r, _ := s.Sign(a)
		f.Add(r.Address, false)
		f.Add(strings.ToUpper(r.Address), false)
	}
	f.Add("prvs=user/3792abcdef@example.com", true)
	f.Fuzz(func(t *testing.T, addr string, strict bool) {
		v := Verifier{Keys: twoKeys{}, Now: fixed(testDay), Strict: strict}
		r, err := v.Verify(addr)
		if err != nil {
			t.Fatal(err)
		}
		checkValid(t, r, strict)
	})
}

// FuzzSignVerify signs an address, checks the tag verifies and untags to
// the input, then changes one byte of the tagged address and checks the
// result is valid only if crypto/hmac agrees.
func FuzzSignVerify(f *testing.F) {
	f.Add("user", "example.com", uint8(3), byte(1))
	f.Add("John.Doe", "Example.COM", uint8(9), byte(0x20))
	f.Add("a+b=c", "x", uint8(20), byte(0xff))
	f.Fuzz(func(t *testing.T, local, domain string, pos uint8, flip byte) {
		addr := local + "@" + domain
		s := Signer{Keys: testKey, Now: fixed(testDay)}
		signed, err := s.Sign(addr)
		if err != nil {
			t.Fatal(err)
		}
		if signed.Skip != NotSkipped {
			return
		}
		v := Verifier{Keys: twoKeys{}, Now: fixed(testDay)}
		r, _ := v.Verify(signed.Address)
		if r.Status != Valid || r.Match != MatchExact || r.Untagged() != addr {
			t.Fatalf("Sign(%q) = %q verifies as %v %v untagged %q", addr, signed.Address, r.Status, r.Match, r.Untagged())
		}
		if flip == 0 {
			return
		}
		b := []byte(signed.Address)
		b[int(pos)%len(b)] ^= flip
		r, _ = v.Verify(string(b))
		checkValid(t, r, false)
	})
}

// checkValid fails if r is Valid but an independent HMAC over its tag's
// original address (or its lowercase, unless strict) does not match.
func checkValid(t *testing.T, r Result, strict bool) {
	t.Helper()
	if r.Status != Valid {
		return
	}
	if r.DaysLeft < 0 || r.DaysLeft > DefaultLifetime {
		t.Fatalf("valid outside the window: %+v", r)
	}
	key, ok := twoKeys{}.VerificationKey(testDay, r.Tag.KeyID, "")
	if !ok {
		t.Fatalf("valid with unknown key %d", r.Tag.KeyID)
	}
	ref := func(original string) [3]byte {
		h := hmac.New(sha1.New, key.Secret)
		fmt.Fprintf(h, "%d%03d%s", r.Tag.KeyID, r.Tag.Expiry, original)
		var m [3]byte
		copy(m[:], h.Sum(nil))
		return m
	}
	switch r.Match {
	case MatchExact:
		if ref(r.Tag.Original) != r.Tag.MAC {
			t.Fatalf("valid exact but crypto/hmac disagrees: %+v", r)
		}
	case MatchFolded:
		if strict || ref(asciiLower(r.Tag.Original)) != r.Tag.MAC {
			t.Fatalf("valid folded but crypto/hmac disagrees (strict %v): %+v", strict, r)
		}
	default:
		t.Fatalf("valid without a match: %+v", r)
	}
}

func asciiLower(s string) string {
	b := []byte(s)
	lowerASCIIBytes(b)
	return string(b)
}
