package mtaclient

import (
	"sort"
	"strings"
)

// Message is one SMTP transaction for Send.
type Message struct {
	// Sender is the MAIL FROM address without angle brackets ("" is the
	// null sender); SenderArgs its ESMTP parameters, one per string.
	Sender     string
	SenderArgs []string
	// Recipients are the RCPT TO addresses without angle brackets.
	Recipients []string
	// Headers in message order. Value is the text after the colon as it
	// appears in the message: like Postfix, Send drops one leading space
	// (unless SMFIP_HDR_LEADSPC was negotiated) and turns CRLF inside a
	// folded value into "\n".
	Headers []Header
	// Body is the message body, with CRLF line ends as Postfix sends it.
	// An empty body sends no BODY packet, as with Postfix.
	Body []byte

	// QueueID is the i macro, sent once a recipient has been accepted:
	// at later RCPTs, DATA, headers, EOH, body and end of message.
	QueueID string
	// AuthUser and AuthType make {auth_authen} and {auth_type} (default
	// "PLAIN") at MAIL, as for an authenticated submission.
	AuthUser, AuthType string
	// Mailer is {mail_mailer} and {rcpt_mailer}; default "smtp".
	Mailer string
	// Macros adds or overrides macro values per stage (StageEOH for
	// headers, StageEOM for body chunks). Without a SETSYMLIST request
	// for the stage, extra names are sent after the stock ones.
	Macros map[Stage]map[string]string
}

// Header is one message header.
type Header struct{ Name, Value string }

// Result is the outcome of Send.
type Result struct {
	// Mail is the reply to MAIL.
	Mail Reply
	// Rcpts holds one reply per recipient; the zero Reply for recipients
	// the milter was not asked about because it had already accepted or
	// discarded the message.
	Rcpts []Reply
	// Reply is the milter's verdict on the message: the reply to end of
	// message, or the reply that ended the transaction early (the last
	// recipient's refusal when every recipient was refused).
	Reply Reply
	// StoppedAt is the command whose reply is Reply: CmdEOM when the
	// message was sent to the end, else CmdMail, CmdRcpt, CmdData,
	// CmdHeader, CmdEOH or CmdBody. Zero when nothing was sent because
	// the connection had already been settled.
	StoppedAt byte
	// Modifications are the changes requested at end of message (and any
	// QUARANTINE requested earlier in the transaction).
	Modifications []Modification
}

// Delivered reports whether Postfix would queue the message: the milter
// neither refused nor discarded it, and it got to the end of the message or
// accepted it earlier.
func (r *Result) Delivered() bool {
	if r.Reply.Refused() || r.Reply.Discarded() {
		return false
	}
	return r.StoppedAt == CmdEOM || r.Reply.Accepted()
}

// txState is what Send knows while it evaluates macros.
type txState struct {
	msg    *Message
	info   PostfixInfo
	inRcpt bool
}

