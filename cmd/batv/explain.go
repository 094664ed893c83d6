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
		UsageText: "batv explain [--config FILE] [--keyring PATH] [--at DATE] ADDRESS|LOGLINE...\n" +
			"batv explain [--config FILE] [--keyring PATH] [--at DATE] < message.eml\n\n" +
			"For each address, prints the tag's form, key and key state, expiry day and date,\n" +
			"whether the signature matches, and what batv does with a bounce to it, with an\n" +
			"address verification callout (MAIL FROM:<>, RCPT, QUIT) and with other mail, using\n" +
			"the configuration and keyring the daemon uses (--config; without it the embedded\n" +
			"configuration and the trial keyring). Whether the user exists is not batv's to\n" +
			"decide: Postfix's recipient validation refuses an unknown user before batv sees it.\n" +
			"An argument may be a Postfix log line: the addresses of its to=<...> and any prvs=\n" +
			"address in it are explained. With no argument, the addresses in a message or log on\n" +
			"standard input are: its To, Cc, Delivered-To and X-Original-To fields, to=<...> of\n" +
			"log lines, and any prvs= address in its text.\n\n" +
			exitStatusHelp("explain"),
		Flags: []cli.Flag{
			configFlag("the configuration `FILE`; default: the embedded configuration"),
			&cli.StringSliceFlag{Name: flagDomain, Aliases: []string{"d"}, Usage: "a mail `DOMAIN`, as for batv milter"},
			daemonKeyringFlag(),
			atFlag("explain as on `DATE` instead of now"),
		},
		Action: func(c *cli.Context) error {
			nowFn, err := atTime(c)
			if err != nil {
				return err
			}
			opts, err := daemonOptions(c)
			if err != nil {
				return err
			}
			addrs, err := explainedAddresses(c)
			if err != nil {
				return err
			}
			if len(opts.Domains) == 0 && opts.ConfigPath == "" {
				// Without a configuration, protect the domains asked about.
				for _, a := range addrs {
					if at := strings.LastIndexByte(a, '@'); at >= 0 {
						opts.Domains = append(opts.Domains, a[at+1:])
					}
				}
			}
			checked, err := checkDaemon(opts)
			if err != nil {
				return err
			}
			now := nowFn()
			protected := false
			for i, a := range addrs {
				if i > 0 {
					fmt.Fprintln(c.App.Writer)
				}
				protected = explain(c.App.Writer, checked, keyringSource(c, checked.Config.Keyring), a, now) || protected
			}
			if protected {
				fmt.Fprint(c.App.Writer, "\n"+userExistsNote)
			}
			return nil
		},
	}
}

// explainedAddresses are the addresses of the arguments (an address, or a
// line of text such as a Postfix log line to find them in), or else of
// the message or log on standard input.
func explainedAddresses(c *cli.Context) ([]string, error) {
	if !c.Args().Present() {
		addrs, err := addressesIn(c.App.Reader)
		if err != nil {
			return nil, usageError("reading standard input: %v", err)
		}
		if len(addrs) == 0 {
			return nil, usageError("no recipient address found in the message or log on standard input")
		}
		return addrs, nil
	}
	var addrs []string
	seen := map[string]bool{}
	for _, arg := range c.Args().Slice() {
		found := []string{arg} // an address as it is
		if strings.ContainsAny(arg, " \t<>,;") {
			found, _ = addressesIn(strings.NewReader(arg))
			if len(found) == 0 {
				return nil, usageError("no address in %q: give an address, or a Postfix log line with to=<...>", arg)
			}
		}
		for _, a := range found {
			if !seen[a] {
				seen[a] = true
				addrs = append(addrs, a)
			}
		}
	}
	return addrs, nil
}

// userExistsNote follows the explanations of addresses in protected
// domains: batv cannot know which users exist.
const userExistsNote = `Whether a user exists is Postfix's to decide, not batv's: Postfix's recipient validation
(relay_recipient_maps, virtual_mailbox_maps or local_recipient_maps, which know a tagged
address through batv's strip table) refuses an unknown user with 550 5.1.1 "User unknown",
tagged or not, before batv decides.
`

