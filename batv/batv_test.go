package batv

import (
	"crypto/hmac"
	"crypto/sha1"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

var (
	testKey  = SingleKey{ID: 3, Secret: []byte("0123456789abcdef0123456789abcdef")}
	testDay  = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC) // day 20785
	testAddr = "John.Doe@Example.COM"
)

func fixed(t time.Time) func() time.Time { return func() time.Time { return t } }

func days(n int) time.Duration { return time.Duration(n) * 24 * time.Hour }

// refTag computes a standard-form tag with crypto/hmac directly, as an
// independent check of tagMAC and the formatting.
func refTag(key []byte, id, expiry int, addr string) string {
	kddd := fmt.Sprintf("%d%03d", id, expiry)
	h := hmac.New(sha1.New, key)
	h.Write([]byte(kddd + addr))
	return fmt.Sprintf("prvs=%s%x=%s", kddd, h.Sum(nil)[:3], addr)
}

func TestSignBaseline(t *testing.T) {
	s := Signer{Keys: testKey, Now: fixed(testDay)}
	got, err := s.Sign(testAddr)
	if err != nil {
		t.Fatal(err)
	}
	want := refTag(testKey.Secret, 3, (20785+7)%1000, testAddr)
	if got.Address != want || got.Skip != NotSkipped || got.KeyID != 3 || got.Expiry != 792 {
		t.Fatalf("Sign = %+v, want %s key 3 expiry 792", got, want)
	}
}

func TestSignChangeOneThing(t *testing.T) {
	tests := []struct {
		name   string
		signer Signer
		addr   string
		want   string // tagged address, or "" when skipped or failing
		skip   Skip
		err    error
	}{
		{name: "lifetime 1", signer: Signer{Lifetime: 1}, addr: testAddr,
			want: refTag(testKey.Secret, 3, 786, testAddr)},
		{name: "lifetime 30", signer: Signer{Lifetime: 30}, addr: testAddr,
			want: refTag(testKey.Secret, 3, 815, testAddr)},
		{name: "lifetime 31", signer: Signer{Lifetime: 31}, addr: testAddr, err: ErrInvalidLifetime},
		{name: "lifetime -1", signer: Signer{Lifetime: -1}, addr: testAddr, err: ErrInvalidLifetime},
		{name: "sub-address", signer: Signer{SubAddress: '+'}, addr: "user@example.com",
			want: "user+" + strings.TrimSuffix(refTag(testKey.Secret, 3, 792, "user@example.com")[:15], "=") + "@example.com"},
		{name: "bad delimiter", signer: Signer{SubAddress: '='}, addr: testAddr, err: ErrInvalidDelimiter},
		{name: "letter delimiter", signer: Signer{SubAddress: 'x'}, addr: testAddr, err: ErrInvalidDelimiter},
		{name: "null sender", addr: "", skip: SkipNullSender},
		{name: "no at", addr: "user", skip: SkipMalformedAddress},
		{name: "empty local", addr: "@example.com", skip: SkipMalformedAddress},
		{name: "empty domain", addr: "user@", skip: SkipMalformedAddress},
		{name: "space in local", addr: "us er@example.com", skip: SkipMalformedAddress},
		{name: "control in local", addr: "us\x01er@example.com", skip: SkipMalformedAddress},
		{name: "quoted", addr: `"john smith"@example.com`, skip: SkipQuoted},
		{name: "srs0", addr: "SRS0=HHH=TT=example.org=user@example.com", skip: SkipSRS},
		{name: "srs1", addr: "srs1=HHH=example.org==HHH=TT=a=b@example.com", skip: SkipSRS},
		{name: "already tagged", addr: "prvs=3792abcdef=user@example.com", skip: SkipTagged},
		{name: "tagged upper", addr: "PRVS=3792ABCDEF=user@example.com", skip: SkipTagged},
		{name: "tagged malformed", addr: "prvs=34=user@example.com", skip: SkipTagged},
		{name: "other tag type", addr: "btv1=x=user@example.com", skip: SkipTagged},
		{name: "draft00 tagged", addr: "prvs=user/3792abcdef@example.com", skip: SkipTagged},
		{name: "sub-address tagged", addr: "user+prvs=3792abcdef@example.com", skip: SkipTagged},
		{name: "sub-address tagged other delim", signer: Signer{SubAddress: '-'},
			addr: "user-prvs=3792abcdef@example.com", skip: SkipTagged},
		{name: "48 octets signs", addr: strings.Repeat("a", 48) + "@example.com",
			want: refTag(testKey.Secret, 3, 792, strings.Repeat("a", 48)+"@example.com")},
		{name: "49 octets too long", addr: strings.Repeat("a", 49) + "@example.com", skip: SkipTooLong},
		{name: "verp with = signs", addr: "list-bounces+user=example.org@lists.example.com",
			want: refTag(testKey.Secret, 3, 792, "list-bounces+user=example.org@lists.example.com")},
		{name: "single = signs", addr: "a=b@example.com",
			want: refTag(testKey.Secret, 3, 792, "a=b@example.com")},
		{name: "utf-8 local part", addr: "jürgen@example.com",
			want: refTag(testKey.Secret, 3, 792, "jürgen@example.com")},
		{name: "at in local, last at splits", addr: "a@b@example.com",
			want: refTag(testKey.Secret, 3, 792, "a@b@example.com")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.signer
			s.Keys, s.Now = testKey, fixed(testDay)
			got, err := s.Sign(tt.addr)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Skip != tt.skip {
				t.Fatalf("skip = %q, want %q", got.Skip, tt.skip)
			}
			if tt.skip != NotSkipped {
				if got.Address != tt.addr {
					t.Fatalf("skipped address changed to %q", got.Address)
				}
				return
			}
			if got.Address != tt.want {
				t.Fatalf("Sign(%q) = %q, want %q", tt.addr, got.Address, tt.want)
			}
		})
	}
}