// Send runs one transaction the way Postfix's smtpd and cleanup drive a
// milter: MAIL, each RCPT, DATA, each header, EOH, the body in chunks of
// at most MaxBodyChunk bytes and end of message, each preceded by its macro
// packet (Postfix's stock macros, or the names the milter asked for with
// SETSYMLIST), skipping the stages the milter opted out of.
//
// A refused MAIL ends the transaction. A refused RCPT refuses that
// recipient only; when every recipient is refused there is no DATA. An
// accept or discard ends the milter's part of the message. Like Postfix,
// Send always finishes with an ABORT, so the milter is ready for the next
// transaction on the same connection (call Connect and Helo once first);
// like Postfix, that ABORT stays buffered until the next event, Flush or
// Quit.
//
// Send returns an error only for a broken connection or protocol violation;
// refusals are in the Result.
func (c *Conn) Send(msg *Message) (*Result, error) {
	if c.err != nil {
		return nil, c.err
	}
	res := &Result{Rcpts: make([]Reply, len(msg.Recipients))}
	if c.state == stAcceptConn || c.state == stRejectConn {
		res.Reply = c.verdict
		return res, nil
	}
	c.tx = txState{msg: msg, info: PostfixInfo{
		Hostname: c.connMacro["j"],
		Sender:   msg.Sender,
		AuthUser: msg.AuthUser,
		AuthType: msg.AuthType,
		Mailer:   msg.Mailer,
	}}
	defer func() { c.tx = txState{} }()

	c.sendMacros(StageMail)
	r, err := c.event(CmdMail, c.envData(msg.Sender, msg.SenderArgs))
	if err != nil {
		return nil, err
	}
	res.Mail = r
	if stops(r) {
		return c.finish(res, CmdMail, r)
	}

	accepted := 0
	var last Reply
	for i, rcpt := range msg.Recipients {
		c.tx.info.Recipient, c.tx.inRcpt = rcpt, true
		c.sendMacros(StageRcpt)
		r, err := c.event(CmdRcpt, c.envData(rcpt, nil))
		if err != nil {
			return nil, err
		}
		res.Rcpts[i], last = r, r
		if r.Refused() {
			continue
		}
		accepted++
		// Postfix opens the queue file after the first accepted
		// recipient: from then on it knows the queue ID.
		c.tx.info.QueueID = msg.QueueID
		if stops(r) {
			return c.finish(res, CmdRcpt, r)
		}
	}
	if accepted == 0 {
		return c.finish(res, CmdRcpt, last)
	}

	c.sendMacros(StageData)
	if r, err = c.event(CmdData, nil); err != nil {
		return nil, err
	} else if stops(r) {
		return c.finish(res, CmdData, r)
	}

	leadSpace := c.neg.Protocol&ProtoHdrLeadSpace != 0
	c.sendMacros(StageEOH)
	for _, h := range msg.Headers {
		if r, err = c.event(CmdHeader, c.headerData(h.Name, headerValue(h.Value, leadSpace))); err != nil {
			return nil, err
		} else if stops(r) {
			return c.finish(res, CmdHeader, r)
		}
	}
	if r, err = c.event(CmdEOH, nil); err != nil {
		return nil, err
	} else if stops(r) {
		return c.finish(res, CmdEOH, r)
	}

	c.sendMacros(StageEOM)
	if r, err = c.body(msg.Body); err != nil {
		return nil, err
	} else if stops(r) {
		return c.finish(res, CmdBody, r)
	}
	eom, err := c.eom()
	if err != nil {
		return nil, err
	}
	res.Modifications = eom.Modifications
	return c.finish(res, CmdEOM, eom.Reply)
}

// stops reports whether a reply ends the milter's part of the transaction.
func stops(r Reply) bool { return !r.Continue() && !r.Skipped() }

// finish records the verdict and writes the ABORT Postfix sends when the
// transaction ends (smtpd's mail_reset). Like Postfix, it leaves the ABORT
// in the write buffer: it goes out with the next event (or Flush, Quit).
func (c *Conn) finish(res *Result, cmd byte, r Reply) (*Result, error) {
	res.StoppedAt, res.Reply = cmd, r
	if res.Modifications == nil && len(c.pending) > 0 {
		res.Modifications = c.pending
	}
	c.pending = nil
	return res, c.abort(false)
}

func headerValue(v string, leadSpace bool) string {
	if !leadSpace && len(v) > 0 && v[0] == ' ' {
		v = v[1:]
	}
	if strings.Contains(v, "\r\n") {
		v = strings.ReplaceAll(v, "\r\n", "\n")
	}
	return v
}

// sendMacros fills c.kv for stage s of the current transaction.
func (c *Conn) sendMacros(s Stage) {
	c.kv = c.kv[:0]
	names, asked := c.symlist[s], true
	if names == nil {
		names, asked = stockNames[s], false
	}
	for _, name := range names {
		if v, ok := c.txLookup(s, name); ok {
			c.kv = append(c.kv, kv{name, v})
		}
	}
	extra := c.tx.msg.Macros[s]
	if asked || len(extra) == 0 {
		return
	}
	n := len(c.kv)
	for k, v := range extra {
		if !contains(names, k) {
			c.kv = append(c.kv, kv{k, v})
		}
	}
	more := c.kv[n:]
	sort.Slice(more, func(i, j int) bool { return more[i].k < more[j].k })
}

// txLookup evaluates one macro for Send, as smtpd_milter_eval does from
// the session state: caller overrides first, then transaction values,
// then what was given at CONNECT and HELO.
func (c *Conn) txLookup(s Stage, name string) (string, bool) {
	if m := c.tx.msg.Macros[s]; m != nil {
		if v, ok := m[name]; ok {
			return v, true
		}
	}
	switch name {
	case "i", "{auth_type}", "{auth_authen}", "{mail_addr}", "{mail_host}", "{mail_mailer}":
		return c.tx.info.lookup(s, name)
	case "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}":
		if !c.tx.inRcpt {
			return "", false
		}
		return c.tx.info.lookup(s, name)
	}
	v, ok := c.connMacro[name]
	return v, ok
}
