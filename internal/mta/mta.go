// Package mta drives a milter as Postfix 3.7 does, on the client of
// github.com/d--j/go-milter: it offers what Postfix offers at negotiation
// (protocol version 6, every action, every protocol step and no-reply
// flag), sends Postfix's stock macros with the values Postfix would give
// them, writes the packets of one round trip in one write, and sends whole
// messages, collecting the milter's reply to each event it waits on and
// the changes it asks for. The tests and "batv bench" use it.
package mta

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	gomilter "github.com/d--j/go-milter"
)

// Postfix 3.7's offer at negotiation (measured: version 6, actions 0x1ff,
// protocol 0x1fffff).
const (
	offerActions  = gomilter.OptAction(0x1ff)
	offerProtocol = gomilter.OptProtocol(0x1fffff)
)

// Postfix's identity in the macros.
const (
	hostname = "mx.example.com"
	version  = "Postfix 3.7.11"
	mtaAddr  = "192.0.2.1"
)

// bodyChunk is the largest body packet Postfix sends (MILTER_CHUNK_SIZE).
const bodyChunk = 65535

// Dialer opens the connections of a Client; a *net.Dialer is one.
type Dialer = gomilter.Dialer

// Client connects to one milter.
type Client struct {
	network, address string
	timeout          time.Duration
	dialer           Dialer
	opts             []gomilter.Option
}

// New returns a client for the milter at network and address ("unix",
// "/path" or "tcp", "host:port"); timeout bounds the connection, each read
// and each write.
func New(network, address string, timeout time.Duration) *Client {
	return NewDialer(&net.Dialer{Timeout: timeout}, network, address, timeout)
}

// NewDialer is New with the connections opened by d: one that a context
// can interrupt, or that watches what goes through.
func NewDialer(d Dialer, network, address string, timeout time.Duration) *Client {
	return &Client{network: network, address: address, timeout: timeout, dialer: d, opts: []gomilter.Option{
		gomilter.WithReadTimeout(timeout), gomilter.WithWriteTimeout(timeout),
		gomilter.WithActions(offerActions), gomilter.WithProtocols(offerProtocol),
		// Postfix's milter_*_macros defaults (postconf -d), for a milter
		// that does not ask for its own.
		gomilter.WithoutDefaultMacros(),
		gomilter.WithMacroRequest(gomilter.StageConnect, []gomilter.MacroName{
			gomilter.MacroMTAFQDN, gomilter.MacroDaemonName, gomilter.MacroDaemonAddr, gomilter.MacroMTAVersion, gomilter.MacroRFC1413AuthInfo}),
		gomilter.WithMacroRequest(gomilter.StageMail, []gomilter.MacroName{
			gomilter.MacroQueueId, gomilter.MacroAuthType, gomilter.MacroAuthAuthen, gomilter.MacroAuthAuthor,
			gomilter.MacroMailAddr, gomilter.MacroMailHost, gomilter.MacroMailMailer}),
		gomilter.WithMacroRequest(gomilter.StageRcpt, []gomilter.MacroName{
			gomilter.MacroQueueId, gomilter.MacroRcptAddr, gomilter.MacroRcptHost, gomilter.MacroRcptMailer}),
		gomilter.WithMacroRequest(gomilter.StageData, []gomilter.MacroName{gomilter.MacroQueueId}),
		gomilter.WithMacroRequest(gomilter.StageEOH, []gomilter.MacroName{gomilter.MacroQueueId}),
		gomilter.WithMacroRequest(gomilter.StageEOM, []gomilter.MacroName{gomilter.MacroQueueId}),
	}}
}

// SMTPClient is what the MTA knows of its SMTP client at CONNECT.
type SMTPClient struct {
	// Addr is the client's IP address; "" for mail submitted on the MTA
	// host (sent as a unix-domain client, as Sendmail does).
	Addr string
	// Port is the client's port.
	Port uint16
	// Daemon is {daemon_name}: the MTA listener's name; "" sends Postfix's
	// default, the MTA's host name.
	Daemon string
}

// Session is one milter connection, as the MTA opens it for one SMTP
// session.
type Session struct {
	s      *gomilter.ClientSession
	conn   *postfixConn
	macros macros
}

