package milter

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/batv/batv/internal/metrics"
	"github.com/batv/batv/policy"
)

// Roles say what a listener's milter does.
type Roles uint8

// The roles. A listener has one or both.
const (
	// Outbound signs the envelope sender of mail our users send.
	Outbound Roles = 1 << iota
	// Inbound verifies tagged recipients of bounces and rewrites them.
	Inbound
)

// String returns "outbound", "inbound" or "outbound+inbound".
func (r Roles) String() string {
	switch r {
	case Outbound:
		return "outbound"
	case Inbound:
		return "inbound"
	case Outbound | Inbound:
		return "outbound+inbound"
	}
	return "none"
}

// Server serves the milter protocol on a listener. go-milter runs each
// session; Server adds what it lacks: a connection limit, idle timeouts,
// buffered reads, one write per reply, and a graceful shutdown.
type Server struct {
	// Name labels the listener in logs and metrics.
	Name string
	// Roles are what the milter does on this listener.
	Roles Roles
	// Policy returns the policy in force; each message is decided with the
	// policy current at its MAIL command.
	Policy func() *policy.Policy
	// Logger receives one line per decision and per session problem.
	Logger *slog.Logger
	// Metrics records decisions and connections; nil records nothing.
	Metrics *metrics.Metrics
	// MaxConns limits concurrent MTA connections; 0 means no limit. A
	// connection over the limit is closed at once, so the MTA applies its
	// default action at once rather than after its connect timeout.
	MaxConns int
	// IdleTimeout closes a connection on which the MTA sends nothing for
	// this long (0: 15 minutes, well above Postfix's own timeouts).
	IdleTimeout time.Duration
	// Now returns the time; nil means time.Now.
	Now func() time.Time

	mu       sync.Mutex
	ln       net.Listener
	conns    map[*conn]struct{}
	draining bool
	lastID   atomic.Uint64
	wg       sync.WaitGroup
	// Refusals at the connection limit are logged at most once per
	// refusalLogEvery, with the number refused since the last line.
	refusedLogged time.Time
	refusedSince  int
}

// refusalLogEvery bounds the log lines a connection flood causes.
const refusalLogEvery = 10 * time.Second

// DefaultIdleTimeout is used when Server.IdleTimeout is 0.
const DefaultIdleTimeout = 15 * time.Minute

// readBufferSize holds a macro packet and its command, what Postfix sends
// per round trip, in one read; a longer packet (a long header) takes a few
// reads more. It is per connection, so it counts at a few hundred
// connections: 1 KiB instead of bufio's 4 KiB saved 1.5 MiB of peak RSS
// at 256 connections, for about 7% more CPU there (less live heap, more
// frequent garbage collection of go-milter's allocations); see
// docs/performance.md.
const readBufferSize = 1024

// writeTimeout bounds each write to the MTA (a variable for the tests).
var writeTimeout = 30 * time.Second

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("milter: server closed")

// Serve accepts MTA connections on ln until Shutdown, and returns
// ErrServerClosed then.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.ln = ln
	if s.conns == nil {
		s.conns = map[*conn]struct{}{}
	}
	s.mu.Unlock()
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			draining := s.draining
			s.mu.Unlock()
			if draining || errors.Is(err, net.ErrClosed) {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.logger().Error("accept failed", "listener", s.Name, "err", err)
			time.Sleep(100 * time.Millisecond) // e.g. out of file descriptors
			continue
		}
		s.serveConn(nc)
	}
}

