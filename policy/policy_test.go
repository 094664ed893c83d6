package policy

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/tagtest"

	"github.com/batv/batv/batv"
)

var (
	testKeys = batv.SingleKey{ID: 4, Secret: []byte("milter test key, 32 bytes long!!")}
	// testNow is 2026-11-28 10:00 UTC; the keyring was created long before,
	// so the grace period is over unless a test says otherwise.
	testNow     = time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	testCreated = testNow.Add(-365 * 24 * time.Hour)
)

// createdKeys is a keyring that says when it was created.
type createdKeys struct {
	batv.SingleKey
	created time.Time
}

func (k createdKeys) Created() time.Time { return k.created }

func testPolicy(t testing.TB, mod func(*Config)) *Policy {
	t.Helper()
	cfg := DefaultConfig("example.com", "example.net")
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg, createdKeys{testKeys, testCreated})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// tag signs addr with the test key, daysAgo days before testNow.
func tag(t testing.TB, addr string, daysAgo int) string {
	t.Helper()
	return tagtest.Sign(t, testKeys, addr, testNow.AddDate(0, 0, -daysAgo))
}

// forge makes a tag that does not verify.
func forge(tagged string) string { return tagtest.Forge(tagged) }

var (
	mxClient      = Client{Addr: netip.MustParseAddr("192.0.2.25"), DaemonName: "smtpd"}
	partnerClient = Client{Addr: netip.MustParseAddr("198.51.100.7"), DaemonName: "smtpd"}
)

// envelope is what a test transaction begins with.
type envelope struct {
	client Client
	sender string
}

// outcome is the verification outcome of a decision in a protected
// domain, or "".
func outcome(d Decision) string {
	if !d.Protected {
		return ""
	}
	return d.Status.String()
}

