package policy

import "time"

// Config is the BATV policy as an administrator writes it: which mail to
// sign, which recipients to verify and what to do with each outcome. New
// checks it and compiles it. The daemon's configuration file maps onto it
// (see docs/batv.toml for every option with its default).
type Config struct {
	Sign   SignConfig
	Verify VerifyConfig
}

// SignConfig is the outbound policy.
type SignConfig struct {
	// Domains are the sender domains to sign (exact, case-insensitive).
	// Only sign domains whose inbound mail is verified.
	Domains []string
	// Lifetime is the number of days a tag stays valid (1-30).
	Lifetime int
	// SubAddress, if set, signs in the sub-address form with this one
	// character delimiter (user+prvs=...@domain).
	SubAddress string
	// InternalNetworks are client networks (CIDR or address) whose mail
	// is ours to sign.
	InternalNetworks []string
	// SubmissionDaemons are MTA listener names ({daemon_name} at
	// connect) whose mail is ours to sign.
	SubmissionDaemons []string
	// Authenticated signs mail from clients that authenticated with SMTP
	// AUTH.
	Authenticated bool
	// Local signs mail submitted on the MTA host itself (no client
	// address).
	Local bool
	// ExemptSenders are sender addresses or domains never signed.
	ExemptSenders []string
	// ExemptRecipients are destinations (addresses or domains) whose mail
	// is never signed; one exempt recipient leaves the message unsigned.
	ExemptRecipients []string
	// OnError is what happens to a message that cannot be signed:
	// "continue" (send it unsigned) or "tempfail".
	OnError string
}

// VerifyConfig is the inbound policy.
type VerifyConfig struct {
	// Domains are the recipient domains whose bounces are verified; empty
	// means the signing domains.
	Domains []string
	// MaxLifetime is the longest lifetime any host of the site signs with,
	// in days: the expiry window. 0 means the signing lifetime.
	MaxLifetime int
	// Strict refuses a MAC over the lowercased address.
	Strict bool
	// ClockSkew also accepts tags that are within their window this much
	// before or after now.
	ClockSkew time.Duration
	// Delimiter is the sub-address delimiter recognised in tags.
	Delimiter string
	// UntaggedBounce is the action for null-sender mail to an untagged
	// recipient: "reject", "tempfail", "quarantine", "tag" or "off".
	UntaggedBounce string
	// RefuseUntaggedAt is when an untagged bounce is refused with
	// UntaggedBounce "reject" or "tempfail": "data" (at the DATA
	// command, so that address verification callouts succeed) or "rcpt".
	RefuseUntaggedAt string
	// InvalidTagReply is the action for mail with a sender to a recipient
	// whose tag does not verify: "deliver-mark", "deliver", "reject" or
	// "pass".
	InvalidTagReply string
	// ExemptRecipients are recipients whose bounces are never refused
	// (addresses, domains, or local parts); postmaster and abuse are
	// always exempt.
	ExemptRecipients []string
	// ExemptClients are client networks or addresses whose null-sender
	// mail is never refused.
	ExemptClients []string
	// GraceUntil ends the period in which untagged bounces are accepted.
	// Zero means keyring creation + MaxLifetime + QueueLifetime.
	GraceUntil time.Time
	// QueueLifetime is the MTA's maximal queue lifetime, for the default
	// end of the grace period.
	QueueLifetime time.Duration
	// StatusHeader is the header added to mark messages and removed from
	// incoming ones.
	StatusHeader string
	// RemoveForgedHeaders removes incoming status headers.
	RemoveForgedHeaders bool
}

// DefaultConfig returns the policy defaults for the given domains: sign
// and verify them, sign authenticated, local and loopback mail.
func DefaultConfig(domains ...string) Config {
	return Config{
		Sign: SignConfig{
			Domains:          domains,
			Lifetime:         7,
			InternalNetworks: []string{"127.0.0.0/8", "::1/128"},
			Authenticated:    true,
			Local:            true,
			OnError:          "continue",
		},
		Verify: VerifyConfig{
			UntaggedBounce:      "reject",
			RefuseUntaggedAt:    "data",
			InvalidTagReply:     "reject",
			StatusHeader:        "X-BATV-Status",
			RemoveForgedHeaders: true,
			QueueLifetime:       5 * 24 * time.Hour,
			Delimiter:           "+",
		},
	}
}
