package mtaclient

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// Reply is the milter's answer to one command.
//
// Code is one of RepContinue, RepAccept, RepReject, RepTempFail, RepDiscard,
// RepReplyCode, RepSkip or RepShutdown. Text is set for RepReplyCode only:
// the reply as sent ("550 5.7.1 text"), without the terminating NUL.
//
// A stage that was not sent (the milter opted out of it) or whose reply the
// milter declined to send (SMFIP_NR_*) yields a Continue reply, as Postfix
// treats it. The zero Reply (Code 0) means "not consulted": the message or
// connection had already been decided.
type Reply struct {
	Code byte
	Text string
}

var replyContinue = Reply{Code: RepContinue}

// Continue reports whether the milter said continue.
func (r Reply) Continue() bool { return r.Code == RepContinue }

// Accepted reports whether the milter accepted the message (or, at CONNECT
// and HELO, the whole connection) and wants no further events for it.
func (r Reply) Accepted() bool { return r.Code == RepAccept }

// Discarded reports whether the milter asked to discard the message.
func (r Reply) Discarded() bool { return r.Code == RepDiscard }

// Skipped reports whether the milter asked for no more events of this kind
// (normally body chunks).
func (r Reply) Skipped() bool { return r.Code == RepSkip }

// Rejected reports a permanent refusal: reject, or a 5xx reply code.
func (r Reply) Rejected() bool {
	return r.Code == RepReject || (r.Code == RepReplyCode && len(r.Text) > 0 && r.Text[0] == '5')
}

// TempFailed reports a temporary refusal: tempfail, shutdown, or a 4xx reply code.
func (r Reply) TempFailed() bool {
	return r.Code == RepTempFail || r.Code == RepShutdown ||
		(r.Code == RepReplyCode && len(r.Text) > 0 && r.Text[0] == '4')
}

// Refused reports whether the command was refused (Rejected or TempFailed).
func (r Reply) Refused() bool { return r.Rejected() || r.TempFailed() }

// SMTPCode is the SMTP status Postfix answers the client with for a
// refusal: 550 for reject, 451 for tempfail, 421 for shutdown, the code
// given for a reply code; 0 otherwise.
func (r Reply) SMTPCode() int {
	switch r.Code {
	case RepReject:
		return 550
	case RepTempFail:
		return 451
	case RepShutdown:
		return 421
	case RepReplyCode:
		if len(r.Text) >= 3 {
			if n, err := strconv.Atoi(r.Text[:3]); err == nil {
				return n
			}
		}
	}
	return 0
}

// SMTPText is the SMTP reply Postfix 3.7 gives the client for a refusal
// (for example "550 5.7.1 Command rejected" for a plain reject), or "" when
// the reply is not a refusal. For a reply code, Postfix's un-doubling of
// '%' characters is applied.
func (r Reply) SMTPText() string {
	switch r.Code {
	case RepReject:
		return "550 5.7.1 Command rejected"
	case RepTempFail:
		return "451 4.7.1 Service unavailable - try again later"
	case RepShutdown:
		return "421 4.7.0 Server closing connection"
	case RepReplyCode:
		if !strings.Contains(r.Text, "%") {
			return r.Text
		}
		// Postfix: "%%" becomes "%", a single "%" is removed.
		var b strings.Builder
		for i := 0; i < len(r.Text); i++ {
			if r.Text[i] == '%' {
				i++
				if i == len(r.Text) {
					break
				}
			}
			b.WriteByte(r.Text[i])
		}
		return b.String()
	}
	return ""
}

// String describes the reply, e.g. "continue" or `reply "550 5.7.1 no"`.
func (r Reply) String() string {
	switch r.Code {
	case 0:
		return "none"
	case RepContinue:
		return "continue"
	case RepAccept:
		return "accept"
	case RepReject:
		return "reject"
	case RepTempFail:
		return "tempfail"
	case RepDiscard:
		return "discard"
	case RepSkip:
		return "skip"
	case RepShutdown:
		return "shutdown"
	case RepReplyCode:
		return "reply " + strconv.Quote(r.Text)
	}
	return "reply code " + strconv.QuoteRune(rune(r.Code))
}