func TestRecipientDecisions(t *testing.T) {
	valid := tag(t, "user@example.com", 1)
	expired := tag(t, "user@example.com", 8)
	lastDay := tag(t, "user@example.com", 7)
	tests := []struct {
		name    string
		mod     func(*Config)
		env     envelope
		rcpt    string
		action  Action
		outcome string
		rewrite string
		reply   string // prefix
		mark    string // prefix
	}{
		{name: "bounce to valid tag", rcpt: valid, action: ActAccept, outcome: "valid", rewrite: "user@example.com"},
		{name: "bounce to tag on its last day", rcpt: lastDay, action: ActAccept, outcome: "valid", rewrite: "user@example.com"},
		{name: "bounce to expired tag", rcpt: expired, action: ActReject, outcome: "expired", reply: "550 5.7.1 Bounce refused: the recipient address tag is expired"},
		{name: "bounce to forged tag", rcpt: forge(valid), action: ActReject, outcome: "bad-signature", reply: "550 5.7.1 Bounce refused: the recipient address tag is not valid"},
		{name: "bounce to unknown key", rcpt: "prvs=5" + valid[6:], action: ActReject, outcome: "unknown-key", reply: "550 5.7.1"},
		{name: "bounce to malformed tag", rcpt: "prvs=4xyz=user@example.com", action: ActReject, outcome: "malformed", reply: "550 5.7.1"},
		{name: "bounce to untagged: reject", rcpt: "user@example.com", action: ActReject, outcome: "missing", reply: "550 5.7.1 Bounce refused: this address sends only tagged mail"},
		{name: "bounce to untagged: tempfail", mod: func(c *Config) { c.Verify.UntaggedBounce = "tempfail" },
			rcpt: "user@example.com", action: ActTempfail, outcome: "missing", reply: "451 4.7.1"},
		{name: "bounce to untagged: quarantine", mod: func(c *Config) { c.Verify.UntaggedBounce = "quarantine" },
			rcpt: "user@example.com", action: ActQuarantine, outcome: "missing", mark: "untagged; rcpt=<user@example.com>"},
		{name: "bounce to untagged: tag", mod: func(c *Config) { c.Verify.UntaggedBounce = "tag" },
			rcpt: "user@example.com", action: ActTag, outcome: "missing", mark: "untagged"},
		{name: "bounce to untagged: off", mod: func(c *Config) { c.Verify.UntaggedBounce = "off" },
			rcpt: "user@example.com", action: ActOff, outcome: "missing"},
		{name: "bounce to untagged in grace period", mod: func(c *Config) { c.Verify.GraceUntil = testNow.Add(time.Hour) },
			rcpt: "user@example.com", action: ActGrace, outcome: "missing"},
		{name: "forged tag in grace period still refused", mod: func(c *Config) { c.Verify.GraceUntil = testNow.Add(time.Hour) },
			rcpt: forge(valid), action: ActReject, outcome: "bad-signature", reply: "550 5.7.1"},
		{name: "bounce to postmaster", rcpt: "postmaster@example.com", action: ActExempt, outcome: "missing"},
		{name: "bounce to Abuse", rcpt: "Abuse@example.net", action: ActExempt, outcome: "missing"},
		{name: "bounce to configured exempt address", mod: func(c *Config) { c.Verify.ExemptRecipients = []string{"noc@example.com"} },
			rcpt: "NOC@example.com", action: ActExempt, outcome: "missing"},
		{name: "bounce to configured exempt local part", mod: func(c *Config) { c.Verify.ExemptRecipients = []string{"hostmaster"} },
			rcpt: "hostmaster@example.net", action: ActExempt, outcome: "missing"},
		{name: "forged tag to postmaster delivered marked", rcpt: forge(tag(t, "postmaster@example.com", 1)),
			action: ActDeliverMark, outcome: "bad-signature", rewrite: "postmaster@example.com", mark: "bad-signature"},
		{name: "bounce from exempt client", mod: func(c *Config) { c.Verify.ExemptClients = []string{"198.51.100.0/24"} },
			env: envelope{client: partnerClient}, rcpt: "user@example.com", action: ActExempt, outcome: "missing"},
		{name: "bounce from exempt host address", mod: func(c *Config) { c.Verify.ExemptClients = []string{"198.51.100.7"} },
			env: envelope{client: partnerClient}, rcpt: "user@example.com", action: ActExempt, outcome: "missing"},
		{name: "bounce from other client not exempt", mod: func(c *Config) { c.Verify.ExemptClients = []string{"198.51.100.0/24"} },
			rcpt: "user@example.com", action: ActReject, outcome: "missing", reply: "550"},
		{name: "unprotected domain", rcpt: "user@example.org", action: ActPass},
		{name: "unprotected domain, tagged", rcpt: "prvs=4000000000=user@example.org", action: ActPass},
		{name: "protected domain case-insensitive", rcpt: "user@EXAMPLE.COM", action: ActReject, outcome: "missing", reply: "550"},
		{name: "verify domains differ from sign domains", mod: func(c *Config) { c.Verify.Domains = []string{"example.org"} },
			rcpt: "user@example.com", action: ActPass},
		{name: "reply to valid tag", env: envelope{sender: "someone@example.org"}, rcpt: valid,
			action: ActAccept, outcome: "valid", rewrite: "user@example.com"},
		{name: "reply to expired tag is stripped", env: envelope{sender: "someone@example.org"}, rcpt: expired,
			action: ActAccept, outcome: "expired", rewrite: "user@example.com"},
		{name: "reply to forged tag: deliver and mark", mod: func(c *Config) { c.Verify.InvalidTagReply = "deliver-mark" }, env: envelope{sender: "someone@example.org"}, rcpt: forge(valid),
			action: ActDeliverMark, outcome: "bad-signature", rewrite: "user@example.com", mark: "bad-signature; rcpt=<"},
		{name: "reply to forged tag: deliver", mod: func(c *Config) { c.Verify.InvalidTagReply = "deliver" },
			env: envelope{sender: "someone@example.org"}, rcpt: forge(valid), action: ActDeliver, outcome: "bad-signature", rewrite: "user@example.com"},
		{name: "reply to forged tag: reject", mod: func(c *Config) { c.Verify.InvalidTagReply = "reject" },
			env: envelope{sender: "someone@example.org"}, rcpt: forge(valid), action: ActReject, outcome: "bad-signature", reply: "550 5.7.1 The recipient address tag is not valid"},
		{name: "reply to forged tag: pass", mod: func(c *Config) { c.Verify.InvalidTagReply = "pass" },
			env: envelope{sender: "someone@example.org"}, rcpt: forge(valid), action: ActPass, outcome: "bad-signature"},
		{name: "reply to forged tag: refused by default", env: envelope{sender: "someone@example.org"}, rcpt: forge(valid),
			action: ActReject, outcome: "bad-signature", reply: "550 5.7.1 The recipient address tag is not valid"},
		{name: "reply to malformed tag: mark only", mod: func(c *Config) { c.Verify.InvalidTagReply = "deliver-mark" }, env: envelope{sender: "someone@example.org"}, rcpt: "prvs=4xyz=user@example.com",
			action: ActDeliverMark, outcome: "malformed", mark: "malformed"},
		{name: "ordinary mail", env: envelope{sender: "someone@example.org"}, rcpt: "user@example.com", action: ActPass, outcome: "missing"},
		{name: "case changed in transit accepted", rcpt: strings.ToUpper(valid[:16]) + "user@EXAMPLE.com",
			action: ActAccept, outcome: "valid", rewrite: "user@EXAMPLE.com"},
		{name: "case changed in transit, strict", mod: func(c *Config) { c.Verify.Strict = true },
			rcpt: valid[:16] + "user@EXAMPLE.com", action: ActReject, outcome: "bad-signature", reply: "550"},
		{name: "sub-address form", rcpt: "user+" + valid[:15] + "@example.com", action: ActAccept, outcome: "valid", rewrite: "user@example.com"},
		{name: "expired stays expired with a longer max lifetime", mod: func(c *Config) { c.Verify.MaxLifetime = 10 },
			rcpt: expired, action: ActReject, outcome: "expired", reply: "550"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testPolicy(t, tt.mod)
			env := tt.env
			if !env.client.Addr.IsValid() {
				env.client = mxClient
			}
			trx := p.Begin(env.client, env.sender)
			d := trx.Recipient(tt.rcpt, testNow)
			if d.Action != tt.action || outcome(d) != tt.outcome || d.Rewrite != tt.rewrite {
				t.Fatalf("Recipient(%q) = %v/%q rewrite %q, want %v/%q rewrite %q (%s)",
					tt.rcpt, d.Action, outcome(d), d.Rewrite, tt.action, tt.outcome, tt.rewrite, d.Reason)
			}
			if !strings.HasPrefix(d.Reply.String(), tt.reply) || (tt.reply != "") != d.Reply.Refuses() {
				t.Fatalf("reply %q, want prefix %q", d.Reply, tt.reply)
			}
			if !strings.HasPrefix(d.Mark, tt.mark) || (tt.mark == "") != (d.Mark == "") {
				t.Fatalf("mark %q, want prefix %q", d.Mark, tt.mark)
			}
			if (d.Action == ActReject) != (d.Reply.Code/100 == 5) || (d.Action == ActTempfail) != (d.Reply.Code/100 == 4) {
				t.Fatalf("action %v with reply %q", d.Action, d.Reply)
			}
		})
	}
}