func (s *Server) serveConn(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	c := &conn{
		Conn: nc,
		srv:  s,
		id:   s.lastID.Add(1),
		r:    bufio.NewReaderSize(nc, readBufferSize),
		idle: s.IdleTimeout,
	}
	if c.idle == 0 {
		c.idle = DefaultIdleTimeout
	}
	c.log = s.logger().With("listener", s.Name, "conn", c.id)
	s.mu.Lock()
	if s.draining || (s.MaxConns > 0 && len(s.conns) >= s.MaxConns) {
		draining := s.draining
		refused, logNow := 0, false
		if !draining {
			s.refusedSince++
			if now := time.Now(); now.Sub(s.refusedLogged) >= refusalLogEvery {
				refused, logNow = s.refusedSince, true
				s.refusedLogged, s.refusedSince = now, 0
			}
		}
		s.mu.Unlock()
		nc.Close()
		if !draining {
			s.Metrics.ConnRefused(s.Name)
		}
		if logNow {
			s.logger().Warn("connection refused: limit reached", "listener", s.Name, "max_connections", s.MaxConns,
				"refused", refused, "per", refusalLogEvery)
		}
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.Metrics.ConnOpened(s.Name)

	actions, protocol := s.negotiation()
	ms := &gomilter.Server{
		NewMilter: func() gomilter.Milter { return &session{c: c} },
		Actions:   actions,
		Protocol:  protocol,
	}
	// Serve starts the session in a goroutine of its own and returns at
	// once: the one-connection listener has nothing more to give. The
	// end of the session is seen when go-milter closes the connection
	// (conn.Close).
	_ = ms.Serve(&oneConnListener{c: c})
}

// sessionEnded runs once per connection, when go-milter has closed it.
func (s *Server) sessionEnded(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	how := c.endReason()
	c.logEnd(how)
	s.Metrics.ConnClosed(s.Name, how)
	s.wg.Done()
}

// negotiation returns what the milter asks of the MTA: only the actions and
// callbacks its roles need, since every callback is a round trip.
func (s *Server) negotiation() (gomilter.OptAction, gomilter.OptProtocol) {
	p := s.Policy()
	var act gomilter.OptAction
	proto := gomilter.OptNoHelo | gomilter.OptNoData | gomilter.OptNoUnknown |
		gomilter.OptNoEOH | gomilter.OptNoBody
	if s.Roles&Outbound != 0 {
		act |= gomilter.OptChangeFrom
	}
	if s.Roles&Inbound != 0 {
		act |= gomilter.OptAddRcpt | gomilter.OptRemoveRcpt | gomilter.OptAddHeader |
			gomilter.OptChangeHeader | gomilter.OptQuarantine
	}
	// The MTA need not wait for a reply to CONNECT, MAIL or a header:
	// their callbacks only take note (the MTA may not offer these; see
	// conn.agree).
	proto |= gomilter.OptNoConnReply | gomilter.OptNoMailReply
	if s.Roles&Inbound == 0 || !p.RemovesForgedHeaders() {
		proto |= gomilter.OptNoHeaders
	} else {
		proto |= gomilter.OptNoHeaderReply
	}
	if s.Roles&Inbound == 0 && !p.SignsForRecipients() {
		proto |= gomilter.OptNoRcptTo
	}
	return act, proto
}

// Shutdown stops accepting connections, closes idle ones, lets messages in
// flight finish, and closes what is left when ctx ends. The MTA applies its
// milter default action to a message whose connection was closed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	if s.ln != nil {
		s.ln.Close()
	}
	for c := range s.conns {
		c.drain()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		n := len(s.conns)
		for c := range s.conns {
			c.setEnd("shutdown")
			c.shut()
		}
		s.mu.Unlock()
		<-done
		s.logger().Warn("shutdown deadline passed: closed connections with messages in flight",
			"listener", s.Name, "connections", n)
		return ctx.Err()
	}
}

// OpenConns returns the number of open MTA connections.
func (s *Server) OpenConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Server) now() time.Time {
	if s.Now == nil {
		return time.Now()
	}
	return s.Now()
}

// conn is one MTA connection: buffered reads with an idle deadline, and
// writes that hold message modifications back until the reply that
// follows them, so that a reply is one write.
type conn struct {
	net.Conn
	srv  *Server
	id   uint64
	r    *bufio.Reader
	log  *slog.Logger
	idle time.Duration
	wbuf []byte
	mbuf []byte // a modification packet being built (session.go)

	// Connection facts from CONNECT, kept across go-milter's fresh
	// Milter objects.
	facts policy.Client
	// offer is the protocol steps the MTA offered in its option
	// negotiation (offerKnown: it has been read), and proto what was
	// agreed: what the milter asked for, within the offer. The session
	// leaves out the replies proto's SMFIP_NR_* bits say the MTA does not
	// wait for.
	offer      uint32
	offerKnown bool
	peeked     bool
	agreed     bool
	proto      gomilter.OptProtocol

	mu         sync.Mutex
	fr         framing // what go-milter has read, for the end-of-session log
	inMessage  bool
	draining   bool
	closeAfter bool // close after the next reply: draining and in a message
	end        string
	shutOnce   sync.Once
	endOnce    sync.Once
}

