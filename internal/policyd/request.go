package policyd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"iter"
	"strconv"
	"unicode/utf8"
)

// Defaults of the read limits, used when the corresponding Server field is
// zero.
const (
	// DefaultMaxLineLen is the longest "name=value" line read, without its
	// newline. Postfix's own attribute reader stops at 4 ×
	// line_length_limit, 8192 bytes with the default line_length_limit;
	// the SMTP command a value comes from is at most 2048 bytes there.
	DefaultMaxLineLen = 8192
	// DefaultMaxAttributes is the most attributes one request may have.
	// Postfix 3.7 sends 31; each new version adds a few.
	DefaultMaxAttributes = 128
	// DefaultMaxRequestSize is the most bytes of one request, newlines and
	// the final empty line included. A request of Postfix 3.7 without TLS
	// is about 600 bytes.
	DefaultMaxRequestSize = 64 << 10
)

// ErrMalformed is wrapped by every error about a request that smtpd cannot
// have sent; the errors below say which rule it breaks, and the server's
// log line adds the line number and the detail.
var ErrMalformed = errors.New("policyd: malformed request")

// The rules a request can break; each wraps ErrMalformed.
var (
	ErrLineTooLong       = fmt.Errorf("%w: line too long", ErrMalformed)
	ErrRequestTooLarge   = fmt.Errorf("%w: request too large", ErrMalformed)
	ErrTooManyAttributes = fmt.Errorf("%w: too many attributes", ErrMalformed)
	ErrMissingEquals     = fmt.Errorf("%w: line without '='", ErrMalformed)
	ErrBadName           = fmt.Errorf("%w: invalid attribute name", ErrMalformed)
	ErrDuplicate         = fmt.Errorf("%w: duplicate attribute", ErrMalformed)
	ErrNUL               = fmt.Errorf("%w: NUL byte", ErrMalformed)
	ErrNotUTF8           = fmt.Errorf("%w: value is not valid UTF-8", ErrMalformed)
	ErrBadNumber         = fmt.Errorf("%w: numeric attribute is not a number", ErrMalformed)
	ErrNoRequestType     = fmt.Errorf("%w: no request attribute", ErrMalformed)
	ErrTruncated         = fmt.Errorf("%w: connection closed in the middle of a request", ErrMalformed)
)

// State is the SMTP protocol state of a request, the protocol_state
// attribute: the command at which smtpd evaluates the restriction that
// holds check_policy_service.
type State string

// The protocol states smtpd sends. A request made while smtpd processes
// BDAT is sent as StateData.
const (
	StateConnect      State = "CONNECT"
	StateEHLO         State = "EHLO"
	StateHELO         State = "HELO"
	StateMail         State = "MAIL"
	StateRcpt         State = "RCPT"
	StateData         State = "DATA"
	StateEndOfMessage State = "END-OF-MESSAGE"
	StateVRFY         State = "VRFY"
	StateETRN         State = "ETRN"
)

// Attribute names batv reads, as smtpd sends them.
const (
	AttrRequest           = "request"
	AttrProtocolState     = "protocol_state"
	AttrProtocolName      = "protocol_name"
	AttrInstance          = "instance"
	AttrSender            = "sender"
	AttrRecipient         = "recipient"
	AttrRecipientCount    = "recipient_count"
	AttrClientAddress     = "client_address"
	AttrClientName        = "client_name"
	AttrReverseClientName = "reverse_client_name"
	AttrHeloName          = "helo_name"
	AttrSASLMethod        = "sasl_method"
	AttrSASLUsername      = "sasl_username"
	AttrQueueID           = "queue_id"
	AttrSize              = "size"
	AttrPolicyContext     = "policy_context"
)

// RequestSMTPDAccessPolicy is the value of the request attribute in every
// request smtpd sends.
const RequestSMTPDAccessPolicy = "smtpd_access_policy"

// known numbers the attributes that have accessors; the order matches
// knownNames.
type known uint8

const (
	kRequest known = iota
	kProtocolState
	kProtocolName
	kInstance
	kSender
	kRecipient
	kRecipientCount
	kClientAddress
	kClientName
	kReverseClientName
	kHeloName
	kSASLMethod
	kSASLUsername
	kQueueID
	kSize
	kPolicyContext
	numKnown
)

func knownIndex(name []byte) (known, bool) {
	switch string(name) { // no allocation: the compiler compares in place
	case AttrRequest:
		return kRequest, true
	case AttrProtocolState:
		return kProtocolState, true
	case AttrProtocolName:
		return kProtocolName, true
	case AttrInstance:
		return kInstance, true
	case AttrSender:
		return kSender, true
	case AttrRecipient:
		return kRecipient, true
	case AttrRecipientCount:
		return kRecipientCount, true
	case AttrClientAddress:
		return kClientAddress, true
	case AttrClientName:
		return kClientName, true
	case AttrReverseClientName:
		return kReverseClientName, true
	case AttrHeloName:
		return kHeloName, true
	case AttrSASLMethod:
		return kSASLMethod, true
	case AttrSASLUsername:
		return kSASLUsername, true
	case AttrQueueID:
		return kQueueID, true
	case AttrSize:
		return kSize, true
	case AttrPolicyContext:
		return kPolicyContext, true
	}
	return 0, false
}