func TestGraceDefault(t *testing.T) {
	created := testNow.Add(-24 * time.Hour)
	p, err := New(DefaultConfig("example.com"), createdKeys{testKeys, created})
	if err != nil {
		t.Fatal(err)
	}
	want := created.Add(7*24*time.Hour + 5*24*time.Hour)
	if !p.GraceUntil().Equal(want) {
		t.Fatalf("grace until %v, want %v", p.GraceUntil(), want)
	}
	trx := p.Begin(mxClient, "")
	if d := trx.Recipient("user@example.com", want.Add(-time.Second)); d.Action != ActGrace {
		t.Fatalf("before the end: %v", d.Action)
	}
	if d := trx.Recipient("user@example.com", want); d.Action != ActReject {
		t.Fatalf("at the end: %v", d.Action)
	}
}

func TestOutbound(t *testing.T) {
	p := testPolicy(t, func(c *Config) {
		c.Sign.InternalNetworks = []string{"10.0.0.0/8", "2001:db8::/32", "127.0.0.1"}
		c.Sign.SubmissionDaemons = []string{"submission"}
	})
	tests := []struct {
		name string
		conn Client
		auth string
		want Origin
	}{
		{"authenticated outsider", mxClient, "alice", Authenticated},
		{"outsider", mxClient, "", NotOurs},
		{"internal v4", Client{Addr: netip.MustParseAddr("10.1.2.3")}, "", InternalNetwork},
		{"internal v4-mapped", Client{Addr: netip.MustParseAddr("::ffff:10.1.2.3").Unmap()}, "", InternalNetwork},
		{"internal v6", Client{Addr: netip.MustParseAddr("2001:db8::1")}, "", InternalNetwork},
		{"local (unix family)", Client{Local: true}, "", Local},
		{"no client address", Client{}, "", Local},
		{"submission daemon", Client{Addr: netip.MustParseAddr("192.0.2.9"), DaemonName: "submission"}, "", SubmissionDaemon},
		{"other daemon", Client{Addr: netip.MustParseAddr("192.0.2.9"), DaemonName: "smtpd"}, "", NotOurs},
	}
	for _, tt := range tests {
		c := tt.conn
		c.AuthUser = tt.auth
		if got := p.Origin(c); got != tt.want {
			t.Errorf("%s: Origin = %v, want %v", tt.name, got, tt.want)
		}
	}
	off := testPolicy(t, func(c *Config) { c.Sign.Authenticated, c.Sign.Local = false, false })
	authed := mxClient
	authed.AuthUser = "alice"
	if got := off.Origin(authed); got != NotOurs {
		t.Errorf("authenticated signing off: %v", got)
	}
	if got := off.Origin(Client{Local: true}); got != NotOurs {
		t.Errorf("local signing off: %v", got)
	}
}

