package milter

import (
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/batv/batv/policy"
)

// session is the go-milter Milter of one MTA connection. It collects the
// facts of each transaction, asks the policy at MAIL, RCPT and the end of
// the message, and applies the decisions at the end of the message, the
// only time the protocol allows changes.
type session struct {
	srv    *Server
	conn   *conn
	client policy.Client

	policy    *policy.Policy // the policy in force at MAIL; nil outside a transaction
	trx       policy.Transaction
	sender    string
	origin    policy.Origin
	queueID   string
	rcpts     []rcptState
	rcptBytes int      // what rcpts holds, as rcptCost counts it
	rcptsFull bool     // a recipient was refused for maxRcptBytes
	bounces   int      // recipients in protected domains of a null-sender message
	forged    int      // incoming status headers to remove
	signRcpts []string // scratch for applyOutbound
	signed    policy.SignDecision
}

// rcptState is one recipient as received and what was decided for it.
type rcptState struct {
	addr string
	d    policy.Decision
}

// The recipients of a transaction are kept until its end, where they are
// rewritten or signed for; maxRcptBytes bounds what they hold, so that a
// peer cannot make one connection hold memory without end. Beyond it a
// recipient gets 452 4.5.3, and the MTA's client sends it again in another
// transaction, as for Postfix's smtpd_recipient_limit. 1 MiB is about
// 2,800 recipients of 30 bytes (Postfix's smtpd_recipient_limit is 1000).
const (
	maxRcptBytes = 1 << 20
	// rcptOverhead is a recipient's rcptState and its share of the
	// decision's fixed strings, beside rcptCost's copies of its address
	// (the address, its mailbox, its rewrite and its mark).
	rcptOverhead = 256
	// keptRcpts is the most recipients whose room a connection keeps
	// between transactions.
	keptRcpts = 64
)

// rcptCost is what keeping recipient rcpt costs, in bytes.
func rcptCost(rcpt string) int { return rcptOverhead + 4*len(rcpt) }

var _ gomilter.Milter = (*session)(nil)

func (s *session) NewConnection(gomilter.Modifier) error { return nil }

func (s *session) Connect(host, family string, port uint16, addr string, m gomilter.Modifier) (_ *gomilter.Response, err error) {
	defer s.recover(&err)
	s.client = policy.Client{DaemonName: m.Get(gomilter.MacroDaemonName)}
	if a, perr := netip.ParseAddr(addr); perr == nil {
		s.client.Addr = a.Unmap()
	}
	// Mail submitted on the MTA host has no client: Postfix's
	// non_smtpd_milters see an emulated connection from localhost,
	// 127.0.0.1, port 0; Sendmail reports family "unix" or "unknown".
	s.client.Local = family == "unix" || family == "unknown" || family == "" || port == 0
	s.logAt(slog.LevelDebug, "connect", "client", host, "family", family, "addr", s.client.Addr, "port", port,
		"daemon_name", s.client.DaemonName, "local", s.client.Local, "no_reply", noReplyEvents(m.Protocol()))
	return gomilter.RespContinue, nil
}

func (s *session) Helo(string, gomilter.Modifier) (*gomilter.Response, error) {
	return gomilter.RespContinue, nil
}

func (s *session) MailFrom(from, _ string, m gomilter.Modifier) (_ *gomilter.Response, err error) {
	defer s.recover(&err)
	s.reset()
	s.conn.Busy(true)
	s.policy = s.srv.Policy()
	s.sender = from
	s.queueID = m.Get(gomilter.MacroQueueId)
	s.client.AuthUser = m.Get(gomilter.MacroAuthAuthen)
	s.trx = s.policy.Begin(s.client, from)
	if s.srv.Roles&Outbound != 0 {
		s.origin = s.policy.Origin(s.client)
		if s.origin == policy.NotOurs {
			s.logAt(slog.LevelDebug, "not ours to sign", "direction", "outbound", "sender", senderWord(from),
				"client", s.client.Addr, "daemon_name", s.client.DaemonName)
		}
	}
	return gomilter.RespContinue, nil
}