// Session connects, negotiates and sends CONNECT and HELO for client. A
// milter that answers either with anything but continue is an error.
func (c *Client) Session(client SMTPClient) (*Session, error) {
	var conn *postfixConn
	dial := dialFunc(func(network, address string) (net.Conn, error) {
		nc, err := c.dialer.Dial(network, address)
		if err != nil {
			return nil, err
		}
		conn = &postfixConn{Conn: nc, r: bufio.NewReader(nc), w: bufio.NewWriterSize(nc, 16<<10), timeout: c.timeout}
		return conn, nil
	})
	fam, host := gomilter.FamilyInet, "client.example.org"
	switch {
	case client.Addr == "":
		fam, host = gomilter.FamilyUnix, "localhost"
	case strings.Contains(client.Addr, ":"):
		fam = gomilter.FamilyInet6
	}
	m := macros{
		gomilter.MacroMTAFQDN:         hostname,
		gomilter.MacroMTAVersion:      version,
		gomilter.MacroDaemonName:      cmp.Or(client.Daemon, hostname),
		gomilter.MacroDaemonAddr:      mtaAddr,
		gomilter.MacroRFC1413AuthInfo: host + " [" + cmp.Or(client.Addr, "127.0.0.1") + "]",
	}
	s, err := gomilter.NewClient(c.network, c.address, append(slices.Clip(c.opts), gomilter.WithDialer(dial))...).Session(m)
	if err != nil {
		return nil, err
	}
	sess := &Session{s: s, conn: conn, macros: m}
	act, err := s.Conn(host, fam, client.Port, client.Addr)
	if err == nil && act.Type != gomilter.ActionContinue {
		err = fmt.Errorf("mta: the milter answered CONNECT with %v", act)
	}
	if err == nil {
		act, err = s.Helo(host)
		if err == nil && act.Type != gomilter.ActionContinue {
			err = fmt.Errorf("mta: the milter answered HELO with %v", act)
		}
	}
	if err != nil {
		_ = sess.Drop()
		return nil, err
	}
	return sess, nil
}

type dialFunc func(network, address string) (net.Conn, error)

func (f dialFunc) Dial(network, address string) (net.Conn, error) { return f(network, address) }

// macros are the values the MTA knows at the moment; a macro without a
// value is not sent, as with Postfix.
type macros map[gomilter.MacroName]string

func (m macros) Get(name gomilter.MacroName) string { return m[name] }

func (m macros) GetEx(name gomilter.MacroName) (string, bool) {
	v, ok := m[name]
	return v, ok
}

// set sets name to v, or removes it when v is empty.
func (m macros) set(name gomilter.MacroName, v string) {
	if v == "" {
		delete(m, name)
	} else {
		m[name] = v
	}
}

// postfixConn writes as Postfix's milter client does: the packets of one
// round trip (a macro packet and its event, the events the milter does
// not answer, the ABORT after a transaction) go out in one write when the
// MTA waits for a reply or closes the connection.
type postfixConn struct {
	net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	timeout time.Duration
	trips   int // writes followed by a read
}

func (c *postfixConn) Write(p []byte) (int, error) { return c.w.Write(p) }

func (c *postfixConn) Read(p []byte) (int, error) {
	if c.w.Buffered() > 0 {
		c.trips++
		if err := c.flush(); err != nil {
			return 0, err
		}
	}
	return c.r.Read(p)
}

func (c *postfixConn) flush() error {
	if c.w.Buffered() == 0 {
		return nil
	}
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	return c.w.Flush()
}

func (c *postfixConn) Close() error {
	err := c.flush()
	return errors.Join(err, c.Conn.Close())
}

// Protocol reports whether the session negotiated opt (what the milter
// asked for within the offer).
func (s *Session) Protocol(opt gomilter.OptProtocol) bool { return s.s.ProtocolOption(opt) }

// Negotiated returns the actions and protocol steps the session
// negotiated.
func (s *Session) Negotiated() (gomilter.OptAction, gomilter.OptProtocol) {
	var act gomilter.OptAction
	var proto gomilter.OptProtocol
	for bit := range 32 {
		if s.s.ActionOption(1 << bit) {
			act |= 1 << bit
		}
		if s.s.ProtocolOption(1 << bit) {
			proto |= 1 << bit
		}
	}
	return act, proto
}

// RoundTrips is the number of times the MTA has waited for the milter on
// this connection: writes followed by a read of the reply.
func (s *Session) RoundTrips() int { return s.conn.trips }

