// Package mtaclient is the MTA side of the Sendmail milter protocol,
// written at the packet level to behave like Postfix 3.7 does when it talks
// to a milter.
//
// It serves three purposes: milter-level tests over a real socket, a load
// generator that checks every reply, and hostile-peer tests that need to
// send malformed or out-of-order packets. Hence three layers:
//
//   - Send runs a whole SMTP transaction (MAIL, RCPT..., DATA, headers, EOH,
//     body, end of message) with the macros Postfix sends by default and
//     the ABORT Postfix sends after every transaction.
//   - Connect, Helo, Mail, Rcpt, Data, Header, EOH, Body, EndOfMessage,
//     Unknown, Abort and Quit send one event each, with one macro packet
//     before it, honouring the milter's negotiated opt-outs.
//   - WritePacket and ReadPacket move raw packets; Options.SkipNegotiation
//     leaves the option negotiation to the caller.
//
// What "like Postfix" means here was checked against Postfix 3.7.11 on the
// wire (TestPostfixSequence holds the captured packet sequence):
// version 6, actions 0x1ff and protocol 0x1fffff are offered; a macro packet
// precedes every event, even an empty one and even for an event the milter
// opted out of (except header, end-of-header and body events, which Postfix
// then drops entirely); "i" is sent at RCPT only once a recipient has been
// accepted; an ABORT follows every transaction, including one whose MAIL was
// refused; QUIT is preceded by an ABORT once HELO has been seen.
//
// A Conn is not safe for concurrent use, except that Close may be called
// from another goroutine to interrupt a blocked call.
package mtaclient

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Sentinel errors. Every error returned by this package wraps one of them
// (or a dial error) and starts with "mtaclient:".
var (
	// ErrProtocol: the milter sent something the protocol (as Postfix
	// enforces it) does not allow: an unexpected packet, a malformed
	// one, an oversized one, a bad negotiation.
	ErrProtocol = errors.New("mtaclient: protocol error")
	// ErrTimeout: no reply (or no progress) within Options.Timeout, or a
	// write that could not complete in time.
	ErrTimeout = errors.New("mtaclient: timeout")
	// ErrClosed: the milter closed the connection (or reset it).
	ErrClosed = errors.New("mtaclient: connection closed")
)

// Options configures a connection to a milter.
type Options struct {
	// Network and Address as for net.Dial: "unix" and a socket path, or
	// "tcp" and host:port.
	Network, Address string
	// Timeout bounds the dial, every write and every wait for a reply
	// packet (each PROGRESS packet restarts it). Zero means DefaultTimeout.
	Timeout time.Duration
	// Version, Actions and Protocol are offered in OPTNEG. Zero means
	// Postfix's offer: PostfixVersion, PostfixActions, PostfixProtocol.
	Version, Actions, Protocol uint32
	// SkipNegotiation makes Dial return without sending OPTNEG: the caller
	// negotiates with Negotiate or with raw packets. Until Negotiate
	// succeeds the connection behaves as if the milter had accepted the
	// offered actions and opted out of nothing.
	SkipNegotiation bool
	// StrictActions makes a modification the milter did not negotiate
	// (for example CHGFROM without SMFIF_CHGFROM) a protocol error.
	// Postfix itself does not check.
	StrictActions bool
	// MaxPacket is the largest packet length accepted from the milter.
	// Zero means DefaultMaxPacket.
	MaxPacket int
}

// Negotiated holds the result of option negotiation.
type Negotiated struct {
	// Version is the milter's protocol version (go-milter always says 2).
	Version uint32
	// Actions and Protocol are the milter's masks, as it sent them.
	Actions, Protocol uint32
	// SymList holds the macro names the milter asked for per stage with
	// SETSYMLIST, nil when it sent none. Do not modify it.
	SymList map[Stage][]string
}

type connState uint8

const (
	stReady      connState = iota // negotiated, no CONNECT yet
	stEnvelope                    // in a connection, accepting events
	stAcceptMsg                   // milter accepted/discarded this message: no more events until ABORT
	stAcceptConn                  // milter accepted the connection: socket closed, no more events
	stRejectConn                  // milter refused the connection: socket closed, no more events
)

// Conn is one milter connection, seen from the MTA.
type Conn struct {
	nc        net.Conn
	r         *bufio.Reader
	w         *bufio.Writer
	timeout   time.Duration
	maxPacket int
	strict    bool

	offerVersion, offerActions, offerProtocol uint32

	neg     Negotiated
	symlist [numStages][]string
	npMask  uint32 // events outside the offered protocol: never sent

	state     connState
	verdict   Reply // sticky reply in stAcceptMsg/stAcceptConn/stRejectConn
	skipCmd   byte  // after SMFIR_SKIP: events of this kind are not sent
	heloSeen  bool
	pending   []Modification // QUARANTINE packets seen before end of message
	connMacro map[string]string

	err    error       // sticky error; the socket is closed
	closed atomic.Bool // Close was called

	rhdr, whdr [5]byte
	rbuf       []byte // read buffer, reused
	sbuf       []byte // scratch for command data, reused
	kv         []kv   // macros of the next event, reused

	tx txState // Send's per-transaction state
}

