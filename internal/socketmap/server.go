// Package socketmap implements the server side of Postfix's socketmap
// lookup protocol (socketmap_table(5)), so that a daemon can serve lookup
// tables to Postfix, e.g.
//
//	recipient_canonical_maps = socketmap:unix:/run/batv/map.sock:untag
//
// # Protocol
//
// The client sends a request as one netstring, "<len>:<name> <key>,",
// where len is the decimal byte length of name, a space and key. The
// server answers each request with one netstring whose payload is
// "OK <data>", "NOTFOUND ", "TEMP <reason>", "TIMEOUT <reason>" or
// "PERM <reason>" (see Reply). Postfix keeps a connection open for several
// requests, sends them one at a time, closes it after 10 s idle or 100 s in
// total, and, when a connection breaks before the reply, retries the
// request once on a new connection.
//
// # Strictness
//
// The server reads requests with a length limit (MaxRequestSize), never
// allocating from an unchecked length, and rejects anything a socketmap
// client cannot have sent: a length with a non-digit or a leading zero, a
// length above the limit, a missing ':' or ',', a payload without a space
// between name and key, a NUL byte. It does not guess: it logs the reason
// and closes the connection. The name may be empty and the key may be
// empty or contain spaces; both are passed to the Handler as they are (in
// particular, the key is not case-folded).
//
// # Key case
//
// Postfix does not fold socketmap keys in the table code: a socketmap is a
// "pattern" table (DICT_FLAG_PATTERN, like regexp: and pcre:), so the
// DICT_FLAG_FOLD_FIX flag that address lookups use does not apply to it,
// and postmap -q sends the key as given, with or without -f. But callers
// may fold before the lookup. Observed with Postfix 3.7 and
// recipient_canonical_maps (TestPostfixCanonicalKeyCase):
//
//   - cleanup, rewriting envelope and header recipients (also of the
//     bounces Postfix generates), sends the address with its original case;
//     it then looks up the result again, until a lookup is NOTFOUND;
//   - smtpd, validating a recipient (smtpd_reject_unlisted_recipient), sends
//     the whole address lowercased, because it looks up the address that
//     trivial-rewrite resolved, which smtpd lowercases.
//
// A handler that serves case-sensitive data (such as BATV tags) must
// therefore expect lowercased keys from smtpd.
package socketmap

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"

	"github.com/batv/batv/internal/serve"
)

// MaxRequestSize is the largest request payload ("name key") the server
// reads; a request announcing a longer one is refused and its connection
// closed. Postfix's own address limits are far below it.
const MaxRequestSize = 10000

// Handler answers the socketmap lookups of one connection, one after
// another. A panic in Lookup is recovered and logged, and answered with
// TEMP.
type Handler interface {
	Lookup(name, key string) Reply
}

// HandlerFunc adapts a function to the Handler interface.
type HandlerFunc func(name, key string) Reply

// Lookup calls f(name, key).
func (f HandlerFunc) Lookup(name, key string) Reply { return f(name, key) }

// connBufs are a connection's read and write buffers, pooled.
type connBufs struct {
	br   *bufio.Reader
	wbuf []byte
}

var bufPool = sync.Pool{New: func() any {
	// MaxRequestSize+1 holds a whole request payload and its ',' so that
	// it can be read with Peek, without copying.
	return &connBufs{br: bufio.NewReaderSize(nil, MaxRequestSize+1), wbuf: make([]byte, 0, 512)}
}}

// maxPooledWbuf is the largest write buffer kept in the pool.
const maxPooledWbuf = 16 << 10

// conn is one client connection.
type conn struct {
	c    *serve.Conn
	h    Handler
	bufs *connBufs
	name string // the last map name, to reuse its string
}