// Raw is the library's session, for tests that drive the events one by
// one.
func (s *Session) Raw() *gomilter.ClientSession { return s.s }

// Close sends QUIT and closes the connection.
func (s *Session) Close() error { return s.s.Close() }

// Drop closes the connection without a word, as an MTA process that dies.
func (s *Session) Drop() error {
	if s.conn == nil {
		return nil
	}
	return s.conn.Conn.Close()
}

// WaitClosed waits up to timeout for the milter to close the connection
// while the MTA sends nothing, as a milter does to an idle connection when
// it shuts down. It returns nil when the milter closed it, and an error if
// the timeout passed or the milter sent something instead.
func (s *Session) WaitClosed(timeout time.Duration) error {
	if err := s.conn.flush(); err != nil {
		return nil // closed under the MTA's feet
	}
	_ = s.conn.SetReadDeadline(time.Now().Add(timeout))
	var b [1]byte
	n, err := s.conn.r.Read(b[:])
	switch {
	case n > 0:
		return fmt.Errorf("mta: the milter sent %#x instead of closing the connection", b[0])
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("mta: the milter did not close the connection within %v", timeout)
	}
	return nil // end of file, or reset
}

// Message is one SMTP transaction.
type Message struct {
	// Sender is the MAIL FROM address as the client wrote it, without the
	// angle brackets ("" for <>).
	Sender string
	// AuthUser is the SMTP AUTH login ({auth_authen}), or "".
	AuthUser string
	// QueueID is the queue id ({i}); Postfix sends it from the second
	// RCPT on and with every event after the recipients.
	QueueID string
	// Recipients are the RCPT TO addresses, without angle brackets.
	Recipients []string
	// Headers are the message's header fields, in order.
	Headers []Header
	// Body is the message body, with CRLF line ends; it goes in packets of
	// up to 64 KiB.
	Body []byte
}

// Header is a header field: Value is the text after the colon. Like
// Postfix, Send leaves out one leading space, unless the milter asked for
// it (SMFIP_HDR_LEADSPC).
type Header struct{ Name, Value string }

// The events a transaction can stop at, for Result.Stopped.
const (
	AtMail   = "MAIL"
	AtRcpt   = "RCPT"
	AtData   = "DATA"
	AtHeader = "HEADER"
	AtEOH    = "EOH"
	AtBody   = "BODY"
	AtEOM    = "EOM"
)

// Result is what the milter answered to a message. A reply the MTA did not
// wait for (the milter opted out of the event or its reply) is continue.
type Result struct {
	// Mail is the reply to MAIL.
	Mail *gomilter.Action
	// Rcpts is the reply to each recipient, in order; a recipient the
	// milter refused is left out of the rest of the transaction, as
	// Postfix does.
	Rcpts []*gomilter.Action
	// Data is the reply to the DATA event, nil if the message stopped
	// before.
	Data *gomilter.Action
	// End is the reply to the end of the message, nil if the message
	// stopped before.
	End *gomilter.Action
	// Changes are the changes the milter asked for at the end of the
	// message.
	Changes []gomilter.ModifyAction
	// Stopped is the event whose reply ended the milter's part of the
	// transaction: AtEOM for a message sent to the end, else the event
	// the milter refused (every recipient, for AtRcpt), accepted or
	// discarded; Reply is that reply.
	Stopped string
	Reply   *gomilter.Action
}

// Send sends msg as one transaction, stopping where the milter ends it (a
// refusal of MAIL, of every recipient or of the content; an accept or a
// discard), and then sends the ABORT Postfix sends after each transaction
// (smtpd's mail_reset); it goes out with the next event. A broken
// connection or protocol violation is an error; refusals are in the
// Result.
func (s *Session) Send(msg *Message) (*Result, error) {
	res := &Result{}
	if err := s.send(msg, res); err != nil {
		return nil, err
	}
	return res, s.s.Abort(nil)
}

