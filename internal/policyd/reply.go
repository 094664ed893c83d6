package policyd

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxActionLen is the longest action the server sends. Postfix reads at
// most 4 × line_length_limit bytes (8192 by default) and turns the text
// into an SMTP reply; batv's texts are far shorter.
const MaxActionLen = 2048

// ErrBadReply is wrapped by every error of Reply.Validate.
var ErrBadReply = errors.New("policyd: invalid reply")

// Reply is the answer to one request: an action of Postfix's access(5)
// tables, sent as "action=<Action>" and an empty line. Build it with the
// constructors below; Validate says whether the server will send it.
type Reply struct {
	Action string
}

// Dunno is "DUNNO": no decision, smtpd goes on with the next restriction.
func Dunno() Reply { return Reply{Action: "DUNNO"} }

// OK is "OK": accept, skipping the rest of the restriction list.
func OK() Reply { return Reply{Action: "OK"} }

// Reject is "REJECT text": refuse with smtpd's reject code (554 or
// access_map_reject_code, 5.7.1 unless text starts with an enhanced status
// code). An empty text leaves Postfix's default text.
func Reject(text string) Reply { return withText("REJECT", text) }

// Defer is "DEFER text": refuse with a temporary error (450, 4.7.1 unless
// text starts with an enhanced status code).
func Defer(text string) Reply { return withText("DEFER", text) }

// DeferIfPermit is "DEFER_IF_PERMIT text": a temporary error, unless a
// later restriction rejects.
func DeferIfPermit(text string) Reply { return withText("DEFER_IF_PERMIT", text) }

// Hold is "HOLD text": accept the message but place it on the hold queue.
// The text is logged by Postfix, not shown to the client.
func Hold(text string) Reply { return withText("HOLD", text) }

// Redirect is "REDIRECT addr": deliver the message to addr instead of
// all its recipients.
func Redirect(addr string) Reply { return Reply{Action: "REDIRECT " + addr} }

// Prepend is "PREPEND name: value": add a header field at the top of the
// message. name must be a header field name (printable ASCII, no colon).
func Prepend(name, value string) Reply {
	return Reply{Action: "PREPEND " + name + ": " + value}
}

// Code is "NNN x.y.z text": refuse with the reply code (4NN or 5NN) and
// enhanced status code given. enhanced may be empty; text may be empty.
func Code(code int, enhanced, text string) Reply {
	a := strconv.Itoa(code)
	if enhanced != "" {
		a += " " + enhanced
	}
	return withText(a, text)
}

func withText(verb, text string) Reply {
	if text == "" {
		return Reply{Action: verb}
	}
	return Reply{Action: verb + " " + text}
}

// String returns the action.
func (r Reply) String() string { return r.Action }

// Validate reports whether the server may send r: a non-empty action of at
// most MaxActionLen bytes of valid UTF-8 without control characters (no
// newline, no NUL, which would break the protocol), starting with a
// command word; a numeric action must have a 4NN or 5NN code and an
// enhanced status code, if any, of the same class; PREPEND must be
// followed by a header field "name: value". Other command words are not
// checked: access(5) allows restriction names and classes as actions.
func (r Reply) Validate() error {
	a := r.Action
	switch {
	case a == "":
		return fmt.Errorf("%w: empty action", ErrBadReply)
	case len(a) > MaxActionLen:
		return fmt.Errorf("%w: action longer than %d bytes", ErrBadReply, MaxActionLen)
	case !utf8.ValidString(a):
		return fmt.Errorf("%w: action is not valid UTF-8", ErrBadReply)
	case a[0] == ' ':
		return fmt.Errorf("%w: action starts with a space", ErrBadReply)
	}
	for i := 0; i < len(a); i++ {
		if c := a[i]; c < ' ' || c == 0x7f {
			return fmt.Errorf("%w: control character %q in action", ErrBadReply, c)
		}
	}
	verb, rest, _ := strings.Cut(a, " ")
	if verb[0] >= '0' && verb[0] <= '9' {
		return checkCode(verb, rest)
	}
	if strings.EqualFold(verb, "PREPEND") {
		return checkHeader(rest)
	}
	return nil
}

// checkCode checks "NNN" and the enhanced status code that may start
// rest.
func checkCode(code, rest string) error {
	if len(code) != 3 || (code[0] != '4' && code[0] != '5') || !isDigits(code) {
		return fmt.Errorf("%w: reply code %q is not 4NN or 5NN", ErrBadReply, code)
	}
	word, _, _ := strings.Cut(rest, " ")
	if word == "" || word[0] < '0' || word[0] > '9' {
		return nil // no enhanced status code
	}
	parts := strings.Split(word, ".")
	if len(parts) != 3 || parts[0] != code[:1] ||
		len(parts[1]) < 1 || len(parts[1]) > 3 || !isDigits(parts[1]) ||
		len(parts[2]) < 1 || len(parts[2]) > 3 || !isDigits(parts[2]) {
		return fmt.Errorf("%w: enhanced status code %q does not suit reply code %s", ErrBadReply, word, code)
	}
	return nil
}

// checkHeader checks the "name: value" of PREPEND (RFC 5322 field name:
// printable ASCII except colon).
func checkHeader(h string) error {
	name, _, ok := strings.Cut(h, ":")
	if !ok || name == "" {
		return fmt.Errorf("%w: PREPEND without a header field", ErrBadReply)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%w: PREPEND header field name %q", ErrBadReply, name)
		}
	}
	return nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// appendReply appends the wire form of r, which must be valid.
func appendReply(b []byte, r Reply) []byte {
	b = append(b, "action="...)
	b = append(b, r.Action...)
	return append(b, "\n\n"...)
}
