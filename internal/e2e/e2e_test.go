// Package e2e tests the batv binary with a real Postfix and a real Sendmail.
// Postfix runs as a private instance on loopback with recipient validation
// on, configured as docs/postfix.md says (postfixtest); Sendmail runs with
// the lines of docs/sendmail.md (sendmailtest, sendmail_test.go). Both
// deliver to an SMTP sink the test controls.
package e2e

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/daemontest"
	"github.com/batv/batv/internal/testenv/postfixtest"
)

var batvBin string

func TestMain(m *testing.M) {
	// BATV_BIN runs the tests against an installed batv (CI: the package's).
	if batvBin = os.Getenv("BATV_BIN"); batvBin != "" {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "batv-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Others may run it: the Sendmail tests run batv as user nobody.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	batvBin = filepath.Join(dir, "batv")
	build := exec.Command("go", "build", "-o", batvBin, "github.com/batv/batv/cmd/batv")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building batv:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// site is a Postfix instance with batv in front of it.
type site struct {
	t       *testing.T
	pf      *postfixtest.Instance
	dir     string // sockets, keyring, configuration
	keyring string
	config  string
	metrics string // batv's metrics endpoint, HOST:PORT
	daemon  *daemon
}

const (
	user     = "alice@example.com"
	password = "alice-secret"
)

// newSite starts batv and a Postfix configured for it; action is
// milter_default_action.
func newSite(t *testing.T, action string) *site {
	t.Helper()
	return newSiteWith(t, siteConfig{action: action})
}

// newSiteChroot is newSite, with the MX smtpd and the cleanup for
// Postfix's own bounces chrooted in the queue directory when chroot is set.
func newSiteChroot(t *testing.T, action string, chroot bool) *site {
	t.Helper()
	return newSiteWith(t, siteConfig{action: action, chroot: chroot})
}

// siteConfig is what a test changes in the site of docs/postfix.md.
type siteConfig struct {
	// action is milter_default_action in main.cf; the submission service
	// has "accept" (-o), as docs/postfix.md says.
	action string
	// chroot runs the MX smtpd and the cleanup for Postfix's own bounces
	// chrooted in the queue directory.
	chroot bool
	// main are more main.cf parameters; they replace the site's own.
	main map[string]string
	// sign and verify are lines added to batv's [sign] and [verify].
	sign, verify string
	// unicodeDomain adds bücher.example (siteDomains).
	unicodeDomain bool
}

// docsMain are the main.cf lines of docs/postfix.md that the site takes
// as they are (TestPostfixDocsLines checks that the page has them).
var docsMain = map[string]string{
	// Postfix resolves alice%example.com@[192.0.2.1] and
	// example.com!alice to alice@example.com: off, so that what batv
	// judges is what Postfix delivers to.
	"allow_percent_hack": "no",
	"swap_bangpath":      "no",
}

// docsSubmission are the -o options of the submission service in
// docs/postfix.md.
var docsSubmission = map[string]string{"milter_default_action": "accept"}

func newSiteWith(t *testing.T, cfg siteConfig) *site {
	t.Helper()
	chrootCol := "n"
	if cfg.chroot {
		chrootCol = "y"
	}
	s := &site{t: t, dir: postfixtest.TempDir(t)}
	s.keyring = filepath.Join(s.dir, "keyring.json")
	// The keyring dates from a month ago, so tests can sign as on past days.
	s.batv("keys", "--at", time.Now().UTC().AddDate(0, -1, 0).Format(time.RFC3339), "init", "--keyring", s.keyring)

	domains, batvDomains, mailboxes := siteDomains(cfg.unicodeDomain)
	recipients := filepath.Join(s.dir, "relay_recipients")
	writeTable(t, recipients, strings.Join(mailboxes, " x\n")+" x\n")
	// Postfix reaches the sockets by paths relative to its queue
	// directory, as docs/postfix.md says: they work whether its daemons
	// run chrooted or not.
	const milterRef, mapRef = "unix:batv/milter.sock", "socketmap:unix:batv/map.sock"
	main := map[string]string{
		"smtpd_milters":         milterRef,
		"non_smtpd_milters":     milterRef,
		"milter_default_action": cfg.action,
		"milter_protocol":       "6",
		// A tagged recipient is known when its untagged address is.
		"relay_recipient_maps": fmt.Sprintf("texthash:%s, pipemap:{%s:strip, texthash:%s}", recipients, mapRef, recipients),
	}
	maps.Copy(main, docsMain)
	maps.Copy(main, cfg.main)
	s.pf = postfixtest.Start(t, postfixtest.Options{
		Domains:           domains,
		Recipients:        mailboxes,
		Users:             map[string]string{"alice": password},
		Main:              main,
		SubmissionOptions: docsSubmission,
		// Bounces Postfix makes itself go through a cleanup that removes
		// valid tags, so they reach the real mailbox.
		ServiceOptions: map[string]map[string]string{
			"bounce": {"cleanup_service_name": "batvcleanup"},
			"defer":  {"cleanup_service_name": "batvcleanup"},
			"trace":  {"cleanup_service_name": "batvcleanup"},
		},
		ChrootMX: cfg.chroot,
		MasterExtra: []string{
			"batvcleanup unix n - " + chrootCol + " - 0 cleanup",
			"  -o syslog_name=postfix/batvcleanup",
			"  -o recipient_canonical_maps=" + mapRef + ":untag",
			"  -o recipient_canonical_classes=envelope_recipient",
		},
	})

	sockDir := makeSocketDir(t, s.pf)
	milterSock, mapSock := filepath.Join(sockDir, "milter.sock"), filepath.Join(sockDir, "map.sock")
	s.config = filepath.Join(s.dir, "batv.toml")
	ports, err := postfixtest.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	s.metrics = fmt.Sprintf("127.0.0.1:%d", ports[0])
	writeFile(t, s.config, daemontest.Config{
		Keyring: s.keyring, LogLevel: "debug", Metrics: s.metrics, Domains: batvDomains,
		Listeners: []daemontest.Listener{{Name: "milter", Address: "unix:" + milterSock, Roles: []string{"outbound", "inbound"}, Postfix: true}},
		Socketmap: "unix:" + mapSock,
		// Every test client connects from 127.0.0.1: only AUTH and local
		// submission count as ours here.
		Sign:   "internal_networks = []\n" + cfg.sign,
		Verify: cfg.verify,
	}.TOML())
	s.daemon = startDaemon(t, s.config, milterSock, mapSock)
	return s
}

// siteDomains are a site's domains as Postfix lists them, as batv's
// configuration has them, and its mailboxes: example.com's, and with
// unicode bücher.example's, listed in Postfix as written and in batv in
// its ASCII form.
func siteDomains(unicode bool) (postfix, batv, mailboxes []string) {
	postfix, batv = []string{"example.com"}, []string{"example.com"}
	mailboxes = []string{"alice@example.com", "bob@example.com", "postmaster@example.com"}
	if unicode {
		postfix, batv = append(postfix, "bücher.example"), append(batv, "xn--bcher-kva.example")
		mailboxes = append(mailboxes, unicodeMailbox)
	}
	return postfix, batv, mailboxes
}

// writeTable writes a Postfix lookup table readable by Postfix, dated 10 s
// back: Postfix reads a table file again and again while it changed within
// the last second, which delayed each site's first connection by 1.8 s.
func writeTable(t *testing.T, path, content string) {
	t.Helper()
	writeFile(t, path, content)
	old := time.Now().Add(-10 * time.Second)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// reconfigure appends lines to the [verify] table of the site's
// configuration (the last one) and waits for batv to reload it.
func (s *site) reconfigure(t *testing.T, lines string) {
	t.Helper()
	cfg, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, s.config, string(cfg)+lines+"\n")
	reloads := strings.Count(s.daemon.Log(), "msg=reloaded")
	if err := s.daemon.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(s.daemon.Log(), "msg=reloaded") == reloads {
		if time.Now().After(deadline) {
			t.Fatalf("batv did not reload:\n%s", s.daemon.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// batv runs the binary and returns its stdout; it fails the test on a
// non-zero exit.
func (s *site) batv(args ...string) string {
	s.t.Helper()
	out, code := s.batvCode(args...)
	if code != 0 {
		s.t.Fatalf("batv %v: exit %d: %s", args, code, out)
	}
	return strings.TrimSpace(out)
}

func (s *site) batvCode(args ...string) (string, int) {
	s.t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(batvBin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return stdout.String() + stderr.String(), ee.ExitCode()
	}
	if err != nil {
		s.t.Fatal(err)
	}
	return stdout.String(), 0
}

// sign returns addr signed with the site's keyring, daysAgo days ago.
func (s *site) sign(addr string, daysAgo int) string {
	s.t.Helper()
	at := time.Now().UTC().AddDate(0, 0, -daysAgo).Format(time.DateOnly)
	return s.batv("sign", "--keyring", s.keyring, "--at", at, addr)
}

// daemon is a running "batv milter".
type daemon struct {
	cmd  *exec.Cmd
	log  daemontest.Buffer
	done chan error
}

// Log is what the daemon wrote to stdout and stderr so far.
func (d *daemon) Log() string { return d.log.String() }

// LogWith is the daemon's log once it has a line that contains every one
// of subs, or after 5 seconds. A milter session's lines go through a queue
// to the daemon's writer (package logq), so they may come a moment after
// the reply that followed them.
func (d *daemon) LogWith(subs ...string) string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		log := d.log.String()
		for _, line := range strings.Split(log, "\n") {
			if containsAll(line, subs) {
				return log
			}
		}
		if time.Now().After(deadline) {
			return log
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

func startDaemon(t *testing.T, config string, sockets ...string) *daemon {
	t.Helper()
	return startDaemonAs(t, nil, config, sockets...)
}

// startDaemonAs is startDaemon with the daemon running as cred's user
// (nil: as the test).
func startDaemonAs(t *testing.T, cred *syscall.Credential, config string, sockets ...string) *daemon {
	t.Helper()
	d := &daemon{done: make(chan error, 1)}
	d.cmd = exec.Command(batvBin, "milter", "--config", config)
	d.cmd.Stdout, d.cmd.Stderr = &d.log, &d.log
	if cred != nil {
		d.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			t.Logf("batv log:\n%s", d.Log())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for _, sock := range sockets {
		for {
			if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 && strings.Contains(d.Log(), "batv started") {
				break
			}
			select {
			case err := <-d.done:
				t.Fatalf("batv exited: %v\n%s", err, d.Log())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("batv did not start:\n%s", d.Log())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return d
}

// stop sends SIGTERM and waits for a clean exit.
func (d *daemon) stop(t *testing.T) {
	if d.cmd.ProcessState != nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("batv exited with %v", err)
		}
	case <-time.After(40 * time.Second):
		d.cmd.Process.Kill()
		t.Errorf("batv did not stop within 40s of SIGTERM")
	}
}

// withText matches a message whose data contains text.
func withText(text string) func(postfixtest.Message) bool {
	return func(m postfixtest.Message) bool { return strings.Contains(string(m.Data), text) }
}

func message(from, to, subject string) []byte {
	return []byte("From: <" + from + ">\r\nTo: <" + to + ">\r\nSubject: " + subject + "\r\n\r\nTest message.\r\n")
}

const wait = 30 * time.Second

func TestPostfixEndToEnd(t *testing.T) {
	s := newSite(t, "accept")
	pf := s.pf

	t.Run("1 authenticated submission is signed", func(t *testing.T) {
		res, err := pf.Submit("alice", password, user, []string{"carol@remote.test"}, message(user, "carol@remote.test", "signed"))
		if err != nil || !res.Accepted() {
			t.Fatalf("submit: %v %v", res, err)
		}
		m := pf.WaitMessage(t, wait, postfixtest.ToRcpt("carol@remote.test"))
		if !strings.HasPrefix(m.From, "prvs=") || !strings.HasSuffix(m.From, "="+user) {
			t.Fatalf("envelope sender %q is not tagged", m.From)
		}
		if out := s.batv("verify", "--keyring", s.keyring, m.From); out != "valid "+user {
			t.Fatalf("batv verify %s: %q", m.From, out)
		}
	})

	t.Run("1 mail from an unauthenticated outside client is not signed", func(t *testing.T) {
		res, err := pf.SendMX(user, []string{"bob@example.com"}, message(user, "bob@example.com", "outsider"))
		if err != nil || !res.Accepted() {
			t.Fatalf("send: %v %v", res, err)
		}
		m := pf.WaitMessage(t, wait, postfixtest.ToRcpt("bob@example.com"))
		if m.From != user {
			t.Fatalf("envelope sender %q, want %q unchanged", m.From, user)
		}
	})

	t.Run("local submission with sendmail is signed", s.expectLocalSigned)

	t.Run("2 bounce to a valid tag is delivered untagged", func(t *testing.T) {
		tagged := s.sign(user, 1)
		res, err := pf.SendMX("", []string{tagged}, message("MAILER-DAEMON@remote.test", tagged, "bounce valid"))
		if err != nil || !res.Accepted() {
			t.Fatalf("send: %v %v", res, err)
		}
		m := pf.WaitMessage(t, wait, postfixtest.All(postfixtest.FromSender(""), func(m postfixtest.Message) bool {
			return strings.Contains(string(m.Data), "bounce valid")
		}))
		if len(m.Rcpts) != 1 || m.Rcpts[0] != user {
			t.Fatalf("delivered to %v, want [%s]", m.Rcpts, user)
		}
	})

	t.Run("3 forged and expired bounces are refused at RCPT, untagged ones at DATA", func(t *testing.T) {
		valid := s.sign(user, 1)
		forged := valid[:9] + flip(valid[9:15]) + valid[15:]
		for _, tt := range []struct{ rcpt, text string }{
			{forged, "550 5.7.1 Bounce refused: the recipient address tag is not valid (BATV)"},
			{s.sign(user, 9), "550 5.7.1 Bounce refused: the recipient address tag is expired (BATV)"},
		} {
			res, err := pf.SendMX("", []string{tt.rcpt}, message("MAILER-DAEMON@remote.test", tt.rcpt, "bounce refused"))
			if err != nil {
				t.Fatal(err)
			}
			r := res.Rcpt(tt.rcpt)
			if r == nil || !strings.HasPrefix(r.String(), tt.text) || res.Accepted() {
				t.Errorf("RCPT %s: %v, want %q", tt.rcpt, r, tt.text)
			}
		}
		res, err := pf.SendMX("", []string{user}, message("MAILER-DAEMON@remote.test", user, "bounce refused at DATA"))
		if err != nil {
			t.Fatal(err)
		}
		const text = "550 5.7.1 Bounce refused: this address sends only tagged mail"
		if r := res.Rcpt(user); r == nil || r.Code != 250 || res.Data == nil || !strings.HasPrefix(res.Data.String(), text) || res.Accepted() {
			t.Errorf("untagged bounce: %v, want 250 at RCPT and %q at DATA", res, text)
		}
	})

	t.Run("4 an unknown user is refused as unknown, tagged or not", func(t *testing.T) {
		for _, rcpt := range []string{"nobody@example.com", s.sign("nobody@example.com", 1)} {
			res, err := pf.SendMX("", []string{rcpt}, message("MAILER-DAEMON@remote.test", rcpt, "unknown"))
			if err != nil {
				t.Fatal(err)
			}
			r := res.Rcpt(rcpt)
			if r == nil || r.Code != 550 || r.Enhanced != "5.1.1" || !strings.Contains(r.Text, "User unknown") {
				t.Errorf("RCPT %s: %v, want 550 5.1.1 User unknown", rcpt, r)
			}
		}
	})

	t.Run("5 a bounce Postfix makes for a signed message reaches the sender", func(t *testing.T) {
		pf.Sink().Refuse("nosuch@remote.test")
		res, err := pf.Submit("alice", password, user, []string{"nosuch@remote.test"}, message(user, "nosuch@remote.test", "will bounce"))
		if err != nil || !res.Accepted() {
			t.Fatalf("submit: %v %v", res, err)
		}
		m := pf.WaitMessage(t, wait, postfixtest.All(postfixtest.FromSender(""), postfixtest.ToRcpt(user), func(m postfixtest.Message) bool {
			return strings.Contains(string(m.Data), "will bounce")
		}))
		if len(m.Rcpts) != 1 {
			t.Fatalf("bounce recipients %v", m.Rcpts)
		}
	})

	t.Run("6 postmaster accepts an untagged bounce", func(t *testing.T) {
		res, err := pf.SendMX("", []string{"postmaster@example.com"}, message("MAILER-DAEMON@remote.test", "postmaster@example.com", "to postmaster"))
		if err != nil || !res.Accepted() {
			t.Fatalf("send: %v %v", res, err)
		}
		pf.WaitMessage(t, wait, postfixtest.ToRcpt("postmaster@example.com"))
	})

	t.Run("a multi-recipient bounce is decided per recipient", s.expectMultiRecipientBounce)

	t.Run("a reply to the Return-Path is delivered untagged", func(t *testing.T) {
		tagged := s.sign(user, 20) // long expired: replies only need the MAC
		res, err := pf.SendMX("carol@remote.test", []string{tagged}, message("carol@remote.test", tagged, "auto-reply"))
		if err != nil || !res.Accepted() {
			t.Fatalf("send: %v %v", res, err)
		}
		m := pf.WaitMessage(t, wait, withText("auto-reply"))
		if len(m.Rcpts) != 1 || m.Rcpts[0] != user {
			t.Fatalf("delivered to %v, want [%s]", m.Rcpts, user)
		}
	})

	t.Run("Postfix has no complaint about the milter", func(t *testing.T) {
		// A reply Postfix did not wait for (SMFIP_NR_*), or one missing,
		// shows here as "unexpected filter response" or a timeout.
		log := pf.MailLog()
		if !strings.Contains(log, "postfix/smtpd") {
			t.Fatalf("the mail log has no smtpd line:\n%s", log)
		}
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "milter") && (strings.Contains(line, "warning:") || strings.Contains(line, "error:")) {
				t.Errorf("Postfix: %s", line)
			}
		}
		// Postfix agreed not to wait for the replies batv leaves out.
		if !strings.Contains(s.daemon.LogWith("no_reply=connect+mail+header"), "no_reply=connect+mail+header") {
			t.Errorf("batv's log has no connection where Postfix agreed to no_reply=connect+mail+header")
		}
	})

	t.Run("7 milter stopped: milter_default_action=accept loses nothing", func(t *testing.T) {
		tagged := s.sign(user, 1)
		s.daemon.stop(t)
		// Without the lookup table a tagged recipient cannot be validated:
		// Postfix answers 4xx and the sender retries.
		res, err := pf.SendMX("", []string{tagged}, message("MAILER-DAEMON@remote.test", tagged, "bounce while down"))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("tagged recipient with batv down: %v", res.Rcpt(tagged))
		if r := res.Rcpt(tagged); r == nil || r.Code/100 != 4 || res.Accepted() {
			t.Fatalf("tagged recipient with batv down: %v, want 4xx", r)
		}
		res, err = pf.SendMX("carol@remote.test", []string{"bob@example.com"}, message("carol@remote.test", "bob@example.com", "milter down, inbound"))
		if err != nil || !res.Accepted() {
			t.Fatalf("inbound with the milter down: %v %v", res, err)
		}
		pf.WaitMessage(t, wait, withText("milter down, inbound"))
		res, err = pf.Submit("alice", password, user, []string{"carol@remote.test"}, message(user, "carol@remote.test", "milter down, outbound"))
		if err != nil || !res.Accepted() {
			t.Fatalf("submission with the milter down: %v %v", res, err)
		}
		m := pf.WaitMessage(t, wait, withText("milter down, outbound"))
		if m.From != user {
			t.Fatalf("sender %q: with the milter down mail goes out unsigned", m.From)
		}
	})
}

// expectSplit checks the replies to a transaction with a refused and an
// accepted recipient: 550 for one, 250 for the other, the message taken.
func expectSplit(t *testing.T, res *postfixtest.Result, err error, refused, accepted string) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if r := res.Rcpt(refused); r == nil || r.Code != 550 {
		t.Fatalf("recipient %s: %v, want 550", refused, r)
	}
	if r := res.Rcpt(accepted); r == nil || r.Code != 250 || !res.Accepted() {
		t.Fatalf("recipient %s: %v / %v, want 250 and the message accepted", accepted, r, res)
	}
}

func flip(hex string) string {
	b := []byte(hex)
	if b[len(b)-1] == '0' {
		b[len(b)-1] = '1'
	} else {
		b[len(b)-1] = '0'
	}
	return string(b)
}
