package milter

import (
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/batv/batv/policy"
)

// session is go-milter's Milter for one connection. It collects the facts
// of a transaction, asks the Policy at MAIL, RCPT and end of message, and
// applies the decisions at end of message, the only time the protocol
// allows modifications. It never answers anything but continue (or a
// reply code for one recipient), because go-milter replaces the Milter
// object, and so forgets the transaction, after any other answer.
type session struct {
	c *conn

	policy    *policy.Policy
	trx       policy.Transaction
	sender    string
	outbound  policy.Origin // why the message is ours to sign
	queueID   string
	rcpts     []rcptState
	bounces   int      // recipients in protected domains of a null-sender message
	forged    int      // incoming status headers to remove
	signRcpts []string // scratch for applyOutbound
}

// rcptState is one recipient as received and what was decided for it.
type rcptState struct {
	addr string
	d    policy.Decision
}

var _ gomilter.Milter = (*session)(nil)

func (s *session) srv() *Server { return s.c.srv }

func (s *session) Connect(host, family string, port uint16, addr net.IP, m *gomilter.Modifier) (gomilter.Response, error) {
	f := policy.Client{DaemonName: m.Macros["{daemon_name}"]}
	if a, ok := netip.AddrFromSlice(addr); ok {
		f.Addr = a.Unmap()
	}
	// Mail submitted on the MTA host has no client: Postfix's
	// non_smtpd_milters see an emulated connection from localhost,
	// 127.0.0.1, port 0; Sendmail reports family "unix" or "unknown".
	f.Local = family == "unix" || family == "unknown" || family == "" || port == 0
	s.c.facts = f
	s.log().Debug("connect", "client", host, "family", family, "addr", f.Addr, "port", port,
		"daemon_name", f.DaemonName, "local", f.Local, "no_reply", noReplyEvents(s.c.proto))
	return s.cont(gomilter.OptNoConnReply), nil
}

// cont is the reply "continue" to an event, or no reply at all when the
// MTA agreed not to wait for one (flag, an SMFIP_NR_* bit): go-milter
// sends nothing for a nil response.
func (s *session) cont(flag gomilter.OptProtocol) gomilter.Response {
	if s.c.noReply(flag) {
		return nil
	}
	return gomilter.RespContinue
}

func (s *session) Helo(string, *gomilter.Modifier) (gomilter.Response, error) {
	return gomilter.RespContinue, nil
}

func (s *session) MailFrom(from string, m *gomilter.Modifier) (gomilter.Response, error) {
	s.reset()
	s.c.beginMessage()
	s.policy = s.srv().Policy()
	s.sender = from
	s.queueID = m.Macros["i"]
	s.c.facts.AuthUser = m.Macros["{auth_authen}"]
	s.trx = s.policy.Begin(s.c.facts, from)
	if s.srv().Roles&Outbound != 0 {
		s.outbound = s.policy.Origin(s.c.facts)
		if s.outbound == policy.NotOurs {
			s.log().Debug("not ours to sign", "direction", "outbound", "sender", from,
				"client", s.c.facts.Addr, "daemon_name", s.c.facts.DaemonName)
		}
	}
	return s.cont(gomilter.OptNoMailReply), nil
}

func (s *session) RcptTo(rcpt string, m *gomilter.Modifier) (gomilter.Response, error) {
	if s.policy == nil { // RCPT without MAIL: a broken MTA
		return gomilter.RespContinue, nil
	}
	if s.queueID == "" {
		s.queueID = m.Macros["i"]
	}
	st := rcptState{addr: rcpt, d: policy.Decision{Action: policy.ActPass, KeyID: -1}}
	if s.srv().Roles&Inbound != 0 {
		start := time.Now()
		st.d = s.trx.Recipient(rcpt, s.srv().now())
		s.srv().Metrics.Decision("inbound", time.Since(start).Seconds())
		if st.d.Protected {
			s.srv().Metrics.Recipient(st.d)
			if s.sender == "" {
				s.bounces++
			}
			s.logRecipient(rcpt, st.d)
		}
	}
	s.rcpts = append(s.rcpts, st)
	if st.d.Reply != "" {
		// A reply code refuses this recipient only; the transaction and
		// its other recipients go on.
		return gomilter.NewResponseStr(byte(gomilter.ActReplyCode), st.d.Reply), nil
	}
	return gomilter.RespContinue, nil
}

