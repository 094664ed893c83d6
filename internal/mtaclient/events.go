package mtaclient

import (
	"encoding/binary"
	"time"
)

// evSpec describes how Postfix's milter8 client handles one event.
type evSpec struct {
	stage   Stage  // macro stage (SETSYMLIST slot)
	noSend  uint32 // SMFIP_NO* flag that suppresses the event
	noReply uint32 // SMFIP_NR_* flag that suppresses the reply
	// macrosAlways: the macro packet goes out even when the milter opted
	// out of the event (milter8_event writes macros before checking the
	// event mask). Header, EOH and body events are never generated when
	// opted out, so they send no macros either.
	macrosAlways bool
	connLevel    bool // CONNECT or HELO: a verdict applies to the connection
}

func spec(cmd byte) evSpec {
	switch cmd {
	case CmdConnect:
		return evSpec{StageConnect, ProtoNoConnect, ProtoNoConnRepl, true, true}
	case CmdHelo:
		return evSpec{StageHelo, ProtoNoHelo, ProtoNoHeloRepl, true, true}
	case CmdMail:
		return evSpec{StageMail, ProtoNoMail, ProtoNoMailRepl, true, false}
	case CmdRcpt:
		return evSpec{StageRcpt, ProtoNoRcpt, ProtoNoRcptRepl, true, false}
	case CmdData:
		return evSpec{StageData, ProtoNoData, ProtoNoDataRepl, true, false}
	case CmdUnknown:
		return evSpec{stageNone, ProtoNoUnknown, ProtoNoUnknRepl, true, false}
	case CmdHeader:
		return evSpec{StageEOH, ProtoNoHeaders, ProtoNoHeaderRepl, false, false}
	case CmdEOH:
		return evSpec{StageEOH, ProtoNoEOH, ProtoNoEOHRepl, false, false}
	case CmdBody:
		return evSpec{StageEOM, ProtoNoBody, ProtoNoBodyRepl, false, false}
	}
	return evSpec{stage: StageEOM, macrosAlways: true} // CmdEOM
}

// begin applies the connection state before an event. It returns done with
// the reply to give when the event must not be sent at all.
func (c *Conn) begin(cmd byte) (Reply, bool, error) {
	if c.err != nil {
		return Reply{}, true, c.err
	}
	switch c.state {
	case stAcceptConn, stRejectConn:
		return c.verdict, true, nil
	case stAcceptMsg:
		switch cmd {
		case CmdConnect, CmdHelo:
		case CmdMail: // the caller did not abort the previous message
			c.state = stEnvelope
		default:
			return c.verdict, true, nil
		}
	case stReady:
		if cmd == CmdConnect {
			c.state = stEnvelope
		}
	}
	s := spec(cmd)
	if s.noSend&c.npMask != 0 {
		return replyContinue, true, nil // not in the offered protocol
	}
	if c.skipCmd != 0 {
		if c.skipCmd == cmd {
			return replyContinue, true, nil
		}
		c.skipCmd = 0
	}
	if c.r.Buffered() > 0 {
		return Reply{}, true, c.fail(protoErr(cmdName(cmd), "milter sent %d bytes nobody asked for (a reply to a no-reply event?)", c.r.Buffered()))
	}
	_ = c.nc.SetDeadline(time.Now().Add(c.timeout))
	return Reply{}, false, nil
}

// event sends the macros in c.kv and the command with data, then reads the
// reply, honouring opt-outs and no-reply flags.
func (c *Conn) event(cmd byte, data []byte) (Reply, error) {
	if r, done, err := c.begin(cmd); done {
		return r, err
	}
	s := spec(cmd)
	optedOut := c.neg.Protocol&s.noSend != 0
	if !optedOut || s.macrosAlways {
		c.writeMacros(cmd)
	}
	if optedOut {
		// Postfix leaves the macro packet in its buffer; it goes out
		// with the next event.
		return replyContinue, nil
	}
	c.writeHeader(cmd, len(data))
	_, _ = c.w.Write(data)
	if err := c.w.Flush(); err != nil {
		return Reply{}, c.fail(c.ioErr(cmdName(cmd), "write", err))
	}
	if c.neg.Protocol&s.noReply != 0 {
		return replyContinue, nil
	}
	r, err := c.readReply(cmd)
	if err != nil {
		return Reply{}, c.fail(err)
	}
	c.apply(cmd, s, r)
	return r, nil
}