func TestSignDecisions(t *testing.T) {
	tests := []struct {
		name   string
		mod    func(*Config)
		sender string
		rcpts  []string
		skip   Skip
	}{
		{name: "ours", sender: "user@example.com", rcpts: []string{"a@example.org"}},
		{name: "second domain, any case", sender: "User@Example.NET", rcpts: []string{"a@example.org"}},
		{name: "null sender", sender: "", skip: SkipNullSender},
		{name: "foreign domain", sender: "user@example.org", skip: SkipForeignDomain},
		{name: "subdomain is foreign", sender: "user@mail.example.com", skip: SkipForeignDomain},
		{name: "already tagged", sender: "prvs=4000000000=user@example.com", skip: SkipTagged},
		{name: "srs", sender: "SRS0=abcd=ef=example.org=u@example.com", skip: SkipSRS},
		{name: "too long", sender: strings.Repeat("x", 49) + "@example.com", skip: SkipTooLong},
		{name: "exempt sender address", mod: func(c *Config) { c.Sign.ExemptSenders = []string{"list-owner@example.com"} },
			sender: "List-Owner@example.com", skip: SkipExemptSender},
		{name: "exempt sender domain", mod: func(c *Config) { c.Sign.ExemptSenders = []string{"@example.net"} },
			sender: "user@example.net", skip: SkipExemptSender},
		{name: "exempt recipient domain", mod: func(c *Config) { c.Sign.ExemptRecipients = []string{"lists.example.org"} },
			sender: "user@example.com", rcpts: []string{"a@example.org", "list@lists.example.org"}, skip: SkipExemptRecipient},
		{name: "exempt recipient address", mod: func(c *Config) { c.Sign.ExemptRecipients = []string{"list@example.org"} },
			sender: "user@example.com", rcpts: []string{"list@example.org"}, skip: SkipExemptRecipient},
		{name: "no signing key", sender: "user@example.com", skip: SkipError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testPolicy(t, tt.mod)
			if tt.skip == SkipError {
				var err error
				p, err = New(DefaultConfig("example.com"), noKeys{})
				if err != nil {
					t.Fatal(err)
				}
			}
			r := p.Sign(tt.sender, tt.rcpts, testNow)
			if r.Skip != tt.skip {
				t.Fatalf("skip %v, want %v (%v)", r.Skip, tt.skip, r.Err)
			}
			if tt.skip != NotSkipped {
				if r.Address != "" {
					t.Fatalf("skipped but address %q", r.Address)
				}
				return
			}
			v := batv.Verifier{Keys: testKeys, Now: func() time.Time { return testNow }, Strict: true}
			res, _ := v.Verify(r.Address)
			if res.Status != batv.Valid || res.Untagged() != tt.sender || r.KeyID != 4 {
				t.Fatalf("signed %q: %v untagged %q", r.Address, res.Status, res.Untagged())
			}
		})
	}
}

