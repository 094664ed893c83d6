package keyring

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/batv"
)

// t0 is a fixed instant, midday so that day boundaries matter.
var t0 = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

const day = 24 * time.Hour

// countingReader is a deterministic stand-in for crypto/rand: every byte
// it yields is one more than the previous, so every key differs.
type countingReader struct{ next byte }

func (c *countingReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = c.next
		c.next++
	}
	return len(p), nil
}

// failingReader fails every read.
type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("no entropy") }

func newTestKeyring(t *testing.T, opts Options) *Keyring {
	t.Helper()
	r, err := New(t0, &countingReader{}, opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mustSigner(t *testing.T, r *Keyring, at time.Time) int {
	t.Helper()
	k, err := r.SigningKey(at, "example.com")
	if err != nil {
		t.Fatalf("SigningKey(%s): %v", at, err)
	}
	id, ok := r.SigningKeyID(at)
	if !ok || id != k.ID {
		t.Fatalf("SigningKeyID(%s) = %d, %t; SigningKey says %d", at, id, ok, k.ID)
	}
	return k.ID
}

func verifies(r *Keyring, at time.Time, id int) bool {
	_, ok := r.VerificationKey(at, id, "example.com")
	return ok
}

func stateOf(t *testing.T, r *Keyring, at time.Time, id int) State {
	t.Helper()
	for _, k := range r.Keys(at) {
		if k.ID == id {
			return k.State
		}
	}
	t.Fatalf("no key %d", id)
	return 0
}

func TestNew(t *testing.T) {
	r := newTestKeyring(t, DefaultOptions())
	if got := mustSigner(t, r, t0); got != 0 {
		t.Errorf("signing key %d, want 0", got)
	}
	k, _ := r.SigningKey(t0, "example.com")
	if len(k.Secret) != GeneratedKeySize {
		t.Errorf("secret is %d bytes, want %d", len(k.Secret), GeneratedKeySize)
	}
	if _, err := r.SigningKey(t0.Add(-time.Second), "example.com"); !errors.Is(err, batv.ErrNoSigningKey) {
		t.Errorf("before creation: err %v, want ErrNoSigningKey", err)
	}
	if !r.Created().Equal(t0) || r.MaxLifetimeDays() != 7 || r.Grace() != 24*time.Hour || r.PerDomain() {
		t.Errorf("settings %s %d %s %t", r.Created(), r.MaxLifetimeDays(), r.Grace(), r.PerDomain())
	}
	// A lone key stops signing at the end of its longest signing period.
	if next, ok := r.NextChange(t0); !ok || !next.Equal(t0.Add(981*day)) || r.MaxSigningPeriod() != 981*day {
		t.Errorf("NextChange = %s, %t; want the end of the longest signing period, %s", next, ok, t0.Add(981*day))
	}

	opts := DefaultOptions()
	opts.FirstID = 4
	if got := mustSigner(t, newTestKeyring(t, opts), t0); got != 4 {
		t.Errorf("FirstID 4: signing key %d", got)
	}

	for _, bad := range []Options{
		{MaxLifetimeDays: 0, Grace: day},
		{MaxLifetimeDays: 31, Grace: day},
		{MaxLifetimeDays: 7, Grace: -time.Second},
		{MaxLifetimeDays: 7, Grace: MaxGrace + time.Second},
		{MaxLifetimeDays: 7, Grace: 1500 * time.Millisecond},
		{MaxLifetimeDays: 7, FirstID: 10},
		{MaxLifetimeDays: 7, FirstID: -1},
	} {
		if _, err := New(t0, &countingReader{}, bad); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("New(%+v): err %v, want ErrInvalidOption", bad, err)
		}
	}
	if _, err := New(t0, failingReader{}, DefaultOptions()); err == nil || !strings.Contains(err.Error(), "no entropy") {
		t.Errorf("New with a failing reader: err %v", err)
	}
}

// TestLifecycle follows a keyring through staged and immediate rotations
// with a fixed clock.
func TestLifecycle(t *testing.T) {
	rnd := &countingReader{}
	r, err := New(t0, rnd, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}

	// Staged rotation a week later.
	t1 := t0.Add(7 * day)
	r, id, err := r.Rotate(t1, time.Hour, rnd)
	if err != nil {
		t.Fatal(err)
	}
	if id != 1 {
		t.Fatalf("new key id %d, want 1", id)
	}
	switchAt := t1.Add(time.Hour)
	if s := stateOf(t, r, t1, 1); s != Pending {
		t.Errorf("key 1 at t1: %s, want pending", s)
	}
	if !verifies(r, t1, 1) {
		t.Error("a pending key must verify")
	}
	if got := mustSigner(t, r, switchAt.Add(-time.Second)); got != 0 {
		t.Errorf("just before the switch key %d signs, want 0", got)
	}
	if got := mustSigner(t, r, switchAt); got != 1 {
		t.Errorf("at the switch key %d signs, want 1", got)
	}
	if next, ok := r.NextChange(t1); !ok || !next.Equal(switchAt) {
		t.Errorf("NextChange(t1) = %s, %t; want %s", next, ok, switchAt)
	}
	if next, ok := r.NextChange(switchAt); !ok || !next.Equal(switchAt.Add(r.MaxSigningPeriod())) {
		t.Errorf("after the switch NextChange = %s, %t; want the end of key 1's longest signing period", next, ok)
	}

	// Key 0 stopped at switchAt. The last tag it made expires at the end
	// of day(switchAt)+7; it must verify until then, and retire
	// lifetime + 1 day + grace after it stopped.
	lastTagExpiry := time.Unix((switchAt.Unix()/86400+7+1)*86400, 0)
	retire := switchAt.Add(7*day + day + 24*time.Hour)
	info := r.Keys(switchAt)[0]
	if info.ID != 0 || !info.StoppedSigning.Equal(switchAt) || !info.Retires.Equal(retire) {
		t.Fatalf("key 0 info %+v; want stopped %s, retires %s", info, switchAt, retire)
	}
	if !retire.After(lastTagExpiry) {
		t.Fatalf("retire %s is not after the last tag's expiry %s", retire, lastTagExpiry)
	}
	for _, at := range []time.Time{switchAt, lastTagExpiry.Add(-time.Second), retire.Add(-time.Nanosecond)} {
		if !verifies(r, at, 0) || stateOf(t, r, at, 0) != Verifying {
			t.Errorf("key 0 must verify at %s", at)
		}
	}
	if verifies(r, retire, 0) || stateOf(t, r, retire, 0) != Retired {
		t.Errorf("key 0 must be retired at %s", retire)
	}

	// Prune removes it then, not before.
	if same, removed := r.Prune(retire.Add(-time.Second)); same != r || removed != nil {
		t.Errorf("Prune before retirement removed %v", removed)
	}
	pruned, removed := r.Prune(retire)
	if fmt.Sprint(removed) != "[0]" || len(pruned.Keys(retire)) != 1 {
		t.Fatalf("Prune at retirement removed %v", removed)
	}
	if verifies(pruned, retire, 0) {
		t.Error("a pruned key verifies")
	}
	r = pruned

	// Immediate rotation: key 2 signs at once.
	t2 := retire.Add(day)
	r, id, err = r.Rotate(t2, 0, rnd)
	if err != nil || id != 2 {
		t.Fatalf("rotate --now: id %d, err %v", id, err)
	}
	if got := mustSigner(t, r, t2); got != 2 {
		t.Errorf("after rotate --now key %d signs", got)
	}
	if !verifies(r, t2, 1) || stateOf(t, r, t2, 1) != Verifying {
		t.Error("key 1 must still verify after it stopped signing")
	}
}

// TestRetireCoversEveryTag checks, for stop instants around the clock, that
// a key verifies until every tag it could have made has expired.
func TestRetireCoversEveryTag(t *testing.T) {
	for _, lifetime := range []int{1, 7, 30} {
		for _, grace := range []time.Duration{0, time.Hour, 24 * time.Hour} {
			opts := Options{MaxLifetimeDays: lifetime, Grace: grace}
			r := newTestKeyring(t, opts)
			for minute := 0; minute < 24*60; minute += 17 {
				stop := time.Date(2025, 3, 1, 0, minute, 0, 0, time.UTC)
				nr, _, err := r.Rotate(stop, 0, &countingReader{})
				if err != nil {
					t.Fatal(err)
				}
				// A tag made at the last instant key 0 signed, on day D,
				// carries expiry D+lifetime and is valid until that day ends.
				last := stop.Add(-time.Second)
				end := time.Unix((last.Unix()/86400+int64(lifetime)+1)*86400, 0).Add(grace)
				if !verifies(nr, end.Add(-time.Nanosecond), 0) {
					t.Fatalf("lifetime %d grace %s stop %s: key 0 retired before %s", lifetime, grace, stop, end)
				}
			}
		}
	}
}

func TestRotatePending(t *testing.T) {
	rnd := &countingReader{}
	r := newTestKeyring(t, DefaultOptions())
	t1 := t0.Add(10 * day)
	r, _, err := r.Rotate(t1, time.Hour, rnd)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = r.Rotate(t1.Add(time.Minute), time.Hour, rnd)
	if !errors.Is(err, ErrRotationPending) || !strings.Contains(err.Error(), "2025-01-11T13:00:00Z") {
		t.Errorf("second staged rotation: err %v, want ErrRotationPending naming the start", err)
	}

	// With no delay the pending key is superseded: it never signs, still
	// verifies (a host could have signed with it), and retires.
	t2 := t1.Add(time.Minute)
	r2, id, err := r.Rotate(t2, 0, rnd)
	if err != nil || id != 2 {
		t.Fatalf("rotate --now over a pending key: id %d, err %v", id, err)
	}
	for _, at := range []time.Time{t2, t1.Add(time.Hour), t1.Add(5 * day)} {
		if got := mustSigner(t, r2, at); got != 2 {
			t.Errorf("at %s key %d signs, want 2", at, got)
		}
	}
	k1 := r2.Keys(t2)[1]
	if k1.ID != 1 || !k1.StoppedSigning.Equal(k1.NotBefore) || k1.State != Verifying || !verifies(r2, t2, 1) {
		t.Errorf("superseded pending key: %+v", k1)
	}
	if k0 := r2.Keys(t2)[0]; !k0.StoppedSigning.Equal(t2) {
		t.Errorf("key 0 stopped at %s, want %s", k0.StoppedSigning, t2)
	}

	if _, _, err := r.Rotate(t1, -time.Second, rnd); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("negative delay: err %v", err)
	}
	if _, _, err := r.Rotate(t2, 0, failingReader{}); err == nil {
		t.Error("rotate with a failing reader succeeded")
	}
}

