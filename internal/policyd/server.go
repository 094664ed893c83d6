// Package policyd implements the server side of Postfix's SMTP access
// policy delegation protocol (SMTPD_POLICY_README), used with
//
//	smtpd_recipient_restrictions = ..., check_policy_service unix:/run/batv/policy.sock
//	smtpd_data_restrictions = check_policy_service unix:/run/batv/policy.sock
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
// decide safely with a fresh state.
package policyd

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// Defaults used when the corresponding Server field is zero.
const (
	// DefaultIdleTimeout is above the 300 s of both
	// smtpd_policy_service_max_idle (smtpd closes an unused connection
	// first) and smtpd_timeout (a slow SMTP client between RCPT and DATA
	// does not cost its transaction state).
	DefaultIdleTimeout = 10 * time.Minute
	// DefaultWriteTimeout bounds the write of each reply.
	DefaultWriteTimeout = 30 * time.Second
)

// Handler decides policy requests.
//
// Check is called for each request of a connection in turn; requests of
// different connections are checked concurrently. ctx carries the
// connection (ConnFromContext, TxState) and is canceled when ServeConn
// returns. The reply must pass Reply.Validate; an invalid reply, or a
// panic, is logged and the connection closed without a reply (smtpd then
// retries the request once on a new connection, then applies its
// smtpd_policy_service_default_action).
type Handler interface {
	Check(ctx context.Context, req *Request) Reply
}

// HandlerFunc adapts a function to the Handler interface.
type HandlerFunc func(ctx context.Context, req *Request) Reply

// Check calls f(ctx, req).
func (f HandlerFunc) Check(ctx context.Context, req *Request) Reply { return f(ctx, req) }

// Server serves policy connections one at a time per ServeConn call. Set
// its fields before the first call and do not change them after; its
// methods are safe for concurrent use.
type Server struct {
	// Handler decides the requests; it must not be nil.
	Handler Handler
	// IdleTimeout is how long the server waits for a complete request,
	// from the connection or the previous reply, before it closes the
	// connection. Zero means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// WriteTimeout bounds the write of each reply. Zero means
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
	// MaxLineLen, MaxAttributes and MaxRequestSize bound one request;
	// zero means DefaultMaxLineLen, DefaultMaxAttributes and
	// DefaultMaxRequestSize. A request beyond them is refused as
	// malformed.
	MaxLineLen, MaxAttributes, MaxRequestSize int
	// Logger receives protocol errors, invalid replies and panics (warn
	// and error) and connection events (debug). Nil discards them.
	Logger *slog.Logger
	// OnRequest, when not nil, is called after each request the handler
	// answered, with the reply as it will be sent (or an invalid one,
	// which is not sent) and the time Check took, e.g. for metrics. It
	// runs on the connection's goroutine before the reply is written.
	OnRequest func(req *Request, reply Reply, elapsed time.Duration)

	lastID atomic.Uint64
}

// Conn is one policy connection as a Handler sees it.
type Conn struct {
	id       uint64
	remote   net.Addr
	instance string
	tx       any
}

// ID numbers the server's connections from 1, for logs.
func (c *Conn) ID() uint64 { return c.id }

// RemoteAddr is the peer's address as the listener reports it.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// Instance is the instance attribute of the request being checked.
func (c *Conn) Instance() string { return c.instance }

type connKey struct{}

// ConnFromContext returns the connection of the request being checked, or
// nil when ctx does not come from a Server.
func ConnFromContext(ctx context.Context) *Conn {
	c, _ := ctx.Value(connKey{}).(*Conn)
	return c
}

// TxState returns the handler's state for the current mail transaction of
// the connection in ctx: a zero T the first time it is asked for in a
// transaction, then the same *T for every later request of that
// transaction (same instance attribute) on that connection. Use a single
// type T per server: asking for another type replaces the state.
//
// Outside a transaction (empty instance: CONNECT, EHLO, HELO, VRFY, ETRN)
// and when ctx does not come from a Server, there is nothing to keep: each
// call returns a new zero T.
func TxState[T any](ctx context.Context) *T {
	c := ConnFromContext(ctx)
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

var (
	discardLogger = slog.New(slog.DiscardHandler)
	aLongTimeAgo  = time.Unix(1, 0)
)

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return discardLogger
	}
	return s.Logger
}

