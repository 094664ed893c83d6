package milter

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/batv/batv/batv"
)

// ErrConfig is wrapped by every configuration problem NewPolicy reports.
var ErrConfig = errors.New("milter: invalid configuration")

// Policy is a compiled, immutable Config bound to a keyring: the pure
// decision functions of both milters. It is safe for concurrent use.
type Policy struct {
	signer   batv.Signer
	verifier batv.Verifier

	signDomains    domainSet
	internal       []netip.Prefix
	submission     map[string]bool
	signAuth       bool
	signLocal      bool
	exemptSenders  addrSet
	exemptRcptsOut addrSet
	tempfailOnSign bool

	verifyDomains   domainSet
	exemptRcptsIn   addrSet
	exemptClients   []netip.Prefix
	untaggedBounce  Action
	invalidTagReply Action
	graceUntil      time.Time
	statusHeader    string
	removeForged    bool
}

// Action is what the inbound milter does with a recipient.
type Action uint8

// The inbound actions. Their String forms are the configuration words
// and the "action" label of logs and metrics.
const (
	// ActPass leaves the recipient as it is.
	ActPass Action = iota
	// ActAccept accepts a validly tagged recipient and delivers to the
	// untagged address.
	ActAccept
	// ActReject refuses the recipient with 550 5.7.1.
	ActReject
	// ActTempfail refuses the recipient with 451 4.7.1.
	ActTempfail
	// ActQuarantine accepts the message into the MTA's quarantine (the
	// Postfix hold queue).
	ActQuarantine
	// ActTag accepts and adds the status header.
	ActTag
	// ActOff accepts untagged bounces unmarked: verification of
	// untagged bounces is switched off.
	ActOff
	// ActGrace accepts an untagged bounce during the grace period.
	ActGrace
	// ActExempt accepts a bounce for an exempt recipient or from an
	// exempt client.
	ActExempt
	// ActDeliver delivers mail with a sender to the untagged address of
	// a recipient whose tag did not verify.
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

// NewPolicy checks cfg and compiles it with keys, the keyring the site
// signs and verifies with. created is when the keyring was created: the
// grace period for untagged bounces ends by default at created +
// MaxLifetime + QueueLifetime. All problems are reported together, each
// wrapping ErrConfig.
func NewPolicy(cfg Config, keys batv.Keyring, created time.Time) (*Policy, error) {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	p := &Policy{
		signAuth:     cfg.Sign.Authenticated,
		signLocal:    cfg.Sign.Local,
		submission:   map[string]bool{},
		statusHeader: cfg.Verify.StatusHeader,
		removeForged: cfg.Verify.RemoveForgedHeaders,
	}
	s, v := cfg.Sign, cfg.Verify

	p.signer = batv.Signer{Keys: keys, Lifetime: s.Lifetime}
	if s.Lifetime < batv.MinLifetime || s.Lifetime > batv.MaxLifetime {
		bad("sign.lifetime %d: want %d to %d days", s.Lifetime, batv.MinLifetime, batv.MaxLifetime)
	}
	switch {
	case s.SubAddress == "":
	case len(s.SubAddress) != 1 || !batv.ValidDelimiter(s.SubAddress[0]):
		bad("sign.sub_address %q: want one of + - _ . ! # $ %% & ' * ? ^ ` { | } ~", s.SubAddress)
	default:
		p.signer.SubAddress = s.SubAddress[0]
	}
	p.signDomains = newDomainSet("sign.domains", s.Domains, bad)
	p.internal = parsePrefixes("sign.internal_networks", s.InternalNetworks, bad)
	for _, d := range s.SubmissionDaemons {
		p.submission[d] = true
	}
	p.exemptSenders = newAddrSet("sign.exempt_senders", s.ExemptSenders, bad)
	p.exemptRcptsOut = newAddrSet("sign.exempt_recipients", s.ExemptRecipients, bad)
	switch s.OnError {
	case "", "continue":
	case "tempfail":
		p.tempfailOnSign = true
	default:
		bad("sign.on_error %q: want continue or tempfail", s.OnError)
	}

	maxLife := v.MaxLifetime
	if maxLife == 0 {
		maxLife = max(s.Lifetime, batv.MinLifetime)
	}
	if maxLife < s.Lifetime && s.Lifetime <= batv.MaxLifetime {
		bad("verify.max_lifetime %d is shorter than sign.lifetime %d: fresh tags would be refused", maxLife, s.Lifetime)
	}
	if v.MaxLifetime != 0 && maxLife > batv.MaxLifetime {
		bad("verify.max_lifetime %d: at most %d days", maxLife, batv.MaxLifetime)
	}
	p.verifier = batv.Verifier{Keys: keys, MaxLifetime: maxLife, Strict: v.Strict, ClockSkew: time.Duration(v.ClockSkew)}
	if v.ClockSkew < 0 || time.Duration(v.ClockSkew) > 12*time.Hour {
		bad("verify.clock_skew %v: want 0 to 12h", time.Duration(v.ClockSkew))
	}
	switch {
	case v.Delimiter == "":
	case len(v.Delimiter) != 1:
		bad("verify.delimiter %q: want one character", v.Delimiter)
	case !batv.ValidDelimiter(v.Delimiter[0]):
		bad("verify.delimiter %q cannot separate a tag", v.Delimiter)
	default:
		p.verifier.Delimiter = v.Delimiter[0]
	}
	p.verifyDomains = p.signDomains
	if len(v.Domains) > 0 {
		p.verifyDomains = newDomainSet("verify.domains", v.Domains, bad)
	}
	p.exemptRcptsIn = newAddrSet("verify.exempt_recipients", append([]string{"postmaster", "abuse"}, v.ExemptRecipients...), bad)
	p.exemptClients = parsePrefixes("verify.exempt_clients", v.ExemptClients, bad)
	var ok bool
	if p.untaggedBounce, ok = parseAction(v.UntaggedBounce, ActReject, ActTempfail, ActQuarantine, ActTag, ActOff); !ok {
		bad("verify.untagged_bounce %q: want reject, tempfail, quarantine, tag or off", v.UntaggedBounce)
	}
	if p.invalidTagReply, ok = parseAction(v.InvalidTagReply, ActDeliverMark, ActDeliver, ActReject, ActPass); !ok {
		bad("verify.invalid_tag_reply %q: want deliver-mark, deliver, reject or pass", v.InvalidTagReply)
	}
	if v.QueueLifetime < 0 {
		bad("verify.queue_lifetime %v: must not be negative", time.Duration(v.QueueLifetime))
	}
	p.graceUntil = v.GraceUntil
	if p.graceUntil.IsZero() && !created.IsZero() {
		p.graceUntil = created.Add(time.Duration(maxLife)*24*time.Hour + time.Duration(v.QueueLifetime))
	}
	if !validHeaderName(v.StatusHeader) {
		bad("verify.status_header %q: not a header field name", v.StatusHeader)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// GraceUntil is the end of the grace period for untagged bounces.
func (p *Policy) GraceUntil() time.Time { return p.graceUntil }

// StatusHeader is the name of the header the inbound milter adds.
func (p *Policy) StatusHeader() string { return p.statusHeader }

// RemovesForgedHeaders reports whether the inbound milter needs the
// message headers to remove forged status headers.
func (p *Policy) RemovesForgedHeaders() bool { return p.removeForged }

// SignsForRecipients reports whether outbound decisions depend on the
// recipients (there are recipient exemptions).
func (p *Policy) SignsForRecipients() bool {
	return len(p.exemptRcptsOut.addrs)+len(p.exemptRcptsOut.domains) > 0
}

// Conn is what the MTA says about an SMTP client at CONNECT.
type Conn struct {
	// Addr is the client address; invalid for mail submitted on the MTA
	// host (no client).
	Addr netip.Addr
	// Local is true for a unix-domain or unknown client family: mail
	// submitted on the MTA host.
	Local bool
	// DaemonName is the {daemon_name} macro at CONNECT.
	DaemonName string
}

// Outbound reasons: why a message is ours to sign.
const (
	OutAuthenticated = "authenticated"
	OutInternal      = "internal-network"
	OutLocal         = "local"
	OutSubmission    = "submission-daemon"
)

// Outbound says whether mail on connection c, from a client authenticated
// as authUser ("" if none), is sent by our users, and why; "" if not.
func (p *Policy) Outbound(c Conn, authUser string) string {
	switch {
	case authUser != "" && p.signAuth:
		return OutAuthenticated
	case p.submission[c.DaemonName] && c.DaemonName != "":
		return OutSubmission
	case (c.Local || !c.Addr.IsValid()) && p.signLocal:
		return OutLocal
	case c.Addr.IsValid() && inPrefixes(c.Addr, p.internal):
		return OutInternal
	}
	return ""
}

// SignResult is the outbound decision for one message.
type SignResult struct {
	// Address is the signed sender, or "" if the message stays unsigned.
	Address string
	// Skip is why the message stays unsigned: a batv.Skip word, or
	// "foreign-domain", "exempt-sender", "exempt-recipient", "error".
	Skip   string
	KeyID  int
	Err    error // set with Skip "error"
	Expiry int
}

// Skip words of SignResult beyond batv's.
const (
	SkipForeignDomain   = "foreign-domain"
	SkipExemptSender    = "exempt-sender"
	SkipExemptRecipient = "exempt-recipient"
	SkipError           = "error"
)

// Sign decides and computes the signed envelope sender of an outbound
// message from sender to rcpts at now.
func (p *Policy) Sign(sender string, rcpts []string, now time.Time) SignResult {
	if sender == "" {
		return SignResult{Skip: batv.SkipNullSender.String()}
	}
	_, domain := splitAddr(sender)
	if !p.signDomains.has(domain) {
		return SignResult{Skip: SkipForeignDomain}
	}
	if p.exemptSenders.match(sender) {
		return SignResult{Skip: SkipExemptSender}
	}
	for _, r := range rcpts {
		if p.exemptRcptsOut.match(r) {
			return SignResult{Skip: SkipExemptRecipient}
		}
	}
	s := p.signer
	s.Now = func() time.Time { return now }
	r, err := s.Sign(sender)
	if err != nil {
		return SignResult{Skip: SkipError, Err: err}
	}
	if r.Skip != batv.NotSkipped {
		return SignResult{Skip: r.Skip.String()}
	}
	return SignResult{Address: r.Address, KeyID: r.KeyID, Expiry: r.Expiry}
}

// TempfailOnSignError reports whether a signing failure tempfails the
// message instead of sending it unsigned.
func (p *Policy) TempfailOnSignError() bool { return p.tempfailOnSign }

// Envelope is what the inbound decision knows of a transaction.
type Envelope struct {
	Conn   Conn
	Sender string // "" for the null sender
}

// Recipient is the inbound decision for one recipient.
type Recipient struct {
	Action Action
	// Reply is the SMTP reply for ActReject and ActTempfail.
	Reply string
	// Rewrite is the address to deliver to instead, if not "".
	Rewrite string
	// Mark is the status header value to add, if not "".
	Mark string
	// Outcome is the verification outcome word ("valid", "missing", ...),
	// or "" when the recipient is not in a protected domain.
	Outcome string
	// Reason is a short explanation for the log.
	Reason string
	// KeyID is the tag's key id, or -1.
	KeyID int
}

// SMTP replies of the inbound milter. The detail goes to the log.
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

// Recipient decides what to do with rcpt in transaction env at now.
func (p *Policy) Recipient(env Envelope, rcpt string, now time.Time) Recipient {
	local, domain := splitAddr(rcpt)
	if !p.verifyDomains.has(domain) {
		return Recipient{Action: ActPass, KeyID: -1, Reason: "domain not protected"}
	}
	v := p.verifier
	v.Now = func() time.Time { return now }
	bounce := env.Sender == ""
	var res batv.Result
	if bounce {
		res, _ = v.Verify(rcpt)
	} else {
		res, _ = v.VerifyIgnoringExpiry(rcpt)
	}
	d := Recipient{Outcome: res.Status.String(), KeyID: -1, Reason: res.Reason}
	if res.Status != batv.Missing && res.Status != batv.Malformed {
		d.KeyID = res.Tag.KeyID
	}
	target, targetLocal := rcpt, local
	if u := res.Untagged(); u != "" {
		target, targetLocal = u, res.Tag.Local()
	}
	exempt := p.exemptRcptsIn.matchRecipient(target, targetLocal) ||
		env.Conn.Addr.IsValid() && inPrefixes(env.Conn.Addr, p.exemptClients)

	switch {
	case res.Status == batv.Valid:
		d.Action, d.Rewrite = ActAccept, res.Untagged()
		if !bounce && res.DaysLeft < 0 {
			d.Reason = "expired tag on a reply"
		}
	case res.Status == batv.Missing && !bounce:
		d.Action, d.Outcome, d.Reason = ActPass, "", "not a bounce"
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
			d.Mark = p.mark(res.Status, rcpt)
		}
	case exempt:
		// An invalid tag for an exempt recipient or from an exempt client
		// is delivered untagged, and marked; never refused.
		d.Action, d.Rewrite, d.Mark = ActDeliverMark, res.Untagged(), p.mark(res.Status, rcpt)
	case bounce:
		d.Action, d.Reply = ActReject, fmt.Sprintf(replyInvalidTag, replyWords[res.Status])
	default:
		d.Action = p.invalidTagReply
		switch d.Action {
		case ActDeliver:
			d.Rewrite = res.Untagged()
		case ActDeliverMark:
			d.Rewrite, d.Mark = res.Untagged(), p.mark(res.Status, rcpt)
		case ActReject:
			d.Reply = fmt.Sprintf(replyInvalidNB, replyWords[res.Status])
		}
	}
	return d
}

// mark is the status header value for a recipient.
func (p *Policy) mark(st batv.Status, rcpt string) string {
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

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}