func (s *Session) send(msg *Message, res *Result) (err error) {
	m := s.macros
	delete(m, gomilter.MacroQueueId)
	m.set(gomilter.MacroAuthAuthen, msg.AuthUser)
	delete(m, gomilter.MacroAuthType)
	if msg.AuthUser != "" {
		m[gomilter.MacroAuthType] = "PLAIN"
	}
	m[gomilter.MacroMailAddr] = msg.Sender
	m[gomilter.MacroMailHost], m[gomilter.MacroMailMailer] = domain(msg.Sender), "smtp"
	if res.Mail, err = s.s.Mail(msg.Sender, ""); err != nil {
		return err
	}
	if res.stops(AtMail, res.Mail) {
		return nil
	}
	accepted := 0
	for i, r := range msg.Recipients {
		if i > 0 {
			m.set(gomilter.MacroQueueId, msg.QueueID)
		}
		m[gomilter.MacroRcptAddr], m[gomilter.MacroRcptHost], m[gomilter.MacroRcptMailer] = r, domain(r), "smtp"
		act, err := s.s.Rcpt(r, "")
		if err != nil {
			return err
		}
		res.Rcpts = append(res.Rcpts, act)
		if act.StopProcessing() { // this recipient only
			res.Stopped, res.Reply = AtRcpt, act
			continue
		}
		accepted++
		if res.stops(AtRcpt, act) {
			return nil
		}
	}
	if accepted == 0 {
		return nil
	}
	res.Stopped, res.Reply = "", nil
	m.set(gomilter.MacroQueueId, msg.QueueID)
	if res.Data, err = s.s.DataStart(); err != nil || res.stops(AtData, res.Data) {
		return err
	}
	leadSpace := s.Protocol(gomilter.OptHeaderLeadingSpace)
	for _, h := range msg.Headers {
		v := h.Value
		if !leadSpace {
			v = strings.TrimPrefix(v, " ")
		}
		if act, err := s.s.HeaderField(h.Name, v, nil); err != nil || res.stops(AtHeader, act) {
			return err
		}
	}
	if act, err := s.s.HeaderEnd(); err != nil || res.stops(AtEOH, act) {
		return err
	}
	for b := msg.Body; len(b) > 0; b = b[min(len(b), bodyChunk):] {
		if act, err := s.s.BodyChunk(b[:min(len(b), bodyChunk)]); err != nil || res.stops(AtBody, act) {
			return err
		}
	}
	if len(msg.Body) == 0 {
		res.Changes, res.End, err = s.s.BodyReadFrom(strings.NewReader("")) // no body packet: the end
	} else {
		res.Changes, res.End, err = s.s.End()
	}
	if err != nil {
		return err
	}
	res.Stopped, res.Reply = AtEOM, res.End
	return nil
}

// stops records a reply that ends the milter's part of the transaction:
// anything but continue.
func (r *Result) stops(at string, a *gomilter.Action) bool {
	if a.Type == gomilter.ActionContinue {
		return false
	}
	r.Stopped, r.Reply = at, a
	return true
}

// domain is the domain of addr, or the MTA's host name (for the null
// sender), as in Postfix's {mail_host} and {rcpt_host}.
func domain(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 && i+1 < len(addr) {
		return addr[i+1:]
	}
	return hostname
}

// Delivered reports whether the MTA would queue the message: the milter
// neither refused nor discarded it.
func (r *Result) Delivered() bool {
	return r.Reply != nil && (r.Reply.Type == gomilter.ActionContinue || r.Reply.Type == gomilter.ActionAccept)
}

// SignedSender is the envelope sender the milter set, or "".
func (r *Result) SignedSender() string {
	for _, c := range r.Changes {
		if c.Type == gomilter.ActionChangeFrom {
			return strings.Trim(c.From, "<>")
		}
	}
	return ""
}

// Refused reports whether the reply refuses.
func Refused(a *gomilter.Action) bool { return a != nil && a.StopProcessing() }

// String describes the replies and changes, one per line, for test
// failures.
func (r *Result) String() string {
	var b strings.Builder
	if r.Mail != nil {
		fmt.Fprintf(&b, "mail: %v\n", r.Mail)
	}
	for i, a := range r.Rcpts {
		fmt.Fprintf(&b, "rcpt %d: %v\n", i, a)
	}
	if r.Data != nil {
		fmt.Fprintf(&b, "data: %v\n", r.Data)
	}
	for _, c := range r.Changes {
		fmt.Fprintf(&b, "change: %v\n", c)
	}
	if r.End != nil {
		fmt.Fprintf(&b, "end: %v\n", r.End)
	}
	fmt.Fprintf(&b, "stopped at %s: %v\n", r.Stopped, r.Reply)
	return b.String()
}
