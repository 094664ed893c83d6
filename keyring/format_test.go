package keyring

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

// validFile is a keyring in the documented format: key 0 stopped signing
// when key 1 started; key 1 signs. The check values were computed with
// Python's hmac module: hmac.new(secret, b"batv keyring check value",
// hashlib.sha256).hexdigest()[:12].
const validFile = `{
  "version": 1,
  "created": "2025-01-01T12:00:00Z",
  "max_lifetime_days": 7,
  "grace_seconds": 86400,
  "per_domain": false,
  "keys": [
    {
      "id": 0,
      "secret": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
      "check": "03ecfb28e8a6",
      "created": "2025-01-01T12:00:00Z",
      "not_before": "2025-01-01T12:00:00Z",
      "stopped_signing": "2025-01-08T13:00:00Z"
    },
    {
      "id": 1,
      "secret": "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=",
      "check": "a0a5639d1216",
      "created": "2025-01-08T12:00:00Z",
      "not_before": "2025-01-08T13:00:00Z"
    }
  ]
}
`

func TestParseValid(t *testing.T) {
	r, err := Parse([]byte(validFile))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2025, 1, 8, 12, 30, 0, 0, time.UTC)
	if id := mustSigner(t, r, at); id != 0 {
		t.Errorf("key %d signs, want 0", id)
	}
	if s := stateOf(t, r, at, 1); s != Pending {
		t.Errorf("key 1 is %s, want pending", s)
	}
	// The writer's output is the documented form, byte for byte.
	if got := string(mustEncode(t, r)); got != validFile {
		t.Errorf("re-encoded file differs:\n%s", got)
	}
}

// TestParseInvalid starts from the valid file and changes one thing.
func TestParseInvalid(t *testing.T) {
	rep := func(old, new string) func(string) string {
		return func(s string) string { return strings.Replace(s, old, new, 1) }
	}
	for _, tc := range []struct {
		name string
		edit func(string) string
		want error
		msgs []string // substrings of the error
	}{
		{"empty", func(string) string { return "" }, ErrInvalid, []string{"empty"}},
		{"truncated", func(s string) string { return s[:len(s)/2] }, ErrInvalid,
			[]string{"truncated", "line 13, column 7"}},
		{"bad JSON", rep(`"per_domain": false,`, `"per_domain": false,,`), ErrInvalid,
			[]string{"line 6, column 23", "invalid character ','"}},
		{"not an object", func(string) string { return "[1, 2]" }, ErrInvalid, []string{"line 1, column 1", "JSON object"}},
		{"trailing data", func(s string) string { return s + "{}" }, ErrInvalid, []string{"line 25, column 1", "after top-level value"}},
		{"unknown field", rep(`"version": 1,`, `"version": 1, "comment": "x",`), ErrInvalid,
			[]string{`unknown field "comment"`}},
		{"unknown key field", rep(`"id": 1,`, `"id": 1, "label": "x",`), ErrInvalid,
			[]string{`unknown field "label"`}},
		{"wrong type", rep(`"id": 1,`, `"id": "1",`), ErrInvalid,
			[]string{"line 17, column 15", "keys.id must be an integer, not a JSON string"}},
		{"fractional id", rep(`"id": 1,`, `"id": 1.5,`), ErrInvalid,
			[]string{"keys.id must be an integer"}},
		{"unsupported version", func(s string) string {
			return strings.Replace(strings.Replace(s, `"version": 1,`, `"version": 2,`, 1), `"version": 2,`, `"version": 2, "new_field": true,`, 1)
		}, ErrUnsupportedVersion, []string{"version 2", "reads version 1"}},
		{"version missing", rep(`"version": 1,`, ``), ErrInvalid,
			[]string{"version is missing"}},
		{"duplicate id", rep(`"id": 1,`, `"id": 0,`), ErrInvalid,
			[]string{"keys[0] and keys[1] both have id 0"}},
		{"id out of range", rep(`"id": 1,`, `"id": 10,`), ErrInvalid,
			[]string{"keys[1]: id is not a digit"}},
		{"bad base64", rep(`"ICEi`, `"I!Ei`), ErrInvalid,
			[]string{"key 1: secret is not valid base64"}},
		{"base64 with a line break", rep(`"ICEi`, `"ICEi\n`), ErrInvalid,
			[]string{"key 1: secret is not canonical base64"}},
		{"empty secret", rep(`"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="`, `""`), ErrInvalid, []string{"key 1: secret is empty"}},
		{"secret missing", rep(`"secret": "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=",`, ``), ErrInvalid, []string{"key 1: secret is missing"}},
		{"bad time", rep(`"2025-01-08T12:00:00Z"`, `"2025-01-08 12:00"`), ErrInvalid,
			[]string{"key 1: created", "RFC 3339"}},
		{"time before 1970", rep(`"2025-01-08T12:00:00Z"`, `"1969-12-31T00:00:00Z"`), ErrInvalid,
			[]string{"before 1970"}},
		{"lifetime too long", rep(`"max_lifetime_days": 7`, `"max_lifetime_days": 31`), ErrInvalid,
			[]string{"max_lifetime_days is 31"}},
		{"negative grace", rep(`"grace_seconds": 86400`, `"grace_seconds": -1`), ErrInvalid,
			[]string{"grace_seconds is -1"}},
		{"per_domain missing", rep(`"per_domain": false,`, ``), ErrInvalid,
			[]string{"per_domain is missing"}},
		{"keys missing", func(s string) string {
			return s[:strings.Index(s, `,
  "keys"`)] + "\n}\n"
		}, ErrInvalid, []string{"keys is missing"}},
		{"stopped before start", rep(`"stopped_signing": "2025-01-08T13:00:00Z"`, `"stopped_signing": "2024-12-31T00:00:00Z"`), ErrInvalid, []string{"key 0: stopped_signing 2024-12-31T00:00:00Z is before not_before"}},
		{"overlapping signers", rep(`"stopped_signing": "2025-01-08T13:00:00Z"`, `"stopped_signing": "2025-01-08T13:00:01Z"`), ErrInvalid, []string{"keys 0 and 1 would both sign at 2025-01-08T13:00:00Z"}},
		{"two open signers", rep(`,
      "stopped_signing": "2025-01-08T13:00:00Z"`, ``), ErrInvalid, []string{"keys 0 and 1 would both sign"}},
		{"secret damaged into other valid base64", rep(`"ICEiIyQl`, `"ICEiIyQm`), ErrInvalid,
			[]string{"key 1: the secret does not match its check value: the file is damaged"}},
		{"check damaged", rep(`"a0a5639d1216"`, `"a0a5639d1217"`), ErrInvalid,
			[]string{"key 1: the secret does not match its check value"}},
		{"check malformed", rep(`"a0a5639d1216"`, `"A0A5639D1216"`), ErrInvalid,
			[]string{"key 1: check is not 12 lowercase hex digits"}},
		{"year 10000 through an offset", rep(`"2025-01-08T12:00:00Z"`, `"9999-12-31T23:00:00-02:00"`), ErrInvalid, []string{"outside 1970 to 9999"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.edit(validFile)
			if data == validFile {
				t.Fatal("the edit changed nothing")
			}
			_, err := Parse([]byte(data))
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			for _, m := range tc.msgs {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q lacks %q", err, m)
				}
			}
			for _, k := range []string{"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="} {
				if strings.Contains(err.Error(), k) || strings.Contains(err.Error(), k[:20]) {
					t.Errorf("error %q shows a secret", err)
				}
			}
		})
	}
}

