package policy

import (
	"fmt"
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
)

var actionNames = [...]string{
	ActPass: "pass", ActAccept: "accept", ActReject: "reject", ActTempfail: "tempfail",
	ActQuarantine: "quarantine", ActTag: "tag", ActOff: "off", ActGrace: "grace",
	ActExempt: "exempt", ActDeliver: "deliver", ActDeliverMark: "deliver-mark",
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
	// Status is then its verification outcome.
	Protected bool
	Status    batv.Status
	// Reply is the SMTP reply that refuses the recipient, or "".
	Reply string
	// Rewrite is the address to deliver to instead, if not "".
	Rewrite string
	// Mark is the status header value to add, if not "".
	Mark string
	// Reason is a short explanation for the log.
	Reason string
	// KeyID is the tag's key id, or -1.
	KeyID int
}

// SMTP replies of the inbound front ends. The detail goes to the log.
const (
	replyInvalidTag = "550 5.7.1 Bounce refused: the recipient address tag is %s (BATV)"
	replyUntagged   = "550 5.7.1 Bounce refused: this address sends only tagged mail, so it did not send the message you are bouncing (BATV)"
	replyTempfail   = "451 4.7.1 Bounce deferred: the recipient address is not tagged (BATV)"
	replyInvalidNB  = "550 5.7.1 The recipient address tag is %s (BATV)"
)

var replyWords = map[batv.Status]string{
	batv.Malformed:    "malformed",
	batv.UnknownKey:   "signed with an unknown key",
	batv.Expired:      "expired",
	batv.BadSignature: "not valid",
}

// Transaction is the inbound decision state of one SMTP transaction (from
// MAIL to the end of the message or RSET). A front end makes one with
// Begin at MAIL and asks it about each recipient.
type Transaction struct {
	p      *Policy
	client Client
	sender string
}

// Begin starts a transaction from client with the envelope sender as the
// MTA received it ("" for the null sender).
func (p *Policy) Begin(client Client, sender string) Transaction {
	return Transaction{p: p, client: client, sender: sender}
}

// Bounce reports whether the transaction has the null sender.
func (t *Transaction) Bounce() bool { return t.sender == "" }

// Recipient decides what to do with rcpt, a recipient as the MTA received
// it, at now.
func (t *Transaction) Recipient(rcpt string, now time.Time) Decision {
	p := t.p
	local, domain := splitAddr(rcpt)
	if !p.verifyDomains.has(domain) {
		return Decision{Action: ActPass, KeyID: -1, Reason: "domain not protected"}
	}
	bounce := t.Bounce()
	v := p.verifier
	if !bounce {
		v = p.noExpiry
	}
	v.Now = func() time.Time { return now }
	var res batv.Result
	if bounce {
		res, _ = v.Verify(rcpt)
	} else {
		res, _ = v.VerifyIgnoringExpiry(rcpt)
	}
	d := Decision{Protected: true, Status: res.Status, KeyID: -1, Reason: res.Reason}
	if res.Status != batv.Missing && res.Status != batv.Malformed {
		d.KeyID = res.Tag.KeyID
	}
	target, targetLocal := rcpt, local
	if u := res.Untagged(); u != "" {
		target, targetLocal = u, res.Tag.Local()
	}
	exempt := p.exemptRcptsIn.matchRecipient(target, targetLocal) ||
		t.client.Addr.IsValid() && inPrefixes(t.client.Addr, p.exemptClients)

	switch {
	case res.Status == batv.Valid:
		d.Action, d.Rewrite = ActAccept, res.Untagged()
		if !bounce && res.DaysLeft < 0 {
			d.Reason = "expired tag on a reply"
		}
	case res.Status == batv.Missing && !bounce:
		d.Action, d.Protected, d.Reason = ActPass, false, "not a bounce"
	case res.Status == batv.Missing && exempt:
		d.Action, d.Reason = ActExempt, "exempt recipient or client"
	case res.Status == batv.Missing && now.Before(p.graceUntil):
		d.Action, d.Reason = ActGrace, "untagged bounce in the grace period"
	case res.Status == batv.Missing:
		d.Action, d.Reason = p.untaggedBounce, "untagged bounce"
		switch d.Action {
		case ActReject:
			d.Reply = replyUntagged
		case ActTempfail:
			d.Reply = replyTempfail
		case ActTag, ActQuarantine:
			d.Mark = mark(res.Status, rcpt)
		}
	case exempt:
		// An invalid tag for an exempt recipient or from an exempt client
		// is delivered untagged, and marked; never refused.
		d.Action, d.Rewrite, d.Mark = ActDeliverMark, res.Untagged(), mark(res.Status, rcpt)
	case bounce:
		d.Action, d.Reply = ActReject, fmt.Sprintf(replyInvalidTag, replyWords[res.Status])
	default:
		d.Action = p.invalidTagReply
		switch d.Action {
		case ActDeliver:
			d.Rewrite = res.Untagged()
		case ActDeliverMark:
			d.Rewrite, d.Mark = res.Untagged(), mark(res.Status, rcpt)
		case ActReject:
			d.Reply = fmt.Sprintf(replyInvalidNB, replyWords[res.Status])
		}
	}
	return d
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