type kv struct{ k, v string }

// Dial connects to the milter and, unless opts.SkipNegotiation is set,
// performs the option negotiation. TCP connections get TCP_NODELAY. ctx
// bounds the dial and the negotiation.
func Dial(ctx context.Context, opts Options) (*Conn, error) {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	d := net.Dialer{Timeout: timeout}
	nc, err := d.DialContext(ctx, opts.Network, opts.Address)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("%w: dial %s %s: %w", ErrTimeout, opts.Network, opts.Address, err)
		}
		return nil, fmt.Errorf("mtaclient: dial %s %s: %w", opts.Network, opts.Address, err)
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	c := NewConn(nc, opts)
	if opts.SkipNegotiation {
		return c, nil
	}
	deadline := time.Now().Add(c.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	err = c.negotiate(deadline)
	stop()
	if err != nil {
		_ = c.Close()
		if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ErrProtocol) {
			if errors.Is(ctxErr, context.DeadlineExceeded) {
				err = fmt.Errorf("%w: OPTNEG: %w", ErrTimeout, ctxErr)
			} else {
				err = fmt.Errorf("mtaclient: OPTNEG: %w", ctxErr)
			}
		}
		return nil, err
	}
	return c, nil
}

// NewConn wraps an established connection without negotiating; call
// Negotiate next (or talk raw packets).
func NewConn(nc net.Conn, opts Options) *Conn {
	c := &Conn{
		nc:            nc,
		r:             bufio.NewReaderSize(nc, 16<<10),
		w:             bufio.NewWriterSize(nc, 16<<10),
		timeout:       opts.Timeout,
		maxPacket:     opts.MaxPacket,
		strict:        opts.StrictActions,
		offerVersion:  opts.Version,
		offerActions:  opts.Actions,
		offerProtocol: opts.Protocol,
		rbuf:          make([]byte, 512),
	}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	if c.maxPacket <= 0 {
		c.maxPacket = DefaultMaxPacket
	}
	if c.offerVersion == 0 {
		c.offerVersion = PostfixVersion
	}
	if c.offerActions == 0 {
		c.offerActions = PostfixActions
	}
	if c.offerProtocol == 0 {
		c.offerProtocol = PostfixProtocol
	}
	c.neg = Negotiated{Version: c.offerVersion, Actions: c.offerActions}
	c.npMask = noSendMask &^ c.offerProtocol
	return c
}

// Negotiate sends OPTNEG with the offered version and masks and checks the
// milter's answer as Postfix does: a higher version, or an action outside
// the offer, is a protocol error; protocol flags outside the offer are
// accepted. A SETSYMLIST list after the masks is parsed; unknown stages are
// ignored.
func (c *Conn) Negotiate() error {
	return c.negotiate(time.Now().Add(c.timeout))
}

func (c *Conn) negotiate(deadline time.Time) error {
	const op = "OPTNEG"
	if c.err != nil {
		return c.err
	}
	_ = c.nc.SetDeadline(deadline)
	var d [12]byte
	binary.BigEndian.PutUint32(d[0:], c.offerVersion)
	binary.BigEndian.PutUint32(d[4:], c.offerActions)
	binary.BigEndian.PutUint32(d[8:], c.offerProtocol)
	c.writeHeader(CmdOptNeg, len(d))
	_, _ = c.w.Write(d[:])
	if err := c.w.Flush(); err != nil {
		return c.fail(c.ioErr(op, "write", err))
	}
	code, data, err := c.readPacket(op, false)
	if err != nil {
		return c.fail(err)
	}
	if code != RepOptNeg {
		return c.fail(protoErr(op, "unexpected reply %s in initial handshake", replyName(code)))
	}
	f := fields{data: data}
	version, actions, protocol := f.uint32(), f.uint32(), f.uint32()
	if f.err != "" {
		return c.fail(protoErr(op, "%s (%d data bytes)", f.err, len(data)))
	}
	if version > c.offerVersion {
		return c.fail(protoErr(op, "milter protocol version %d conflicts with MTA protocol version %d", version, c.offerVersion))
	}
	if actions&c.offerActions != actions {
		return c.fail(protoErr(op, "milter request mask %#x conflicts with MTA request mask %#x", actions, c.offerActions))
	}
	var syms map[Stage][]string
	var symlist [numStages][]string
	for len(f.data) > 0 {
		stage := Stage(f.uint32())
		names := f.str()
		if f.err != "" {
			return c.fail(protoErr(op, "macro list: %s", f.err))
		}
		if stage >= numStages {
			continue // Postfix: "ignoring unknown macro type"
		}
		list := strings.FieldsFunc(names, func(r rune) bool {
			return r == ' ' || r == ',' || r == '\t' || r == '\r' || r == '\n'
		})
		if list == nil {
			list = []string{}
		}
		if syms == nil {
			syms = make(map[Stage][]string)
		}
		syms[stage] = list
		// Postfix falls back to its own list for a stage whose list is empty.
		if len(list) > 0 {
			symlist[stage] = list
		}
	}
	c.neg = Negotiated{Version: version, Actions: actions, Protocol: protocol, SymList: syms}
	c.symlist = symlist
	c.state = stReady
	_ = c.nc.SetDeadline(time.Time{})
	return nil
}

