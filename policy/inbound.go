package policy

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/batv/batv/batv"
)

// Action is what happens to a recipient of inbound mail.
type Action uint8

// The inbound actions. Their String forms are the configuration words and
// the "action" label of logs and metrics.
const (
	// ActPass leaves the recipient as it is.
	ActPass Action = iota
	// ActAccept accepts a validly tagged recipient and delivers to the
	// untagged address.
	ActAccept
	// ActReject refuses the recipient with a 5xx reply.
	ActReject
	// ActTempfail refuses the recipient with a 4xx reply.
	ActTempfail
	// ActQuarantine accepts the message into the MTA's quarantine (the
	// Postfix hold queue).
	ActQuarantine
	// ActTag accepts and adds the status header.
	ActTag
	// ActOff accepts untagged bounces unmarked: verification of untagged
	// bounces is switched off.
	ActOff
	// ActGrace accepts an untagged bounce during the grace period.
	ActGrace
	// ActExempt accepts a bounce for an exempt recipient or from an
	// exempt client.
	ActExempt
	// ActDeliver delivers mail with a sender to the untagged address of a
	// recipient whose tag did not verify.
	ActDeliver
	// ActDeliverMark is ActDeliver plus the status header.
	ActDeliverMark
	// ActSplit defers a recipient that cannot share its bounce
	// transaction with the untagged recipients refused at DATA before it:
	// 452 4.5.3, and the sender sends it again in a transaction of its
	// own, where it is delivered.
	ActSplit
)

var actionNames = [...]string{
	ActPass: "pass", ActAccept: "accept", ActReject: "reject", ActTempfail: "tempfail",
	ActQuarantine: "quarantine", ActTag: "tag", ActOff: "off", ActGrace: "grace",
	ActExempt: "exempt", ActDeliver: "deliver", ActDeliverMark: "deliver-mark", ActSplit: "split",
}

func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

func parseAction(s string, allowed ...Action) (Action, bool) {
	for _, a := range allowed {
		if s == a.String() {
			return a, true
		}
	}
	return 0, false
}

// Decision is what happens to one recipient of inbound mail.
type Decision struct {
	Action Action
	// Protected is true when the recipient is in a protected domain;
	// Status is then its verification outcome: Expired for a reply to an
	// expired tag too, which is accepted (ActAccept), as a reply needs
	// only the MAC.
	Protected bool
	Status    batv.Status
	// Reply is the SMTP reply that refuses the recipient; zero if the
	// recipient is not refused. With AtData, it refuses the whole
	// transaction at DATA, not the recipient: use RcptReply and
	// Transaction.Data.
	Reply Reply
	// AtData says that the refusal waits for DATA: the recipient is
	// accepted at RCPT, so that a sender's address verification (a
	// callout: MAIL FROM:<>, RCPT, QUIT) succeeds, and the transaction is
	// refused at DATA, so that no bounce is delivered.
	AtData bool
	// Rewrite is the address to deliver to instead, if not "".
	Rewrite string
	// Mark is the status header value to add, if not "".
	Mark string
	// Reason is a short explanation for the log.
	Reason string
	// KeyID is the tag's key id, or -1.
	KeyID int
	// Mailbox is the address the MTA delivers the recipient to, when it
	// differs from the address as received (a trailing dot, a source
	// route, the percent hack...); "" otherwise.
	Mailbox string
}

// RcptReply is the reply to the RCPT command: Reply, unless the refusal
// waits for DATA.
func (d *Decision) RcptReply() Reply {
	if d.AtData {
		return Reply{}
	}
	return d.Reply
}

// Reply is an SMTP reply: a code and a text that starts with the enhanced
// status code.
type Reply struct {
	Code int
	Text string
}

// String is the reply as the SMTP client sees it.
func (r Reply) String() string {
	if r.Code == 0 {
		return ""
	}
	return strconv.Itoa(r.Code) + " " + r.Text
}

// Refuses reports whether the reply refuses (any reply but the zero one).
func (r Reply) Refuses() bool { return r.Code != 0 }