// Request is one policy request: the attributes in the order received.
// Attributes without an accessor (Postfix adds new ones over versions) are
// kept and available through Get and All. A Request is not modified by the
// server once the handler has it, and may be kept.
//
// Postfix sends an attribute whose value is unknown either not at all, as
// "name=" or, for a number, as "name=0"; the accessors return "" or 0 in
// all three cases.
type Request struct {
	attrs          []attr
	known          [numKnown]int32 // index+1 into attrs, 0 if absent
	recipientCount int
	size           int64
}

type attr struct{ name, value string }

func (r *Request) knownValue(k known) string {
	if i := r.known[k]; i > 0 {
		return r.attrs[i-1].value
	}
	return ""
}

// Get returns the value of the attribute name and whether the request has
// it.
func (r *Request) Get(name string) (string, bool) {
	for _, a := range r.attrs {
		if a.name == name {
			return a.value, true
		}
	}
	return "", false
}

// All yields every attribute, name and value, in the order received.
func (r *Request) All() iter.Seq2[string, string] {
	return func(yield func(string, string) bool) {
		for _, a := range r.attrs {
			if !yield(a.name, a.value) {
				return
			}
		}
	}
}

// Len returns the number of attributes.
func (r *Request) Len() int { return len(r.attrs) }

// Type returns the request attribute: RequestSMTPDAccessPolicy from smtpd.
// It is never empty: a request without it is refused as malformed.
func (r *Request) Type() string { return r.knownValue(kRequest) }

// ProtocolState returns the SMTP command being checked.
func (r *Request) ProtocolState() State { return State(r.knownValue(kProtocolState)) }

// ProtocolName returns "SMTP" or "ESMTP" (or "LMTP" from an LMTP server).
func (r *Request) ProtocolName() string { return r.knownValue(kProtocolName) }

// Instance returns the identifier of the mail transaction, the same for
// every request of one transaction on one connection, and empty before
// MAIL FROM (at CONNECT, EHLO, HELO, VRFY, ETRN) and after the transaction
// ends.
func (r *Request) Instance() string { return r.knownValue(kInstance) }

// Sender returns the envelope sender as smtpd parsed it, without angle
// brackets: "" for the null sender.
func (r *Request) Sender() string { return r.knownValue(kSender) }

// Recipient returns the envelope recipient of an RCPT request. At DATA and
// END-OF-MESSAGE it is set only when the transaction has exactly one
// accepted recipient.
func (r *Request) Recipient() string { return r.knownValue(kRecipient) }

// RecipientCount returns the number of recipients smtpd accepted; it is
// non-zero only at DATA and END-OF-MESSAGE.
func (r *Request) RecipientCount() int { return r.recipientCount }

// ClientAddress returns the SMTP client's IP address as text ("192.0.2.1",
// "2001:db8::1"), or what smtpd uses when it has none (such as "unknown").
func (r *Request) ClientAddress() string { return r.knownValue(kClientAddress) }

// ClientName returns the SMTP client's verified host name, or "unknown".
func (r *Request) ClientName() string { return r.knownValue(kClientName) }

// ReverseClientName returns the client's host name from the reverse DNS
// lookup, not verified, or "unknown".
func (r *Request) ReverseClientName() string { return r.knownValue(kReverseClientName) }

// HeloName returns the name the client gave in EHLO or HELO.
func (r *Request) HeloName() string { return r.knownValue(kHeloName) }

// SASLMethod returns the SASL mechanism the client authenticated with, ""
// when it did not authenticate.
func (r *Request) SASLMethod() string { return r.knownValue(kSASLMethod) }

// SASLUsername returns the SASL login name, "" when the client did not
// authenticate.
func (r *Request) SASLUsername() string { return r.knownValue(kSASLUsername) }

// QueueID returns the queue ID of the message, "" before smtpd has opened
// a queue file (which it does at the first accepted RCPT).
func (r *Request) QueueID() string { return r.knownValue(kQueueID) }

// Size returns the message size: the SIZE given in MAIL FROM (0 without
// one), and the actual size at END-OF-MESSAGE.
func (r *Request) Size() int64 { return r.size }

// PolicyContext returns the policy_context attribute: the value of the
// client's smtpd_policy_service_policy_context setting.
func (r *Request) PolicyContext() string { return r.knownValue(kPolicyContext) }

// reader reads requests from one connection with bounded memory: lines
// are gathered into buf, which never grows beyond maxSize, and the
// request's strings are cut from one string made of buf.
type reader struct {
	br                         *bufio.Reader
	maxLine, maxAttrs, maxSize int
	buf                        []byte
	spans                      []span
}

