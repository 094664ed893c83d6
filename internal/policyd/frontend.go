package policyd

import (
	"log/slog"
	"net/netip"
	"time"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/metrics"
	"github.com/batv/batv/policy"
)

// Frontend is batv's inbound front end for Postfix without a milter: the
// Handler of the policy-service listener. It decides each recipient at
// RCPT with a policy.Transaction kept per transaction (TxState), with the
// outcomes, SMTP texts, log lines and metrics of the milter:
//
//   - a refusal at RCPT (a forged or expired tag in a bounce, the 452 4.5.3
//     of the one-transaction rule, an untagged bounce with
//     refuse_untagged_at = "rcpt") is the action "550 5.7.1 ..." (the
//     policy's code and text; smtpd adds "<address>: Recipient address
//     rejected:" before the text);
//   - a recipient to mark (untagged_bounce "tag" or "quarantine",
//     invalid_tag_reply "deliver-mark", a tag that does not verify for an
//     exempt recipient or client) is "PREPEND X-BATV-Status: ...";
//   - any other recipient is "DUNNO", so that the restrictions after
//     check_policy_service still apply;
//   - at DATA (smtpd_data_restrictions), a bounce whose untagged
//     recipients were accepted at RCPT, so that callouts succeed, is
//     refused with the policy's reply, and a bounce with a recipient to
//     quarantine is "HOLD" (Postfix's hold queue).
//
// It cannot change one recipient of several: valid tags reach the
// untagged mailbox through the untag table in the cleanup service of the
// MX (docs/postfix.md), which answers only for tags that verify now. A
// recipient the policy delivers to its untagged address although its tag
// does not verify now (a reply to an expired tag; with invalid_tag_reply
// "deliver" or "deliver-mark", or for an exempt recipient or client, a tag
// that does not verify) is redirected there at DATA ("REDIRECT", which
// replaces every recipient) when it is the transaction's only recipient,
// and stays tagged otherwise.
//
// # A transaction whose state is lost
//
// smtpd sends a transaction's requests over one connection, but when the
// connection breaks (batv restarts, a timeout) smtpd sends the rest over
// a new one, where the transaction has no state: the recipients before
// were answered elsewhere, and may be untagged recipients of a bounce
// whose refusal waits for DATA. A recipient is then decided as the first
// of a fresh transaction. At DATA the state is whole only if it counted
// as many recipients let through at RCPT as smtpd accepted
// (recipient_count); check_policy_service must therefore be the last
// restriction that can refuse a recipient. When the state of a bounce is
// not whole, the DATA reply is decided from what smtpd says: with one
// recipient (smtpd names it) the transaction is decided again as a
// transaction of that recipient alone, so that an untagged bounce is
// refused as it would have been; with several (smtpd does not name them)
// the bounce is deferred with 451 4.3.0, and its sender sends it again,
// whole, to a connection that sees all of it. An untagged bounce is never
// let in for want of state, and nothing is refused for good that batv has
// not decided.
type Frontend struct {
	// Policy returns the policy in force; each transaction is decided with
	// the policy current at its first request.
	Policy func() *policy.Policy
	// Metrics records decisions; nil records nothing.
	Metrics *metrics.Metrics
	// Now returns the time; nil means time.Now.
	Now func() time.Time
}

// replyLostState defers a bounce with several recipients at DATA whose
// RCPT decisions this connection did not all see.
var replyLostState = policy.Reply{Code: 451,
	Text: "4.3.0 Bounce deferred: its recipients must be checked again, please send it again (BATV)"}

// tx is the front end's state of one transaction on one connection.
type tx struct {
	started  bool
	policy   *policy.Policy // the policy in force at the first request
	trx      policy.Transaction
	client   policy.Client
	sender   string
	accepted int    // recipients let through at RCPT
	bounces  int    // recipients of a bounce in protected domains
	hold     string // the first recipient to quarantine, "" if none
	redirect string // the untagged address of a recipient untag leaves tagged
}

// begin starts the transaction of req with the policy in force.
func (f *Frontend) begin(t *tx, req *Request) {
	t.started, t.policy, t.sender = true, f.Policy(), req.Sender()
	t.client = policy.Client{AuthUser: req.SASLUsername()}
	if a, err := netip.ParseAddr(req.ClientAddress()); err == nil {
		t.client.Addr = a.Unmap()
	}
	t.trx = t.policy.Begin(t.client, t.sender)
}

// Check decides a request: recipients at RCPT, bounces at DATA, and DUNNO
// for everything else.
func (f *Frontend) Check(c *Conn, req *Request) Reply {
	if req.Type() != RequestSMTPDAccessPolicy {
		c.Log().Debug("policyd: not an smtpd access policy request", "request", req.Type())
		return Dunno()
	}
	switch req.ProtocolState() {
	case StateRcpt:
		return f.recipient(c, req)
	case StateData:
		return f.data(c, req)
	}
	return Dunno()
}

