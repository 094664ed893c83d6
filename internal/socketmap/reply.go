package socketmap

import (
	"strconv"
	"unicode/utf8"
)

// MaxReplySize is the largest reply payload (status word, space and data,
// without the netstring framing) that Postfix's socketmap client accepts;
// the limit is compiled into Postfix (dict_sockmap.c,
// DICT_SOCKMAP_DEF_MAX_REPLY). An OK reply whose payload would be longer is
// sent as TEMP instead.
const MaxReplySize = 100000

// MaxReasonSize is the length in bytes above which the reason of a TEMP,
// TIMEOUT or PERM reply is truncated (Postfix logs at most 200 characters
// of it).
const MaxReasonSize = 200

// Status is the outcome of a lookup, the first word of a reply. The zero
// value is not a valid status: a Reply carrying it is sent as TEMP.
type Status uint8

// The reply statuses of the socketmap protocol.
const (
	// StatusOK: the key was found; Reply.Data is the result.
	StatusOK Status = iota + 1
	// StatusNotFound: the key was not found (Postfix goes on with the next
	// table, or with the unchanged address).
	StatusNotFound
	// StatusTemp: temporary failure; Postfix defers the mail or the
	// lookup. Reply.Data is the reason.
	StatusTemp
	// StatusTimeout: a timeout; Postfix treats it as StatusTemp.
	StatusTimeout
	// StatusPerm: permanent failure (Postfix treats it as a configuration
	// error). Reply.Data is the reason.
	StatusPerm
)

// String returns the status word as sent on the wire ("OK", "NOTFOUND",
// "TEMP", "TIMEOUT", "PERM"), or "Status(N)" for an invalid status.
func (s Status) String() string {
	switch s {
	case StatusOK:
		return "OK"
	case StatusNotFound:
		return "NOTFOUND"
	case StatusTemp:
		return "TEMP"
	case StatusTimeout:
		return "TIMEOUT"
	case StatusPerm:
		return "PERM"
	}
	return "Status(" + strconv.Itoa(int(s)) + ")"
}

// Reply is the answer to one lookup.
//
// For StatusOK, Data is the lookup result. It must be valid UTF-8 without
// ASCII control characters (bytes 0x00-0x1F and 0x7F), and "OK " plus Data
// must fit in MaxReplySize; otherwise the server sends a TEMP reply with a
// fixed reason instead, so that a bad result can neither corrupt the stream
// nor reach Postfix. An empty Data is sent as "OK " and Postfix takes it as
// found, with an empty result.
//
// For StatusTemp, StatusTimeout and StatusPerm, Data is a free-text
// reason: invalid UTF-8 and control characters are replaced with '?' and it
// is truncated to MaxReasonSize bytes. For StatusNotFound, Data is ignored.
type Reply struct {
	Status Status
	Data   string
}

// OK returns a reply for a key that was found, with result data.
func OK(data string) Reply { return Reply{Status: StatusOK, Data: data} }

// NotFound returns the reply for a key that was not found.
func NotFound() Reply { return Reply{Status: StatusNotFound} }

// Temp returns a temporary-failure reply with a reason.
func Temp(reason string) Reply { return Reply{Status: StatusTemp, Data: reason} }

// Timeout returns a timeout reply with a reason.
func Timeout(reason string) Reply { return Reply{Status: StatusTimeout, Data: reason} }

// Perm returns a permanent-failure reply with a reason.
func Perm(reason string) Reply { return Reply{Status: StatusPerm, Data: reason} }

// String returns the reply payload as sent, e.g. "OK data" or "NOTFOUND ",
// after the checks described at Reply.
func (r Reply) String() string {
	r = r.sanitize()
	return r.Status.String() + " " + r.Data
}

// Reasons sent in place of a reply that cannot be sent as it is.
const (
	reasonBadStatus = "invalid reply status from lookup handler"
	reasonBadData   = "invalid characters in lookup result"
	reasonTooLong   = "lookup result too long"
	reasonPanic     = "internal error in lookup handler"
)

// sanitize returns the reply as the server sends it: an OK reply with
// invalid data and a reply with an invalid status become TEMP replies with
// a fixed reason, a reason is cleaned and truncated, and the data of a
// NOTFOUND reply is dropped. It allocates only when a reason needs
// cleaning.
func (r Reply) sanitize() Reply {
	switch r.Status {
	case StatusOK:
		if len("OK ")+len(r.Data) > MaxReplySize {
			return Temp(reasonTooLong)
		}
		if !validData(r.Data) {
			return Temp(reasonBadData)
		}
		return r
	case StatusNotFound:
		return Reply{Status: StatusNotFound}
	case StatusTemp, StatusTimeout, StatusPerm:
		r.Data = cleanReason(r.Data)
		return r
	}
	return Temp(reasonBadStatus)
}

// validData reports whether s is valid UTF-8 without ASCII control
// characters.
func validData(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			return false
		}
		if c >= utf8.RuneSelf {
			return utf8.ValidString(s[i:]) && noControls(s[i:])
		}
	}
	return true
}

func noControls(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// cleanReason replaces invalid UTF-8 and control characters with '?' and
// truncates the result to MaxReasonSize bytes on a character boundary.
func cleanReason(s string) string {
	if len(s) <= MaxReasonSize && validData(s) {
		return s
	}
	b := make([]byte, 0, min(len(s), MaxReasonSize))
	for i, r := range s {
		// RuneError of width 1 is invalid UTF-8 (a literal U+FFFD has
		// width 3 and is kept).
		if r < 0x20 || r == 0x7f || (r == utf8.RuneError && !fullRune(s[i:])) {
			r = '?'
		}
		if len(b)+utf8.RuneLen(r) > MaxReasonSize {
			break
		}
		b = utf8.AppendRune(b, r)
	}
	return string(b)
}

func fullRune(s string) bool {
	_, n := utf8.DecodeRuneInString(s)
	return n > 1
}

// appendReply appends the netstring encoding of r, which must have been
// sanitized, to dst.
func appendReply(dst []byte, r Reply) []byte {
	word := r.Status.String()
	dst = strconv.AppendInt(dst, int64(len(word)+1+len(r.Data)), 10)
	dst = append(dst, ':')
	dst = append(dst, word...)
	dst = append(dst, ' ')
	dst = append(dst, r.Data...)
	return append(dst, ',')
}