// explain writes what batv makes of addr at now; source names the
// keyring. It reports whether addr is in a protected domain.
func explain(w io.Writer, ch *daemon.Checked, source, addr string, now time.Time) bool {
	fmt.Fprintln(w, addr)
	v := ch.Policy.Verifier()
	v.Now = func() time.Time { return now }
	r, err := v.Verify(addr)
	if err != nil {
		fmt.Fprintf(w, "  cannot verify: %v\n", err)
		return false
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
	if r.Status == batv.UnknownKey || r.Status == batv.BadSignature {
		fmt.Fprintf(w, "  checked with: %s\n", source)
	}
	trx := ch.Policy.Begin(policy.Client{}, "")
	bounce := trx.Recipient(addr, now)
	fmt.Fprintf(w, "  a bounce (MAIL FROM:<>) to it: %s\n", decisionWords(bounce, ch.Policy.GraceUntil()))
	fmt.Fprintf(w, "  an address verification callout (MAIL FROM:<>, RCPT, QUIT): %s\n", calloutWords(bounce))
	other := ch.Policy.Begin(policy.Client{}, "someone@example.org")
	fmt.Fprintf(w, "  other mail to it: %s\n", decisionWords(other.Recipient(addr, now), ch.Policy.GraceUntil()))
	return bounce.Protected
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
			s += ", " + tense(k.StoppedSigning, now, "stops", "stopped") + " signing " + k.StoppedSigning.UTC().Format(time.RFC3339)
		}
		if !k.Retires.IsZero() {
			s += ", " + tense(k.Retires, now, "retires", "retired") + " " + k.Retires.UTC().Format(time.RFC3339)
		}
		return s
	}
	return fmt.Sprintf("id %d: no such key in the keyring (never issued here, or retired and pruned)", id)
}

// tense is future for a time after now, past otherwise.
func tense(t, now time.Time, future, past string) string {
	if t.After(now) {
		return future
	}
	return past
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

// decisionWords says what batv does with one recipient. batv does not
// know which users exist: what it accepts, Postfix delivers if it knows
// the user (userExistsNote).
func decisionWords(d policy.Decision, graceUntil time.Time) string {
	switch d.Action {
	case policy.ActPass:
		if !d.Protected {
			return "batv lets it through: the domain is not one batv verifies"
		}
		return "batv lets it through untouched"
	case policy.ActAccept:
		s := "batv accepts it and removes the tag: for " + d.Rewrite
		if d.Status == batv.Expired {
			s += " (the tag has expired, but a reply needs only the MAC)"
		}
		return s
	case policy.ActReject, policy.ActTempfail:
		if d.AtData {
			return "batv answers 250 at RCPT, then refuses the message at DATA: " + d.Reply.String() + "; nothing is delivered"
		}
		return "batv refuses it at RCPT: " + d.Reply.String()
	case policy.ActGrace:
		return "batv accepts it: untagged, but within the grace period after BATV was enabled (until " +
			graceUntil.UTC().Format(time.RFC3339) + ")"
	case policy.ActExempt:
		return "batv accepts it: exempt recipient or client"
	case policy.ActQuarantine:
		return "batv accepts it into the quarantine (Postfix's hold queue)"
	case policy.ActTag:
		return "batv accepts it and marks it with the status header"
	case policy.ActOff:
		return "batv accepts it: checking untagged bounces is off"
	case policy.ActDeliver:
		return "batv removes the tag: for " + d.Rewrite
	case policy.ActDeliverMark:
		if d.Rewrite == "" {
			return "batv lets it through as addressed, marked with the status header"
		}
		return "batv removes the tag, for " + d.Rewrite + ", and marks the message with the status header"
	}
	return d.Action.String()
}

// calloutWords says what a callout gets from batv for the recipient
// whose bounce decision is d: a callout sends MAIL FROM:<> and RCPT, then
// quits without DATA.
func calloutWords(d policy.Decision) string {
	if r := d.RcptReply(); r.Refuses() {
		return "batv refuses it at RCPT: " + r.String()
	}
	if d.AtData {
		return "batv answers 250 at RCPT: the callout succeeds (it quits before DATA)"
	}
	return "batv answers 250 at RCPT"
}

var (
	prvsRe     = regexp.MustCompile(`(?i)[^\s<>"'(),;:\[\]]*prvs=[^\s<>"'(),;\[\]]+@[A-Za-z0-9.-]+`)
	rcptHeader = regexp.MustCompile(`(?i)^(to|cc|delivered-to|x-original-to|envelope-to|x-envelope-to)\s*:\s*(.*)$`)
	addrRe     = regexp.MustCompile(`[^\s<>"'(),;:\[\]]+@[A-Za-z0-9.-]+`)
	// logRcpt is a recipient in a Postfix log line: to=<...> and
	// orig_to=<...> of delivery lines, to=<...> of reject lines.
	logRcpt = regexp.MustCompile(`(?:^|[\s,;])(?:orig_)?to=<([^<>\s]+)>`)
)

// addressesIn finds the recipient addresses in a message or in log lines:
// those of its recipient header and DSN fields, the to=<...> of Postfix
// log lines, and any prvs= address in its text, tagged ones first.
func addressesIn(r io.Reader) ([]string, error) {
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
		for _, m := range logRcpt.FindAllStringSubmatch(line, -1) {
			add(&plain, m[1])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return append(tagged, plain...), nil
}
