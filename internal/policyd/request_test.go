package policyd

import (
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func testReader(input string, maxLine, maxAttrs, maxSize int) *reader {
	return &reader{br: newReader(input), maxLine: maxLine, maxAttrs: maxAttrs, maxSize: maxSize}
}

func parseOne(input string) (*Request, error) {
	return testReader(input, DefaultMaxLineLen, DefaultMaxAttributes, DefaultMaxRequestSize).readRequest()
}

// withLine returns the captured Postfix request with the line of attribute
// name replaced by line ("" removes it); a name not in the request gets
// line added before the empty line.
func withLine(t *testing.T, name, line string) string {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(postfixRequest(t), "\n\n"), "\n")
	i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, name+"=") })
	switch {
	case i < 0:
		lines = append(lines, line)
	case line == "":
		lines = slices.Delete(lines, i, i+1)
	default:
		lines[i] = line
	}
	return strings.Join(lines, "\n") + "\n\n"
}

func TestParsePostfixRequest(t *testing.T) {
	req, err := parseOne(postfixRequest(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ got, want any }{
		{req.Type(), RequestSMTPDAccessPolicy},
		{req.ProtocolState(), StateRcpt},
		{req.ProtocolName(), "ESMTP"},
		{req.Sender(), "someone@remote.test"},
		{req.Recipient(), "alice@example.com"},
		{req.RecipientCount(), 0},
		{req.ClientAddress(), "127.0.0.1"},
		{req.ClientName(), "unknown"},
		{req.ReverseClientName(), "unknown"},
		{req.HeloName(), "client.test"},
		{req.SASLMethod(), ""},
		{req.SASLUsername(), ""},
		{req.QueueID(), ""},
		{req.Size(), int64(0)},
		{req.PolicyContext(), ""},
		{req.Len(), 29},
	} {
		if c.got != c.want {
			t.Errorf("got %#v, want %#v", c.got, c.want)
		}
	}
	if !regexp.MustCompile(`^[0-9a-f]+\.[0-9a-f]+\.[0-9a-f]+\.[0-9a-f]+$`).MatchString(req.Instance()) {
		t.Errorf("instance %q", req.Instance())
	}
	if v, ok := req.Get("encryption_keysize"); !ok || v != "0" {
		t.Errorf("Get(encryption_keysize) = %q, %v", v, ok)
	}
	if v, ok := req.Get("no_such_attribute"); ok || v != "" {
		t.Errorf("Get(no_such_attribute) = %q, %v", v, ok)
	}
	var names []string
	for k := range req.All() {
		names = append(names, k)
		if len(names) == 3 {
			break // All stops when asked to
		}
	}
	if !slices.Equal(names, []string{"request", "protocol_state", "protocol_name"}) {
		t.Errorf("All: %v", names)
	}
}

// TestParseValid: requests smtpd may send, each the captured request with
// one thing changed.
func TestParseValid(t *testing.T) {
	for _, c := range []struct {
		name, input string
		get         func(*Request) string
		want        string
	}{
		{"unknown attribute kept", withLine(t, "future_attribute", "future_attribute=some value"), func(r *Request) string {
			v, ok := r.Get("future_attribute")
			return fmt.Sprint(v, " ", ok)
		}, "some value true"},
		{"value with '='", withLine(t, "sender", "sender=prvs=0123abcdef=alice@example.com"), (*Request).Sender, "prvs=0123abcdef=alice@example.com"},
		{"null sender", withLine(t, "sender", "sender="), (*Request).Sender, ""},
		{"attribute absent", withLine(t, "sender", ""), (*Request).Sender, ""},
		{"UTF-8 value", withLine(t, "sender", "sender=élise@exämple.test"), (*Request).Sender, "élise@exämple.test"},
		{"value with spaces and tabs", withLine(t, "helo_name", "helo_name=a b\tc"), (*Request).HeloName, "a b\tc"},
		{"recipient count", withLine(t, "recipient_count", "recipient_count=2147483647"), func(r *Request) string { return fmt.Sprint(r.RecipientCount()) }, "2147483647"},
		{"empty recipient count", withLine(t, "recipient_count", "recipient_count="), func(r *Request) string { return fmt.Sprint(r.RecipientCount()) }, "0"},
		{"size", withLine(t, "size", "size=9223372036854775807"), func(r *Request) string { return fmt.Sprint(r.Size()) }, "9223372036854775807"},
		{"size with leading zeros", withLine(t, "size", "size=000123"), func(r *Request) string { return fmt.Sprint(r.Size()) }, "123"},
		{"DATA", withLine(t, "protocol_state", "protocol_state=DATA"), func(r *Request) string { return string(r.ProtocolState()) }, "DATA"},
		{"minimal", "request=smtpd_access_policy\n\n", func(r *Request) string { return fmt.Sprint(r.Len(), " ", r.Type()) }, "1 smtpd_access_policy"},
		{"other request type", "request=other\n\n", (*Request).Type, "other"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, err := parseOne(c.input)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.get(req); got != c.want {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
}

// TestParseMalformed: every way a request can be refused, each the
// captured request with one thing changed.
func TestParseMalformed(t *testing.T) {
	for _, c := range []struct {
		name, input string
		want        error
	}{
		{"line without '='", withLine(t, "sender", "sender"), ErrMissingEquals},
		{"empty name", withLine(t, "sender", "=alice@example.com"), ErrBadName},
		{"space in name", withLine(t, "sender", "send er=x"), ErrBadName},
		{"control character in name", withLine(t, "sender", "send\ter=x"), ErrBadName},
		{"non-ASCII name", withLine(t, "sender", "sénder=x"), ErrBadName},
		{"duplicate", withLine(t, "stress", "sender=other@remote.test"), ErrDuplicate},
		{"duplicate unknown attribute", withLine(t, "x", "x=1\nx=1"), ErrDuplicate},
		{"NUL in value", withLine(t, "sender", "sender=a\x00b@remote.test"), ErrNUL},
		{"NUL in name", withLine(t, "sender", "sen\x00der=x"), ErrNUL},
		{"non-UTF-8 value", withLine(t, "sender", "sender=\xe9lise@remote.test"), ErrNotUTF8},
		{"truncated UTF-8 value", withLine(t, "helo_name", "helo_name=a\xc3"), ErrNotUTF8},
		{"recipient count not a number", withLine(t, "recipient_count", "recipient_count=two"), ErrBadNumber},
		{"negative recipient count", withLine(t, "recipient_count", "recipient_count=-1"), ErrBadNumber},
		{"recipient count with sign", withLine(t, "recipient_count", "recipient_count=+1"), ErrBadNumber},
		{"recipient count with space", withLine(t, "recipient_count", "recipient_count= 1"), ErrBadNumber},
		{"recipient count too large", withLine(t, "recipient_count", "recipient_count=2147483648"), ErrBadNumber},
		{"size too large", withLine(t, "size", "size=9223372036854775808"), ErrBadNumber},
		{"size in hex", withLine(t, "size", "size=0x10"), ErrBadNumber},
		{"size with underscore", withLine(t, "size", "size=1_000"), ErrBadNumber},
		{"no request attribute", withLine(t, "request", ""), ErrNoRequestType},
		{"empty request", "\n", ErrNoRequestType},
		{"CRLF line ends", strings.ReplaceAll(postfixRequest(t), "\n", "\r\n"), ErrMissingEquals},
		{"truncated after a line", "request=smtpd_access_policy\nsender=x\n", ErrTruncated},
		{"truncated in a line", "request=smtpd_access_policy\nsend", ErrTruncated},
		{"truncated in the first line", "requ", ErrTruncated},
		{"line too long", withLine(t, "sender", "sender="+strings.Repeat("a", DefaultMaxLineLen)), ErrLineTooLong},
		{"endless line", "request=" + strings.Repeat("x", 1<<20), ErrLineTooLong},
		{"too many attributes", "request=x\n" + manyAttrs(DefaultMaxAttributes) + "\n", ErrTooManyAttributes},
		{"request too large", "request=x\n" + bigAttrs(9, 8000) + "\n", ErrRequestTooLarge},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := testReader(c.input, DefaultMaxLineLen, DefaultMaxAttributes, DefaultMaxRequestSize)
			req, err := r.readRequest()
			if !errors.Is(err, c.want) || !errors.Is(err, ErrMalformed) || req != nil {
				t.Fatalf("got %v, %v; want %v", req, err, c.want)
			}
			// Bounded memory whatever the input.
			if cap(r.buf) > 2*DefaultMaxRequestSize {
				t.Errorf("buffer grew to %d bytes", cap(r.buf))
			}
			t.Log(err)
		})
	}
}

func manyAttrs(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "a%d=%d\n", i, i)
	}
	return b.String()
}

