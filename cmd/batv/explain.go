package main

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/daemon"
	"github.com/batv/batv/keyring"
	"github.com/batv/batv/policy"
)

func explainCommand() *cli.Command {
	return &cli.Command{
		Name:  "explain",
		Usage: "say in plain words what batv decides for an address or a bounce, and why",
		UsageText: "batv explain [--config FILE] [--keyring PATH] [--at DATE] ADDRESS...\n" +
			"batv explain [--config FILE] [--keyring PATH] [--at DATE] < message.eml\n\n" +
			"For each address (or, with no argument, each tagged address found in a message on\n" +
			"standard input: its To, Cc, Delivered-To and X-Original-To fields and any\n" +
			"prvs= address in its text), prints the tag's form, key and key state, expiry day and\n" +
			"date, whether the signature matches, and what the inbound milter does with a bounce\n" +
			"and with other mail to it, using the configuration and keyring the daemon uses.\n" +
			"Exit status 0, or 2 if the configuration or keyring cannot be read or no address\n" +
			"was found.",
		Flags: []cli.Flag{
			&cli.PathFlag{Name: flagConfig, Aliases: []string{"c"}, EnvVars: []string{envConfig},
				Usage: "the configuration `FILE`; default: the embedded configuration"},
			&cli.StringSliceFlag{Name: flagDomain, Aliases: []string{"d"}, Usage: "a mail `DOMAIN`, as for batv milter"},
			daemonKeyringFlag(),
			&cli.StringFlag{Name: flagAt, Usage: "explain as on `DATE` (UTC, YYYY-MM-DD or RFC 3339) instead of now"},
		},
		Action: func(c *cli.Context) error {
			nowFn, err := atTime(c)
			if err != nil {
				return err
			}
			opts := daemonOptions(c)
			addrs := c.Args().Slice()
			if len(addrs) == 0 {
				if addrs, err = addressesInMessage(c.App.Reader); err != nil {
					return usageError("reading the message: %v", err)
				}
				if len(addrs) == 0 {
					return usageError("no recipient address found in the message on standard input")
				}
			}
			if len(opts.Domains) == 0 && opts.ConfigPath == "" {
				// Without a configuration, protect the domains asked about.
				for _, a := range addrs {
					if at := strings.LastIndexByte(a, '@'); at >= 0 {
						opts.Domains = append(opts.Domains, a[at+1:])
					}
				}
			}
			checked, err := daemon.Check(opts)
			if err != nil {
				return cli.Exit(err.Error(), exitUsage)
			}
			if checked.KeyringMissing {
				return cli.Exit(fmt.Sprintf("keyring %s does not exist yet: batv milter creates it at start, or run batv keys init", checked.Config.Keyring), exitUsage)
			}
			now := nowFn()
			for i, a := range addrs {
				if i > 0 {
					fmt.Fprintln(c.App.Writer)
				}
				explain(c.App.Writer, checked, a, now)
			}
			return nil
		},
	}
}

// explain writes what batv makes of addr at now.
func explain(w io.Writer, ch *daemon.Checked, addr string, now time.Time) {
	cfg := ch.Config
	fmt.Fprintln(w, addr)
	v := batv.Verifier{Keys: ch.Keyring, MaxLifetime: max(cfg.Verify.MaxLifetime, cfg.Sign.Lifetime),
		Strict: cfg.Verify.Strict, ClockSkew: time.Duration(cfg.Verify.ClockSkew), Now: func() time.Time { return now }}
	if cfg.Verify.Delimiter != "" {
		v.Delimiter = cfg.Verify.Delimiter[0]
	}
	r, err := v.Verify(addr)
	if err != nil {
		fmt.Fprintf(w, "  cannot verify: %v\n", err)
		return
	}
	switch r.Status {
	case batv.Missing:
		fmt.Fprintln(w, "  no BATV tag: the address is not in the prvs= form")
	case batv.Malformed:
		fmt.Fprintf(w, "  malformed tag: %s\n", r.Reason)
	default:
		t := r.Tag
		fmt.Fprintf(w, "  form: %s; untagged address %s\n", formWords(t), r.Untagged())
		fmt.Fprintf(w, "  key: %s\n", keyWords(ch.Keyring, t.KeyID, now))
		fmt.Fprintf(w, "  expiry: day number %03d (mod 1000), %s\n", t.Expiry, expiryWords(r.DaysLeft, now))
		if r.Status != batv.UnknownKey {
			if mr, _ := v.VerifyIgnoringExpiry(addr); mr.Status == batv.Valid {
				if mr.Match == batv.MatchFolded {
					fmt.Fprintln(w, "  signature: matches the lowercased address (its case changed in transit)")
				} else {
					fmt.Fprintln(w, "  signature: matches the address exactly")
				}
			} else {
				fmt.Fprintln(w, "  signature: does not match: this key did not sign this address on this day (forged, or altered in transit)")
			}
		}
	}
	fmt.Fprintf(w, "  outcome: %s\n", r.Status)
	bounce := ch.Policy.Begin(policy.Client{}, "")
	fmt.Fprintf(w, "  a bounce (MAIL FROM:<>) to it: %s\n", decisionWords(bounce.Recipient(addr, now)))
	other := ch.Policy.Begin(policy.Client{}, "someone@example.org")
	fmt.Fprintf(w, "  other mail to it: %s\n", decisionWords(other.Recipient(addr, now)))
}