func TestSignKeyErrors(t *testing.T) {
	for name, keys := range map[string]Keyring{
		"no signing key": noKeys{},
		"id 10":          SingleKey{ID: 10, Secret: []byte("x")},
		"empty secret":   SingleKey{ID: 1},
	} {
		t.Run(name, func(t *testing.T) {
			s := Signer{Keys: keys, Now: fixed(testDay)}
			_, err := s.Sign(testAddr)
			if !errors.Is(err, ErrNoSigningKey) && !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("err = %v, want a key error", err)
			}
		})
	}
}

type noKeys struct{}

func (noKeys) SigningKey(time.Time, string) (Key, error) { return Key{}, ErrNoSigningKey }
func (noKeys) VerificationKey(time.Time, int, string) (Key, bool) {
	return Key{}, false
}

// twoKeys verifies with ids 3 and 5 and signs with 3.
type twoKeys struct{}

func (twoKeys) SigningKey(time.Time, string) (Key, error) { return Key(testKey), nil }
func (twoKeys) VerificationKey(_ time.Time, id int, _ string) (Key, bool) {
	switch id {
	case 3:
		return Key(testKey), true
	case 5:
		return Key{ID: 5, Secret: []byte("another key of sixteen bytes")}, true
	}
	return Key{}, false
}