func bigAttrs(n, size int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "a%d=%s\n", i, strings.Repeat("x", size))
	}
	return b.String()
}

// TestParseLimits: the limits are inclusive, one byte or attribute more is
// refused.
func TestParseLimits(t *testing.T) {
	const req = "request=x\n"
	for _, c := range []struct {
		name                       string
		input                      string
		maxLine, maxAttrs, maxSize int
		want                       error
	}{
		{"line at the limit", req + "a=" + strings.Repeat("x", 98) + "\n\n", 100, 10, 1000, nil},
		{"line over the limit", req + "a=" + strings.Repeat("x", 99) + "\n\n", 100, 10, 1000, ErrLineTooLong},
		{"attributes at the limit", req + manyAttrs(9) + "\n", 100, 10, 1000, nil},
		{"attributes over the limit", req + manyAttrs(10) + "\n", 100, 10, 1000, ErrTooManyAttributes},
		// request=x\n (10) + a=xxxxx\n (8) + \n (1) = 19 bytes.
		{"size at the limit", req + "a=xxxxx\n\n", 100, 10, 19, nil},
		{"size over the limit", req + "a=xxxxxx\n\n", 100, 10, 19, ErrRequestTooLarge},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := testReader(c.input, c.maxLine, c.maxAttrs, c.maxSize).readRequest()
			if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func TestParseStream(t *testing.T) {
	r := testReader("request=a\ninstance=1\n\nrequest=b\n\n", 100, 10, 1000)
	for _, want := range []string{"a", "b"} {
		req, err := r.readRequest()
		if err != nil || req.Type() != want {
			t.Fatalf("got %v, %v; want request=%s", req, err, want)
		}
	}
	if req, err := r.readRequest(); err != io.EOF || req != nil {
		t.Fatalf("at the end: %v, %v; want io.EOF", req, err)
	}
}
