package keyring

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/batv/batv/batv"
)

// The file as decoded: pointers tell a missing field from a zero value.
type fileKeyring struct {
	Version         *int       `json:"version"`
	Created         *string    `json:"created"`
	MaxLifetimeDays *int       `json:"max_lifetime_days"`
	GraceSeconds    *int64     `json:"grace_seconds"`
	PerDomain       *bool      `json:"per_domain"`
	Keys            *[]fileKey `json:"keys"`
}

type fileKey struct {
	ID             *int    `json:"id"`
	Secret         *string `json:"secret"`
	Check          *string `json:"check"`
	Created        *string `json:"created"`
	NotBefore      *string `json:"not_before"`
	StoppedSigning *string `json:"stopped_signing"`
}

// The file as written, fields in documentation order.
type outKeyring struct {
	Version         int      `json:"version"`
	Created         string   `json:"created"`
	MaxLifetimeDays int      `json:"max_lifetime_days"`
	GraceSeconds    int64    `json:"grace_seconds"`
	PerDomain       bool     `json:"per_domain"`
	Keys            []outKey `json:"keys"`
}

type outKey struct {
	ID             int    `json:"id"`
	Secret         string `json:"secret"`
	Check          string `json:"check"`
	Created        string `json:"created"`
	NotBefore      string `json:"not_before"`
	StoppedSigning string `json:"stopped_signing,omitempty"`
}

// Bounds on instants: day numbers must be positive, and the year must fit
// the four digits of RFC 3339.
var (
	minTime = time.Unix(0, 0).UTC()
	maxTime = time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)
)

// maxFileSize bounds what Load reads: a full keyring is about 2 KB.
const maxFileSize = 1 << 20

// Parse validates a keyring file's contents and returns the snapshot. It
// does not look at any file: Load also checks the file's mode. The error
// wraps ErrInvalid or ErrUnsupportedVersion and lists every problem found
// in the keys and fields (for a JSON syntax error, only that one, with its
// line and column).
func Parse(data []byte) (*Keyring, error) {
	r, problems, kind := parse(data)
	if kind != nil {
		return nil, fmt.Errorf("%w: %s", kind, strings.Join(problems, "; "))
	}
	return r, nil
}

// parse returns the keyring, or every problem found (each a phrase
// without secrets) and their class, ErrInvalid or ErrUnsupportedVersion.
func parse(data []byte) (r *Keyring, problems []string, kind error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, []string{"the file is empty"}, ErrInvalid
	}
	// The version first, leniently, so that a newer file is reported as
	// such rather than as unknown fields.
	var v struct {
		Version json.RawMessage `json:"version"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, []string{jsonProblem(data, err, int64(len(data)))}, ErrInvalid
	}
	if v.Version != nil && string(v.Version) != "null" {
		var n int
		if err := json.Unmarshal(v.Version, &n); err == nil && n != FormatVersion {
			return nil, []string{fmt.Sprintf("the file has format version %d; this batv reads version %d", n, FormatVersion)},
				ErrUnsupportedVersion
		}
	}

	var f fileKeyring
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, []string{jsonProblem(data, err, dec.InputOffset())}, ErrInvalid
	}
	// Data after the object was rejected by json.Unmarshal above.
	r, problems = build(&f)
	if len(problems) > 0 {
		return nil, problems, ErrInvalid
	}
	return r, nil, nil
}

// jsonProblem describes a decoding error with its line and column.
func jsonProblem(data []byte, err error, offset int64) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn) && syn.Offset >= int64(len(data)) && strings.Contains(syn.Error(), "unexpected end"):
		return fmt.Sprintf("%s: the file is truncated (unexpected end of JSON input)", position(data, int64(len(data))))
	case errors.As(err, &syn):
		return fmt.Sprintf("%s: %s", position(data, syn.Offset-1), syn.Error())
	case errors.As(err, &typ):
		what := strings.Fields(typ.Value + " ")[0] // "number 1.5" -> "number": no value
		if typ.Field == "" {
			return fmt.Sprintf("%s: the file must hold a JSON object, not a JSON %s", position(data, typ.Offset-1), what)
		}
		return fmt.Sprintf("%s: %s must be %s, not a JSON %s", position(data, typ.Offset-1), typ.Field, jsonKind(typ.Type.String()), what)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Sprintf("%s: the file is truncated (unexpected end of JSON input)", position(data, int64(len(data))))
	case strings.HasPrefix(err.Error(), `json: unknown field "`):
		// The decoder gives no position, nor the object the field is in.
		name, _ := strconv.Unquote(strings.TrimPrefix(err.Error(), "json: unknown field "))
		if !fieldName(name) {
			return "unknown field (its name is not shown: it does not look like a field name, and could be a secret pasted in the wrong place)"
		}
		return fmt.Sprintf("unknown field %q", name)
	default:
		return strings.TrimPrefix(err.Error(), "json: ")
	}
}