// readReply reads packets until a decision arrives.
func (c *Conn) readReply(cmd byte) (Reply, error) {
	op := cmdName(cmd)
	for first := true; ; first = false {
		code, data, err := c.readPacket(op, !first)
		if err != nil {
			return Reply{}, err
		}
		switch code {
		case RepProgress:
			if len(data) != 0 {
				return Reply{}, protoErr(op, "PROGRESS followed by %d data bytes", len(data))
			}
		case RepContinue, RepAccept, RepReject, RepTempFail, RepDiscard, RepSkip, RepShutdown:
			if len(data) != 0 {
				return Reply{}, protoErr(op, "reply %s followed by %d data bytes", replyName(code), len(data))
			}
			return Reply{Code: code}, nil
		case RepReplyCode:
			text := cString(data)
			if !validReplyCode(text) {
				return Reply{}, protoErr(op, "malformed reply code %q (Postfix wants \"4xx 4.x.x text\" or \"5xx 5.x.x text\")", text)
			}
			return Reply{Code: RepReplyCode, Text: text}, nil
		case RepQuarantine:
			// Allowed at any stage; Postfix holds the message.
			if c.strict && c.neg.Actions&ActQuarantine == 0 {
				return Reply{}, protoErr(op, "QUARANTINE without SMFIF_QUARANTINE")
			}
			c.pending = append(c.pending, &Quarantine{Reason: cString(data)})
		default:
			if cmd == CmdEOM && modAction(code) != 0 {
				if err := c.modification(code, data); err != nil {
					return Reply{}, err
				}
				continue
			}
			return Reply{}, protoErr(op, "unexpected reply %s after %s", replyName(code), op)
		}
	}
}

// modification decodes a modification packet received at end of message
// and adds it to c.pending.
func (c *Conn) modification(code byte, data []byte) error {
	action := modAction(code)
	if c.strict && c.neg.Actions&action == 0 {
		return protoErr("EOM", "%s without the matching negotiated action %#x", replyName(code), action)
	}
	if code == RepReplBody {
		// Postfix joins consecutive REPLBODY packets and refuses body
		// replacement once another request came in between.
		if n := len(c.pending); n > 0 {
			if rb, ok := c.pending[n-1].(*ReplaceBody); ok {
				rb.Body = append(rb.Body, data...)
				return nil
			}
			for _, m := range c.pending {
				if _, ok := m.(*ReplaceBody); ok {
					return protoErr("EOM", "body replacement requests can't be mixed with other requests")
				}
			}
		}
	}
	m, bad := parseMod(code, data)
	if bad != "" {
		return protoErr("EOM", "%s: %s", replyName(code), bad)
	}
	c.pending = append(c.pending, m)
	return nil
}

// apply updates the connection state after a reply, as milter8_event does.
func (c *Conn) apply(cmd byte, s evSpec, r Reply) {
	switch r.Code {
	case RepAccept:
		if s.connLevel {
			c.closeConnLevel(stAcceptConn, r)
		} else {
			c.state, c.verdict = stAcceptMsg, r
		}
	case RepDiscard:
		if !s.connLevel { // Postfix ignores DISCARD at CONNECT and HELO
			c.state, c.verdict = stAcceptMsg, r
		}
	case RepShutdown:
		c.closeConnLevel(stRejectConn, r)
	case RepReject, RepTempFail, RepReplyCode:
		if s.connLevel {
			c.closeConnLevel(stRejectConn, r)
		}
	case RepSkip:
		c.skipCmd = cmd
	}
}

// closeConnLevel: after a connection-level verdict Postfix closes the
// socket (libmilter would close it anyway) and sends nothing more.
func (c *Conn) closeConnLevel(st connState, r Reply) {
	c.state, c.verdict = st, r
	_ = c.Close()
}

