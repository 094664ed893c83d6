package policy

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/batv/batv/batv"
)

// Client is what the MTA says about the SMTP client of a session.
type Client struct {
	// Addr is the client's IP address; invalid for mail submitted on the
	// MTA host (no client).
	Addr netip.Addr
	// Local is true for mail submitted on the MTA host (sendmail(1),
	// pickup): a unix-domain or unknown client family.
	Local bool
	// DaemonName names the MTA listener the client connected to
	// ({daemon_name}: Postfix's milter_macro_daemon_name, Sendmail's
	// DAEMON_OPTIONS Name=).
	DaemonName string
	// AuthUser is the SMTP AUTH login, or "" if the client did not
	// authenticate.
	AuthUser string
}

// Origin says why mail from a client is ours to sign.
type Origin uint8

// The origins, in the order Origin checks them.
const (
	// NotOurs: the client is not one of our users; nothing is signed.
	NotOurs Origin = iota
	// Authenticated: the client authenticated with SMTP AUTH.
	Authenticated
	// SubmissionDaemon: the client connected to a listener named in
	// sign.submission_daemons.
	SubmissionDaemon
	// Local: the mail was submitted on the MTA host.
	Local
	// InternalNetwork: the client is in sign.internal_networks.
	InternalNetwork
)

var originNames = [...]string{
	NotOurs: "", Authenticated: "authenticated", SubmissionDaemon: "submission-daemon",
	Local: "local", InternalNetwork: "internal-network",
}

// String returns the origin as the word of logs ("authenticated"), or ""
// for NotOurs.
func (o Origin) String() string {
	if int(o) < len(originNames) {
		return originNames[o]
	}
	return fmt.Sprintf("origin(%d)", uint8(o))
}

// Origin says whether mail from c is sent by our users, and why.
func (p *Policy) Origin(c Client) Origin {
	switch {
	case c.AuthUser != "" && p.signAuth:
		return Authenticated
	case c.DaemonName != "" && p.submission[c.DaemonName]:
		return SubmissionDaemon
	case (c.Local || !c.Addr.IsValid()) && p.signLocal:
		return Local
	case c.Addr.IsValid() && inPrefixes(c.Addr, p.internal):
		return InternalNetwork
	}
	return NotOurs
}

// Skip says why an outbound message stays unsigned.
type Skip uint8

// The reasons a message ours to sign stays unsigned. The first ones are
// batv.Skip's, with the same values; the others are the policy's.
const (
	NotSkipped           = Skip(batv.NotSkipped)
	SkipNullSender       = Skip(batv.SkipNullSender)
	SkipMalformedAddress = Skip(batv.SkipMalformedAddress)
	SkipQuoted           = Skip(batv.SkipQuoted)
	SkipSRS              = Skip(batv.SkipSRS)
	SkipTagged           = Skip(batv.SkipTagged)
	SkipTooLong          = Skip(batv.SkipTooLong)
	// SkipForeignDomain: the sender's domain is not in sign.domains.
	SkipForeignDomain Skip = iota
	// SkipExemptSender: the sender is in sign.exempt_senders.
	SkipExemptSender
	// SkipExemptRecipient: a recipient is in sign.exempt_recipients.
	SkipExemptRecipient
	// SkipError: signing failed (no signing key); SignDecision.Err says
	// why.
	SkipError
)

var skipNames = map[Skip]string{
	SkipForeignDomain: "foreign-domain", SkipExemptSender: "exempt-sender",
	SkipExemptRecipient: "exempt-recipient", SkipError: "error",
}

// String returns the reason as the word of logs and metrics
// ("foreign-domain", "too-long"), or "" for NotSkipped.
func (s Skip) String() string {
	if s <= SkipTooLong {
		return batv.Skip(s).String()
	}
	if name, ok := skipNames[s]; ok {
		return name
	}
	return fmt.Sprintf("skip(%d)", uint8(s))
}

// SignDecision is the outbound decision for one message.
type SignDecision struct {
	// Address is the signed sender, or "" if the message stays unsigned.
	Address string
	// Skip is why the message stays unsigned.
	Skip Skip
	// Err is set with SkipError.
	Err error
	// KeyID and Expiry are the tag's key id and expiry day (mod 1000).
	KeyID, Expiry int
}

// skipSigning is why the message from sender to rcpts is not to be
// signed, or NotSkipped. It is a function of its own so that Sign's frame,
// under which the MAC is computed, stays small.
func (p *Policy) skipSigning(sender string, rcpts []string) Skip {
	if sender == "" {
		return SkipNullSender
	}
	_, domain := splitAddr(sender)
	if !p.signDomains.has(domain) {
		return SkipForeignDomain
	}
	if p.exemptSenders.match(sender) {
		return SkipExemptSender
	}
	for _, r := range rcpts {
		if p.exemptRcptsOut.match(r) {
			return SkipExemptRecipient
		}
	}
	return NotSkipped
}

// Sign decides and computes the signed envelope sender of an outbound
// message from sender to rcpts at now.
func (p *Policy) Sign(sender string, rcpts []string, now time.Time) SignDecision {
	var d SignDecision
	p.SignTo(&d, sender, rcpts, now)
	return d
}

// SignTo is Sign with the decision written to d, for a milter session,
// whose frames stay small (see Transaction.RecipientTo).
func (p *Policy) SignTo(d *SignDecision, sender string, rcpts []string, now time.Time) {
	*d = SignDecision{}
	if d.Skip = p.skipSigning(sender, rcpts); d.Skip != NotSkipped {
		return
	}
	r, err := p.signer.SignAt(sender, now)
	switch {
	case err != nil:
		d.Skip, d.Err = SkipError, err
	case r.Skip != batv.NotSkipped:
		d.Skip = Skip(r.Skip)
	default:
		d.Address, d.KeyID, d.Expiry = r.Address, r.KeyID, r.Expiry
	}
}
