package batv

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// clockMustNotBeRead is a Now function for the At methods, which take the
// time as an argument and must never read the clock field.
func clockMustNotBeRead(t *testing.T) func() time.Time {
	return func() time.Time {
		t.Error("the Now field was read by an At method")
		return time.Time{}
	}
}

func TestSignAtAndVerifyAt(t *testing.T) {
	at := testDay.Add(days(300)) // another day than the Now field's
	s := Signer{Keys: testKey, Now: clockMustNotBeRead(t)}
	got, err := s.SignAt(testAddr, at)
	if err != nil {
		t.Fatal(err)
	}
	want := refTag(testKey.Secret, 3, (20785+300+7)%1000, testAddr)
	if got.Address != want {
		t.Fatalf("SignAt = %s, want %s", got.Address, want)
	}
	byField, err := (&Signer{Keys: testKey, Now: fixed(at)}).Sign(testAddr)
	if err != nil || byField != got {
		t.Fatalf("Sign with Now at the same instant = %+v, %v; SignAt = %+v", byField, err, got)
	}

	v := Verifier{Keys: testKey, Now: clockMustNotBeRead(t)}
	for _, tc := range []struct {
		at       time.Time
		status   Status
		ignoring Status // VerifyIgnoringExpiryAt
		daysLeft int
	}{
		{at, Valid, Valid, 7},
		{at.Add(days(7)), Valid, Valid, 0},
		{at.Add(days(8)), Expired, Valid, -1},
		{at.Add(-days(1)), Expired, Valid, -992},
	} {
		r, err := v.VerifyAt(got.Address, tc.at)
		if err != nil || r.Status != tc.status || r.DaysLeft != tc.daysLeft {
			t.Errorf("VerifyAt at %s = %v %d, %v; want %v %d", tc.at, r.Status, r.DaysLeft, err, tc.status, tc.daysLeft)
		}
		byField, _ := (&Verifier{Keys: testKey, Now: fixed(tc.at)}).Verify(got.Address)
		if byField != r {
			t.Errorf("Verify with Now at %s = %+v; VerifyAt = %+v", tc.at, byField, r)
		}
		r, err = v.VerifyIgnoringExpiryAt(got.Address, tc.at)
		if err != nil || r.Status != tc.ignoring || r.DaysLeft != tc.daysLeft {
			t.Errorf("VerifyIgnoringExpiryAt at %s = %v %d, %v", tc.at, r.Status, r.DaysLeft, err)
		}
	}
	// Misuse is reported by the At methods as by the others.
	if _, err := (&Signer{Keys: testKey, Lifetime: 31}).SignAt(testAddr, at); !errors.Is(err, ErrInvalidLifetime) {
		t.Errorf("SignAt with lifetime 31: %v", err)
	}
	if _, err := (&Verifier{Keys: testKey, Delimiter: '='}).VerifyAt(got.Address, at); !errors.Is(err, ErrInvalidDelimiter) {
		t.Errorf("VerifyAt with delimiter '=': %v", err)
	}
}

// TestVerifyReadsClockOnlyForTags: an untagged or malformed recipient, the
// common case, costs no clock reading.
func TestVerifyReadsClockOnlyForTags(t *testing.T) {
	reads := 0
	v := Verifier{Keys: testKey, Now: func() time.Time { reads++; return testDay }}
	for _, addr := range []string{"user@example.com", "", "prvs=12=user@example.com"} {
		if _, err := v.Verify(addr); err != nil {
			t.Fatal(err)
		}
	}
	if reads != 0 {
		t.Errorf("the clock was read %d times for addresses without a tag", reads)
	}
	v.Verify(refTag(testKey.Secret, 3, 792, testAddr))
	if reads != 1 {
		t.Errorf("the clock was read %d times for one tagged address, want 1", reads)
	}
}

// lifetimeKeys is a LifetimeKeyring keeping keys for tags of max days.
type lifetimeKeys struct {
	SingleKey
	max int
}

func (k lifetimeKeys) MaxLifetimeDays() int { return k.max }

func TestValidate(t *testing.T) {
	keys7 := lifetimeKeys{testKey, 7}
	for _, tc := range []struct {
		name string
		err  error
		s    Signer
		v    Verifier
	}{
		{name: "defaults with a 7-day keyring", s: Signer{Keys: keys7}, v: Verifier{Keys: keys7}},
		{name: "a keyring that never retires", s: Signer{Keys: testKey, Lifetime: 30}, v: Verifier{Keys: testKey, MaxLifetime: 30}},
		{name: "no keys", err: ErrNoKeyring},
		{name: "8 days with a 7-day keyring", err: ErrInvalidLifetime,
			s: Signer{Keys: keys7, Lifetime: 8}, v: Verifier{Keys: keys7, MaxLifetime: 8}},
		{name: "default lifetime with a 5-day keyring", err: ErrInvalidLifetime,
			s: Signer{Keys: lifetimeKeys{testKey, 5}}, v: Verifier{Keys: lifetimeKeys{testKey, 5}}},
		{name: "lifetime out of range", err: ErrInvalidLifetime,
			s: Signer{Keys: testKey, Lifetime: 31}, v: Verifier{Keys: testKey, MaxLifetime: -1}},
		{name: "bad delimiter", err: ErrInvalidDelimiter,
			s: Signer{Keys: testKey, SubAddress: 'x'}, v: Verifier{Keys: testKey, Delimiter: '='}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for what, err := range map[string]error{"Signer": tc.s.Validate(), "Verifier": tc.v.Validate()} {
				if tc.err == nil && err != nil || !errors.Is(err, tc.err) {
					t.Errorf("%s.Validate() = %v, want %v", what, err, tc.err)
				}
			}
		})
	}
	err := (&Signer{Keys: lifetimeKeys{testKey, 5}, Lifetime: 9}).Validate()
	if err == nil || !strings.Contains(err.Error(), "9 days") || !strings.Contains(err.Error(), "5 days") {
		t.Errorf("the error does not say both lifetimes: %v", err)
	}
}

// TestTagComesBackAfter1000Days is what package batv cannot prevent, and
// its documentation says: three digits cannot tell one 1000-day cycle from
// the next, so a tag whose key still verifies 1000 days later is valid
// again. Retiring keys (package keyring) is what stops it.
func TestTagComesBackAfter1000Days(t *testing.T) {
	signedAt := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	s := Signer{Keys: testKey}
	tag, err := s.SignAt(testAddr, signedAt)
	if err != nil {
		t.Fatal(err)
	}
	v := Verifier{Keys: testKey}
	later := time.Date(2029, 8, 28, 12, 0, 0, 0, time.UTC)
	if later.Sub(signedAt) != days(1000) {
		t.Fatalf("%s is not 1000 days after %s", later, signedAt)
	}
	for _, tc := range []struct {
		at   time.Time
		want Status
	}{
		{signedAt.Add(days(8)), Expired},
		{later.Add(-days(1)), Expired},
		{later, Valid},
		{later.Add(days(7)), Valid},
		{later.Add(days(8)), Expired},
	} {
		if r, _ := v.VerifyAt(tag.Address, tc.at); r.Status != tc.want {
			t.Errorf("%s verified on %s: %v, want %v", tag.Address, tc.at.Format(time.DateOnly), r.Status, tc.want)
		}
	}
}
