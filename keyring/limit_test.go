package keyring

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/batv"
)

// TestKeyRetiresBeforeTagsComeBack: a tag made on day D is within its
// window again from day D + 1000, which no verifier can see. The key must
// have retired by then, whatever the settings, so the captured tag is
// refused (unknown-key) at every instant from its expiry on, across the
// wrap. A fixed clock: 2026-12-02, the example of the documentation.
func TestKeyRetiresBeforeTagsComeBack(t *testing.T) {
	start := time.Date(2026, 12, 2, 9, 30, 0, 0, time.UTC)
	for _, lifetime := range []int{1, 7, 30} {
		for _, grace := range []time.Duration{0, DefaultGrace, MaxGrace} {
			r, err := New(start, &countingReader{}, Options{MaxLifetimeDays: lifetime, Grace: grace})
			if err != nil {
				t.Fatal(err)
			}
			limit := r.MaxSigningPeriod()
			if got, want := limit, RetireWithinDays*day-time.Duration(lifetime+1)*day-grace; got != want {
				t.Fatalf("lifetime %d grace %s: MaxSigningPeriod %s, want %s", lifetime, grace, got, want)
			}
			// The first tag the key makes, and the last.
			for _, signAt := range []time.Time{start, start.Add(limit - time.Second)} {
				if id := mustSigner(t, r, signAt); id != 0 {
					t.Fatalf("key %d signs at %s", id, signAt)
				}
				signer := batv.Signer{Keys: r, Lifetime: lifetime}
				tag, err := signer.SignAt("user@example.com", signAt)
				if err != nil {
					t.Fatal(err)
				}
				v := batv.Verifier{Keys: r, MaxLifetime: lifetime, ClockSkew: 12 * time.Hour}
				if res, _ := v.VerifyAt(tag.Address, signAt); res.Status != batv.Valid {
					t.Fatalf("tag not valid when made: %v", res.Status)
				}
				// From the day after its expiry to past the same days of
				// the next cycle, every hour.
				expired := time.Unix((signAt.Unix()/86400+int64(lifetime)+2)*86400, 0).Add(12 * time.Hour)
				for at := expired; at.Before(signAt.Add(1000*day + time.Duration(lifetime+2)*day)); at = at.Add(time.Hour) {
					if res, _ := v.VerifyAt(tag.Address, at); res.Status == batv.Valid {
						t.Fatalf("lifetime %d grace %s: the tag made at %s is valid again at %s", lifetime, grace, signAt, at)
					}
				}
			}
			if mustSigner(t, r, start.Add(limit-time.Second)); r.signer(start.Add(limit)) != nil {
				t.Fatalf("a key signs past its longest signing period")
			}
			retire := start.Add(RetireWithinDays * day)
			if !verifies(r, retire.Add(-time.Second), 0) || verifies(r, retire, 0) {
				t.Errorf("lifetime %d grace %s: key 0 does not retire at %s", lifetime, grace, retire)
			}
		}
	}
}