// fieldName reports whether s looks like a field name of the format: a
// short lowercase word with underscores, nothing that could hold a secret.
func fieldName(s string) bool {
	if s == "" || len(s) > 20 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 'a' || c > 'z') && c != '_' {
			return false
		}
	}
	return true
}

func jsonKind(goType string) string {
	switch strings.TrimLeft(goType, "*[]") {
	case "int", "int64":
		return "an integer"
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "keyring.fileKey", "keyring.fileKeyring":
		return "an object"
	}
	return goType
}

// position returns "line L, column C" for the byte at offset, both
// counted from 1; the column counts bytes.
func position(data []byte, offset int64) string {
	if offset < 0 {
		offset = 0
	}
	if offset > int64(len(data)) {
		offset = int64(len(data))
	}
	before := data[:offset]
	line := bytes.Count(before, []byte("\n")) + 1
	col := int(offset) - bytes.LastIndexByte(before, '\n')
	return fmt.Sprintf("line %d, column %d", line, col)
}

// build checks every field and key and returns the snapshot, or every
// problem found.
func build(f *fileKeyring) (*Keyring, []string) {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	r := &Keyring{}
	if f.Version == nil {
		add("version is missing")
	}
	r.created = parseTime(f.Created, "created", add)
	if f.MaxLifetimeDays == nil {
		add("max_lifetime_days is missing")
	} else if d := *f.MaxLifetimeDays; d < 1 || d > MaxLifetimeDaysLimit {
		add("max_lifetime_days is %d; it must be from 1 to %d", d, MaxLifetimeDaysLimit)
	} else {
		r.lifetime = d
	}
	if f.GraceSeconds == nil {
		add("grace_seconds is missing")
	} else if g := *f.GraceSeconds; g < 0 || g > int64(MaxGrace/time.Second) {
		add("grace_seconds is %d; it must be from 0 to %d (%s)", g, int64(MaxGrace/time.Second), MaxGrace)
	} else {
		r.grace = time.Duration(g) * time.Second
	}
	if f.PerDomain == nil {
		add("per_domain is missing")
	} else {
		r.perDomain = *f.PerDomain
	}
	if f.Keys == nil {
		add("keys is missing")
		return nil, problems
	}

	seen := map[int]int{} // id -> index in the file
	for i, fk := range *f.Keys {
		name := fmt.Sprintf("keys[%d]", i)
		var k key
		idOK := false
		if fk.ID == nil {
			add("%s: id is missing", name)
		} else if id := *fk.ID; id < batv.MinKeyID || id > batv.MaxKeyID {
			add("%s: id is not a digit from %d to %d", name, batv.MinKeyID, batv.MaxKeyID)
		} else {
			k.id, idOK = id, true
			name = fmt.Sprintf("key %d", id)
			if j, dup := seen[id]; dup {
				add("keys[%d] and keys[%d] both have id %d", j, i, id)
				idOK = false
			} else {
				seen[id] = i
			}
		}
		k.secret = decodeSecret(fk.Secret, name, add)
		if fk.Check != nil && k.secret != nil {
			switch {
			case !validCheck(*fk.Check):
				add("%s: check is not %d lowercase hex digits", name, checkLen)
			case *fk.Check != checkValue(k.secret):
				add("%s: the secret does not match its check value: the file is damaged (restore it from a backup or another host)", name)
			}
		}
		k.created = parseTime(fk.Created, name+": created", add)
		k.notBefore = parseTime(fk.NotBefore, name+": not_before", add)
		if fk.StoppedSigning != nil {
			k.stopped = parseTime(fk.StoppedSigning, name+": stopped_signing", add)
			if !k.stopped.IsZero() && !k.notBefore.IsZero() && k.stopped.Before(k.notBefore) {
				add("%s: stopped_signing %s is before not_before %s", name, formatTime(k.stopped), formatTime(k.notBefore))
			}
		}
		if idOK {
			r.keys = append(r.keys, k)
		}
	}
	if len(problems) > 0 {
		return nil, problems
	}
	problems = append(problems, r.consistency()...)
	if len(problems) > 0 {
		return nil, problems
	}
	r.finish()
	return r, nil
}

