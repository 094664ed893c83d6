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
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// MaxRequestSize is the largest request payload ("name key") the server
// reads; a request announcing a longer one is refused and its connection
// closed. Postfix's own address limits are far below it.
const MaxRequestSize = 10000

// Defaults used when the corresponding Server field is zero.
const (
	// DefaultIdleTimeout is well above Postfix's socketmap client timeouts
	// (10 s idle, 100 s per request and per connection), so Postfix is
	// normally the one that closes an idle connection.
	DefaultIdleTimeout = 10 * time.Minute
	// DefaultWriteTimeout bounds the write of each reply.
	DefaultWriteTimeout = 30 * time.Second
)

// ErrServerClosed is returned by Serve once Shutdown has been called.
var ErrServerClosed = errors.New("socketmap: server closed")

// Handler answers socketmap lookups.
//
// Lookup is called with the map name and the key of one request; requests
// on one connection are handled one after another, requests on different
// connections concurrently. ctx is canceled when Shutdown gives up waiting
// (its context ends) or the server otherwise closes the connection. A
// panic in Lookup is recovered and logged, and answered with TEMP.
type Handler interface {
	Lookup(ctx context.Context, name, key string) Reply
}

// HandlerFunc adapts a function to the Handler interface.
type HandlerFunc func(ctx context.Context, name, key string) Reply

// Lookup calls f(ctx, name, key).
func (f HandlerFunc) Lookup(ctx context.Context, name, key string) Reply {
	return f(ctx, name, key)
}

// Server serves the socketmap protocol on one or more listeners. Set its
// fields before the first call to Serve and do not change them after. Its
// methods are safe for concurrent use.
type Server struct {
	// Handler answers the lookups; it must not be nil.
	Handler Handler
	// IdleTimeout is how long the server waits for a complete request
	// (from the end of the previous reply, or from the connection) before
	// it closes the connection. Zero means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// WriteTimeout bounds the write of each reply. Zero means
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
	// MaxConns limits the number of open connections; 0 means no limit. A
	// connection over the limit is closed at once (logged as a warning);
	// Postfix retries once, then defers the lookup with a "lookup error".
	MaxConns int
	// Logger receives protocol errors (malformed requests, invalid handler
	// results, panics) as warnings and errors, and connection events at
	// debug level. Nil discards them.
	Logger *slog.Logger
	// OnLookup, when not nil, is called after each lookup with the
	// request, the reply as sent (see Reply) and the time the handler
	// took, e.g. for metrics. It runs on the connection's goroutine before
	// the reply is written, so it must be fast.
	OnLookup func(name, key string, reply Reply, elapsed time.Duration)
	// ConnContext, when not nil, returns the context for the lookups of a
	// new connection, derived from ctx (e.g. to carry the peer's
	// credentials to the Handler). It runs on the connection's goroutine.
	ConnContext func(ctx context.Context, c net.Conn) context.Context

	mu        sync.Mutex
	listeners map[*net.Listener]struct{}
	conns     map[*conn]struct{}
	drained   chan struct{} // made by Shutdown, closed when conns is empty
	closing   atomic.Bool
	lastID    atomic.Uint64
}

// Serve accepts connections on ln and serves each on its own goroutine
// until Shutdown is called or ln fails. It returns ErrServerClosed after
// Shutdown (closing ln if Shutdown came first), and otherwise the error
// that stopped it: an error wrapping net.ErrClosed when ln was closed by
// someone else. Temporary accept errors (e.g. out of file descriptors)
// are logged and retried with a backoff. Serve may be called with several
// listeners, concurrently.
func (s *Server) Serve(ln net.Listener) error {
	if s.Handler == nil {
		return errors.New("socketmap: Server.Handler is nil")
	}
	key := &ln
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners = map[*net.Listener]struct{}{}
	}
	s.listeners[key] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, key)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("socketmap: accept: %w", err)
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.logger().Warn("socketmap: accept failed, retrying", "listener", ln.Addr().String(), "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.startConn(nc)
	}
}