func TestVerifyChangeOneThing(t *testing.T) {
	signed := refTag(testKey.Secret, 3, 792, testAddr) // valid from day 20785 to 20792
	mac := signed[9:15]
	lowerSigned := refTag(testKey.Secret, 3, 792, strings.ToLower(testAddr))
	tests := []struct {
		name     string
		verifier Verifier
		addr     string
		untagged string // default testAddr
		at       time.Time
		status   Status
		match    Match
		daysLeft int
	}{
		{name: "baseline", addr: signed, status: Valid, match: MatchExact, daysLeft: 7},
		{name: "upper PRVS and hex", addr: "PRVS=3792" + strings.ToUpper(mac) + "=" + testAddr,
			status: Valid, match: MatchExact, daysLeft: 7},
		{name: "last valid day", addr: signed, at: testDay.Add(days(7)), status: Valid, match: MatchExact},
		{name: "first expired day", addr: signed, at: testDay.Add(days(8)), status: Expired, daysLeft: -1},
		{name: "far future", addr: refTag(testKey.Secret, 3, 800, testAddr), status: Expired, daysLeft: -985},
		{name: "far future within longer max lifetime",
			verifier: Verifier{MaxLifetime: 30}, addr: refTag(testKey.Secret, 3, 800, testAddr),
			status: Valid, match: MatchExact, daysLeft: 15},
		{name: "skew off: one day past at 00:30", addr: signed, at: day(20793).Add(30 * time.Minute),
			status: Expired, daysLeft: -1},
		{name: "skew 1h: one day past at 00:30", verifier: Verifier{ClockSkew: time.Hour},
			addr: signed, at: day(20793).Add(30 * time.Minute), status: Valid, match: MatchExact, daysLeft: -1},
		{name: "skew 1h: one day past at 01:30", verifier: Verifier{ClockSkew: time.Hour},
			addr: signed, at: day(20793).Add(90 * time.Minute), status: Expired, daysLeft: -1},
		{name: "skew 1h: signer ahead at 23:30", verifier: Verifier{ClockSkew: time.Hour},
			addr: signed, at: day(20784).Add(23*time.Hour + 30*time.Minute), status: Valid, match: MatchExact, daysLeft: -992},
		{name: "lower-case tag upper-cased in transit", addr: upperDomain(lowerSigned),
			untagged: "john.doe@EXAMPLE.COM", status: Valid, match: MatchFolded, daysLeft: 7},
		{name: "lower-case tag upper-cased in transit, strict", verifier: Verifier{Strict: true},
			addr: upperDomain(lowerSigned), untagged: "john.doe@EXAMPLE.COM", status: BadSignature, daysLeft: 7},
		{name: "mixed-case tag lower-cased in transit", addr: strings.ToLower(signed),
			untagged: "john.doe@example.com", status: BadSignature, daysLeft: 7},
		{name: "mixed-case tag upper-cased in transit", addr: "prvs=3792" + mac + "=JOHN.DOE@EXAMPLE.COM",
			untagged: "JOHN.DOE@EXAMPLE.COM", status: BadSignature, daysLeft: 7},
		{name: "tampered key id to known key", addr: "prvs=5" + signed[6:], status: BadSignature, daysLeft: 7},
		{name: "tampered key id to unknown key", addr: "prvs=4" + signed[6:], status: UnknownKey, daysLeft: 7},
		{name: "tampered expiry", addr: "prvs=3791" + signed[9:], status: BadSignature, daysLeft: 6},
		{name: "tampered mac", addr: "prvs=3792" + flipHex(mac) + "=" + testAddr, status: BadSignature, daysLeft: 7},
		{name: "tampered local", addr: signed[:16] + "Jahn.Doe@Example.COM",
			untagged: "Jahn.Doe@Example.COM", status: BadSignature, daysLeft: 7},
		{name: "tampered domain", addr: signed[:16] + "John.Doe@Example.ORG",
			untagged: "John.Doe@Example.ORG", status: BadSignature, daysLeft: 7},
		{name: "draft00", addr: "prvs=John.Doe/3792" + mac + "@Example.COM", status: Valid, match: MatchExact, daysLeft: 7},
		{name: "sub-address", addr: "John.Doe+prvs=3792" + mac + "@Example.COM", status: Valid, match: MatchExact, daysLeft: 7},
		{name: "sub-address other delimiter", verifier: Verifier{Delimiter: '-'},
			addr: "John.Doe-prvs=3792" + mac + "@Example.COM", status: Valid, match: MatchExact, daysLeft: 7},
		{name: "sub-address delimiter not configured", verifier: Verifier{Delimiter: '-'},
			addr: "John.Doe+prvs=3792" + mac + "@Example.COM", status: Missing},
		{name: "plain address", addr: testAddr, status: Missing},
		{name: "null", addr: "", status: Missing},
		{name: "srs", addr: "SRS0=HHH=TT=example.org=user@example.com", status: Missing},
		{name: "short", addr: "prvs=3792" + mac[:5] + "=" + testAddr, status: Malformed},
		{name: "non-digit key", addr: "prvs=x427" + mac + "=" + testAddr, status: Malformed},
		{name: "non-digit expiry", addr: "prvs=34x7" + mac + "=" + testAddr, status: Malformed},
		{name: "non-hex mac", addr: "prvs=3792" + mac[:5] + "g=" + testAddr, status: Malformed},
		{name: "empty loc-core", addr: "prvs=3792" + mac + "=@Example.COM", status: Malformed},
		{name: "no domain", addr: "prvs=3792" + mac + "=John.Doe", status: Malformed},
		{name: "empty domain", addr: "prvs=3792" + mac + "=John.Doe@", status: Malformed},
		{name: "prvs only", addr: "prvs=@example.com", status: Malformed},
		{name: "sub-address bad value", addr: "user+prvs=3792" + mac[:5] + "z@example.com", status: Malformed},
		{name: "sub-address empty core", addr: "+prvs=3792" + mac + "@example.com", status: Malformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := tt.verifier
			at := tt.at
			if at.IsZero() {
				at = testDay
			}
			v.Keys, v.Now = twoKeys{}, fixed(at)
			r, err := v.Verify(tt.addr)
			if err != nil {
				t.Fatal(err)
			}
			if r.Status != tt.status || r.Match != tt.match {
				t.Fatalf("Verify(%q) = %v/%v (%s), want %v/%v", tt.addr, r.Status, r.Match, r.Reason, tt.status, tt.match)
			}
			if tt.status == Missing || tt.status == Malformed {
				if r.Tag != (Tag{}) {
					t.Fatalf("tag set for %v: %+v", r.Status, r.Tag)
				}
				if (tt.status == Malformed) != (r.Reason != "") {
					t.Fatalf("reason %q for %v", r.Reason, r.Status)
				}
				return
			}
			want := tt.untagged
			if want == "" {
				want = testAddr
			}
			if r.Untagged() != want {
				t.Fatalf("untagged = %q, want %q", r.Untagged(), want)
			}
			if tt.daysLeft != 0 && r.DaysLeft != tt.daysLeft {
				t.Fatalf("DaysLeft = %d, want %d", r.DaysLeft, tt.daysLeft)
			}
		})
	}
}