func (s *session) Header(name, _ string, _ *gomilter.Modifier) (gomilter.Response, error) {
	if s.policy != nil && strings.EqualFold(name, s.policy.StatusHeader()) {
		s.forged++
	}
	return s.cont(gomilter.OptNoHeaderReply), nil
}

func (s *session) Headers(textproto.MIMEHeader, *gomilter.Modifier) (gomilter.Response, error) {
	return gomilter.RespContinue, nil
}

func (s *session) BodyChunk([]byte, *gomilter.Modifier) (gomilter.Response, error) {
	return gomilter.RespContinue, nil
}

// Body is the end of the message: apply what was decided.
func (s *session) Body(m *gomilter.Modifier) (gomilter.Response, error) {
	defer s.c.endMessage(true)
	defer s.reset()
	if s.policy == nil {
		return gomilter.RespContinue, nil
	}
	if id := m.Macros["i"]; id != "" {
		s.queueID = id
	}
	if err := s.applyInbound(); err != nil {
		return nil, err
	}
	return s.applyOutbound()
}

// Modifications are written by the session itself rather than with
// go-milter's Modifier, which allocates a 4 KiB buffer and a formatted
// string per packet: they go into the connection's held-back buffer and
// out with the reply (conn.Write), in the same bytes go-milter would send.

