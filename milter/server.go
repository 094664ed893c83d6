// Package milter is batv's milter front end: it signs the envelope sender
// of mail our users send, and verifies the tagged recipients of the mail
// we receive, over the policy of package policy. The milter protocol is
// github.com/d--j/go-milter's; the connections are package serve's.
package milter

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/batv/batv/internal/logq"
	"github.com/batv/batv/internal/metrics"
	"github.com/batv/batv/internal/serve"
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

// Server serves the milter protocol on the connections of a listener.
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
	// Lines, if not nil, writes the sessions' lines on a goroutine of its
	// own, so that each session's goroutine keeps a 4 KiB stack; nil
	// writes them on the session's goroutine.
	Lines *logq.Queue
	// Metrics records decisions; nil records nothing.
	Metrics *metrics.Metrics
	// Now returns the time; nil means time.Now.
	Now func() time.Time

	opts atomic.Pointer[policyOptions] // the last policy's, see options
}

// Serve serves the milter on every connection l accepts, until l shuts
// down.
func (s *Server) Serve(l *serve.Listener) error {
	libraryLog.Do(func() {
		log := s.logger()
		gomilter.LogWarning = func(format string, v ...any) {
			log.Warn("go-milter: "+fmt.Sprintf(format, v...), "component", "go-milter")
		}
	})
	return l.Serve(s.ServeConn)
}

// libraryLog sends go-milter's warnings, which it writes through a
// package variable, to the first server's logger.
var libraryLog sync.Once

// ServeConn runs one milter session on c and closes it at the end.
func (s *Server) ServeConn(c *serve.Conn) {
	mc := &conn{Conn: c, r: bufio.NewReaderSize(c, readBufferSize), lines: s.Lines}
	ms := gomilter.NewServer(append(s.options(),
		gomilter.WithDynamicMilter(func(version uint32, _ gomilter.OptAction, protocol gomilter.OptProtocol, _ gomilter.DataSize) gomilter.Milter {
			s.Lines.Log(c.Log(), slog.LevelDebug, "negotiated", "version", version, "no_reply", noReplyEvents(protocol))
			return &session{srv: s, conn: mc}
		}))...)
	// The library runs the session in a goroutine of its own; Serve
	// returns as soon as the one-connection listener has nothing more to
	// give. The session closes mc when it ends.
	_ = ms.Serve(&oneConnListener{c: mc})
}

// options are go-milter's options for the policy in force, all but the
// milter's own: the same for every connection until a reload replaces the
// policy, so they are made once per policy rather than per connection.
func (s *Server) options() []gomilter.Option {
	p := s.Policy()
	if o := s.opts.Load(); o != nil && o.policy == p {
		return o.opts
	}
	actions, protocol := s.negotiation(p)
	opts := []gomilter.Option{
		gomilter.WithActions(actions),
		gomilter.WithProtocols(protocol),
		gomilter.WithNegotiationCallback(negotiate),
		gomilter.WithMacroRequest(gomilter.StageConnect, []gomilter.MacroName{gomilter.MacroDaemonName}),
		gomilter.WithMacroRequest(gomilter.StageMail, []gomilter.MacroName{gomilter.MacroAuthAuthen, gomilter.MacroQueueId}),
		gomilter.WithMacroRequest(gomilter.StageRcpt, []gomilter.MacroName{gomilter.MacroQueueId}),
		gomilter.WithMacroRequest(gomilter.StageEOM, []gomilter.MacroName{gomilter.MacroQueueId}),
	}
	opts = slices.Clip(opts) // full, so that each connection's append copies it
	s.opts.Store(&policyOptions{policy: p, opts: opts})
	return opts
}

// policyOptions are the options made for a policy.
type policyOptions struct {
	policy *policy.Policy
	opts   []gomilter.Option
}