func (s *session) RcptTo(rcpt, _ string, m gomilter.Modifier) (_ *gomilter.Response, err error) {
	defer s.recover(&err)
	if s.policy == nil { // RCPT without MAIL: a broken MTA
		return gomilter.RespContinue, nil
	}
	if s.queueID == "" {
		s.queueID = m.Get(gomilter.MacroQueueId)
	}
	if s.rcptBytes+rcptCost(rcpt) > maxRcptBytes {
		return s.tooManyRcpts()
	}
	s.rcptBytes += rcptCost(rcpt)
	s.rcpts = slices.Grow(s.rcpts, 1)[:len(s.rcpts)+1]
	st := &s.rcpts[len(s.rcpts)-1]
	*st = rcptState{}
	st.addr, st.d.Action, st.d.KeyID = rcpt, policy.ActPass, -1
	if s.srv.Roles&Inbound != 0 {
		s.decide(st)
	}
	if r := st.d.RcptReply(); r.Refuses() {
		// A reply code refuses this recipient only; the transaction and
		// its other recipients go on.
		return refusal(r)
	}
	return gomilter.RespContinue, nil
}

// tooManyRcpts refuses a recipient beyond maxRcptBytes.
func (s *session) tooManyRcpts() (*gomilter.Response, error) {
	if !s.rcptsFull {
		s.rcptsFull = true
		s.logAt(slog.LevelInfo, "recipients refused: too many in one transaction", "queue_id", s.queueID,
			"recipients", len(s.rcpts), "limit_bytes", maxRcptBytes)
	}
	return gomilter.RejectWithCodeAndReason(452, "4.5.3 Too many recipients")
}

// decide asks the policy about the recipient st, and counts and logs its
// decision. It is a function of its own, with pointers in and out, so
// that the frames under RcptTo stay small (see package logq).
func (s *session) decide(st *rcptState) {
	start := time.Now()
	s.trx.RecipientTo(&st.d, st.addr, s.srv.now())
	s.srv.Metrics.Decision("inbound", time.Since(start).Seconds())
	if st.d.Protected {
		s.srv.Metrics.Recipient(&st.d)
		if s.trx.Bounce() {
			s.bounces++
		}
		s.logRecipient(st.addr, &st.d)
	}
}

// Data refuses a bounce whose untagged recipients were accepted at RCPT,
// so that address verification callouts succeed, and are refused now,
// before the message is sent.
func (s *session) Data(m gomilter.Modifier) (_ *gomilter.Response, err error) {
	defer s.recover(&err)
	if s.policy == nil || s.srv.Roles&Inbound == 0 {
		return gomilter.RespContinue, nil
	}
	r, refused := s.trx.Data()
	if !refused {
		return gomilter.RespContinue, nil
	}
	if id := m.Get(gomilter.MacroQueueId); id != "" {
		s.queueID = id
	}
	s.srv.Metrics.DataRefusal()
	s.logAt(slog.LevelInfo, "bounce refused at DATA", "queue_id", s.queueID, "direction", "inbound", "reply", r.String(),
		"recipients", len(s.rcpts), "client", s.client.Addr)
	return refusal(r)
}

func (s *session) Header(name, _ string, _ gomilter.Modifier) (*gomilter.Response, error) {
	if s.policy != nil && strings.EqualFold(name, s.policy.StatusHeader()) {
		s.forged++
	}
	return gomilter.RespContinue, nil
}

func (s *session) Headers(gomilter.Modifier) (*gomilter.Response, error) {
	return gomilter.RespContinue, nil
}

func (s *session) BodyChunk([]byte, gomilter.Modifier) (*gomilter.Response, error) {
	return gomilter.RespContinue, nil
}

// EndOfMessage applies what was decided.
func (s *session) EndOfMessage(m gomilter.Modifier) (_ *gomilter.Response, err error) {
	defer s.endMessage(&err)
	if s.policy == nil {
		return gomilter.RespContinue, nil
	}
	if id := m.Get(gomilter.MacroQueueId); id != "" {
		s.queueID = id
	}
	if err := s.applyInbound(m); err != nil {
		return nil, err
	}
	return s.applyOutbound(m)
}

// endMessage ends the transaction at the end of the message, as recover
// ends a callback.
func (s *session) endMessage(err *error) {
	if v := recover(); v != nil {
		s.recovered(v, err)
	}
	s.conn.Busy(false)
	s.reset()
}

