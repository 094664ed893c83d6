package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/postfixtest"
)

// The site of docs/postfix.md's "An MX without a milter": the MX decides
// with batv's policy service and the lookup tables, and runs no milter;
// the submission service signs with the milter. The site takes its
// main.cf, master.cf and header_checks lines from the page itself
// (readPolicyDocs), so the page cannot drift from what these tests run.

// policySection is the heading of the page's section.
const policySection = "## An MX without a milter"

// policyDocs are the lines of the section, as written there.
type policyDocs struct {
	main         map[string]string // main.cf parameters
	services     []masterService   // master.cf services, in order
	headerChecks string            // the header_checks file
}

// masterService is a master.cf service: its fields (service, type,
// private, unpriv, chroot, wakeup, maxproc, command) and -o options.
type masterService struct {
	fields  []string
	options [][2]string
}

// readPolicyDocs reads the fenced blocks of the section whose first line
// is "# main.cf ...", "# master.cf ..." or "# /etc/postfix/batv_header_checks".
func readPolicyDocs(t *testing.T) policyDocs {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "docs", "postfix.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n"+policySection+"\n")
	if !ok {
		t.Fatalf("docs/postfix.md has no section %q", policySection)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	d := policyDocs{main: map[string]string{}}
	blocks := strings.Split(section, "```")
	for i := 1; i < len(blocks); i += 2 {
		block := strings.TrimPrefix(blocks[i], "\n")
		first, body, _ := strings.Cut(block, "\n")
		switch {
		case strings.HasPrefix(first, "# main.cf"):
			parseMainCF(t, body, d.main)
		case strings.HasPrefix(first, "# master.cf"):
			d.services = append(d.services, parseMasterCF(t, body)...)
		case first == "# /etc/postfix/batv_header_checks":
			d.headerChecks = body
		}
	}
	if len(d.main) == 0 || len(d.services) == 0 || d.headerChecks == "" {
		t.Fatalf("docs/postfix.md, %q: want a main.cf, a master.cf and a header_checks block, got %+v", policySection, d)
	}
	return d
}

// parseMainCF reads main.cf lines: "name = value", continued on indented
// lines; comments and blank lines are skipped.
func parseMainCF(t *testing.T, text string, into map[string]string) {
	t.Helper()
	last := ""
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#"):
		case line[0] == ' ' || line[0] == '\t':
			if last == "" {
				t.Fatalf("main.cf: a continuation line without a parameter: %q", line)
			}
			into[last] = strings.TrimSpace(into[last] + " " + strings.TrimSpace(line))
		default:
			name, value, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("main.cf: %q is not name = value", line)
			}
			last = strings.TrimSpace(name)
			into[last] = strings.TrimSpace(value)
		}
	}
}

// parseMasterCF reads master.cf services with their "-o name=value"
// options.
func parseMasterCF(t *testing.T, text string) []masterService {
	t.Helper()
	var out []masterService
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "" || strings.HasPrefix(trimmed, "#"):
		case line[0] == ' ' || line[0] == '\t':
			opt, ok := strings.CutPrefix(trimmed, "-o ")
			name, value, ok2 := strings.Cut(opt, "=")
			if !ok || !ok2 || len(out) == 0 {
				t.Fatalf("master.cf: %q is not an -o name=value of a service", line)
			}
			s := &out[len(out)-1]
			s.options = append(s.options, [2]string{name, value})
		default:
			f := strings.Fields(line)
			if len(f) < 8 {
				t.Fatalf("master.cf: %q is not a service line", line)
			}
			out = append(out, masterService{fields: f})
		}
	}
	return out
}

// policySiteConfig is what a test changes in the site of the section.
type policySiteConfig struct {
	// chroot runs the MX smtpd and batvcleanup chrooted, as the page's
	// lines do; otherwise they run unchrooted.
	chroot bool
	// main are main.cf parameters that replace the page's.
	main map[string]string
	// sign and verify are lines added to batv's [sign] and [verify].
	sign, verify string
}

// newPolicySite starts batv and a Postfix configured by the section.
func newPolicySite(t *testing.T, cfg policySiteConfig) *site {
	t.Helper()
	docs := readPolicyDocs(t)
	s := &site{t: t, dir: postfixtest.TempDir(t)}
	s.keyring = filepath.Join(s.dir, "keyring.json")
	s.batv("keys", "--at", time.Now().UTC().AddDate(0, -1, 0).Format(time.RFC3339), "init", "--keyring", s.keyring)
	recipients := filepath.Join(s.dir, "relay_recipients")
	writeTable(t, recipients, "alice@example.com x\nbob@example.com x\npostmaster@example.com x\n")
	checks := filepath.Join(s.dir, "batv_header_checks")
	writeTable(t, checks, docs.headerChecks)
	// The page's files, where this site has them.
	local := strings.NewReplacer("hash:/etc/postfix/relay_recipients", "texthash:"+recipients,
		"regexp:/etc/postfix/batv_header_checks", "regexp:"+checks)
	main := map[string]string{}
	for k, v := range docs.main {
		main[k] = local.Replace(v)
	}
	for k, v := range cfg.main {
		main[k] = v
	}
	opts := postfixtest.Options{
		Recipients:        []string{"alice@example.com", "bob@example.com", "postmaster@example.com"},
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
	for _, svc := range docs.services {
		into := map[string]string{}
		switch name := svc.fields[0]; {
		case name == "smtp" && svc.fields[1] == "inet":
			into = opts.MXOptions
		case name == "submission":
			into = opts.SubmissionOptions
		case name == "bounce" || name == "defer" || name == "trace":
			opts.ServiceOptions[name] = into
		default:
			f := append([]string(nil), svc.fields...)
			f[4] = chroot
			opts.MasterExtra = append(opts.MasterExtra, strings.Join(f, " "))
			for _, o := range svc.options {
				opts.MasterExtra = append(opts.MasterExtra, "  -o "+o[0]+"="+o[1])
			}
			continue
		}
		for _, o := range svc.options {
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
	writeFile(t, s.config, fmt.Sprintf(`
keyring = %q

[log]
level = "debug"

[[listener]]
name = "milter"
address = "unix:%[2]s/milter.sock"
roles = ["outbound"]
socket_group = "postfix"
socket_mode = "0660"

[socketmap]
address = "unix:%[2]s/socketmap.sock"
socket_group = "postfix"
socket_mode = "0660"

[policy_service]
address = "unix:%[2]s/policy.sock"
socket_group = "postfix"
socket_mode = "0660"

[metrics]
listen = %[3]q

[sign]
domains = ["example.com"]
# Every test client connects from 127.0.0.1: only AUTH and local
# submission count as ours here.
internal_networks = []
%[4]s

[verify]
# The keyring is new: end the grace period for untagged bounces now.
grace_until = 2000-01-01T00:00:00Z
%[5]s
`, s.keyring, sockDir, s.metrics, cfg.sign, cfg.verify))
	s.daemon = startDaemon(t, s.config, s.sockets()...)
	return s
}

// sockets are the unix sockets of the policy site's batv.
func (s *site) sockets() []string {
	dir := filepath.Join(s.pf.QueueDir(), "batv")
	return []string{filepath.Join(dir, "milter.sock"), filepath.Join(dir, "socketmap.sock"), filepath.Join(dir, "policy.sock")}
}