// negotiation returns what the milter asks of the MTA: only the actions
// and events its roles need, since every event the MTA waits on is a
// round trip.
func (s *Server) negotiation(p *policy.Policy) (gomilter.OptAction, gomilter.OptProtocol) {
	var act gomilter.OptAction
	proto := gomilter.OptNoHelo | gomilter.OptNoUnknown | gomilter.OptNoEOH | gomilter.OptNoBody
	if s.Roles&Inbound == 0 || !p.RefusesAtData() {
		proto |= gomilter.OptNoData // DATA is where untagged bounces are refused
	}
	if s.Roles&Outbound != 0 {
		act |= gomilter.OptChangeFrom
	}
	if s.Roles&Inbound != 0 {
		act |= gomilter.OptAddRcpt | gomilter.OptRemoveRcpt | gomilter.OptAddHeader |
			gomilter.OptChangeHeader | gomilter.OptQuarantine
	}
	// The MTA need not wait for a reply to CONNECT, MAIL or a header:
	// their callbacks only take note.
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

// errActionsMissing refuses an MTA that cannot make the changes the
// milter's roles need.
var errActionsMissing = errors.New("milter: the MTA does not offer the message changes this listener's roles need")

// negotiate agrees to what the milter asked for within what the MTA
// offered: the lower protocol version, and the protocol steps and
// no-reply flags the MTA offered (an MTA that did not offer to go without
// a reply waits for one, and gets it). The actions the roles need are
// required.
func negotiate(mtaVersion, milterVersion uint32, mtaActions, milterActions gomilter.OptAction,
	mtaProtocol, milterProtocol gomilter.OptProtocol, _ gomilter.DataSize) (uint32, gomilter.OptAction, gomilter.OptProtocol, gomilter.DataSize, error) {
	version := min(mtaVersion, milterVersion)
	need := milterActions &^ gomilter.OptSetMacros
	if mtaActions&need != need {
		return 0, 0, 0, 0, fmt.Errorf("%w: offered %v, needed %v", errActionsMissing, mtaActions, need)
	}
	return version, milterActions & mtaActions, milterProtocol & mtaProtocol, gomilter.DataSize64K, nil
}

// readBufferSize holds a macro packet and its command, what Postfix sends
// per round trip, in one read; a longer packet (a long header) takes a few
// reads more. It is per connection, so it counts at a few hundred
// connections.
const readBufferSize = 1024

// writeBufferSize holds the replies of one round trip: a reply, or the
// changes of an end of message and its reply. More is written in several
// writes.
const writeBufferSize = 1024

// Write holds go-milter's write until it reads next (see Read).
func (c *conn) Write(p []byte) (int, error) {
	if c.w == nil {
		c.w = writers.Get().(*bufio.Writer)
		c.w.Reset(c.Conn)
	}
	return c.w.Write(p)
}

// writers are the write buffers of the connections in the middle of a
// reply: a connection takes one at go-milter's first write of a round trip
// and gives it back once it has sent the round trip's replies, so that
// the connections waiting for their MTA, most of them most of the time,
// hold none.
var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeBufferSize) }}

// flush sends what go-milter wrote and gives the write buffer back.
func (c *conn) flush() error {
	if c.w == nil {
		return nil
	}
	err := c.w.Flush()
	c.w.Reset(nil)
	writers.Put(c.w)
	c.w = nil
	return err
}

// Packet checks. go-milter v0.10.1 allocates a packet's announced length
// before it reads it (up to 512 MB), and panics, taking the whole process
// down, on an empty packet and on CONNECT, MAIL and RCPT packets without
// the NUL that ends their first string (or, for CONNECT, without anything
// after it). The milter refuses such packets before go-milter parses
// them, which ends that session only. A header may be long (Postfix's
// header_size_limit is 102400 bytes by default); nothing else batv asks
// for is more than a few hundred bytes, and what it does not ask for
// (body chunks) is at most 64 KiB.
//
// Macros are kept: go-milter holds the last MACRO packet of each of its 8
// stages until a later command clears it, as a map of strings. A 64 KiB
// packet of two-byte names makes 16,000 map entries, about 1.3 MiB a
// stage (10.8 MiB a connection, measured). So a MACRO packet is refused beyond 8 KiB or 64 strings (32
// macros). The MTA sends batv the macros it asks for ({daemon_name},
// {auth_authen}, i: host, user and queue names) or, for a stage batv asks
// nothing of, the MTA's default list (Postfix's longest, milter_mail_macros,
// has 7 macros; Sendmail's, for MAIL, 8).
const (
	maxHeaderPacket = 256 << 10
	maxPacket       = 64<<10 + 64
	maxMacroPacket  = 8 << 10
	maxMacroStrings = 64
)

// errPacket ends a session whose MTA sent a packet the milter will not
// let go-milter read.
var errPacket = errors.New("milter: packet refused")