// applyInbound makes the changes decided for the recipients. The changes
// are go-milter's, which format each through fmt: the frames of these
// functions stay small, so that the session's stack stays at 4 KiB (see
// package logq).
func (s *session) applyInbound(m gomilter.Modifier) error {
	if s.srv.Roles&Inbound == 0 {
		return nil
	}
	if s.bounces > 1 {
		s.logSeveral()
	}
	if err := s.removeForged(m); err != nil {
		return err
	}
	for i := range s.rcpts {
		if err := s.applyRecipient(m, i); err != nil {
			return err
		}
	}
	return nil
}

// logSeveral counts and logs a bounce with several protected recipients.
func (s *session) logSeveral() {
	s.srv.Metrics.MultipleRecipients()
	s.logAt(slog.LevelInfo, "bounce with several protected recipients", "queue_id", s.queueID, "recipients", s.bounces)
}

// removeForged removes the incoming status headers.
func (s *session) removeForged(m gomilter.Modifier) error {
	// Delete from the last occurrence, so the indexes of the others hold.
	for i := s.forged; i >= 1; i-- {
		if err := m.ChangeHeader(i, s.policy.StatusHeader(), ""); err != nil {
			return err
		}
	}
	return nil
}

// applyRecipient makes the changes decided for recipient i.
func (s *session) applyRecipient(m gomilter.Modifier, i int) error {
	r := &s.rcpts[i]
	if r.d.Rewrite != "" && !r.d.Reply.Refuses() {
		// Postfix matches DELRCPT exactly: delete the address as
		// received.
		if err := m.DeleteRecipient(r.addr); err != nil {
			return err
		}
		if !s.rewrittenBefore(i) {
			if err := m.AddRecipient(r.d.Rewrite, ""); err != nil {
				return err
			}
		}
	}
	if r.d.Mark != "" {
		if err := m.AddHeader(s.policy.StatusHeader(), r.d.Mark); err != nil {
			return err
		}
	}
	if r.d.Action == policy.ActQuarantine {
		return quarantine(m, r.addr)
	}
	return nil
}

// quarantine puts the message in the MTA's hold queue for rcpt.
func quarantine(m gomilter.Modifier, rcpt string) error {
	return m.Quarantine("BATV: untagged bounce to <" + rcpt + ">")
}

// rewrittenBefore reports whether a recipient before i is rewritten to
// the address recipient i is: the untagged address is added once.
func (s *session) rewrittenBefore(i int) bool {
	for j := range i {
		if d := &s.rcpts[j].d; d.Rewrite == s.rcpts[i].d.Rewrite && !d.Reply.Refuses() {
			return true
		}
	}
	return false
}

// applyOutbound signs the envelope sender of a message of ours. Like
// applyInbound, it keeps its frames small.
func (s *session) applyOutbound(m gomilter.Modifier) (*gomilter.Response, error) {
	if s.origin == policy.NotOurs {
		return gomilter.RespContinue, nil
	}
	s.sign()
	if s.signed.Address == "" {
		return s.unsigned()
	}
	if err := m.ChangeFrom(s.signed.Address, ""); err != nil {
		return nil, err
	}
	s.logSigned()
	return gomilter.RespContinue, nil
}

// sign decides on signing the message and signs it, into s.signed.
func (s *session) sign() {
	rcpts := s.signRcpts[:0]
	for i := range s.rcpts {
		if r := &s.rcpts[i]; !r.d.RcptReply().Refuses() {
			rcpts = append(rcpts, r.addr)
		}
	}
	s.signRcpts = rcpts
	start := time.Now()
	s.policy.SignTo(&s.signed, s.sender, rcpts, s.srv.now())
	if s.signed.Skip != policy.SkipNullSender {
		s.srv.Metrics.Decision("outbound", time.Since(start).Seconds())
	}
}

// unsigned is the reply for a message of ours that s.sign did not sign,
// and logs why.
func (s *session) unsigned() (*gomilter.Response, error) {
	res := &s.signed
	switch res.Skip {
	case policy.SkipNullSender:
		// A bounce, even from one of our clients, is no outbound message:
		// it is never signed, and not counted as outbound.
		s.logAt(slog.LevelDebug, "bounce: never signed", "queue_id", s.queueID, "sender", senderWord(s.sender))
	case policy.SkipError:
		s.srv.Metrics.Signed(res.Skip)
		s.logAt(slog.LevelError, "signing failed", "queue_id", s.queueID, "direction", "outbound",
			"sender", senderWord(s.sender), "err", res.Err, "tempfail", s.policy.TempfailOnSignError())
		if s.policy.TempfailOnSignError() {
			return refusal(replySignFailed)
		}
	default:
		s.srv.Metrics.Signed(res.Skip)
		s.logAt(slog.LevelInfo, "not signed", "queue_id", s.queueID, "direction", "outbound",
			"outcome", "skipped", "reason", res.Skip.String(), "sender", senderWord(s.sender), "why_ours", s.origin.String())
	}
	return gomilter.RespContinue, nil
}