func TestSigningLimitWarnings(t *testing.T) {
	r := newTestKeyring(t, DefaultOptions())
	end := t0.Add(981 * day)
	for _, tc := range []struct {
		at   time.Time
		want string // "" for no warning at all
	}{
		{t0.Add(800 * day), ""},
		{end.Add(-SigningLimitNotice - time.Second), ""},
		{end.Add(-SigningLimitNotice), "key 0 has signed since 2025-01-01T12:00:00Z and stops signing at 2027-09-09T12:00:00Z, 90 days from now, with no key to follow it"},
		{end.Add(-day), "1 day from now"},
		{end, "no key signs now: key 0 reached the end of its longest signing period (981 days) at 2027-09-09T12:00:00Z and no key follows it; add one now (batv keys rotate --now)"},
	} {
		w := strings.Join(r.Warnings(tc.at), "\n")
		if tc.want == "" && w != "" || !strings.Contains(w, tc.want) {
			t.Errorf("at %s: warnings %q, want %q", tc.at, w, tc.want)
		}
	}
	// A rotation scheduled in time silences the notice; the new key has
	// its own limit.
	r2, _, err := r.Rotate(end.Add(-30*day), time.Hour, &countingReader{next: 99})
	if err != nil {
		t.Fatal(err)
	}
	if w := r2.Warnings(end.Add(-30 * day)); len(w) != 0 {
		t.Errorf("warnings with a rotation pending: %q", w)
	}
	if id := mustSigner(t, r2, end); id != 1 {
		t.Errorf("key %d signs after the limit of key 0", id)
	}
	// A file written before the limit existed: key 0 never stopped, key 1
	// starts after key 0's limit. That is not an overlap.
	data := strings.Replace(validFile, `,
      "stopped_signing": "2025-01-08T13:00:00Z"`, "", 1)
	data = strings.Replace(data, `"not_before": "2025-01-08T13:00:00Z"`, `"not_before": "2027-09-09T12:00:00Z"`, 1)
	if _, err := Parse([]byte(data)); err != nil {
		t.Errorf("key 1 starting when key 0 reached its limit: %v", err)
	}
	data = strings.Replace(data, `"not_before": "2027-09-09T12:00:00Z"`, `"not_before": "2027-09-09T11:59:59Z"`, 1)
	if _, err := Parse([]byte(data)); err == nil || !strings.Contains(err.Error(), "would both sign") {
		t.Errorf("key 1 starting a second before key 0's limit: %v", err)
	}
}

// TestWeakKeyNeverSigns: a key shorter than MinKeySize may be imported to
// verify, never to sign, and a file that gives one a signing period does
// not make it sign.
func TestWeakKeyNeverSigns(t *testing.T) {
	r := newTestKeyring(t, DefaultOptions())
	for _, n := range []int{1, MinKeySize - 1} {
		_, err := r.Import(t0, 3, []byte(strings.Repeat("k", n)), ImportOptions{Sign: true})
		if !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), "never to sign") {
			t.Errorf("import --sign of a %d-byte key: %v", n, err)
		}
	}
	if _, err := r.Import(t0, 3, []byte(strings.Repeat("k", MinKeySize)), ImportOptions{Sign: true}); err != nil {
		t.Errorf("import --sign of a %d-byte key: %v", MinKeySize, err)
	}
	vo, err := r.Import(t0, 3, []byte("k"), ImportOptions{})
	if err != nil || !verifies(vo, t0, 3) {
		t.Fatalf("import of a 1-byte key to verify: %v", err)
	}

	// By hand: key 1, one byte, "signs" from t0 + 1 day with no end.
	data := strings.Replace(validFile, `"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="`, `"`+base64.StdEncoding.EncodeToString([]byte("k"))+`"`, 1)
	data = strings.Replace(data, `"check": "a0a5639d1216",`, "", 1)
	hand, err := Parse([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2025, 1, 9, 0, 0, 0, 0, time.UTC)
	if _, err := hand.SigningKey(at, "example.com"); !errors.Is(err, batv.ErrNoSigningKey) {
		t.Errorf("a 1-byte key signs: %v", err)
	}
	if _, ok := hand.VerificationKey(at, 1, "example.com"); !ok {
		t.Error("the 1-byte key does not verify")
	}
	info := hand.Keys(at)[1]
	if info.State != Verifying || !info.Weak {
		t.Errorf("the 1-byte key is %+v", info)
	}
	if _, ok := hand.NextChange(at); ok {
		t.Error("a weak key's signing period counts as a change of signing key")
	}
	w := strings.Join(hand.Warnings(at), "\n")
	for _, want := range []string{"key 1 is only 1 bytes long", "key 1 has a signing period until", "never signs", "no key signs now"} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings %q lack %q", w, want)
		}
	}
	// A rotation ends its period, so that it retires.
	rot, _, err := hand.Rotate(at, 0, &countingReader{next: 7})
	if err != nil {
		t.Fatal(err)
	}
	if k := rot.Keys(at)[1]; !k.StoppedSigning.Equal(at) || !k.Retires.Equal(at.Add(9*day)) {
		t.Errorf("after a rotation the 1-byte key is %+v", k)
	}
}