type noKeys struct{}

func (noKeys) SigningKey(time.Time, string) (batv.Key, error) {
	return batv.Key{}, batv.ErrNoSigningKey
}
func (noKeys) VerificationKey(time.Time, int, string) (batv.Key, bool) {
	return batv.Key{}, false
}

func TestNewPolicyReportsEveryError(t *testing.T) {
	cfg := DefaultConfig("example.com", "bad domain")
	cfg.Sign.Lifetime = 40
	cfg.Sign.SubAddress = "++"
	cfg.Sign.InternalNetworks = []string{"10.0.0.0/33"}
	cfg.Sign.OnError = "explode"
	cfg.Verify.UntaggedBounce = "bounce"
	cfg.Verify.InvalidTagReply = "ignore"
	cfg.Verify.ExemptClients = []string{"not-an-ip"}
	cfg.Verify.StatusHeader = "X Bad"
	cfg.Verify.Delimiter = "="
	_, err := New(cfg, testKeys)
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("err = %v", err)
	}
	if err2 := cfg.Check(); err2 == nil || err2.Error() != err.Error() {
		t.Fatalf("Check = %v, want what New reports", err2)
	}
	for _, want := range []string{"sign.lifetime: 40", "sign.sub_address", `"bad domain"`, "sign.internal_networks",
		"sign.on_error", "verify.untagged_bounce", "verify.invalid_tag_reply", "verify.exempt_clients",
		"verify.status_header", "verify.delimiter"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s:\n%v", want, err)
		}
	}
}