// validReplyCode applies Postfix's check of an SMFIR_REPLYCODE text: a 4xx or
// 5xx code, a space or hyphen, and an enhanced status code whose class digit
// matches ("550 5.7.1 ..."). Postfix disables the milter otherwise.
func validReplyCode(t string) bool {
	return len(t) >= 5 && (t[0] == '4' || t[0] == '5') &&
		isDigit(t[1]) && isDigit(t[2]) &&
		(t[3] == ' ' || t[3] == '-') && t[4] == t[0]
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

// Modification is one message change a milter requested at end of message:
// *ChangeFrom, *AddRcpt, *DelRcpt, *AddHeader, *InsertHeader,
// *ChangeHeader, *ReplaceBody or *Quarantine.
type Modification interface {
	// Code is the packet's command byte, e.g. RepChgFrom.
	Code() byte
	String() string
}

// ChangeFrom replaces the envelope sender (SMFIR_CHGFROM). Addr is as sent,
// brackets included if the milter sent them; Args holds the optional ESMTP
// parameters (one string, as Postfix reads it).
type ChangeFrom struct{ Addr, Args string }

// AddRcpt adds a recipient (SMFIR_ADDRCPT, or SMFIR_ADDRCPT_PAR when
// WithArgs is set; Args may be set only then).
type AddRcpt struct {
	Addr, Args string
	WithArgs   bool
}

// DelRcpt deletes a recipient (SMFIR_DELRCPT). Postfix matches Addr
// exactly and case-sensitively against the recipients it has.
type DelRcpt struct{ Addr string }

// AddHeader appends a header (SMFIR_ADDHEADER).
type AddHeader struct{ Name, Value string }

// InsertHeader inserts a header at Index (SMFIR_INSHEADER; 0 is the top).
type InsertHeader struct {
	Index       uint32
	Name, Value string
}

// ChangeHeader changes the Index'th header called Name (SMFIR_CHGHEADER;
// 1-based, Postfix treats 0 as 1). An empty Value deletes the header.
type ChangeHeader struct {
	Index       uint32
	Name, Value string
}

// ReplaceBody replaces the message body (SMFIR_REPLBODY). Consecutive
// REPLBODY packets are joined into one ReplaceBody.
type ReplaceBody struct{ Body []byte }

// Quarantine asks the MTA to hold the message (SMFIR_QUARANTINE).
type Quarantine struct{ Reason string }

func (*ChangeFrom) Code() byte { return RepChgFrom }
func (m *AddRcpt) Code() byte {
	if m.WithArgs {
		return RepAddRcptPar
	}
	return RepAddRcpt
}
func (*DelRcpt) Code() byte      { return RepDelRcpt }
func (*AddHeader) Code() byte    { return RepAddHeader }
func (*InsertHeader) Code() byte { return RepInsHeader }
func (*ChangeHeader) Code() byte { return RepChgHeader }
func (*ReplaceBody) Code() byte  { return RepReplBody }
func (*Quarantine) Code() byte   { return RepQuarantine }

func (m *ChangeFrom) String() string {
	if m.Args != "" {
		return fmt.Sprintf("CHGFROM %q %q", m.Addr, m.Args)
	}
	return fmt.Sprintf("CHGFROM %q", m.Addr)
}
func (m *AddRcpt) String() string {
	if m.WithArgs {
		return fmt.Sprintf("ADDRCPT_PAR %q %q", m.Addr, m.Args)
	}
	return fmt.Sprintf("ADDRCPT %q", m.Addr)
}
func (m *DelRcpt) String() string   { return fmt.Sprintf("DELRCPT %q", m.Addr) }
func (m *AddHeader) String() string { return fmt.Sprintf("ADDHEADER %q %q", m.Name, m.Value) }
func (m *InsertHeader) String() string {
	return fmt.Sprintf("INSHEADER %d %q %q", m.Index, m.Name, m.Value)
}
func (m *ChangeHeader) String() string {
	return fmt.Sprintf("CHGHEADER %d %q %q", m.Index, m.Name, m.Value)
}
func (m *ReplaceBody) String() string { return fmt.Sprintf("REPLBODY %d bytes", len(m.Body)) }
func (m *Quarantine) String() string  { return fmt.Sprintf("QUARANTINE %q", m.Reason) }

// EOMResult is the milter's answer to end of message: the modifications it
// requested, in order, and its final reply.
type EOMResult struct {
	Modifications []Modification
	Reply         Reply
}

// modAction maps a modification packet to the SMFIF_* action it needs.
func modAction(code byte) uint32 {
	switch code {
	case RepAddHeader, RepInsHeader:
		return ActAddHeaders
	case RepChgHeader:
		return ActChangeHeaders
	case RepReplBody:
		return ActChangeBody
	case RepAddRcpt:
		return ActAddRcpt
	case RepAddRcptPar:
		return ActAddRcptPar
	case RepDelRcpt:
		return ActDelRcpt
	case RepChgFrom:
		return ActChangeFrom
	case RepQuarantine:
		return ActQuarantine
	}
	return 0
}

// fields reads packet data the way Postfix's milter8_read_data does:
// uint32s and NUL-terminated strings, with no bytes left over.
type fields struct {
	data []byte
	err  string
}

func (f *fields) uint32() uint32 {
	if f.err != "" {
		return 0
	}
	if len(f.data) < 4 {
		f.err = "packet too short for network long"
		return 0
	}
	v := binary.BigEndian.Uint32(f.data)
	f.data = f.data[4:]
	return v
}

func (f *fields) str() string {
	if f.err != "" {
		return ""
	}
	i := bytes.IndexByte(f.data, 0)
	if i < 0 {
		if len(f.data) == 0 {
			f.err = "packet too short for string"
		} else {
			f.err = "missing string null terminator"
		}
		return ""
	}
	s := string(f.data[:i])
	f.data = f.data[i+1:]
	return s
}

func (f *fields) end() string {
	if f.err == "" && len(f.data) > 0 {
		f.err = fmt.Sprintf("%d bytes of left-over data", len(f.data))
	}
	return f.err
}

// parseMod decodes one modification packet. It returns an error text for
// a malformed packet.
func parseMod(code byte, data []byte) (Modification, string) {
	f := fields{data: data}
	var m Modification
	switch code {
	case RepChgFrom, RepAddRcptPar:
		addr := f.str()
		var args string
		if f.err == "" && len(f.data) > 0 {
			args = f.str()
		}
		if code == RepChgFrom {
			m = &ChangeFrom{Addr: addr, Args: args}
		} else {
			m = &AddRcpt{Addr: addr, Args: args, WithArgs: true}
		}
	case RepAddRcpt:
		m = &AddRcpt{Addr: f.str()}
	case RepDelRcpt:
		m = &DelRcpt{Addr: f.str()}
	case RepAddHeader:
		m = &AddHeader{Name: f.str(), Value: f.str()}
	case RepInsHeader:
		m = &InsertHeader{Index: f.uint32(), Name: f.str(), Value: f.str()}
	case RepChgHeader:
		h := &ChangeHeader{Index: f.uint32(), Name: f.str(), Value: f.str()}
		if f.err == "" && h.Name == "" {
			f.err = "null change header name"
		}
		m = h
	case RepQuarantine:
		m = &Quarantine{Reason: cString(data)}
		f.data = nil
	case RepReplBody:
		m = &ReplaceBody{Body: append([]byte(nil), data...)}
		f.data = nil
	default:
		return nil, "not a modification"
	}
	if e := f.end(); e != "" {
		return nil, e
	}
	return m, ""
}

// cString returns data up to the first NUL.
func cString(data []byte) string {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
	return string(data)
}

// replyName names a milter packet for error messages.
func replyName(code byte) string {
	switch code {
	case RepAddRcpt:
		return "ADDRCPT"
	case RepDelRcpt:
		return "DELRCPT"
	case RepAddRcptPar:
		return "ADDRCPT_PAR"
	case RepShutdown:
		return "SHUTDOWN"
	case RepAccept:
		return "ACCEPT"
	case RepReplBody:
		return "REPLBODY"
	case RepContinue:
		return "CONTINUE"
	case RepDiscard:
		return "DISCARD"
	case RepChgFrom:
		return "CHGFROM"
	case RepConnFail:
		return "CONN_FAIL"
	case RepAddHeader:
		return "ADDHEADER"
	case RepInsHeader:
		return "INSHEADER"
	case RepSetSymList:
		return "SETSYMLIST"
	case RepChgHeader:
		return "CHGHEADER"
	case RepOptNeg:
		return "OPTNEG"
	case RepProgress:
		return "PROGRESS"
	case RepQuarantine:
		return "QUARANTINE"
	case RepReject:
		return "REJECT"
	case RepSkip:
		return "SKIP"
	case RepTempFail:
		return "TEMPFAIL"
	case RepReplyCode:
		return "REPLYCODE"
	}
	return fmt.Sprintf("unknown %q", rune(code))
}

// cmdName names an MTA command for error messages.
func cmdName(cmd byte) string {
	switch cmd {
	case CmdAbort:
		return "ABORT"
	case CmdBody:
		return "BODY"
	case CmdConnect:
		return "CONNECT"
	case CmdMacro:
		return "MACRO"
	case CmdEOM:
		return "EOM"
	case CmdHelo:
		return "HELO"
	case CmdQuitNC:
		return "QUIT_NC"
	case CmdHeader:
		return "HEADER"
	case CmdMail:
		return "MAIL"
	case CmdEOH:
		return "EOH"
	case CmdOptNeg:
		return "OPTNEG"
	case CmdQuit:
		return "QUIT"
	case CmdRcpt:
		return "RCPT"
	case CmdData:
		return "DATA"
	case CmdUnknown:
		return "UNKNOWN"
	}
	return fmt.Sprintf("command %q", rune(cmd))
}