func (c *conn) Read(p []byte) (int, error) {
	if c.r.Buffered() == 0 {
		_ = c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	}
	if !c.peeked {
		c.peekOffer()
	}
	n, err := c.r.Read(p)
	if n > 0 {
		c.mu.Lock()
		c.fr.feed(p[:n])
		c.mu.Unlock()
	}
	if err == nil || err == io.EOF {
		if err == io.EOF {
			c.setEnd("closed")
		}
		return n, err
	}
	// The session ends here. go-milter logs any read error but EOF, so
	// log it here with the connection's context, and hand it EOF.
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		c.setEnd("timeout")
		c.log.Info("session closed: the MTA sent nothing for too long", "idle", c.idle)
	case errors.Is(err, net.ErrClosed):
		c.setEnd("closed") // closed by Shutdown, which set the reason
	default:
		c.setEnd("error")
		c.log.Warn("session read failed", "err", err)
	}
	return n, io.EOF
}

// peekOffer reads ahead, without consuming anything, the MTA's first
// packet, and keeps the protocol steps it offers if it is the option
// negotiation (length, 'O', version, actions, protocol). go-milter
// answers with the milter's wishes whatever the MTA offered, and an MTA
// such as Sendmail gives up on a milter that asks for more than it
// offered; Write trims the answer to the offer.
func (c *conn) peekOffer() {
	c.peeked = true
	hdr, err := c.r.Peek(4)
	if err != nil {
		return
	}
	n := binary.BigEndian.Uint32(hdr)
	if n < 13 || n > 64 {
		return // not an option negotiation: go-milter deals with it
	}
	pkt, err := c.r.Peek(4 + int(n))
	if err != nil || pkt[4] != 'O' {
		return
	}
	c.offer, c.offerKnown = binary.BigEndian.Uint32(pkt[13:17]), true
}

// agree trims go-milter's option negotiation reply p to the MTA's offer
// and records what was agreed. It returns the packet to send.
func (c *conn) agree(p []byte) []byte {
	proto := binary.BigEndian.Uint32(p[13:17])
	if c.offerKnown {
		proto &= c.offer
	} else {
		// No offer read: assume the MTA waits for every reply.
		proto &^= uint32(noReplyFlags)
	}
	c.proto, c.agreed = gomilter.OptProtocol(proto), true
	q := append([]byte(nil), p...)
	binary.BigEndian.PutUint32(q[13:17], proto)
	return q
}

// noReplyFlags are the SMFIP_NR_* bits: events the MTA does not wait on.
const noReplyFlags = gomilter.OptNoHeaderReply | gomilter.OptNoConnReply | gomilter.OptNoHeloReply |
	gomilter.OptNoMailReply | gomilter.OptNoRcptReply | gomilter.OptNoDataReply | gomilter.OptNoUnknownReply |
	gomilter.OptNoEOHReply | gomilter.OptNoBodyReply

// unanswered reports whether the MTA does not wait for a reply to the
// packet it sent last (go-milter reads one packet, then answers it).
func (c *conn) unanswered() bool {
	c.mu.Lock()
	cmd := c.fr.cmd
	c.mu.Unlock()
	switch cmd {
	case 'C':
		return c.noReply(gomilter.OptNoConnReply)
	case 'M':
		return c.noReply(gomilter.OptNoMailReply)
	case 'L':
		return c.noReply(gomilter.OptNoHeaderReply)
	}
	return false
}

// noReply reports whether the MTA does not wait for a reply to the event
// that flag (an SMFIP_NR_* bit) names.
func (c *conn) noReply(flag gomilter.OptProtocol) bool { return c.proto&flag != 0 }

// noReplyEvents are the SMFIP_NR_* bits of a connection, for the log: a
// slog.LogValuer, so the names are made only when the line is written (the
// debug "connect" line costs no formatting at other levels) and a JSON log
// gets the names, not the number.
type noReplyEvents gomilter.OptProtocol

// LogValue is String as a log value.
func (e noReplyEvents) LogValue() slog.Value { return slog.StringValue(e.String()) }