// logSigned counts and logs the signing of a message.
func (s *session) logSigned() {
	s.srv.Metrics.Signed(policy.NotSkipped)
	s.logAt(slog.LevelInfo, "signed", "queue_id", s.queueID, "direction", "outbound", "outcome", "signed",
		"reason", s.origin.String(), "key_id", s.signed.KeyID, "sender", senderWord(s.sender), "tagged", s.signed.Address)
}

func (s *session) Abort(gomilter.Modifier) error {
	s.reset()
	s.conn.Busy(false)
	return nil
}

func (s *session) Unknown(string, gomilter.Modifier) (*gomilter.Response, error) {
	return gomilter.RespContinue, nil
}

// Cleanup is the end of the session: go-milter has closed the connection.
// A session that ends inside a transaction leaves its message to the
// MTA's milter default action.
func (s *session) Cleanup(gomilter.Modifier) {
	if s.policy != nil {
		s.logAt(slog.LevelInfo, "session ended in the middle of a message", "queue_id", s.queueID, "sender", senderWord(s.sender), "recipients", len(s.rcpts))
	}
}

func (s *session) reset() {
	s.policy, s.sender, s.origin, s.queueID = nil, "", policy.NotOurs, ""
	s.trx, s.signed = policy.Transaction{}, policy.SignDecision{}
	// The slices are kept for the next transaction, without the addresses
	// of this one, unless a large one made them large.
	clear(s.rcpts)
	clear(s.signRcpts)
	s.rcpts, s.signRcpts = s.rcpts[:0], s.signRcpts[:0]
	if cap(s.rcpts) > keptRcpts {
		s.rcpts, s.signRcpts = nil, nil
	}
	s.rcptBytes, s.rcptsFull, s.bounces, s.forged = 0, false, 0, 0
}

// recover turns a panic in a callback into an error that ends this
// session only; go-milter would let it end the process.
func (s *session) recover(err *error) {
	if v := recover(); v != nil {
		s.recovered(v, err)
	}
}

// recovered ends the session on v, a callback's panic, with err.
func (s *session) recovered(v any, err *error) {
	s.conn.SetEnd("error")
	s.logAt(slog.LevelError, "session ended: a callback panicked", "panic", v, "stack", string(debug.Stack()))
	*err = fmt.Errorf("milter: callback panicked: %v", v)
}

func (s *session) logRecipient(rcpt string, d *policy.Decision) {
	s.logAt(slog.LevelInfo, "recipient", d.LogAttrs(s.queueID, rcpt, s.sender, s.trx.Bounce(), s.client.Addr)...)
}

// logAt logs a line of this session, through the server's log queue.
func (s *session) logAt(level slog.Level, msg string, args ...any) {
	s.srv.Lines.Log(s.conn.Log(), level, msg, args...)
}

// senderWord is the envelope sender for the log: "<>" for the null
// sender, the address as received otherwise.
func senderWord(sender string) string {
	if sender == "" {
		return "<>"
	}
	return sender
}

// replySignFailed tempfails a message that cannot be signed (sign.on_error
// = "tempfail").
var replySignFailed = policy.Reply{Code: 451, Text: "4.3.0 Temporary failure signing the sender address (BATV)"}

// refusals are go-milter's responses for the policy's replies, made once:
// go-milter formats a reply through several text transformers, and the
// policy has a handful of fixed replies. A response is only read, so one
// serves every session.
var refusals sync.Map // policy.Reply -> *gomilter.Response

// refusal is the response that refuses with r.
func refusal(r policy.Reply) (*gomilter.Response, error) {
	if resp, ok := refusals.Load(r); ok {
		return resp.(*gomilter.Response), nil
	}
	resp, err := gomilter.RejectWithCodeAndReason(uint16(r.Code), r.Text)
	if err != nil {
		return nil, err
	}
	refusals.Store(r, resp)
	return resp, nil
}