func (s *session) applyInbound() error {
	if s.srv().Roles&Inbound == 0 {
		return nil
	}
	if s.bounces > 1 {
		s.srv().Metrics.MultipleRecipients()
		s.log().Info("bounce with several protected recipients", "queue_id", s.queueID, "recipients", s.bounces)
	}
	name := s.policy.StatusHeader()
	// Delete from the last occurrence, so the indexes of the others hold.
	c := s.c
	for i := s.forged; i >= 1; i-- {
		c.modStart(modChangeHeader)
		c.modUint32(uint32(i))
		c.modString(name)
		c.modString("")
		if err := c.modSend(); err != nil {
			return err
		}
	}
	added := map[string]bool{}
	for _, r := range s.rcpts {
		d := r.d
		if d.Rewrite != "" && d.Rewrite != r.addr && d.Reply == "" {
			// Postfix matches DELRCPT exactly: delete the address as
			// received.
			c.modStart(modDelRcpt)
			c.modString("<", r.addr, ">")
			if err := c.modSend(); err != nil {
				return err
			}
			if !added[d.Rewrite] {
				added[d.Rewrite] = true
				c.modStart(modAddRcpt)
				c.modString("<", d.Rewrite, ">")
				if err := c.modSend(); err != nil {
					return err
				}
			}
		}
		if d.Mark != "" {
			c.modStart(modAddHeader)
			c.modString(name)
			c.modString(d.Mark)
			if err := c.modSend(); err != nil {
				return err
			}
		}
		if d.Action == policy.ActQuarantine {
			c.modStart(modQuarantine)
			c.modString("BATV: untagged bounce to <", r.addr, ">")
			if err := c.modSend(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *session) applyOutbound() (gomilter.Response, error) {
	if s.outbound == policy.NotOurs {
		return gomilter.RespContinue, nil
	}
	rcpts := s.signRcpts[:0]
	for _, r := range s.rcpts {
		if r.d.Reply == "" {
			rcpts = append(rcpts, r.addr)
		}
	}
	s.signRcpts = rcpts
	start := time.Now()
	res := s.policy.Sign(s.sender, rcpts, s.srv().now())
	s.srv().Metrics.Decision("outbound", time.Since(start).Seconds())
	if res.Address == "" {
		s.srv().Metrics.Signed(res.Skip)
		if res.Skip == policy.SkipError {
			s.log().Error("signing failed", "queue_id", s.queueID, "direction", "outbound",
				"sender", s.sender, "err", res.Err, "tempfail", s.policy.TempfailOnSignError())
			if s.policy.TempfailOnSignError() {
				return gomilter.NewResponseStr(byte(gomilter.ActReplyCode), "451 4.3.0 Temporary failure signing the sender address (BATV)"), nil
			}
			return gomilter.RespContinue, nil
		}
		s.log().Info("not signed", "queue_id", s.queueID, "direction", "outbound",
			"outcome", "skipped", "reason", res.Skip.String(), "sender", s.sender, "why_ours", s.outbound.String())
		return gomilter.RespContinue, nil
	}
	s.c.modStart(modChangeFrom)
	s.c.modString("<", res.Address, ">")
	if err := s.c.modSend(); err != nil {
		return nil, err
	}
	s.srv().Metrics.Signed(policy.NotSkipped)
	s.log().Info("signed", "queue_id", s.queueID, "direction", "outbound", "outcome", "signed",
		"reason", s.outbound.String(), "key_id", res.KeyID, "sender", s.sender, "tagged", res.Address)
	return gomilter.RespContinue, nil
}

func (s *session) Abort(*gomilter.Modifier) error {
	s.reset()
	s.c.endMessage(false)
	return nil
}

func (s *session) reset() {
	s.policy, s.sender, s.outbound, s.queueID = nil, "", policy.NotOurs, ""
	s.trx = policy.Transaction{}
	s.rcpts = s.rcpts[:0]
	s.bounces, s.forged = 0, 0
}

func (s *session) logRecipient(rcpt string, d policy.Decision) {
	attrs := []any{"queue_id", s.queueID, "direction", "inbound", "outcome", d.Status.String(),
		"action", d.Action.String(), "reason", d.Reason, "rcpt", rcpt}
	if d.KeyID >= 0 {
		attrs = append(attrs, "key_id", d.KeyID)
	}
	if d.Rewrite != "" {
		attrs = append(attrs, "untagged", d.Rewrite)
	}
	if s.sender == "" {
		attrs = append(attrs, "sender", "<>")
	} else {
		attrs = append(attrs, "sender", s.sender)
	}
	// The client, to match the line with Postfix's own (NOQUEUE: reject:
	// RCPT from host[addr]) when there is no queue id yet.
	if s.c.facts.Addr.IsValid() {
		attrs = append(attrs, "client", s.c.facts.Addr)
	}
	s.log().Info("recipient", attrs...)
}

func (s *session) log() *slog.Logger { return s.c.log }

// Modification packets (SMFIR_*).
const (
	modAddRcpt      = '+'
	modDelRcpt      = '-'
	modChangeFrom   = 'e'
	modAddHeader    = 'h'
	modChangeHeader = 'm'
	modQuarantine   = 'q'
)

// modStart begins a modification packet in the connection's scratch
// buffer.
func (c *conn) modStart(code byte) {
	c.mbuf = append(c.mbuf[:0], 0, 0, 0, 0, code)
}

// modUint32 appends a network-order integer (a header index).
func (c *conn) modUint32(v uint32) {
	c.mbuf = binary.BigEndian.AppendUint32(c.mbuf, v)
}

// modString appends the concatenation of parts as one NUL-terminated
// string, with CRLF turned into LF as go-milter does for header values
// (Postfix wants LF).
func (c *conn) modString(parts ...string) {
	for _, p := range parts {
		if strings.IndexByte(p, '\r') < 0 {
			c.mbuf = append(c.mbuf, p...)
			continue
		}
		for i := 0; i < len(p); i++ {
			if p[i] == '\r' && i+1 < len(p) && p[i+1] == '\n' {
				continue
			}
			c.mbuf = append(c.mbuf, p[i])
		}
	}
	c.mbuf = append(c.mbuf, 0)
}

// modSend frames the packet and writes it, which holds it back until the
// reply that ends the message.
func (c *conn) modSend() error {
	binary.BigEndian.PutUint32(c.mbuf, uint32(len(c.mbuf)-4))
	_, err := c.Write(c.mbuf)
	return err
}