// recipient decides one recipient at RCPT.
func (f *Frontend) recipient(c *Conn, req *Request) Reply {
	t := TxState[tx](c)
	if !t.started {
		f.begin(t, req)
	}
	rcpt := req.Recipient()
	start := time.Now()
	d := t.trx.Recipient(rcpt, f.now())
	f.Metrics.Decision("inbound", time.Since(start).Seconds())
	if d.Protected {
		f.Metrics.Recipient(&d)
		if t.trx.Bounce() {
			t.bounces++
		}
		logRecipient(c.Log(), req.QueueID(), rcpt, t, d)
	}
	reply := rcptReply(t.policy, d)
	if !d.RcptReply().Refuses() {
		t.accepted++
		if d.Action == policy.ActQuarantine && t.hold == "" {
			t.hold = rcpt
		}
		t.redirect = redirectTo(d)
	}
	return reply
}

// redirectTo is the address to redirect a transaction with the one
// recipient of decision d to: its untagged address when the policy
// delivers it there but the untag table does not answer for it (the tag
// does not verify now); "" otherwise.
func redirectTo(d policy.Decision) string {
	if d.Rewrite == "" || d.Status == batv.Valid {
		return ""
	}
	return d.Rewrite
}

// rcptReply is the reply to RCPT for decision d.
func rcptReply(p *policy.Policy, d policy.Decision) Reply {
	if r := d.RcptReply(); r.Refuses() {
		return Reply{Action: r.String()}
	}
	if d.Mark != "" {
		return Prepend(p.StatusHeader(), d.Mark)
	}
	return Dunno()
}

// data decides a transaction at DATA: a bounce is refused if it has
// untagged recipients whose refusal waited for DATA, and held if it has
// a recipient to quarantine; a transaction of one recipient that untag
// leaves tagged is redirected to its untagged address.
func (f *Frontend) data(c *Conn, req *Request) Reply {
	t := TxState[tx](c)
	n := req.RecipientCount()
	if !t.started || t.accepted != n {
		return f.dataLost(c, req, t)
	}
	log := c.Log()
	if t.trx.Bounce() {
		if r, refused := t.trx.Data(); refused {
			f.Metrics.DataRefusal()
			log.Info("bounce refused at DATA", "queue_id", req.QueueID(), "direction", "inbound", "reply", r.String(),
				"recipients", n, "client", t.client.Addr)
			return Reply{Action: r.String()}
		}
		if t.bounces > 1 {
			f.Metrics.MultipleRecipients()
			log.Info("bounce with several protected recipients", "queue_id", req.QueueID(), "recipients", t.bounces)
		}
		if t.hold != "" {
			return holdReply(t.hold)
		}
	}
	if n == 1 && t.redirect != "" {
		return f.redirect(log, req, t.redirect)
	}
	return Dunno()
}

// dataLost decides a transaction at DATA whose recipients this connection
// did not all see (see Frontend).
func (f *Frontend) dataLost(c *Conn, req *Request, t *tx) Reply {
	log := c.Log()
	n, rcpt := req.RecipientCount(), req.Recipient()
	bounce := policy.NullSender(req.Sender())
	if n != 1 || rcpt == "" {
		if !bounce {
			return Dunno() // only a bounce waits for DATA
		}
		log.Warn("bounce deferred at DATA: batv did not see all its recipients at RCPT (a new connection, or a restriction after check_policy_service refused some)",
			"queue_id", req.QueueID(), "direction", "inbound", "reply", replyLostState.String(),
			"recipients", n, "seen", t.accepted, "client", req.ClientAddress())
		return Reply{Action: replyLostState.String()}
	}
	var fresh tx
	f.begin(&fresh, req)
	d := fresh.trx.Recipient(rcpt, f.now())
	attrs := []any{"queue_id", req.QueueID(), "direction", "inbound", "outcome", d.Status.String(),
		"action", d.Action.String(), "rcpt", rcpt, "client", fresh.client.Addr, "state", "decided again from its one recipient"}
	switch {
	case d.Reply.Refuses() && bounce:
		f.Metrics.DataRefusal()
		log.Info("bounce refused at DATA", append(attrs, "reply", d.Reply.String(), "recipients", n)...)
		return Reply{Action: d.Reply.String()}
	case d.Reply.Refuses():
		// Mail with a sender accepted at RCPT (by another policy) is not
		// refused for good now: only a bounce waits for DATA.
	case d.Action == policy.ActQuarantine:
		log.Info("bounce held at DATA", attrs...)
		return holdReply(rcpt)
	case redirectTo(d) != "":
		return f.redirect(log, req, redirectTo(d))
	}
	log.Debug("accepted at DATA", attrs...)
	return Dunno()
}

// redirect sends the transaction's one recipient to its untagged address.
func (f *Frontend) redirect(log *slog.Logger, req *Request, to string) Reply {
	log.Info("redirected to the untagged address at DATA", "queue_id", req.QueueID(), "direction", "inbound",
		"rcpt", req.Recipient(), "untagged", to)
	return Redirect(to)
}

// holdReply puts a bounce to quarantine on Postfix's hold queue; the text
// is what Postfix logs.
func holdReply(rcpt string) Reply {
	return Hold("BATV: untagged bounce to <" + rcpt + ">")
}

func (f *Frontend) now() time.Time {
	if f.Now == nil {
		return time.Now()
	}
	return f.Now()
}

// logRecipient logs a decision as the milter does: one line per recipient
// in a protected domain.
func logRecipient(log *slog.Logger, queueID, rcpt string, t *tx, d policy.Decision) {
	log.Info("recipient", d.LogAttrs(queueID, rcpt, t.sender, t.trx.Bounce(), t.client.Addr)...)
}