// String names the events the MTA agreed not to wait on:
// "connect+mail+header" with Postfix and Sendmail, "none" with an MTA that
// did not offer it.
func (e noReplyEvents) String() string {
	var names []string
	for _, ev := range []struct {
		flag gomilter.OptProtocol
		name string
	}{
		{gomilter.OptNoConnReply, "connect"}, {gomilter.OptNoHeloReply, "helo"},
		{gomilter.OptNoMailReply, "mail"}, {gomilter.OptNoRcptReply, "rcpt"},
		{gomilter.OptNoDataReply, "data"}, {gomilter.OptNoUnknownReply, "unknown"},
		{gomilter.OptNoHeaderReply, "header"}, {gomilter.OptNoEOHReply, "eoh"},
		{gomilter.OptNoBodyReply, "body"},
	} {
		if gomilter.OptProtocol(e)&ev.flag != 0 {
			names = append(names, ev.name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, "+")
}

// isModification reports whether a milter packet code is a message
// modification (sent before the end-of-message reply, no answer).
func isModification(code byte) bool {
	switch code {
	case '+', '-', '2', 'b', 'e', 'h', 'i', 'm', 'q':
		return true
	}
	return false
}

const maxHeldBytes = 64 << 10

func (c *conn) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= 17 && p[4] == 'O' && !c.agreed {
		p = c.agree(p)
	}
	// A reply to an event the MTA does not wait on would be read as the
	// answer to its next question, and every answer after it would be
	// one step late. The session sends none, but go-milter answers
	// "continue" by itself to a header packet it cannot split into a
	// name and a value (a NUL inside a header): drop such a reply.
	if len(p) >= 5 && !isModification(p[4]) && c.unanswered() {
		return n, nil
	}
	// go-milter writes each packet with one Write; a whole packet of
	// modification is held back for the reply that follows it.
	if len(p) >= 5 && int(binary.BigEndian.Uint32(p)) == len(p)-4 && isModification(p[4]) &&
		len(c.wbuf)+len(p) <= maxHeldBytes {
		c.wbuf = append(c.wbuf, p...)
		return n, nil
	}
	_ = c.Conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	var err error
	if len(c.wbuf) > 0 {
		c.wbuf = append(c.wbuf, p...)
		_, err = c.Conn.Write(c.wbuf)
		c.wbuf = c.wbuf[:0]
	} else {
		_, err = c.Conn.Write(p)
	}
	if err != nil {
		c.setEnd("error")
		return 0, err
	}
	c.mu.Lock()
	closeNow := c.closeAfter && !c.inMessage
	c.mu.Unlock()
	if closeNow {
		c.setEnd("shutdown")
		c.shut()
	}
	return n, nil
}

// shut closes the connection once. go-milter's session then fails its
// next read or write and ends, calling Close.
func (c *conn) shut() error {
	var err error
	c.shutOnce.Do(func() { err = c.Conn.Close() })
	return err
}

// Close is called by go-milter, and only by go-milter, when the session
// ends: its session loop always defers it. The server forgets the
// connection then. Everything else closes the connection with shut.
func (c *conn) Close() error {
	err := c.shut()
	c.endOnce.Do(func() { c.srv.sessionEnded(c) })
	return err
}

// beginMessage and endMessage bracket a transaction, for the drain.
func (c *conn) beginMessage() {
	c.mu.Lock()
	c.inMessage = true
	c.mu.Unlock()
}

func (c *conn) endMessage(replied bool) {
	c.mu.Lock()
	c.inMessage = false
	closeNow := c.draining && !replied
	if c.draining && replied {
		c.closeAfter = true
	}
	c.mu.Unlock()
	if closeNow {
		c.setEnd("shutdown")
		c.shut()
	}
}

// drain closes the connection now if it is between messages, or after the
// reply that ends its message.
func (c *conn) drain() {
	c.mu.Lock()
	c.draining = true
	idle := !c.inMessage
	c.mu.Unlock()
	if idle {
		c.setEnd("shutdown")
		c.shut()
	}
}

func (c *conn) setEnd(how string) {
	c.mu.Lock()
	if c.end == "" {
		c.end = how
	}
	c.mu.Unlock()
}

func (c *conn) endReason() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.end == "" {
		// go-milter closed the connection: after a QUIT, or because it
		// gave up on the session (a malformed, oversized or unknown
		// packet, a callback that failed or panicked).
		if c.fr.quit() {
			return "quit"
		}
		return "error"
	}
	return c.end
}

// oneConnListener hands one connection to a go-milter Server, then says it
// is closed, so that Serve returns as soon as the session has started: a
// connection costs one goroutine, the session's, not two.
type oneConnListener struct {
	c     *conn
	given bool
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if !l.given {
		l.given = true
		return l.c, nil
	}
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return l.c.LocalAddr() }

// RedirectGoMilterLog sends go-milter's messages, which it writes with the
// standard log package, to logger at warning level.
func RedirectGoMilterLog(logger *slog.Logger) io.Writer {
	return logWriter{logger}
}

type logWriter struct{ l *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	msg := string(p)
	for len(msg) > 0 && (msg[len(msg)-1] == '\n') {
		msg = msg[:len(msg)-1]
	}
	w.l.Warn("go-milter: "+msg, "component", "go-milter")
	return len(p), nil
}