func TestVerifyMisuse(t *testing.T) {
	for name, v := range map[string]Verifier{
		"max lifetime 31": {Keys: testKey, MaxLifetime: 31},
		"delimiter =":     {Keys: testKey, Delimiter: '='},
	} {
		if _, err := v.Verify(testAddr); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestDayWraps signs the day before each day-number wrap and verifies
// across it, up to the first expired day.
func TestDayWraps(t *testing.T) {
	for _, wrap := range []int64{20000, 21000, 22000} {
		signDay := day(wrap - 1)
		s := Signer{Keys: testKey, Now: fixed(signDay)}
		got, err := s.Sign("user@example.com")
		if err != nil {
			t.Fatal(err)
		}
		if got.Expiry != 6 {
			t.Fatalf("wrap %d: expiry %03d, want 006", wrap, got.Expiry)
		}
		for d := int64(0); d <= 8; d++ {
			v := Verifier{Keys: testKey, Now: fixed(signDay.Add(days(int(d))))}
			r, _ := v.Verify(got.Address)
			want := Valid
			if d == 8 {
				want = Expired
			}
			if r.Status != want {
				t.Errorf("wrap %d, %d days after signing: %v, want %v", wrap, d, r.Status, want)
			}
		}
	}
	// The wrap days are the ones the reference names.
	for wrap, date := range map[int64]string{20000: "2024-10-04", 21000: "2027-07-01", 22000: "2030-03-27"} {
		if got := day(wrap).Format(time.DateOnly); got != date {
			t.Errorf("day %d is %s, want %s", wrap, got, date)
		}
	}
}

func day(n int64) time.Time { return time.Unix(n*86400, 0).UTC() }

func upperDomain(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	return addr[:at] + strings.ToUpper(addr[at:])
}

func flipHex(s string) string {
	b := []byte(s)
	if b[0] == '0' {
		b[0] = '1'
	} else {
		b[0] = '0'
	}
	return string(b)
}

func TestParseFormatRoundTrip(t *testing.T) {
	for _, addr := range []string{
		"prvs=3792abcdef=user@example.com",
		"prvs=user/3792abcdef@example.com",
		"user+prvs=3792abcdef@example.com",
		"prvs=0000000000=a=b=c@example.com",
		`prvs=9999ffffff="john smith"@example.com`,
	} {
		tag, err := Parse(addr, '+')
		if err != nil {
			t.Fatalf("Parse(%q): %v", addr, err)
		}
		if got := tag.String(); got != addr {
			t.Errorf("round trip %q -> %q", addr, got)
		}
	}
	if _, err := Parse("user@example.com", '+'); !errors.Is(err, ErrNotTagged) {
		t.Errorf("untagged: %v", err)
	}
	if _, err := Parse("prvs=12=user@example.com", '+'); !errors.Is(err, ErrMalformed) {
		t.Errorf("malformed: %v", err)
	}
	if _, err := Parse("user+prvs=3792abcdef@example.com", 0); !errors.Is(err, ErrNotTagged) {
		t.Errorf("sub-address with delim 0: %v", err)
	}
}

// TestTagMACMatchesCryptoHMAC checks the written-out HMAC against
// crypto/hmac for key lengths around the block size and message lengths
// around the block boundaries of the digest and of the folding.
func TestTagMACMatchesCryptoHMAC(t *testing.T) {
	kddd := [4]byte{'3', '4', '2', '7'}
	for _, klen := range []int{1, 16, 63, 64, 65, 100, 200} {
		key := make([]byte, klen)
		for i := range key {
			key[i] = byte(i*7 + klen)
		}
		for _, mlen := range []int{1, 20, 55, 56, 59, 60, 63, 64, 65, 119, 120, 127, 128, 129, 1000} {
			msg := strings.Repeat("Ab", mlen)[:mlen]
			for _, fold := range []bool{false, true} {
				in := msg
				if fold {
					in = strings.ToLower(msg)
				}
				h := hmac.New(sha1.New, key)
				h.Write(append(kddd[:], in...))
				var want [3]byte
				copy(want[:], h.Sum(nil))
				if got := tagMAC(key, kddd, msg, fold); got != want {
					t.Errorf("key %d, msg %d, fold %v: %x, want %x", klen, mlen, fold, got, want)
				}
			}
		}
	}
}

func TestKeyNeverPrintsSecret(t *testing.T) {
	secret := "s3cr3t-key-bytes-0123"
	k := Key{ID: 4, Secret: []byte(secret)}
	for _, s := range []string{
		fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s", k, k, k, k),
		fmt.Sprint(SingleKey(k)), fmt.Sprintf("%+v %#v", SingleKey(k), SingleKey(k)),
		fmt.Sprintf("%v", []Key{k}),
	} {
		if strings.Contains(s, secret) || strings.Contains(s, fmt.Sprintf("%x", secret)) {
			t.Errorf("secret printed: %s", s)
		}
		if !strings.Contains(s, "key 4") {
			t.Errorf("id not printed: %s", s)
		}
	}
}

func TestStrings(t *testing.T) {
	for want, s := range map[string]fmt.Stringer{
		"valid": Valid, "missing": Missing, "malformed": Malformed, "unknown-key": UnknownKey,
		"expired": Expired, "bad-signature": BadSignature, "status(0)": Status(0),
		"exact": MatchExact, "folded": MatchFolded,
		"standard": FormStandard, "draft00": FormDraft00, "subaddress": FormSubAddress,
		"too-long": SkipTooLong, "null-sender": SkipNullSender, "srs": SkipSRS, "tagged": SkipTagged,
		"quoted": SkipQuoted, "malformed-address": SkipMalformedAddress,
	} {
		if got := s.String(); got != want {
			t.Errorf("%#v.String() = %q, want %q", s, got, want)
		}
	}
}

func TestVerifyIgnoringExpiry(t *testing.T) {
	signed := refTag(testKey.Secret, 3, 792, testAddr)
	v := Verifier{Keys: twoKeys{}, Now: fixed(testDay.Add(days(20)))}
	if r, _ := v.Verify(signed); r.Status != Expired {
		t.Fatalf("Verify: %v, want expired", r.Status)
	}
	r, _ := v.VerifyIgnoringExpiry(signed)
	if r.Status != Valid || r.DaysLeft != -13 || r.Untagged() != testAddr {
		t.Fatalf("VerifyIgnoringExpiry: %v, %d days left, %q", r.Status, r.DaysLeft, r.Untagged())
	}
	if r, _ := v.VerifyIgnoringExpiry("prvs=3792" + flipHex(signed[9:15]) + "=" + testAddr); r.Status != BadSignature {
		t.Fatalf("forged: %v", r.Status)
	}
}