// conn is what go-milter reads and writes: the listener's connection with
// a read buffer, and with the packet checks made as go-milter reads.
type conn struct {
	*serve.Conn
	r     *bufio.Reader
	w     *bufio.Writer // go-milter's writes, sent when it reads next: one write per round trip; nil between
	lines *logq.Queue
	left  int  // bytes of the current packet go-milter has still to read
	size  int  // length of the current packet, header included
	last  byte // command of the current (or last) packet
	nul   int  // offset in the current packet's data of its first NUL, or -1
	nuls  int  // NULs in the current packet's data so far
}

func (c *conn) Read(p []byte) (int, error) {
	// go-milter writes each packet as two writes (its length and command,
	// then its data), and the changes of an end of message as packets of
	// their own; it reads only once it has written all it will write
	// before the MTA's next packet. So what it wrote goes out now, in one
	// write.
	if err := c.flush(); err != nil {
		return 0, err
	}
	if c.left == 0 {
		hdr, err := c.r.Peek(5)
		if err != nil {
			if err == io.EOF && len(hdr) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		n, cmd := binary.BigEndian.Uint32(hdr), hdr[4]
		limit := uint32(maxPacket)
		switch cmd {
		case 'L':
			limit = maxHeaderPacket
		case 'D':
			limit = maxMacroPacket
		}
		if n == 0 || n > limit {
			return 0, c.refuse(cmd, fmt.Sprintf("length %d, limit %d", n, limit))
		}
		c.left, c.size, c.last, c.nul, c.nuls = 4+int(n), 4+int(n), cmd, -1, 0
	}
	if len(p) > c.left {
		p = p[:c.left]
	}
	off := c.size - c.left // of p[0] in the packet
	n, err := c.r.Read(p)
	if c.nul < 0 && strings.IndexByte("CMR", c.last) >= 0 {
		for i, b := range p[:n] {
			if b == 0 && off+i >= 5 {
				c.nul = off + i - 5
				break
			}
		}
	}
	if c.last == 'D' {
		c.nuls += bytes.Count(p[max(0, min(n, 5-off)):n], []byte{0})
		if c.nuls > maxMacroStrings {
			// Nothing of this read reaches go-milter, so that it cannot
			// complete the packet.
			return 0, c.refuse('D', fmt.Sprintf("more than %d strings", maxMacroStrings))
		}
	}
	c.left -= n
	if c.left > 0 || n == 0 {
		return n, err
	}
	data := c.size - 5
	switch {
	case c.last == 'Q':
		c.SetEnd("quit")
	case c.last == 'C' && (c.nul < 0 || c.nul+1 >= data):
		c.left = 1
		return n - 1, c.refuse('C', "no NUL after the host name, or nothing after it")
	case (c.last == 'M' || c.last == 'R') && c.nul < 0:
		c.left = 1
		return n - 1, c.refuse(c.last, "no NUL after the address")
	}
	return n, err
}

// refuse ends the session at a packet go-milter must not read.
func (c *conn) refuse(cmd byte, why string) error {
	c.SetEnd("error")
	c.lines.Log(c.Log(), slog.LevelWarn, "session ended: the MTA sent a packet the milter does not read",
		"command", fmt.Sprintf("%q", cmd), "why", why)
	return errPacket
}

// Close is called by go-milter when the session ends. A session that did
// not end with QUIT, the MTA's close, a timeout or a refused packet was
// ended by go-milter itself: a malformed or unexpected packet, or a
// callback that failed (go-milter's own warning says which).
func (c *conn) Close() error {
	_ = c.flush() // a reply to a last command, then QUIT
	if c.SetEnd("error") {
		c.lines.Log(c.Log(), slog.LevelWarn, "session ended: go-milter gave up on it (a malformed or unexpected packet, or a failed callback)",
			"last_command", fmt.Sprintf("%q", c.last))
	}
	return c.Conn.Close()
}

// oneConnListener hands one connection to a go-milter Server, then says it
// is closed.
type oneConnListener struct {
	c     net.Conn
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

// noReplyEvents are the SMFIP_NR_* bits of a connection, for the log: a
// slog.LogValuer, so the names are made only when the line is written and
// a JSON log gets the names, not the number.
type noReplyEvents gomilter.OptProtocol

// LogValue is String as a log value.
func (e noReplyEvents) LogValue() slog.Value { return slog.StringValue(e.String()) }

// String names the events the MTA agreed not to wait on:
// "connect+mail+header" with Postfix and Sendmail, "none" with an MTA that
// did not offer it.
func (e noReplyEvents) String() string {
	var names []byte
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
			if len(names) > 0 {
				names = append(names, '+')
			}
			names = append(names, ev.name...)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return string(names)
}