// TestParseReportsEveryProblem: validation does not stop at the first bad
// field.
func TestParseReportsEveryProblem(t *testing.T) {
	data := strings.NewReplacer(
		`"max_lifetime_days": 7`, `"max_lifetime_days": 0`,
		`"id": 1,`, `"id": 0,`,
		`"AAEC`, `"*AEC`,
	).Replace(validFile)
	_, err := Parse([]byte(data))
	for _, m := range []string{"max_lifetime_days is 0", "both have id 0", "secret is not valid base64"} {
		if err == nil || !strings.Contains(err.Error(), m) {
			t.Errorf("error %v lacks %q", err, m)
		}
	}
}

func TestPosition(t *testing.T) {
	data := []byte("ab\ncde\n\nf")
	for off, want := range map[int64]string{
		0: "line 1, column 1", 1: "line 1, column 2", 2: "line 1, column 3",
		3: "line 2, column 1", 5: "line 2, column 3", 7: "line 3, column 1",
		8: "line 4, column 1", 9: "line 4, column 2", 99: "line 4, column 2", -5: "line 1, column 1",
	} {
		if got := position(data, off); got != want {
			t.Errorf("position(%d) = %q, want %q", off, got, want)
		}
	}
}

// TestEncodeRoundTrip: a keyring with every kind of key encodes to a file
// that parses to the same keyring.
func TestEncodeRoundTrip(t *testing.T) {
	rnd := &countingReader{}
	opts := DefaultOptions()
	opts.PerDomain = true
	opts.Grace = 90 * time.Minute
	r, err := New(t0, rnd, opts)
	if err != nil {
		t.Fatal(err)
	}
	r, _, _ = r.Rotate(t0.Add(day), time.Hour, rnd)
	r, err = r.Import(t0.Add(day), 7, []byte("exim"), ImportOptions{Until: t0.Add(3 * day)})
	if err != nil {
		t.Fatal(err)
	}
	data := mustEncode(t, r)
	r2, err := Parse(data)
	if err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	if !bytes.Equal(mustEncode(t, r2), data) {
		t.Error("encode(parse(encode(r))) differs")
	}
	at := t0.Add(2 * day)
	if a, b := r.Keys(at), r2.Keys(at); len(a) != 3 || !equalInfos(a, b) {
		t.Errorf("keys differ:\n%+v\n%+v", a, b)
	}
	if !r2.PerDomain() || r2.Grace() != 90*time.Minute {
		t.Error("settings lost")
	}
}

func equalInfos(a, b []KeyInfo) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.ID != y.ID || x.State != y.State || x.Size != y.Size || !x.Created.Equal(y.Created) ||
			!x.NotBefore.Equal(y.NotBefore) || !x.StoppedSigning.Equal(y.StoppedSigning) || !x.Retires.Equal(y.Retires) {
			return false
		}
	}
	return true
}

// A file without check values (written by hand, or by the first batv)
// loads; the next write adds them.
func TestParseWithoutCheckValues(t *testing.T) {
	var b strings.Builder
	for _, line := range strings.SplitAfter(validFile, "\n") {
		if !strings.Contains(line, `"check"`) {
			b.WriteString(line)
		}
	}
	r, err := Parse([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(mustEncode(t, r)); got != validFile {
		t.Errorf("re-encoded file lacks the check values:\n%s", got)
	}
}