// TestConfigThatBreaksInProduction: settings that are valid one by one
// but break mail together, or that cannot be what is meant, are errors,
// each changed from a valid baseline; a valid neighbour of each is not.
func TestConfigThatBreaksInProduction(t *testing.T) {
	for _, tt := range []struct {
		name string
		mod  func(*Config)
		want string // "" for a valid configuration
	}{
		{"baseline", func(*Config) {}, ""},
		{"sub-address and delimiter agree", func(c *Config) { c.Sign.SubAddress, c.Verify.Delimiter = "-", "-" }, ""},
		{"sub-address and delimiter differ", func(c *Config) { c.Sign.SubAddress = "-" },
			`verify.delimiter: "+" differs from sign.sub_address "-"`},
		{"sub-address without delimiter", func(c *Config) { c.Sign.SubAddress, c.Verify.Delimiter = "+", "" },
			`verify.delimiter: "" differs from sign.sub_address "+"`},
		{"an empty label", func(c *Config) { c.Sign.Domains = append(c.Sign.Domains, "example..com") },
			`sign.domains: "example..com" is not a domain name`},
		{"a label starting with a hyphen", func(c *Config) { c.Verify.Domains = []string{"-x.example.com"} },
			`verify.domains: "-x.example.com" is not a domain name`},
		{"a label of 64 bytes", func(c *Config) { c.Sign.Domains = []string{strings.Repeat("a", 64) + ".example"} },
			"is not a domain name"},
		{"an underscore", func(c *Config) { c.Sign.Domains = []string{"mail_out.example.com"} }, "is not a domain name"},
		{"a trailing dot", func(c *Config) { c.Sign.Domains = []string{"example.com."} }, "without the trailing dot"},
		{"a Unicode name", func(c *Config) { c.Sign.Domains = []string{"bücher.example"} },
			`write the domain in its ASCII form, "xn--bcher-kva.example"`},
		{"an A-label", func(c *Config) { c.Sign.Domains = []string{"xn--bcher-kva.example"} }, ""},
		{"a bad A-label", func(c *Config) { c.Sign.Domains = []string{"xn--zz.example"} }, "is not a domain name"},
		{"a bad exempt domain", func(c *Config) { c.Sign.ExemptRecipients = []string{"@lists..example.org"} },
			`sign.exempt_recipients: "lists..example.org" is not a domain name`},
		{"signing every client (IPv4)", func(c *Config) { c.Sign.InternalNetworks = []string{"0.0.0.0/0"} },
			"sign.internal_networks: 0.0.0.0/0 holds every address"},
		{"signing every client (IPv6)", func(c *Config) { c.Sign.InternalNetworks = []string{"::1", "::/0"} },
			"sign.internal_networks: ::/0 holds every address"},
		{"exempting every client", func(c *Config) { c.Verify.ExemptClients = []string{"0.0.0.0/0"} },
			"verify.exempt_clients: 0.0.0.0/0 holds every address"},
		{"a wide but partial network", func(c *Config) { c.Verify.ExemptClients = []string{"0.0.0.0/1", "10.0.0.0/8"} }, ""},
		{"a protected domain exempt", func(c *Config) { c.Verify.ExemptRecipients = []string{"Example.NET"} },
			`verify.exempt_recipients: "example.net" is a protected domain`},
		{"a protected domain exempt with @", func(c *Config) { c.Verify.ExemptRecipients = []string{"@example.com"} },
			`"example.com" is a protected domain`},
		{"an exempt address in a protected domain", func(c *Config) { c.Verify.ExemptRecipients = []string{"lists@example.com"} }, ""},
		{"another domain exempt", func(c *Config) { c.Verify.ExemptRecipients = []string{"example.org"} }, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig("example.com", "example.net")
			tt.mod(&cfg)
			err := cfg.Check()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Check() = %v, want %q", err, tt.want)
			case tt.want != "" && !errors.Is(err, ErrConfig):
				t.Fatalf("%v does not match ErrConfig", err)
			}
		})
	}
}