// Shutdown stops the server gracefully: it closes the listeners, closes
// the connections that are waiting for a request (a request being read is
// dropped: Postfix retries it on a new connection), lets each lookup in
// progress finish and send its reply and then closes that connection too,
// and waits until every connection is closed. If ctx ends first, Shutdown
// cancels the handlers' contexts, closes every remaining connection and
// returns ctx.Err() without waiting further. Otherwise it returns the
// first error from closing a listener, or nil. Shutdown may be called more
// than once; Serve returns ErrServerClosed once it has been called.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	var err error
	for key := range s.listeners {
		if e := (*key).Close(); e != nil && !errors.Is(e, net.ErrClosed) && err == nil {
			err = e
		}
	}
	// A connection waiting for a request wakes up and closes. A connection
	// inside a lookup sets its own read deadline after writing the reply,
	// then sees s.closing and closes; one that set its deadline just before
	// s.closing was set has it overridden here.
	for c := range s.conns {
		_ = c.rwc.SetReadDeadline(aLongTimeAgo)
	}
	if s.drained == nil {
		s.drained = make(chan struct{})
		if len(s.conns) == 0 {
			close(s.drained)
		}
	}
	drained := s.drained
	s.mu.Unlock()

	select {
	case <-drained:
		return err
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.cancel()
			_ = c.rwc.Close()
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}

// OpenConns returns the number of open connections.
func (s *Server) OpenConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

var aLongTimeAgo = time.Unix(1, 0)

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return discardLogger
	}
	return s.Logger
}

var discardLogger = slog.New(slog.DiscardHandler)

func (s *Server) idleTimeout() time.Duration {
	if s.IdleTimeout > 0 {
		return s.IdleTimeout
	}
	return DefaultIdleTimeout
}

func (s *Server) writeTimeout() time.Duration {
	if s.WriteTimeout > 0 {
		return s.WriteTimeout
	}
	return DefaultWriteTimeout
}

// conn is one client connection.
type conn struct {
	s      *Server
	rwc    net.Conn
	id     uint64
	ctx    context.Context
	cancel context.CancelFunc
	bufs   *connBufs
	name   string // the last map name, to reuse its string
}

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

func (s *Server) startConn(nc net.Conn) {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		_ = nc.Close()
		return
	}
	if s.MaxConns > 0 && len(s.conns) >= s.MaxConns {
		s.mu.Unlock()
		_ = nc.Close()
		s.logger().Warn("socketmap: connection refused: "+reasonOverloaded, "max_conns", s.MaxConns)
		return
	}
	c := &conn{s: s, rwc: nc, id: s.lastID.Add(1)}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if s.conns == nil {
		s.conns = map[*conn]struct{}{}
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	go c.serve()
}

func (c *conn) close() {
	c.cancel()
	_ = c.rwc.Close()
	s := c.s
	s.mu.Lock()
	delete(s.conns, c)
	if s.drained != nil && len(s.conns) == 0 {
		close(s.drained)
	}
	s.mu.Unlock()
}

func (c *conn) serve() {
	defer c.close()
	c.bufs = bufPool.Get().(*connBufs)
	c.bufs.br.Reset(c.rwc)
	defer func() {
		c.bufs.br.Reset(nil)
		if cap(c.bufs.wbuf) <= maxPooledWbuf {
			bufPool.Put(c.bufs)
		}
		c.bufs = nil
	}()
	log := c.s.logger()
	log.Debug("socketmap: connection opened", "conn", c.id)
	if c.s.ConnContext != nil {
		ctx := c.s.ConnContext(c.ctx, c.rwc)
		if ctx == nil {
			panic("socketmap: ConnContext returned nil")
		}
		c.ctx = ctx
	}
	idle, wt := c.s.idleTimeout(), c.s.writeTimeout()
	for {
		// The deadline is set before s.closing is checked; Shutdown sets
		// s.closing before it moves the deadline to the past.
		if err := c.rwc.SetReadDeadline(time.Now().Add(idle)); err != nil {
			log.Debug("socketmap: connection closed", "conn", c.id, "reason", err.Error())
			return
		}
		if c.s.closing.Load() {
			log.Debug("socketmap: connection closed", "conn", c.id, "reason", "server shutdown")
			return
		}
		payload, err := readRequest(c.bufs.br)
		if err != nil {
			c.logReadError(err)
			return
		}
		name, key, err := parseRequest(payload)
		if err != nil {
			c.logReadError(err)
			return
		}
		if string(name) != c.name {
			c.name = string(name)
		}
		reply := c.lookup(c.name, string(key))
		c.bufs.wbuf = appendReply(c.bufs.wbuf[:0], reply)
		if err := c.rwc.SetWriteDeadline(time.Now().Add(wt)); err != nil {
			log.Debug("socketmap: connection closed", "conn", c.id, "reason", err.Error())
			return
		}
		if _, err := c.rwc.Write(c.bufs.wbuf); err != nil {
			level := slog.LevelWarn
			if c.s.closing.Load() {
				level = slog.LevelDebug // closed by a forced shutdown
			}
			log.Log(c.ctx, level, "socketmap: writing reply failed, closing connection", "conn", c.id, "err", err)
			return
		}
	}
}