// TestAllTenIDs uses every id, is refused while all are in use (saying
// when one frees up), then wraps from 9 to 0.
func TestAllTenIDs(t *testing.T) {
	rnd := &countingReader{}
	r := newTestKeyring(t, DefaultOptions())
	// Key j signs from day j to day j+1, so it retires at day j+10.
	for j := 1; j <= 9; j++ {
		var id int
		var err error
		r, id, err = r.Rotate(t0.Add(time.Duration(j)*day), 0, rnd)
		if err != nil {
			t.Fatalf("rotation %d: %v", j, err)
		}
		if id != j {
			t.Fatalf("rotation %d gave id %d", j, id)
		}
	}
	if n := len(r.Keys(t0)); n != 10 {
		t.Fatalf("%d keys, want 10", n)
	}
	busy := t0.Add(9*day + 12*time.Hour)
	free := t0.Add(10 * day) // key 0 stopped at day 1: 1 + 7 + 1 + 1
	_, _, err := r.Rotate(busy, 0, rnd)
	if !errors.Is(err, ErrIDInUse) || !strings.Contains(err.Error(), formatTime(free)) || !strings.Contains(err.Error(), "is 0") {
		t.Fatalf("rotation with every id in use: err %v; want ErrIDInUse naming key 0 and %s", err, formatTime(free))
	}
	if w := strings.Join(r.Warnings(busy), "\n"); !strings.Contains(w, "every key id is in use") {
		t.Errorf("warnings %q do not mention the full keyring", w)
	}
	r, id, err := r.Rotate(free, 0, rnd)
	if err != nil || id != 0 {
		t.Fatalf("rotation once key 0 retired: id %d, err %v; want 0", id, err)
	}
	if got := mustSigner(t, r, free); got != 0 {
		t.Errorf("key %d signs, want the new key 0", got)
	}
	if k, _ := r.VerificationKey(free, 0, ""); bytes.Equal(k.Secret, make([]byte, 32)) || k.Secret[0] == 0 {
		t.Error("id 0 still has the old secret")
	}
	// Then 1, which retired a day later.
	if _, _, err := r.Rotate(free.Add(12*time.Hour), 0, rnd); !errors.Is(err, ErrIDInUse) {
		t.Errorf("key 1 retires at day 11; err %v", err)
	}
	if _, id, err := r.Rotate(free.Add(day), 0, rnd); err != nil || id != 1 {
		t.Errorf("rotation at day 11: id %d, err %v; want 1", id, err)
	}
}