func orDefault[T int | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// ServeConn serves the policy connection nc until the client closes it, a
// request is malformed, a timeout expires or ctx is canceled, and closes
// nc before it returns. Cancelling ctx is a graceful close: a request
// being checked gets its reply, then the connection is closed instead of
// waiting for the next request (a request that has begun to arrive is
// dropped, and smtpd retries it on a new connection). To stop at once,
// close nc.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) {
	defer nc.Close()
	c := &Conn{id: s.lastID.Add(1), remote: nc.RemoteAddr()}
	log := s.logger().With("conn", c.id)
	if s.Handler == nil {
		log.Error("policyd: Server.Handler is nil, closing connection")
		return
	}
	hctx, cancel := context.WithCancel(context.WithValue(context.WithoutCancel(ctx), connKey{}, c))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = nc.SetReadDeadline(aLongTimeAgo) })
	defer stop()

	r := &reader{
		br:       bufio.NewReaderSize(nc, 1024),
		maxLine:  orDefault(s.MaxLineLen, DefaultMaxLineLen),
		maxAttrs: orDefault(s.MaxAttributes, DefaultMaxAttributes),
		maxSize:  orDefault(s.MaxRequestSize, DefaultMaxRequestSize),
	}
	idle, wt := orDefault(s.IdleTimeout, DefaultIdleTimeout), orDefault(s.WriteTimeout, DefaultWriteTimeout)
	var wbuf []byte
	log.Debug("policyd: connection opened")
	for {
		// The deadline is set before ctx is checked: a cancellation after
		// the check moves it to the past.
		if err := nc.SetReadDeadline(time.Now().Add(idle)); err != nil {
			log.Debug("policyd: connection closed", "reason", err.Error())
			return
		}
		if ctx.Err() != nil {
			log.Debug("policyd: connection closed", "reason", "server draining")
			return
		}
		req, err := r.readRequest()
		if err != nil {
			s.logReadError(log, ctx, err, len(r.buf) > 0)
			return
		}
		if inst := req.Instance(); inst != c.instance {
			c.instance, c.tx = inst, nil
		}
		reply, ok := s.check(hctx, log, req)
		if !ok {
			return
		}
		wbuf = appendReply(wbuf[:0], reply)
		if err := nc.SetWriteDeadline(time.Now().Add(wt)); err != nil {
			log.Debug("policyd: connection closed", "reason", err.Error())
			return
		}
		if _, err := nc.Write(wbuf); err != nil {
			log.Warn("policyd: writing reply failed, closing connection", "err", err)
			return
		}
	}
}

// check calls the handler; ok is false when there is no reply to send.
func (s *Server) check(ctx context.Context, log *slog.Logger, req *Request) (reply Reply, ok bool) {
	start := time.Now()
	defer func() {
		if v := recover(); v != nil {
			log.Error("policyd: handler panicked, closing connection without a reply",
				"state", string(req.ProtocolState()), "panic", v, "stack", string(debug.Stack()))
			ok = false
		}
	}()
	reply = s.Handler.Check(ctx, req)
	if s.OnRequest != nil {
		s.OnRequest(req, reply, time.Since(start))
	}
	if err := reply.Validate(); err != nil {
		log.Error("policyd: handler returned an invalid reply, closing connection without a reply",
			"state", string(req.ProtocolState()), "err", err)
		return reply, false
	}
	return reply, true
}

// logReadError logs why a connection ends while reading a request;
// partial says whether part of a request had arrived.
func (s *Server) logReadError(log *slog.Logger, ctx context.Context, err error, partial bool) {
	timeout := errors.Is(err, os.ErrDeadlineExceeded)
	switch {
	case errors.Is(err, io.EOF):
		log.Debug("policyd: connection closed by client")
	case timeout && ctx.Err() != nil && partial:
		log.Info("policyd: request interrupted by server drain, closing connection")
	case timeout && ctx.Err() != nil:
		log.Debug("policyd: connection closed", "reason", "server draining")
	case timeout && partial:
		log.Warn("policyd: incomplete request at idle timeout, closing connection", "err", err)
	case timeout:
		log.Debug("policyd: connection closed", "reason", "idle timeout")
	case errors.Is(err, ErrMalformed):
		log.Warn("policyd: refusing a malformed request, closing connection", "err", err.Error())
	default:
		log.Debug("policyd: connection closed", "reason", err.Error())
	}
}
