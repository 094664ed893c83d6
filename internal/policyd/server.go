// Package policyd is batv's Postfix policy-service front end: the server
// side of Postfix's SMTP access policy delegation protocol
// (SMTPD_POLICY_README) in server.go, request.go and reply.go, and the
// inbound BATV decisions of package policy over it in frontend.go (see
// Frontend), used with
//
//	smtpd_recipient_restrictions = ..., check_policy_service unix:batv/policy.sock
//	smtpd_data_restrictions = check_policy_service unix:batv/policy.sock
//
// The connections are package serve's, like those of every batv listener:
// the limit on open connections, the idle and write timeouts and the
// graceful shutdown are the listener's.
//
// # Protocol
//
// smtpd sends a request as "name=value" lines, each ended by a newline,
// and an empty line; the server answers "action=<action>" and an empty
// line, where the action is anything an access(5) table may return (see
// Reply). smtpd sends one request at a time and keeps the connection for
// later requests, across SMTP sessions: one policy connection per smtpd
// process, closed after smtpd_policy_service_max_idle (300 s) unused or
// smtpd_policy_service_max_ttl (1000 s), both checked between SMTP
// sessions. When a connection breaks before the reply, smtpd retries the
// request on a new connection (smtpd_policy_service_try_limit, 2 tries),
// then applies smtpd_policy_service_default_action (451 4.3.5).
//
// # Strictness
//
// The server reads each request within limits (Server.MaxLineLen,
// MaxAttributes, MaxRequestSize), never allocating from a size it has not
// checked, and refuses anything smtpd cannot have sent: a line without
// '=', an empty or non-printable attribute name, an attribute sent twice,
// a NUL byte, a value that is not UTF-8 (smtpd, with smtputf8_enable = yes
// as from compatibility level 1, refuses such commands before any
// restriction runs), a number that is not one, a request without the
// "request" attribute. It does not guess: as SMTPD_POLICY_README says a
// server in trouble must, it logs the reason and closes the connection
// without a reply. Attributes it does not know are kept (Request.Get) and
// never refused: Postfix adds new ones over versions.
//
// # Transactions
//
// The requests of one mail transaction (MAIL, each RCPT, DATA,
// END-OF-MESSAGE) carry the same instance attribute and come over one
// connection, one after another; a request with another instance means the
// previous transaction ended. TxState gives the handler a value per
// transaction that the server drops when the instance changes. It is a
// help, not a guarantee: a connection that breaks (the server restarts or
// drains, smtpd retries after an error) loses it, and a handler must still
// decide safely with a fresh state (Frontend does: see its doc).
package policyd

import (
	"bufio"
	"errors"
	"log/slog"
	"runtime/debug"

	"github.com/batv/batv/internal/serve"
)

// Handler decides policy requests.
//
// Check is called for each request of a connection in turn; requests of
// different connections are checked concurrently. The reply must pass
// Reply.Validate; an invalid reply, or a panic, is logged and the
// connection closed without a reply (smtpd then retries the request once
// on a new connection, then applies its
// smtpd_policy_service_default_action).
type Handler interface {
	Check(c *Conn, req *Request) Reply
}

// HandlerFunc adapts a function to the Handler interface.
type HandlerFunc func(c *Conn, req *Request) Reply

// Check calls f(c, req).
func (f HandlerFunc) Check(c *Conn, req *Request) Reply { return f(c, req) }

// Server serves policy connections one at a time per ServeConn call. Set
// its fields before the first call and do not change them after; its
// methods are safe for concurrent use.
type Server struct {
	// Handler decides the requests; it must not be nil.
	Handler Handler
	// MaxLineLen, MaxAttributes and MaxRequestSize bound one request;
	// zero means DefaultMaxLineLen, DefaultMaxAttributes and
	// DefaultMaxRequestSize. A request beyond them is refused as
	// malformed.
	MaxLineLen, MaxAttributes, MaxRequestSize int
}

// Conn is one policy connection as a Handler sees it.
type Conn struct {
	c        *serve.Conn
	instance string
	tx       any
}

// ID numbers the listener's connections from 1, for logs.
func (c *Conn) ID() uint64 { return c.c.ID() }

// Log is the listener's logger with the listener's name and the
// connection's id.
func (c *Conn) Log() *slog.Logger { return c.c.Log() }

// Instance is the instance attribute of the request being checked.
func (c *Conn) Instance() string { return c.instance }

// TxState returns the handler's state for the current mail transaction of
// the connection c: a zero T the first time it is asked for in a
// transaction, then the same *T for every later request of that
// transaction (same instance attribute) on that connection. Use a single
// type T per server: asking for another type replaces the state.
//
// Outside a transaction (empty instance: CONNECT, EHLO, HELO, VRFY, ETRN)
// and when c is nil, there is nothing to keep: each call returns a new
// zero T.
func TxState[T any](c *Conn) *T {
	if c == nil || c.instance == "" {
		return new(T)
	}
	if v, ok := c.tx.(*T); ok {
		return v
	}
	v := new(T)
	c.tx = v
	return v
}

func orDefault(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

// ServeConn serves the policy connection c until the client closes it, a
// request is malformed, or the listener closes it (idle timeout,
// shutdown), and closes c before it returns. A request is one unit of
// work (serve.Conn.Busy) from its first byte to its reply: a listener
// that shuts down closes the connection between requests, never in the
// middle of one.
func (s *Server) ServeConn(c *serve.Conn) {
	defer c.Close()
	log := c.Log()
	if s.Handler == nil {
		c.SetEnd("error")
		log.Error("policyd: Server.Handler is nil, closing connection")
		return
	}
	pc := &Conn{c: c}
	r := &reader{
		br:       bufio.NewReaderSize(c, 1024),
		maxLine:  orDefault(s.MaxLineLen, DefaultMaxLineLen),
		maxAttrs: orDefault(s.MaxAttributes, DefaultMaxAttributes),
		maxSize:  orDefault(s.MaxRequestSize, DefaultMaxRequestSize),
	}
	var wbuf []byte
	for {
		// Wait for the first byte of a request outside a unit of work, so
		// that a shutdown closes the connection here.
		if _, err := r.br.Peek(1); err != nil {
			return // the listener logged why, if it was worth a line
		}
		c.Busy(true)
		req, err := r.readRequest()
		if err != nil {
			if errors.Is(err, ErrMalformed) {
				c.SetEnd("error")
				log.Warn("policyd: refusing a malformed request, closing connection", "err", err.Error())
			}
			return
		}
		if inst := req.Instance(); inst != pc.instance {
			pc.instance, pc.tx = inst, nil
		}
		reply, ok := s.check(pc, req)
		if !ok {
			c.SetEnd("error")
			return
		}
		wbuf = appendReply(wbuf[:0], reply)
		if _, err := c.Write(wbuf); err != nil {
			return // logged by the listener's connection
		}
		c.Busy(false)
	}
}

// check calls the handler; ok is false when there is no reply to send.
func (s *Server) check(c *Conn, req *Request) (reply Reply, ok bool) {
	defer func() {
		if v := recover(); v != nil {
			c.Log().Error("policyd: handler panicked, closing connection without a reply",
				"state", string(req.ProtocolState()), "panic", v, "stack", string(debug.Stack()))
			ok = false
		}
	}()
	reply = s.Handler.Check(c, req)
	if err := reply.Validate(); err != nil {
		c.Log().Error("policyd: handler returned an invalid reply, closing connection without a reply",
			"state", string(req.ProtocolState()), "err", err)
		return reply, false
	}
	return reply, true
}