func formWords(t batv.Tag) string {
	switch t.Form {
	case batv.FormDraft00:
		return "draft-00 (prvs=address/KDDDSSSSSS), recognised but never produced"
	case batv.FormSubAddress:
		return fmt.Sprintf("sub-address (user%cprvs=KDDDSSSSSS@domain)", t.Delimiter)
	}
	return "standard (prvs=KDDDSSSSSS=address)"
}

func keyWords(kr *keyring.Keyring, id int, now time.Time) string {
	for _, k := range kr.Keys(now) {
		if k.ID != id {
			continue
		}
		s := fmt.Sprintf("id %d, %s", id, k.State)
		if !k.StoppedSigning.IsZero() {
			s += ", stopped signing " + k.StoppedSigning.UTC().Format(time.RFC3339)
		}
		if !k.Retires.IsZero() {
			s += ", retires " + k.Retires.UTC().Format(time.RFC3339)
		}
		return s
	}
	return fmt.Sprintf("id %d: no such key in the keyring (never issued here, or retired and pruned)", id)
}

func expiryWords(daysLeft int, now time.Time) string {
	day := now.UTC().Truncate(24*time.Hour).AddDate(0, 0, daysLeft).Format(time.DateOnly)
	switch {
	case daysLeft > 0:
		return fmt.Sprintf("expires at the end of %s (%s left)", day, dayCount(daysLeft))
	case daysLeft == 0:
		return fmt.Sprintf("expires at the end of today, %s", day)
	}
	return fmt.Sprintf("expired at the end of %s (%s ago), or a date too far ahead to be genuine", day, dayCount(-daysLeft))
}

func dayCount(n int) string {
	if n == 1 {
		return "1 day"
	}
	return fmt.Sprintf("%d days", n)
}

func decisionWords(d policy.Decision) string {
	switch d.Action {
	case policy.ActPass:
		if !d.Protected && d.Reason == "domain not protected" {
			return "passed untouched: the domain is not one batv verifies"
		}
		return "passed untouched"
	case policy.ActAccept:
		return "accepted, delivered to " + d.Rewrite
	case policy.ActReject, policy.ActTempfail:
		return "refused at RCPT: " + d.Reply.String()
	case policy.ActGrace:
		return "accepted: untagged, but within the grace period after BATV was enabled"
	case policy.ActExempt:
		return "accepted: exempt recipient or client"
	case policy.ActQuarantine:
		return "accepted into the quarantine (Postfix hold queue)"
	case policy.ActTag:
		return "accepted and marked with the status header"
	case policy.ActOff:
		return "accepted: checking untagged bounces is off"
	case policy.ActDeliver:
		return "delivered to " + d.Rewrite
	case policy.ActDeliverMark:
		if d.Rewrite == "" {
			return "delivered as addressed, marked with the status header"
		}
		return "delivered to " + d.Rewrite + ", marked with the status header"
	}
	return d.Action.String()
}

var (
	prvsRe     = regexp.MustCompile(`(?i)[^\s<>"'(),;:\[\]]*prvs=[^\s<>"'(),;\[\]]+@[A-Za-z0-9.-]+`)
	rcptHeader = regexp.MustCompile(`(?i)^(to|cc|delivered-to|x-original-to|envelope-to|x-envelope-to)\s*:\s*(.*)$`)
	addrRe     = regexp.MustCompile(`[^\s<>"'(),;:\[\]]+@[A-Za-z0-9.-]+`)
)

// addressesInMessage finds the recipient addresses of a message: those of
// its recipient header and DSN fields, and any prvs= address in its text,
// tagged ones first.
func addressesInMessage(r io.Reader) ([]string, error) {
	seen := map[string]bool{}
	var tagged, plain []string
	add := func(list *[]string, a string) {
		a = strings.TrimRight(a, ".")
		if !seen[a] {
			seen[a] = true
			*list = append(*list, a)
		}
	}
	sc := bufio.NewScanner(io.LimitReader(r, 10<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, a := range prvsRe.FindAllString(line, -1) {
			add(&tagged, a)
		}
		if m := rcptHeader.FindStringSubmatch(line); m != nil {
			for _, a := range addrRe.FindAllString(m[2], -1) {
				add(&plain, a)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return append(tagged, plain...), nil
}
