package policy

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/batv/batv/batv"
)

// ErrConfig is matched by every configuration problem New and
// Config.Check report.
var ErrConfig = errors.New("policy: invalid configuration")

// FieldError is one configuration problem: the option (as written in the
// configuration file, "sign.lifetime") and what is wrong with it. It
// matches ErrConfig with errors.Is.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Is makes errors.Is(err, ErrConfig) true.
func (e *FieldError) Is(target error) bool { return target == ErrConfig }

// Policy is a compiled, immutable Config bound to a keyring: the pure
// decision functions of every front end. It is safe for concurrent use.
type Policy struct {
	signer   batv.Signer
	verifier batv.Verifier
	noExpiry batv.Verifier // verifier for mail with a sender: expiry ignored

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
	untaggedAtData  bool
	invalidTagReply Action
	graceUntil      time.Time
	statusHeader    string
	removeForged    bool
}

// creator is a keyring that knows when it was created: the default grace
// period for untagged bounces starts then.
type creator interface {
	Created() time.Time
}

// New checks cfg and compiles it with keys, the keyring the site signs and
// verifies with. If keys is a batv.LifetimeKeyring (package keyring's
// keyrings are), New refuses a configuration that signs or verifies tags
// longer than the keyring keeps its keys. If
// keys knows when it was created (a Created() time.Time method), the grace
// period for untagged bounces ends by default at creation + the expiry
// window + the queue lifetime. Every problem is reported, joined; each
// matches ErrConfig.
func New(cfg Config, keys batv.Keyring) (*Policy, error) {
	p, errs := compile(cfg)
	maxLife := p.verifier.MaxLifetime
	if err := batv.CheckLifetime(keys, maxLife); err != nil {
		errs = append(errs, &FieldError{"verify.max_lifetime", err.Error() +
			": raise the keyring's max_lifetime_days or lower sign.lifetime and verify.max_lifetime"})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	p.signer.Keys, p.verifier.Keys, p.noExpiry.Keys = keys, keys, keys
	if c, ok := keys.(creator); ok && p.graceUntil.IsZero() && !c.Created().IsZero() {
		p.graceUntil = c.Created().Add(time.Duration(maxLife)*24*time.Hour + cfg.Verify.QueueLifetime)
	}
	return p, nil
}

// Check reports every problem of the configuration, joined, each matching
// ErrConfig; nil if it compiles.
func (cfg Config) Check() error {
	_, errs := compile(cfg)
	return errors.Join(errs...)
}

// compile builds a policy without keys from cfg and lists its problems.
func compile(cfg Config) (*Policy, []error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{field, fmt.Sprintf(format, args...)})
	}
	s, v := cfg.Sign, cfg.Verify
	p := &Policy{
		signAuth:     s.Authenticated,
		signLocal:    s.Local,
		submission:   map[string]bool{},
		statusHeader: v.StatusHeader,
		removeForged: v.RemoveForgedHeaders,
		graceUntil:   v.GraceUntil,
	}

	p.signer.Lifetime = s.Lifetime
	if s.Lifetime < batv.MinLifetime || s.Lifetime > batv.MaxLifetime {
		bad("sign.lifetime", "%d: want %d to %d days", s.Lifetime, batv.MinLifetime, batv.MaxLifetime)
	}
	switch {
	case s.SubAddress == "":
	case len(s.SubAddress) != 1 || !batv.ValidDelimiter(s.SubAddress[0]):
		bad("sign.sub_address", "%q: want one of + - _ . ! # $ %% & ' * ? ^ ` { | } ~", s.SubAddress)
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
		bad("sign.on_error", "%q: want continue or tempfail", s.OnError)
	}

	maxLife := v.MaxLifetime
	if maxLife == 0 {
		maxLife = max(s.Lifetime, batv.MinLifetime)
	}
	if maxLife < s.Lifetime && s.Lifetime <= batv.MaxLifetime {
		bad("verify.max_lifetime", "%d is shorter than sign.lifetime %d: fresh tags would be refused", maxLife, s.Lifetime)
	}
	if v.MaxLifetime != 0 && maxLife > batv.MaxLifetime {
		bad("verify.max_lifetime", "%d: at most %d days", maxLife, batv.MaxLifetime)
	}
	p.verifier = batv.Verifier{MaxLifetime: maxLife, Strict: v.Strict, ClockSkew: v.ClockSkew}
	if v.ClockSkew < 0 || v.ClockSkew > 12*time.Hour {
		bad("verify.clock_skew", "%v: want 0 to 12h", v.ClockSkew)
	}
	switch {
	case v.Delimiter == "":
	case len(v.Delimiter) != 1:
		bad("verify.delimiter", "%q: want one character", v.Delimiter)
	case !batv.ValidDelimiter(v.Delimiter[0]):
		bad("verify.delimiter", "%q cannot separate a tag", v.Delimiter)
	default:
		p.verifier.Delimiter = v.Delimiter[0]
	}
	if s.SubAddress != "" && v.Delimiter != s.SubAddress && p.signer.SubAddress != 0 {
		bad("verify.delimiter", "%q differs from sign.sub_address %q: bounces to the addresses signed here would not verify", v.Delimiter, s.SubAddress)
	}
	p.noExpiry = p.verifier
	p.verifyDomains = p.signDomains
	if len(v.Domains) > 0 {
		p.verifyDomains = newDomainSet("verify.domains", v.Domains, bad)
	}
	p.exemptRcptsIn = newAddrSet("verify.exempt_recipients", append([]string{"postmaster", "abuse"}, v.ExemptRecipients...), bad)
	for _, d := range slices.Sorted(maps.Keys(p.exemptRcptsIn.domains)) {
		if p.verifyDomains.has(d) {
			bad("verify.exempt_recipients", "%q is a protected domain: none of its bounces would be refused; "+
				"leave it out of verify.domains (which is sign.domains when empty) instead", d)
		}
	}
	p.exemptClients = parsePrefixes("verify.exempt_clients", v.ExemptClients, bad)
	refuseEverything("sign.internal_networks", p.internal, "the mail of every client would be signed", bad)
	refuseEverything("verify.exempt_clients", p.exemptClients, `no bounce would be refused (verify.untagged_bounce = "off" is the way to accept untagged ones)`, bad)
	var ok bool
	if p.untaggedBounce, ok = parseAction(v.UntaggedBounce, ActReject, ActTempfail, ActQuarantine, ActTag, ActOff); !ok {
		bad("verify.untagged_bounce", "%q: want reject, tempfail, quarantine, tag or off", v.UntaggedBounce)
	}
	switch v.RefuseUntaggedAt {
	case "", "data":
		p.untaggedAtData = true
	case "rcpt":
	default:
		bad("verify.refuse_untagged_at", "%q: want data or rcpt", v.RefuseUntaggedAt)
	}
	if p.invalidTagReply, ok = parseAction(v.InvalidTagReply, ActDeliverMark, ActDeliver, ActReject, ActPass); !ok {
		bad("verify.invalid_tag_reply", "%q: want deliver-mark, deliver, reject or pass", v.InvalidTagReply)
	}
	if v.QueueLifetime < 0 {
		bad("verify.queue_lifetime", "%v: must not be negative", v.QueueLifetime)
	}
	if !validHeaderName(v.StatusHeader) {
		bad("verify.status_header", "%q: not a header field name", v.StatusHeader)
	}
	return p, errs
}