// TestTransactionStages: untagged bounces are refused at DATA, so that a
// callout (MAIL FROM:<>, one RCPT, no DATA) gets 250; a transaction never
// mixes recipients that will be delivered with untagged ones refused at
// DATA; nothing is refused without a reply.
func TestTransactionStages(t *testing.T) {
	valid := tag(t, "user@example.com", 1)
	type step struct {
		rcpt   string
		action Action
		code   int // the RCPT reply's code, 0 for none
	}
	for _, tt := range []struct {
		name  string
		mod   func(*Config)
		steps []step
		data  int // the DATA reply's code, 0 for none
	}{
		{name: "callout to an untagged address",
			steps: []step{{"user@example.com", ActReject, 0}}, data: 550},
		{name: "callout to a valid tag",
			steps: []step{{valid, ActAccept, 0}}},
		{name: "callout to a forged tag is refused at RCPT",
			steps: []step{{forge(valid), ActReject, 550}}},
		{name: "tempfail waits for DATA too", mod: func(c *Config) { c.Verify.UntaggedBounce = "tempfail" },
			steps: []step{{"user@example.com", ActTempfail, 0}}, data: 451},
		{name: "refusal at RCPT when asked", mod: func(c *Config) { c.Verify.RefuseUntaggedAt = "rcpt" },
			steps: []step{{"user@example.com", ActReject, 550}}},
		{name: "valid first, then untagged: the untagged one at RCPT",
			steps: []step{{valid, ActAccept, 0}, {"other@example.com", ActReject, 550}}},
		{name: "untagged first, then valid: the valid one deferred to a transaction of its own",
			steps: []step{{"other@example.com", ActReject, 0}, {valid, ActSplit, 452}, {"third@example.net", ActReject, 0}}, data: 550},
		{name: "untagged first, then postmaster: postmaster deferred",
			steps: []step{{"other@example.com", ActReject, 0}, {"postmaster@example.com", ActSplit, 452}}, data: 550},
		{name: "untagged first, then a foreign domain: deferred",
			steps: []step{{"other@example.com", ActReject, 0}, {"someone@example.org", ActSplit, 452}}, data: 550},
		{name: "a forged tag between them changes nothing",
			steps: []step{{forge(valid), ActReject, 550}, {"other@example.com", ActReject, 0}}, data: 550},
		{name: "exempt first, then untagged: untagged at RCPT",
			steps: []step{{"postmaster@example.com", ActExempt, 0}, {"other@example.com", ActReject, 550}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := testPolicy(t, tt.mod)
			trx := p.Begin(mxClient, "")
			for i, st := range tt.steps {
				d := trx.Recipient(st.rcpt, testNow)
				if d.Action != st.action || d.RcptReply().Code != st.code {
					t.Fatalf("recipient %d %q: %v %q, want %v and a %d reply (%s)", i, st.rcpt, d.Action, d.RcptReply(), st.action, st.code, d.Reason)
				}
			}
			r, refused := trx.Data()
			if refused != (tt.data != 0) || r.Code != tt.data {
				t.Fatalf("DATA: %q %v, want %d", r, refused, tt.data)
			}
		})
	}
	// Mail with a sender is never refused at DATA.
	p := testPolicy(t, nil)
	trx := p.Begin(mxClient, "someone@example.org")
	trx.Recipient("user@example.com", testNow)
	if _, refused := trx.Data(); refused {
		t.Fatal("mail with a sender refused at DATA")
	}
}

// TestSpellingsOfABounce: the null sender and the recipient as the MTA
// will use them, however the client wrote them.
func TestSpellingsOfABounce(t *testing.T) {
	p := testPolicy(t, func(c *Config) { c.Verify.RefuseUntaggedAt = "rcpt" })
	valid := tag(t, "user@example.com", 1)
	for _, sender := range []string{"", `""`, "@evil.test:", "MAILER-DAEMON@example.org"} {
		for _, rcpt := range []string{"user@example.com.", "user%example.com@[127.0.0.1]", `"user"@example.com`, "@x:user@EXAMPLE.com"} {
			trx := p.Begin(mxClient, sender)
			if d := trx.Recipient(rcpt, testNow); d.Action != ActReject || d.Reply.Code != 550 || !d.Protected {
				t.Errorf("sender %q, recipient %q: %v %q, want the untagged bounce refused", sender, rcpt, d.Action, d.Reply)
			}
		}
		trx := p.Begin(mxClient, sender)
		if d := trx.Recipient(valid+".", testNow); d.Action != ActAccept || d.Rewrite != "user@example.com" || d.Mailbox != valid {
			t.Errorf("sender %q, valid tag with a trailing dot: %+v", sender, d)
		}
	}
}