// finish sorts the keys and sets up the derived-key cache.
func (r *Keyring) finish() {
	slices.SortFunc(r.keys, func(a, b key) int { return a.id - b.id })
	if r.perDomain {
		r.cache = newDomainCache()
	}
}

// consistency checks what involves several keys, and the ranges the
// mutations must also respect.
func (r *Keyring) consistency() []string {
	var problems []string
	checkRange := func(what string, t time.Time) {
		if !t.IsZero() && (t.Before(minTime) || t.After(maxTime)) {
			problems = append(problems, fmt.Sprintf("%s %s is outside 1970 to 9999", what, formatTime(t)))
		}
	}
	checkRange("created", r.created)
	var signers []*key
	for i := range r.keys {
		k := &r.keys[i]
		name := fmt.Sprintf("key %d", k.id)
		checkRange(name+": created", k.created)
		checkRange(name+": not_before", k.notBefore)
		checkRange(name+": stopped_signing", k.stopped)
		if k.signs() {
			signers = append(signers, k)
		}
	}
	sort.Slice(signers, func(i, j int) bool { return signers[i].notBefore.Before(signers[j].notBefore) })
	for i := 1; i < len(signers); i++ {
		a, b := signers[i-1], signers[i]
		if r.stop(a).After(b.notBefore) {
			problems = append(problems, fmt.Sprintf(
				"keys %d and %d would both sign at %s: key %d must stop signing (stopped_signing) no later than key %d's not_before",
				a.id, b.id, formatTime(b.notBefore), a.id, b.id))
		}
	}
	return problems
}

func parseTime(s *string, name string, add func(string, ...any)) time.Time {
	if s == nil {
		add("%s is missing", name)
		return time.Time{}
	}
	// The messages never quote the value: a secret pasted into the wrong
	// field would be shown.
	t, err := time.Parse(time.RFC3339, *s)
	if err != nil {
		add("%s is not an RFC 3339 time such as 2025-01-31T12:00:00Z", name)
		return time.Time{}
	}
	if t.Before(minTime) {
		add("%s is before 1970", name)
		return time.Time{}
	}
	return t.UTC()
}

func decodeSecret(s *string, name string, add func(string, ...any)) []byte {
	if s == nil {
		add("%s: secret is missing", name)
		return nil
	}
	// The messages never quote the secret, even when it is malformed.
	b, err := base64.StdEncoding.DecodeString(*s)
	var corrupt base64.CorruptInputError
	switch {
	case errors.As(err, &corrupt):
		add("%s: secret is not valid base64 (bad character or length at byte %d)", name, int64(corrupt))
		return nil
	case err != nil:
		add("%s: secret is not valid base64", name)
		return nil
	case base64.StdEncoding.EncodeToString(b) != *s:
		add("%s: secret is not canonical base64 (line breaks, or bits set in the padding)", name)
		return nil
	case len(b) == 0:
		add("%s: secret is empty", name)
		return nil
	case len(b) > MaxKeySize:
		add("%s: secret is %d bytes; at most %d are allowed", name, len(b), MaxKeySize)
		return nil
	}
	return b
}

// checkLen is the length of a key's check value in hex digits: 48 bits,
// so that a damaged secret passes by chance once in 2^48.
const checkLen = 12

// checkValue is a key's check value: the first 48 bits of
// HMAC-SHA256(secret, "batv keyring check value"), in hex. It shows that
// the secret is the one that was written, and tells nothing about it.
func checkValue(secret []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("batv keyring check value"))
	return hex.EncodeToString(m.Sum(nil))[:checkLen]
}

func validCheck(s string) bool {
	if len(s) != checkLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// encode returns the file contents for the keyring: indented JSON, keys by
// id, instants in UTC, and a final newline.
func (r *Keyring) encode() ([]byte, error) {
	o := outKeyring{
		Version:         FormatVersion,
		Created:         formatTime(r.created),
		MaxLifetimeDays: r.lifetime,
		GraceSeconds:    int64(r.grace / time.Second),
		PerDomain:       r.perDomain,
		Keys:            make([]outKey, 0, len(r.keys)),
	}
	for i := range r.keys {
		k := &r.keys[i]
		ok := outKey{
			ID:        k.id,
			Secret:    base64.StdEncoding.EncodeToString(k.secret),
			Check:     checkValue(k.secret),
			Created:   formatTime(k.created),
			NotBefore: formatTime(k.notBefore),
		}
		if !k.stopped.IsZero() {
			ok.StoppedSigning = formatTime(k.stopped)
		}
		o.Keys = append(o.Keys, ok)
	}
	b, err := json.MarshalIndent(o, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("keyring: encode: %w", err)
	}
	return append(b, '\n'), nil
}