// ServeConn answers the requests on c with h until the client closes the
// connection, sends a malformed request, or the listener closes it; then
// it closes c.
func ServeConn(c *serve.Conn, h Handler) {
	sc := &conn{c: c, h: h}
	defer c.Close()
	sc.bufs = bufPool.Get().(*connBufs)
	sc.bufs.br.Reset(c)
	defer func() {
		sc.bufs.br.Reset(nil)
		if cap(sc.bufs.wbuf) <= maxPooledWbuf {
			bufPool.Put(sc.bufs)
		}
		sc.bufs = nil
	}()
	for {
		payload, err := readRequest(sc.bufs.br)
		if err != nil {
			sc.logReadError(err)
			return
		}
		c.Busy(true)
		name, key, err := parseRequest(payload)
		if err != nil {
			sc.logReadError(err)
			return
		}
		if string(name) != sc.name {
			sc.name = string(name)
		}
		reply := sc.lookup(sc.name, string(key))
		sc.bufs.wbuf = appendReply(sc.bufs.wbuf[:0], reply)
		_, err = c.Write(sc.bufs.wbuf)
		c.Busy(false)
		if err != nil {
			return
		}
	}
}

// lookup calls the handler and returns its reply as it will be sent.
func (c *conn) lookup(name, key string) (reply Reply) {
	defer func() {
		if v := recover(); v != nil {
			c.c.Log().Error("socketmap: lookup handler panicked", "map", name, "panic", v, "stack", string(debug.Stack()))
			reply = Temp(reasonPanic)
		}
	}()
	r := c.h.Lookup(name, key)
	reply = r.sanitize()
	if reply.Status != r.Status {
		c.c.Log().Warn("socketmap: invalid reply from lookup handler, sending TEMP", "map", name, "status", r.Status.String(), "reason", reply.Data)
	}
	return reply
}

// logReadError logs a malformed request; the listener's connection logs
// timeouts, closes and read errors, also in the middle of a request.
func (c *conn) logReadError(err error) {
	var pe *protocolError
	if errors.As(err, &pe) {
		c.c.SetEnd("error")
		c.c.Log().Warn("socketmap: malformed request, closing connection", "reason", pe.reason)
	}
}

// protocolError is a malformed request.
type protocolError struct{ reason string }

func (e *protocolError) Error() string { return e.reason }

var (
	errBadLength    = &protocolError{reason: "netstring length is not a decimal number"}
	errLeadingZero  = &protocolError{reason: "netstring length has a leading zero"}
	errTooLong      = &protocolError{reason: fmt.Sprintf("netstring length exceeds %d bytes", MaxRequestSize)}
	errMissingComma = &protocolError{reason: "netstring does not end with ','"}
	errMissingSpace = &protocolError{reason: "no space between map name and key"}
	errNUL          = &protocolError{reason: "NUL byte in request"}
)

// readRequest reads one netstring from br and returns its payload, which
// is valid until the next read from br. br's buffer must hold at least
// MaxRequestSize+1 bytes. A malformed request is a *protocolError; a read
// error is returned as it is, but for io.EOF after the first byte, which
// is io.ErrUnexpectedEOF (io.EOF: the client closed the connection
// between requests).
func readRequest(br *bufio.Reader) ([]byte, error) {
	b, err := br.ReadByte()
	if err != nil {
		return nil, err
	}
	if b < '0' || b > '9' {
		return nil, errBadLength
	}
	n := int(b - '0')
	for {
		b, err = br.ReadByte()
		if err != nil {
			return nil, truncated(err)
		}
		if b == ':' {
			break
		}
		if b < '0' || b > '9' {
			return nil, errBadLength
		}
		if n == 0 {
			return nil, errLeadingZero
		}
		n = n*10 + int(b-'0')
		if n > MaxRequestSize {
			return nil, errTooLong
		}
	}
	buf, err := br.Peek(n + 1)
	if err != nil {
		return nil, truncated(err)
	}
	if buf[n] != ',' {
		return nil, errMissingComma
	}
	_, _ = br.Discard(n + 1)
	return buf[:n], nil
}

func truncated(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// parseRequest splits a request payload into map name and key.
func parseRequest(p []byte) (name, key []byte, err error) {
	i := bytes.IndexByte(p, ' ')
	if i < 0 {
		return nil, nil, errMissingSpace
	}
	if bytes.IndexByte(p, 0) >= 0 {
		return nil, nil, errNUL
	}
	return p[:i], p[i+1:], nil
}