// SMTP replies of the inbound front ends. The detail goes to the log.
var (
	replyUntagged = Reply{550, "5.7.1 Bounce refused: this address sends only tagged mail, so it did not send the message you are bouncing (BATV)"}
	replyTempfail = Reply{451, "4.7.1 Bounce deferred: the recipient address is not tagged (BATV)"}
	replySplit    = Reply{452, "4.5.3 Too many recipients for one bounce: send this one in a transaction of its own (BATV)"}
)

// replyInvalid refuses a tag that does not verify: a bounce, or other mail.
func replyInvalid(st batv.Status, bounce bool) Reply {
	if bounce {
		return Reply{550, "5.7.1 Bounce refused: the recipient address tag is " + replyWords[st] + " (BATV)"}
	}
	return Reply{550, "5.7.1 The recipient address tag is " + replyWords[st] + " (BATV)"}
}

var replyWords = map[batv.Status]string{
	batv.Malformed:    "malformed",
	batv.UnknownKey:   "signed with an unknown key",
	batv.Expired:      "expired",
	batv.BadSignature: "not valid",
}

// Transaction is the inbound decision state of one SMTP transaction (from
// MAIL to the end of the message or RSET). A front end makes one with
// Begin at MAIL, asks it about each recipient at RCPT, and asks Data at
// DATA.
//
// Untagged bounces are refused at DATA by default (verify.refuse_untagged_at),
// so that address verification callouts, which never send DATA, get 250
// for an untagged address. A bounce transaction therefore holds either
// recipients that will be delivered or untagged recipients refused at
// DATA, never both: an untagged recipient after one that will be
// delivered is refused at RCPT (a callout has one recipient), and a
// recipient that would be delivered after an untagged one is deferred
// with 452 4.5.3, so that the sender delivers it in a transaction of its
// own. Nothing is dropped without a reply.
type Transaction struct {
	p       *Policy
	client  Client
	bounce  bool
	deliver int         // recipients that will be delivered
	refused int         // untagged recipients whose refusal waits for DATA
	atData  Reply       // the reply at DATA
	res     batv.Result // the last recipient's verification, see RecipientTo
}

// Begin starts a transaction from client with the envelope sender as the
// client wrote it ("" for <>): the transaction is a bounce when the MTA
// will relay it as one (NullSender).
func (p *Policy) Begin(client Client, sender string) Transaction {
	return Transaction{p: p, client: client, bounce: NullSender(sender)}
}

// Bounce reports whether the transaction is a bounce.
func (t *Transaction) Bounce() bool { return t.bounce }

// Recipient decides what to do with rcpt, a recipient as the client wrote
// it, at now.
func (t *Transaction) Recipient(rcpt string, now time.Time) Decision {
	var d Decision
	t.RecipientTo(&d, rcpt, now)
	return d
}

// RecipientTo is Recipient with the decision written to d: a milter
// session's goroutine keeps a 4 KiB stack only if the frames under its
// callbacks stay small, and a Decision returned is one more copy in each.
func (t *Transaction) RecipientTo(d *Decision, rcpt string, now time.Time) {
	if addr, protected := t.p.Mailbox(rcpt); protected {
		// The tag is verified first, from this small frame, and decided
		// on after: the MAC's frames are the deepest of a recipient.
		t.verify(addr, now)
		t.decide(d, rcpt, addr, now)
	} else {
		*d = notProtected
	}
	switch {
	case d.Reply.Refuses() && !d.AtData:
	case d.AtData && t.deliver > 0:
		d.AtData = false
		d.Reason += "; the transaction has a recipient that will be delivered, so it is no callout: refused at RCPT"
	case d.AtData:
		t.refused++
		t.atData = d.Reply
	case t.refused > 0:
		d.Action, d.Reply, d.Rewrite, d.Mark = ActSplit, replySplit, "", ""
		d.Reason = "an untagged recipient of this bounce is refused at DATA: this one must come in a transaction of its own"
	default:
		t.deliver++
	}
}