// writeMacros writes the macro packet for cmd from c.kv.
func (c *Conn) writeMacros(cmd byte) {
	n := 1
	for _, p := range c.kv {
		n += len(p.k) + len(p.v) + 2
	}
	c.writeHeader(CmdMacro, n)
	_ = c.w.WriteByte(cmd)
	for _, p := range c.kv {
		_, _ = c.w.WriteString(p.k)
		_ = c.w.WriteByte(0)
		_, _ = c.w.WriteString(p.v)
		_ = c.w.WriteByte(0)
	}
}

// Connect sends CONNECT: the client's hostname (Postfix sends "[addr]" when
// the name is unknown), family (FamilyInet, FamilyInet6, FamilyUnix or
// FamilyUnknown), port and address. Postfix sends port 0 for FamilyUnix
// and neither port nor address for FamilyUnknown.
//
// An accept, reject, tempfail or reply code here settles the whole
// connection: like Postfix the socket is closed and later calls return
// that reply without sending anything.
func (c *Conn) Connect(hostname string, family byte, port uint16, addr string, macros map[string]string) (Reply, error) {
	c.macrosFromMap(StageConnect, macros)
	c.rememberConn(macros)
	b := append(c.sbuf[:0], hostname...)
	b = append(b, 0, family)
	if family != FamilyUnknown {
		b = binary.BigEndian.AppendUint16(b, port)
		b = append(b, addr...)
		b = append(b, 0)
	}
	c.sbuf = b
	return c.event(CmdConnect, b)
}

// Helo sends HELO with the name the client gave. Like Postfix, a second
// HELO aborts the current transaction first.
func (c *Conn) Helo(name string, macros map[string]string) (Reply, error) {
	if c.heloSeen && c.err == nil {
		if err := c.abort(false); err != nil {
			return Reply{}, err
		}
	}
	c.heloSeen = true
	c.macrosFromMap(StageHelo, macros)
	c.rememberConn(macros)
	b := append(c.sbuf[:0], name...)
	c.sbuf = append(b, 0)
	return c.event(CmdHelo, c.sbuf)
}

// Mail sends MAIL FROM. from is the address without angle brackets ("" is
// the null sender); it is sent as "<from>" unless already bracketed. args
// are the ESMTP parameters ("SIZE=100", "BODY=8BITMIME"), one per string.
func (c *Conn) Mail(from string, args []string, macros map[string]string) (Reply, error) {
	c.macrosFromMap(StageMail, macros)
	return c.event(CmdMail, c.envData(from, args))
}

// Rcpt sends RCPT TO; to and args as for Mail. A refusal (reject, tempfail,
// reply code) refuses this recipient only; the transaction goes on.
func (c *Conn) Rcpt(to string, args []string, macros map[string]string) (Reply, error) {
	c.macrosFromMap(StageRcpt, macros)
	return c.event(CmdRcpt, c.envData(to, args))
}

func (c *Conn) envData(addr string, args []string) []byte {
	b := c.sbuf[:0]
	if len(addr) >= 2 && addr[0] == '<' && addr[len(addr)-1] == '>' {
		b = append(b, addr...)
	} else {
		b = append(b, '<')
		b = append(b, addr...)
		b = append(b, '>')
	}
	b = append(b, 0)
	for _, a := range args {
		b = append(b, a...)
		b = append(b, 0)
	}
	c.sbuf = b
	return b
}

// Data sends DATA.
func (c *Conn) Data(macros map[string]string) (Reply, error) {
	c.macrosFromMap(StageData, macros)
	return c.event(CmdData, nil)
}

// Header sends one header. value is sent as given: Postfix drops one space
// after the colon (unless SMFIP_HDR_LEADSPC was negotiated) and sends a
// folded header with its line breaks as "\n". Postfix precedes every header
// with the end-of-header macros.
func (c *Conn) Header(name, value string, macros map[string]string) (Reply, error) {
	c.macrosFromMap(StageEOH, macros)
	return c.event(CmdHeader, c.headerData(name, value))
}

func (c *Conn) headerData(name, value string) []byte {
	b := append(c.sbuf[:0], name...)
	b = append(b, 0)
	b = append(b, value...)
	c.sbuf = append(b, 0)
	return c.sbuf
}