// TestRotateSkipsBusyID: an imported key holding the next id is skipped.
func TestRotateSkipsBusyID(t *testing.T) {
	r := newTestKeyring(t, DefaultOptions())
	r, err := r.Import(t0, 1, []byte("old system key, 32 bytes long..."), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, id, err := r.Rotate(t0.Add(day), time.Hour, &countingReader{next: 100})
	if err != nil || id != 2 {
		t.Errorf("rotate next to a verifying key 1: id %d, err %v; want 2", id, err)
	}
}

func TestImport(t *testing.T) {
	secret := []byte("batv-tools key file contents\n")
	r := newTestKeyring(t, DefaultOptions())

	t.Run("verify-only", func(t *testing.T) {
		nr, err := r.Import(t0, 3, secret, ImportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := mustSigner(t, nr, t0.Add(time.Hour)); got != 0 {
			t.Errorf("key %d signs, want 0: an imported key only verifies", got)
		}
		k, ok := nr.VerificationKey(t0, 3, "example.com")
		if !ok || !bytes.Equal(k.Secret, secret) {
			t.Fatal("imported key does not verify with its exact bytes")
		}
		retire := t0.Add(9 * day)
		if !verifies(nr, retire.Add(-time.Second), 3) || verifies(nr, retire, 3) {
			t.Errorf("imported key must verify until %s", retire)
		}
		if s := stateOf(t, nr, t0, 3); s != Verifying {
			t.Errorf("state %s, want verifying", s)
		}
		if _, err := nr.Import(t0.Add(day), 3, secret, ImportOptions{}); !errors.Is(err, ErrIDInUse) ||
			!strings.Contains(err.Error(), formatTime(retire)) {
			t.Errorf("re-import over a verifying key: err %v; want ErrIDInUse naming %s", err, formatTime(retire))
		}
		if _, err := nr.Import(retire, 3, []byte("another key of sixteen+"), ImportOptions{}); err != nil {
			t.Errorf("import over a retired key: %v", err)
		}
	})

	t.Run("until", func(t *testing.T) {
		until := t0.Add(30 * day) // the old system keeps signing a month
		nr, err := r.Import(t0, 3, secret, ImportOptions{Until: until})
		if err != nil {
			t.Fatal(err)
		}
		if !verifies(nr, until.Add(9*day-time.Second), 3) || verifies(nr, until.Add(9*day), 3) {
			t.Error("key imported with Until must verify for 9 days after Until")
		}
		if got := mustSigner(t, nr, t0.Add(20*day)); got != 0 {
			t.Errorf("key %d signs, want 0", got)
		}
		if _, err := r.Import(t0, 3, secret, ImportOptions{Until: t0.Add(-9 * day)}); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("import of a key already retired: err %v", err)
		}
	})

	t.Run("sign", func(t *testing.T) {
		nr, err := r.Import(t0.Add(day), 3, secret, ImportOptions{Sign: true})
		if err != nil {
			t.Fatal(err)
		}
		if got := mustSigner(t, nr, t0.Add(day)); got != 3 {
			t.Errorf("key %d signs, want the imported 3", got)
		}
		if !verifies(nr, t0.Add(day), 0) {
			t.Error("key 0 must keep verifying")
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			id     int
			secret []byte
			opts   ImportOptions
			want   error
		}{
			{0, secret, ImportOptions{}, ErrIDInUse}, // the signing key
			{10, secret, ImportOptions{}, ErrInvalidOption},
			{3, nil, ImportOptions{}, ErrInvalidOption},
			{3, make([]byte, MaxKeySize+1), ImportOptions{}, ErrInvalidOption},
			{3, secret, ImportOptions{Sign: true, Until: t0}, ErrInvalidOption},
		} {
			_, err := r.Import(t0, tc.id, tc.secret, tc.opts)
			if !errors.Is(err, tc.want) {
				t.Errorf("File{Path: id %d}.Import(%d bytes, %+v): err %v, want %v", tc.id, len(tc.secret), tc.opts, err, tc.want)
			}
		}
		_, err := r.Import(t0, 0, secret, ImportOptions{})
		if err == nil || !strings.Contains(err.Error(), "key 0 is signing; rotate it out first") {
			t.Errorf("import over the signing key: %v", err)
		}
	})

	t.Run("short key warning", func(t *testing.T) {
		nr, err := r.Import(t0, 5, []byte("exim"), ImportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if w := strings.Join(nr.Warnings(t0), "\n"); !strings.Contains(w, "key 5 is only 4 bytes") {
			t.Errorf("warnings %q lack the short key", w)
		}
	})

	// The caller's slice is copied.
	buf := []byte("0123456789abcdef")
	nr, err := r.Import(t0, 6, buf, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	buf[0] = 'X'
	if k, _ := nr.VerificationKey(t0, 6, ""); k.Secret[0] != '0' {
		t.Error("Import kept the caller's slice")
	}
}

func TestWarnings(t *testing.T) {
	r := newTestKeyring(t, DefaultOptions())
	if w := r.Warnings(t0); len(w) != 0 {
		t.Errorf("fresh keyring warnings: %q", w)
	}
	if w := strings.Join(r.Warnings(t0.Add(-time.Hour)), "\n"); !strings.Contains(w, "no key signs now; a key starts signing at") ||
		!strings.Contains(w, "created in the future") {
		t.Errorf("before creation: %q", w)
	}
	r2, _, _ := r.Rotate(t0.Add(day), 0, &countingReader{next: 50})
	if w := strings.Join(r2.Warnings(t0.Add(20*day)), "\n"); !strings.Contains(w, "key 0 is retired") {
		t.Errorf("retired key not reported: %q", w)
	}
	// A keyring whose signing ends with no successor.
	only, err := Parse(mustEncode(t, r2))
	if err != nil {
		t.Fatal(err)
	}
	only.keys = only.keys[:1]
	if w := strings.Join(only.Warnings(t0), "\n"); !strings.Contains(w, "signing stops at") {
		t.Errorf("end of signing not reported: %q", w)
	}
	if w := strings.Join(only.Warnings(t0.Add(2*day)), "\n"); !strings.Contains(w, "no key signs now") {
		t.Errorf("no signer not reported: %q", w)
	}
}

func mustEncode(t *testing.T, r *Keyring) []byte {
	t.Helper()
	b, err := r.encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestNoSecretInStrings: formatting a keyring, a key or an error never
// shows secret bytes.
func TestNoSecretInStrings(t *testing.T) {
	secret := []byte("SECRET-KEY-MATERIAL-0123456789AB")
	r := newTestKeyring(t, DefaultOptions())
	r, err := r.Import(t0, 1, secret, ImportOptions{Sign: true})
	if err != nil {
		t.Fatal(err)
	}
	k, _ := r.SigningKey(t0, "example.com")
	_, err = r.Import(t0, 1, secret, ImportOptions{})
	for _, s := range []string{
		fmt.Sprint(r), fmt.Sprintf("%v %+v %#v %s", r, r, r, r),
		fmt.Sprintf("%v %+v %#v %s", k, k, k, k),
		fmt.Sprintf("%v", r.Keys(t0)), fmt.Sprintf("%+v", r.Keys(t0)),
		err.Error(),
	} {
		assertNoSecret(t, s, secret)
	}
}

// assertNoSecret fails if out contains secret in raw, hex or base64 form.
func assertNoSecret(t *testing.T, out string, secret []byte) {
	t.Helper()
	for _, form := range secretForms(secret) {
		if strings.Contains(out, form) {
			t.Errorf("output contains the secret (%q): %q", form, out)
		}
	}
}