// Negotiated returns the negotiation result. Before (or without)
// negotiation it reports the offered version and actions and no opt-outs.
func (c *Conn) Negotiated() Negotiated { return c.neg }

// NetConn returns the underlying connection.
func (c *Conn) NetConn() net.Conn { return c.nc }

// WaitClosed waits up to timeout for the milter to close the connection
// while the MTA sends nothing, as a milter does to an idle connection when
// it shuts down. It returns nil when the milter closed it, and an error if
// the timeout passed or the milter sent something instead.
func (c *Conn) WaitClosed(timeout time.Duration) error {
	if err := c.nc.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	var b [1]byte
	n, err := c.nc.Read(b[:])
	switch {
	case n > 0:
		return protoErr("wait for close", "milter sent %#x instead of closing", b[0])
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("milter did not close the connection within %v", timeout)
	}
	return nil
}

// Err returns the error that broke the connection, if any. After an error
// every high-level call returns it again.
func (c *Conn) Err() error { return c.err }

// Close closes the connection without saying goodbye. It may be called
// from another goroutine to interrupt a blocked call.
func (c *Conn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	return c.nc.Close()
}

// fail records a fatal error and poisons the connection, as Postfix does.
func (c *Conn) fail(err error) error {
	if c.err == nil {
		c.err = err
	}
	_ = c.Close()
	return err
}

func protoErr(op, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrProtocol, op, fmt.Sprintf(format, args...))
}

// ioErr classifies a read or write error.
func (c *Conn) ioErr(op, what string, err error) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w: %s: %s: %w", ErrTimeout, op, what, err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return fmt.Errorf("%w: %s: %s: %w", ErrClosed, op, what, err)
	case c.closed.Load() || errors.Is(err, net.ErrClosed):
		return fmt.Errorf("%w: %s: %s: closed on this side: %w", ErrClosed, op, what, err)
	}
	return fmt.Errorf("mtaclient: %s: %s: %w", op, what, err)
}

// WritePacket sends one raw packet and flushes it (after anything already
// buffered, such as the ABORT a Send leaves). It does not look at or change
// the connection's protocol state.
func (c *Conn) WritePacket(cmd byte, data []byte) error {
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.timeout))
	c.writeHeader(cmd, len(data))
	_, _ = c.w.Write(data)
	if err := c.w.Flush(); err != nil {
		return c.ioErr("raw", "write", err)
	}
	return nil
}

// ReadPacket reads one raw packet within Options.Timeout. data is only
// valid until the next read. It does not change the protocol state.
func (c *Conn) ReadPacket() (cmd byte, data []byte, err error) {
	return c.readPacket("raw", true)
}

func (c *Conn) writeHeader(cmd byte, n int) {
	binary.BigEndian.PutUint32(c.whdr[:4], uint32(n+1))
	c.whdr[4] = cmd
	_, _ = c.w.Write(c.whdr[:])
}

// readPacket reads one packet into c.rbuf. With arm set it first restarts
// the read deadline.
func (c *Conn) readPacket(op string, arm bool) (byte, []byte, error) {
	if arm {
		_ = c.nc.SetReadDeadline(time.Now().Add(c.timeout))
	}
	if _, err := io.ReadFull(c.r, c.rhdr[:4]); err != nil {
		return 0, nil, c.ioErr(op, "read", err)
	}
	n := binary.BigEndian.Uint32(c.rhdr[:4])
	if n == 0 {
		return 0, nil, protoErr(op, "zero-length packet")
	}
	if uint64(n) > uint64(c.maxPacket) {
		return 0, nil, protoErr(op, "packet length %d exceeds limit %d", n, c.maxPacket)
	}
	cmd, err := c.r.ReadByte()
	if err != nil {
		return 0, nil, c.ioErr(op, "read", err)
	}
	n--
	if uint32(cap(c.rbuf)) < n {
		c.rbuf = make([]byte, min(max(int(n), 2*cap(c.rbuf)), c.maxPacket))
	}
	data := c.rbuf[:n]
	if _, err := io.ReadFull(c.r, data); err != nil {
		return 0, nil, c.ioErr(op, "read", err)
	}
	return cmd, data, nil
}