// Data is the reply to the DATA command: a refusal when the transaction
// has untagged recipients whose refusal waited for DATA.
func (t *Transaction) Data() (Reply, bool) {
	return t.atData, t.refused > 0
}

// notProtected is the decision for a recipient outside the protected
// domains.
var notProtected = Decision{Action: ActPass, KeyID: -1, Reason: "domain not protected"}

// verify verifies the tag of addr, a protected mailbox, into t.res: a
// bounce's must be valid now, other mail's need only be genuine.
func (t *Transaction) verify(addr string, now time.Time) {
	v := &t.p.verifier
	if !t.bounce {
		v = &t.p.noExpiry
	}
	_ = v.VerifyTo(&t.res, addr, now, !t.bounce)
}

// decide writes to d the decision for rcpt on its own, protected mailbox
// addr, once t.res has addr's verification.
func (t *Transaction) decide(d *Decision, rcpt, addr string, now time.Time) {
	p, res, bounce := t.p, &t.res, t.bounce
	*d = Decision{Protected: true, Status: res.Status, KeyID: -1, Reason: res.Reason}
	if addr != rcpt {
		d.Mailbox = addr
	}
	if res.Status != batv.Missing && res.Status != batv.Malformed {
		d.KeyID = res.Tag.KeyID
	}
	target := addr
	targetLocal, _ := splitAddr(addr)
	if u := res.Untagged(); u != "" {
		target, targetLocal = u, res.Tag.Local()
	}
	exempt := p.exemptRcptsIn.matchRecipient(target, targetLocal) ||
		t.client.Addr.IsValid() && inPrefixes(t.client.Addr, p.exemptClients)

	switch {
	case res.Status == batv.Valid:
		d.Action, d.Rewrite = ActAccept, res.Untagged()
		if !bounce && res.DaysLeft < 0 {
			// A reply needs only the MAC: delivered, with the outcome
			// the tag has at now.
			d.Status, d.Reason = batv.Expired, "expired tag on a reply"
		}
	case res.Status == batv.Missing && !bounce:
		d.Action, d.Reason = ActPass, "not a bounce"
	case res.Status == batv.Missing && exempt:
		d.Action, d.Reason = ActExempt, "exempt recipient or client"
	case res.Status == batv.Missing && now.Before(p.graceUntil):
		d.Action, d.Reason = ActGrace, "untagged bounce in the grace period"
	case res.Status == batv.Missing:
		d.Action, d.Reason = p.untaggedBounce, "untagged bounce"
		switch d.Action {
		case ActReject:
			d.Reply, d.AtData = replyUntagged, p.untaggedAtData
		case ActTempfail:
			d.Reply, d.AtData = replyTempfail, p.untaggedAtData
		case ActTag, ActQuarantine:
			d.Mark = mark(res.Status, rcpt)
		}
	case exempt:
		// An invalid tag for an exempt recipient or from an exempt client
		// is delivered untagged, and marked; never refused.
		d.Action, d.Rewrite, d.Mark = ActDeliverMark, res.Untagged(), mark(res.Status, rcpt)
	case bounce:
		d.Action, d.Reply = ActReject, replyInvalid(res.Status, true)
	default:
		d.Action = p.invalidTagReply
		switch d.Action {
		case ActDeliver:
			d.Rewrite = res.Untagged()
		case ActDeliverMark:
			d.Rewrite, d.Mark = res.Untagged(), mark(res.Status, rcpt)
		case ActReject:
			d.Reply = replyInvalid(res.Status, false)
		}
	}
	if d.Rewrite == rcpt {
		d.Rewrite = ""
	}
}

// mark is the status header value for a recipient.
func mark(st batv.Status, rcpt string) string {
	if st == batv.Missing {
		return "untagged; rcpt=<" + rcpt + ">"
	}
	return st.String() + "; rcpt=<" + rcpt + ">"
}

// splitAddr splits at the last "@"; domain is "" without one.
func splitAddr(addr string) (local, domain string) {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return addr, ""
	}
	return addr[:at], addr[at+1:]
}