// span locates one "name=value" line in reader.buf.
type span struct{ start, eq, end int }

// readRequest reads one request. It returns io.EOF when the connection
// ends cleanly between requests, and otherwise an error wrapping one of
// the Err* values of this package or the I/O error.
func (r *reader) readRequest() (*Request, error) {
	r.buf, r.spans = r.buf[:0], r.spans[:0]
	for line := 1; ; line++ {
		start := len(r.buf)
		if err := r.readLine(line); err != nil {
			if errors.Is(err, io.EOF) && len(r.buf) == 0 {
				return nil, io.EOF
			}
			return nil, err
		}
		if len(r.buf) == start { // the empty line: end of request
			break
		}
		if len(r.spans) == r.maxAttrs {
			return nil, fmt.Errorf("%w: more than %d", ErrTooManyAttributes, r.maxAttrs)
		}
		l := r.buf[start:]
		eq := bytes.IndexByte(l, '=')
		if eq < 0 {
			return nil, fmt.Errorf("%w: line %d: %s", ErrMissingEquals, line, quote(l))
		}
		if !validName(l[:eq]) {
			return nil, fmt.Errorf("%w: line %d: %s", ErrBadName, line, quote(l[:eq]))
		}
		if !utf8.Valid(l[eq+1:]) {
			return nil, fmt.Errorf("%w: line %d: %s", ErrNotUTF8, line, quote(l))
		}
		for _, s := range r.spans {
			if bytes.Equal(r.buf[s.start:s.eq], l[:eq]) {
				return nil, fmt.Errorf("%w: line %d: %s", ErrDuplicate, line, quote(l[:eq]))
			}
		}
		r.spans = append(r.spans, span{start, start + eq, len(r.buf)})
	}
	return r.build()
}

// readLine appends the next line, without its newline, to r.buf, checking
// the limits before every append.
func (r *reader) readLine(line int) error {
	start := len(r.buf)
	for {
		chunk, err := r.br.ReadSlice('\n')
		n := len(chunk)
		if err == nil {
			n-- // the newline
		}
		lineLen := len(r.buf) - start + n
		if lineLen > r.maxLine {
			return fmt.Errorf("%w: line %d exceeds %d bytes", ErrLineTooLong, line, r.maxLine)
		}
		// The lines so far with their newlines, this one with its newline,
		// and the empty line still to come after a non-empty one.
		size := len(r.buf) + len(r.spans) + n + 1
		if lineLen > 0 {
			size++
		}
		if size > r.maxSize {
			return fmt.Errorf("%w: more than %d bytes", ErrRequestTooLarge, r.maxSize)
		}
		if bytes.IndexByte(chunk[:n], 0) >= 0 {
			return fmt.Errorf("%w: line %d", ErrNUL, line)
		}
		r.buf = append(r.buf, chunk[:n]...)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(r.buf) > 0:
			return fmt.Errorf("%w (%d bytes read)", ErrTruncated, len(r.buf))
		default:
			return err
		}
	}
}

// build makes the Request from r.buf and r.spans: one string for all
// values, the attribute slice, the typed fields.
func (r *reader) build() (*Request, error) {
	s := string(r.buf)
	req := &Request{attrs: make([]attr, len(r.spans))}
	for i, sp := range r.spans {
		a := attr{name: s[sp.start:sp.eq], value: s[sp.eq+1 : sp.end]}
		req.attrs[i] = a
		if k, ok := knownIndex(r.buf[sp.start:sp.eq]); ok {
			req.known[k] = int32(i + 1)
		}
	}
	if req.known[kRequest] == 0 {
		return nil, ErrNoRequestType
	}
	count, err := number(req, kRecipientCount, 31)
	if err != nil {
		return nil, err
	}
	req.recipientCount = int(count)
	if req.size, err = number(req, kSize, 63); err != nil {
		return nil, err
	}
	return req, nil
}

// number parses a numeric attribute that must fit in bits bits: absent or
// empty is 0, anything but decimal digits is an error.
func number(req *Request, k known, bits int) (int64, error) {
	v := req.knownValue(k)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, bits)
	if err != nil {
		return 0, fmt.Errorf("%w: %s=%s", ErrBadNumber, req.attrs[req.known[k]-1].name, quote([]byte(v)))
	}
	return int64(n), nil
}

// validName reports whether name is a non-empty attribute name of
// printable ASCII without spaces (and without '=', which ends it).
func validName(name []byte) bool {
	for _, c := range name {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return len(name) > 0
}

// quote shows at most 64 bytes of b, quoted, for a log line.
func quote(b []byte) string {
	const max = 64
	if len(b) > max {
		return strconv.Quote(string(b[:max])) + "..."
	}
	return strconv.Quote(string(b))
}