// EOH sends end of headers.
func (c *Conn) EOH(macros map[string]string) (Reply, error) {
	c.macrosFromMap(StageEOH, macros)
	return c.event(CmdEOH, nil)
}

// Body sends body content, split into chunks of at most MaxBodyChunk bytes
// as Postfix does, each preceded by the end-of-message macros. Postfix sends
// the body with CRLF line ends. It stops at the first reply that is not
// continue; after a skip reply, further Body calls send nothing (until
// another kind of event is sent).
func (c *Conn) Body(chunk []byte, macros map[string]string) (Reply, error) {
	c.macrosFromMap(StageEOM, macros)
	return c.body(chunk)
}

func (c *Conn) body(b []byte) (Reply, error) {
	r := replyContinue
	for len(b) > 0 {
		n := min(len(b), MaxBodyChunk)
		var err error
		r, err = c.event(CmdBody, b[:n])
		if err != nil || !r.Continue() {
			return r, err
		}
		b = b[n:]
	}
	return r, nil
}

// EndOfMessage sends end of message and collects the modifications the
// milter requests before its final reply (a QUARANTINE received at an
// earlier stage of this message is included first).
func (c *Conn) EndOfMessage(macros map[string]string) (*EOMResult, error) {
	c.macrosFromMap(StageEOM, macros)
	return c.eom()
}

func (c *Conn) eom() (*EOMResult, error) {
	r, err := c.event(CmdEOM, nil)
	if err != nil {
		return nil, err
	}
	res := &EOMResult{Modifications: c.pending, Reply: r}
	c.pending = nil
	if c.state == stAcceptMsg {
		c.state = stEnvelope // the message is over
	}
	return res, nil
}

// Unknown sends an unknown SMTP command (Postfix sends only the command
// word). go-milter closes the connection on it unless the milter opted out
// with SMFIP_NOUNKNOWN.
func (c *Conn) Unknown(command string, macros map[string]string) (Reply, error) {
	c.macrosFromMap(stageNone, macros)
	b := append(c.sbuf[:0], command...)
	c.sbuf = append(b, 0)
	return c.event(CmdUnknown, c.sbuf)
}

// Abort sends ABORT: the milter forgets the current message and keeps the
// connection. Nothing is sent after a connection-level verdict.
func (c *Conn) Abort() error { return c.abort(true) }

// abort writes ABORT and flushes it if flush is set; otherwise it stays in
// the write buffer and goes out with the next packet.
func (c *Conn) abort(flush bool) error {
	if c.err != nil {
		return c.err
	}
	c.pending = nil
	c.skipCmd = 0
	switch c.state {
	case stAcceptConn, stRejectConn:
		return nil
	case stAcceptMsg:
		c.state = stEnvelope
	}
	if !flush {
		c.writeHeader(CmdAbort, 0)
		return nil
	}
	return c.send(CmdAbort)
}

// Flush sends what is buffered: the ABORT that ends a Send. Postfix leaves
// that ABORT in its buffer too; it reaches the milter with the next event.
func (c *Conn) Flush() error {
	if c.err != nil {
		return c.err
	}
	if c.w.Buffered() == 0 {
		return nil
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.timeout))
	if err := c.w.Flush(); err != nil {
		return c.fail(c.ioErr("flush", "write", err))
	}
	return nil
}

// Quit sends QUIT (preceded, like Postfix at the end of a session, by an
// ABORT once HELO was seen) and closes the connection. After a
// connection-level verdict it only closes.
func (c *Conn) Quit() error {
	if c.err != nil {
		_ = c.Close()
		return c.err
	}
	defer c.Close()
	if c.state == stAcceptConn || c.state == stRejectConn {
		return nil
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.timeout))
	if c.heloSeen {
		c.writeHeader(CmdAbort, 0)
	}
	return c.send(CmdQuit)
}

// send writes a command without data and reply.
func (c *Conn) send(cmd byte) error {
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.timeout))
	c.writeHeader(cmd, 0)
	if err := c.w.Flush(); err != nil {
		return c.fail(c.ioErr(cmdName(cmd), "write", err))
	}
	return nil
}