// TestStripTable: the strip table makes a tagged address a recipient when
// its tag names a key, whatever the MAC, the case and the expiry.
func TestStripTable(t *testing.T) {
	p := testPolicy(t, nil)
	valid := tag(t, "User@example.com", 1)
	old := tag(t, "user@example.com", 40)
	for _, tt := range []struct {
		key, want string
		ok        bool
	}{
		{valid, "User@example.com", true},
		{strings.ToLower(valid), "user@example.com", true}, // as smtpd asks
		{forge(valid), "User@example.com", true},           // the milter refuses it at RCPT
		{old, "user@example.com", true},                    // a reply to an old message
		{"prvs=5" + valid[6:], "", false},                  // no key 5
		{"prvs=4zzz=user@example.com", "", false},          // malformed
		{"user@example.com", "", false},                    // not tagged
		{"prvs=4" + valid[6:16] + "user@example.org", "", false},
		{valid[:16] + "user", "user", true}, // a local part alone
		{"prvs=5" + valid[6:16] + "user", "", false},
	} {
		got, ok := p.Lookup(TableStrip, tt.key, testNow)
		if ok != tt.ok || got != tt.want {
			t.Errorf("strip %q = %q, %v; want %q, %v", tt.key, got, ok, tt.want, tt.ok)
		}
	}
}

// shortKeys is a keyring that keeps its keys for tags of 5 days.
type shortKeys struct{ batv.SingleKey }

func (shortKeys) MaxLifetimeDays() int { return 5 }

// TestNewChecksTheKeyringsLifetime: a policy whose tags would outlive the
// keyring's keys is refused when it is built.
func TestNewChecksTheKeyringsLifetime(t *testing.T) {
	if _, err := New(DefaultConfig("example.com"), shortKeys{testKeys}); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "verify.max_lifetime") {
		t.Fatalf("7-day tags with a keyring for 5-day tags: %v", err)
	}
	cfg := DefaultConfig("example.com")
	cfg.Sign.Lifetime = 5
	if _, err := New(cfg, shortKeys{testKeys}); err != nil {
		t.Fatal(err)
	}
}

// TestUnicodeDomainSpellings: an SMTPUTF8 client may write a domain as its
// U-label, and Postfix receives mail for whichever form its domain lists
// name, so an address in either form is in the configured A-label domain.
func TestUnicodeDomainSpellings(t *testing.T) {
	const aLabel = "xn--bcher-kva.example"
	p := testPolicy(t, func(c *Config) {
		c.Sign.Domains = []string{aLabel}
		c.Verify.ExemptRecipients = []string{"noc@bücher.example"}
	})
	for _, d := range []string{aLabel, "XN--BCHER-KVA.example", "bücher.example", "BÜCHER.EXAMPLE", "bu\u0308cher.example"} {
		if !p.Protected(d) {
			t.Errorf("%q: not protected", d)
		}
		trx := p.Begin(mxClient, "")
		if got := trx.Recipient("alice@"+d, testNow); got.Action != ActReject || !got.AtData || got.Status != batv.Missing || !got.Protected {
			t.Errorf("untagged bounce to alice@%s: %+v, want refused at DATA", d, got)
		}
		if reply, refused := trx.Data(); !refused || reply.Code != 550 {
			t.Errorf("untagged bounce to alice@%s at DATA: %v %v, want 550", d, reply, refused)
		}
	}
	for _, d := range []string{"bücher.example.org", "b\xffcher.example", "bücher.test"} {
		if p.Protected(d) {
			t.Errorf("%q: protected", d)
		}
	}
	// A sender who writes the U-label is signed over the bytes written,
	// and a bounce to that tag verifies.
	r := p.Sign("Alice@bücher.example", []string{"bob@example.org"}, testNow)
	if r.Skip != NotSkipped {
		t.Fatalf("sender in the U-label form: skipped, %v %v", r.Skip, r.Err)
	}
	trx := p.Begin(mxClient, "")
	if got := trx.Recipient(r.Address, testNow); got.Action != ActAccept || got.Status != batv.Valid || got.Rewrite != "Alice@bücher.example" {
		t.Errorf("bounce to %s: %+v", r.Address, got)
	}
	// Exemptions match in either form too.
	for _, rcpt := range []string{"NOC@xn--bcher-kva.example", "noc@bücher.example", "noc@BÜCHER.example"} {
		trx := p.Begin(mxClient, "")
		if got := trx.Recipient(rcpt, testNow); got.Action != ActExempt {
			t.Errorf("bounce to exempt %s: %v", rcpt, got.Action)
		}
	}
}
