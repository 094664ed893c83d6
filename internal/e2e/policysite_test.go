package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/daemontest"
	"github.com/batv/batv/internal/testenv/postfixdoc"
	"github.com/batv/batv/internal/testenv/postfixtest"
)

// The site of docs/postfix.md's "An MX without a milter": the MX decides
// with batv's policy service and the lookup tables, and runs no milter;
// the submission service signs with the milter. The site takes its
// main.cf, master.cf and header_checks lines from the page itself
// (package postfixdoc), so the page cannot drift from what these tests
// run.

// policySection is the heading of the page's section.
const policySection = "## An MX without a milter"

// readPolicyDocs reads the section's main.cf, master.cf and header_checks
// blocks.
func readPolicyDocs(t *testing.T) *postfixdoc.Section {
	t.Helper()
	d, err := postfixdoc.Read(filepath.Join("..", "..", "docs", "postfix.md"), policySection)
	if err != nil {
		t.Fatal(err)
	}
	if d.Files[headerChecksPath] == "" {
		t.Fatalf("docs/postfix.md, %q: no %s block", policySection, headerChecksPath)
	}
	return d
}

// headerChecksPath is the header_checks file of the page.
const headerChecksPath = "/etc/postfix/batv_header_checks"

// policySiteConfig is what a test changes in the site of the section.
type policySiteConfig struct {
	// chroot runs the MX smtpd and batvcleanup chrooted, as the page's
	// lines do; otherwise they run unchrooted.
	chroot bool
	// main are main.cf parameters that replace the page's.
	main map[string]string
	// sign and verify are lines added to batv's [sign] and [verify].
	sign, verify string
	// unicodeDomain adds bücher.example (siteDomains).
	unicodeDomain bool
}

// newPolicySite starts batv and a Postfix configured by the section.
func newPolicySite(t *testing.T, cfg policySiteConfig) *site {
	t.Helper()
	docs := readPolicyDocs(t)
	s := &site{t: t, dir: postfixtest.TempDir(t)}
	s.keyring = filepath.Join(s.dir, "keyring.json")
	s.batv("keys", "--at", time.Now().UTC().AddDate(0, -1, 0).Format(time.RFC3339), "init", "--keyring", s.keyring)
	domains, batvDomains, mailboxes := siteDomains(cfg.unicodeDomain)
	recipients := filepath.Join(s.dir, "relay_recipients")
	writeTable(t, recipients, strings.Join(mailboxes, " x\n")+" x\n")
	checks := filepath.Join(s.dir, "batv_header_checks")
	writeTable(t, checks, docs.Files[headerChecksPath])
	// The page's files, where this site has them.
	local := strings.NewReplacer("hash:/etc/postfix/relay_recipients", "texthash:"+recipients,
		"regexp:/etc/postfix/batv_header_checks", "regexp:"+checks)
	main := map[string]string{}
	for k, v := range docs.Main {
		main[k] = local.Replace(v)
	}
	for k, v := range cfg.main {
		main[k] = v
	}
	opts := postfixtest.Options{
		Domains:           domains,
		Recipients:        mailboxes,
		Users:             map[string]string{"alice": password},
		Main:              main,
		MXOptions:         map[string]string{},
		SubmissionOptions: map[string]string{},
		ServiceOptions:    map[string]map[string]string{},
		ChrootMX:          cfg.chroot,
	}
	chroot := "n"
	if cfg.chroot {
		chroot = "y"
	}
	for _, svc := range docs.Services {
		into := map[string]string{}
		switch name := svc.Name(); {
		case name == "smtp" && svc.Fields[1] == "inet":
			into = opts.MXOptions
		case name == "submission":
			into = opts.SubmissionOptions
		case name == "bounce" || name == "defer" || name == "trace":
			opts.ServiceOptions[name] = into
		default:
			opts.MasterExtra = append(opts.MasterExtra, svc.Line(chroot))
			for _, o := range svc.Options {
				opts.MasterExtra = append(opts.MasterExtra, "  -o "+o[0]+"="+o[1])
			}
			continue
		}
		for _, o := range svc.Options {
			into[o[0]] = o[1]
		}
	}
	s.pf = postfixtest.Start(t, opts)

	sockDir := makeSocketDir(t, s.pf)
	ports, err := postfixtest.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	s.metrics = fmt.Sprintf("127.0.0.1:%d", ports[0])
	s.config = filepath.Join(s.dir, "batv.toml")
	writeFile(t, s.config, daemontest.Config{
		Keyring: s.keyring, LogLevel: "debug", Metrics: s.metrics, Domains: batvDomains,
		Listeners:     []daemontest.Listener{{Name: "milter", Address: "unix:" + sockDir + "/milter.sock", Roles: []string{"outbound"}, Postfix: true}},
		Socketmap:     "unix:" + sockDir + "/socketmap.sock",
		PolicyService: "unix:" + sockDir + "/policy.sock",
		// Every test client connects from 127.0.0.1: only AUTH and local
		// submission count as ours here.
		Sign:   "internal_networks = []\n" + cfg.sign,
		Verify: cfg.verify,
	}.TOML())
	s.daemon = startDaemon(t, s.config, s.sockets()...)
	return s
}

// sockets are the unix sockets of the policy site's batv.
func (s *site) sockets() []string {
	dir := filepath.Join(s.pf.QueueDir(), "batv")
	return []string{filepath.Join(dir, "milter.sock"), filepath.Join(dir, "socketmap.sock"), filepath.Join(dir, "policy.sock")}
}
