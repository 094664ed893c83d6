package milter

import (
	"time"
)

// Config is the BATV policy: which mail to sign, which recipients to
// verify and what to do with each outcome. The configuration file maps
// onto it; NewPolicy checks it and compiles it for the hot path.
type Config struct {
	Sign   SignConfig   `toml:"sign"`
	Verify VerifyConfig `toml:"verify"`
}

// SignConfig is the outbound policy.
type SignConfig struct {
	// Domains are the sender domains to sign (exact, case-insensitive).
	// Only sign domains whose inbound mail is verified.
	Domains []string `toml:"domains"`
	// Lifetime is the number of days a tag stays valid (1-30, default 7).
	Lifetime int `toml:"lifetime"`
	// SubAddress, if set, signs in the sub-address form with this one
	// character delimiter (user+prvs=...@domain).
	SubAddress string `toml:"sub_address"`
	// InternalNetworks are client networks (CIDR or address) whose mail
	// is ours to sign. Default 127.0.0.0/8 and ::1.
	InternalNetworks []string `toml:"internal_networks"`
	// SubmissionDaemons are MTA listener names ({daemon_name} at
	// connect: Postfix's milter_macro_daemon_name, set per service with
	// "-o milter_macro_daemon_name=ORIGINATING"; Sendmail's Name= of
	// DAEMON_OPTIONS) whose mail is ours to sign.
	SubmissionDaemons []string `toml:"submission_daemons"`
	// Authenticated signs mail from clients that authenticated with SMTP
	// AUTH ({auth_authen} set). Default true; NewPolicy receives it
	// already defaulted by the configuration loader.
	Authenticated bool `toml:"authenticated"`
	// Local signs mail submitted on the MTA host itself (sendmail(1),
	// pickup: no client address). Default true.
	Local bool `toml:"local"`
	// ExemptSenders are sender addresses or domains never signed
	// ("user@example.com", "example.com" or "@example.com").
	ExemptSenders []string `toml:"exempt_senders"`
	// ExemptRecipients are destinations (addresses or domains) whose
	// mail is never signed: mailing lists and closed systems that know
	// members by envelope sender. One exempt recipient leaves the whole
	// message unsigned.
	ExemptRecipients []string `toml:"exempt_recipients"`
	// OnError is what happens to a message the milter fails to sign:
	// "continue" (default: send it unsigned, logged and counted) or
	// "tempfail".
	OnError string `toml:"on_error"`
}

// VerifyConfig is the inbound policy.
type VerifyConfig struct {
	// Domains are the recipient domains whose bounces are verified.
	// Default: the signing domains.
	Domains []string `toml:"domains"`
	// MaxLifetime is the longest lifetime any host of the site signs with,
	// in days: the expiry window. Default: the signing lifetime.
	MaxLifetime int `toml:"max_lifetime"`
	// Strict refuses a MAC over the lowercased address.
	Strict bool `toml:"strict"`
	// ClockSkew also accepts tags that are within their window this much
	// before or after now. Default 0 (off).
	ClockSkew Duration `toml:"clock_skew"`
	// Delimiter is the sub-address delimiter recognised in tags. Default
	// "+".
	Delimiter string `toml:"delimiter"`
	// UntaggedBounce is the action for null-sender mail to an untagged
	// recipient: "reject" (default), "tempfail", "quarantine", "tag"
	// (accept and add the status header) or "off".
	UntaggedBounce string `toml:"untagged_bounce"`
	// InvalidTagReply is the action for mail with a sender (a reply, an
	// auto-reply) to a recipient whose tag fails its MAC: "deliver-mark"
	// (default: deliver to the untagged address and add the status
	// header), "deliver", "reject" or "pass" (leave the recipient as is).
	InvalidTagReply string `toml:"invalid_tag_reply"`
	// ExemptRecipients are recipients whose bounces are never refused
	// (addresses, or local parts such as "hostmaster"). postmaster and
	// abuse of every domain are always exempt.
	ExemptRecipients []string `toml:"exempt_recipients"`
	// ExemptClients are client networks or addresses whose null-sender
	// mail is never refused: the site's own relays, partners that send
	// legitimate bounces to untagged addresses.
	ExemptClients []string `toml:"exempt_clients"`
	// GraceUntil ends the period after BATV is first enabled during which
	// untagged bounces are accepted (mail sent before signing began can
	// still bounce). Zero means keyring creation + MaxLifetime +
	// QueueLifetime. A time in the past switches it off.
	GraceUntil time.Time `toml:"grace_until"`
	// QueueLifetime is the MTA's maximal queue lifetime (Postfix's
	// maximal_queue_lifetime, 5 days by default), used for the default
	// end of the grace period.
	QueueLifetime Duration `toml:"queue_lifetime"`
	// StatusHeader is the header the milter adds to mark messages, and
	// removes from incoming ones. Default "X-BATV-Status".
	StatusHeader string `toml:"status_header"`
	// RemoveForgedHeaders makes the milter remove incoming status
	// headers itself (it then asks the MTA for every header). Set it to
	// false only if the MTA strips them (Postfix header_checks, see
	// docs/postfix.md). Default true.
	RemoveForgedHeaders bool `toml:"remove_forged_headers"`
}

// Duration is a time.Duration written as a Go duration string ("90s",
// "120h") in the configuration file.
type Duration time.Duration

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(time.Duration(d).String()), nil
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
			InvalidTagReply:     "deliver-mark",
			StatusHeader:        "X-BATV-Status",
			RemoveForgedHeaders: true,
			QueueLifetime:       Duration(5 * 24 * time.Hour),
			Delimiter:           "+",
		},
	}
}