// lookup calls the handler and returns its reply as it will be sent.
func (c *conn) lookup(name, key string) (reply Reply) {
	var start time.Time
	if c.s.OnLookup != nil {
		start = time.Now()
	}
	defer func() {
		if v := recover(); v != nil {
			c.s.logger().Error("socketmap: lookup handler panicked", "conn", c.id, "map", name, "panic", v, "stack", string(debug.Stack()))
			reply = Temp(reasonPanic)
		}
		if c.s.OnLookup != nil {
			c.s.OnLookup(name, key, reply, time.Since(start))
		}
	}()
	r := c.s.Handler.Lookup(c.ctx, name, key)
	reply = r.sanitize()
	if reply.Status != r.Status {
		c.s.logger().Warn("socketmap: invalid reply from lookup handler, sending TEMP", "conn", c.id, "map", name, "status", r.Status.String(), "reason", reply.Data)
	}
	return reply
}

// logReadError logs why a connection is closed while reading a request.
func (c *conn) logReadError(err error) {
	log := c.s.logger()
	var pe *protocolError
	switch {
	case errors.As(err, &pe):
		if pe.err != nil && c.s.closing.Load() && isTimeout(pe.err) {
			log.Info("socketmap: request interrupted by server shutdown", "conn", c.id)
			return
		}
		log.Warn("socketmap: malformed request, closing connection", "conn", c.id, "reason", pe.Error())
	case errors.Is(err, io.EOF):
		log.Debug("socketmap: connection closed by client", "conn", c.id)
	case isTimeout(err) && c.s.closing.Load():
		log.Debug("socketmap: connection closed", "conn", c.id, "reason", "server shutdown")
	case isTimeout(err):
		log.Debug("socketmap: connection closed", "conn", c.id, "reason", "idle timeout")
	default:
		log.Debug("socketmap: connection closed", "conn", c.id, "reason", err.Error())
	}
}

func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// protocolError is a malformed or truncated request. err is the I/O error
// that cut a request short, if any.
type protocolError struct {
	reason string
	err    error
}

func (e *protocolError) Error() string {
	if e.err != nil {
		return e.reason + ": " + e.err.Error()
	}
	return e.reason
}

func (e *protocolError) Unwrap() error { return e.err }

var (
	errBadLength    = &protocolError{reason: "netstring length is not a decimal number"}
	errLeadingZero  = &protocolError{reason: "netstring length has a leading zero"}
	errTooLong      = &protocolError{reason: fmt.Sprintf("netstring length exceeds %d bytes", MaxRequestSize)}
	errMissingComma = &protocolError{reason: "netstring does not end with ','"}
	errMissingSpace = &protocolError{reason: "no space between map name and key"}
	errNUL          = &protocolError{reason: "NUL byte in request"}
)

const reasonTruncated = "truncated request"

// readRequest reads one netstring from br and returns its payload, which
// is valid until the next read from br. br's buffer must hold at least
// MaxRequestSize+1 bytes. An error before the first byte is returned as it
// is (io.EOF: the client closed the connection between requests); any
// other error is a *protocolError.
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
		err = io.ErrUnexpectedEOF
	}
	return &protocolError{reason: reasonTruncated, err: err}
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