// refuseEverything reports a network list that holds every address of a
// family (0.0.0.0/0, ::/0): never what is meant.
func refuseEverything(field string, list []netip.Prefix, why string, bad func(field, format string, args ...any)) {
	for _, p := range list {
		if p.Bits() == 0 {
			bad(field, "%v holds every address: %s", p, why)
		}
	}
}

// Signer is the signer of outbound mail: the keys, lifetime and form
// the policy signs with (for tools that sign as the daemon does).
func (p *Policy) Signer() batv.Signer { return p.signer }

// Verifier is the verifier of bounces: the keys, expiry window, case rule,
// clock skew and delimiter the policy verifies with.
func (p *Policy) Verifier() batv.Verifier { return p.verifier }

// GraceUntil is the end of the grace period for untagged bounces.
func (p *Policy) GraceUntil() time.Time { return p.graceUntil }

// RefusesAtData reports whether untagged bounces are refused at DATA
// (verify.refuse_untagged_at), so that a front end must hear of the DATA
// command.
func (p *Policy) RefusesAtData() bool {
	return p.untaggedAtData && (p.untaggedBounce == ActReject || p.untaggedBounce == ActTempfail)
}

// StatusHeader is the name of the header the inbound front ends add.
func (p *Policy) StatusHeader() string { return p.statusHeader }

// RemovesForgedHeaders reports whether incoming status headers are to be
// removed (a milter then needs every header).
func (p *Policy) RemovesForgedHeaders() bool { return p.removeForged }

// SignsForRecipients reports whether outbound decisions depend on the
// recipients (there are recipient exemptions).
func (p *Policy) SignsForRecipients() bool { return !p.exemptRcptsOut.empty() }

// TempfailOnSignError reports whether a signing failure tempfails the
// message instead of sending it unsigned.
func (p *Policy) TempfailOnSignError() bool { return p.tempfailOnSign }

// Protected reports whether domain's bounces are verified.
func (p *Policy) Protected(domain string) bool { return p.verifyDomains.has(domain) }

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
