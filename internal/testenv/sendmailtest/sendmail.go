// Package sendmailtest runs a real, private Sendmail on loopback for
// end-to-end tests, delivering everything by SMTP to a postfixtest.Sink.
//
// # What Start builds
//
// Start(t, opts) writes a sendmail.mc into a directory of its own, builds
// sendmail.cf from it with m4 and Sendmail's cf macros, builds the aliases
// database, and starts "sendmail -bD" (a daemon in the foreground) with that
// configuration. The instance has:
//
//   - two listeners on 127.0.0.1 with free ports: the MTA port
//     (DAEMON_OPTIONS Name=MTA) and a submission port (Name=MSA), which
//     batv's submission_daemons can name;
//   - the local domain example.com with the local users alice, bob and
//     postmaster. Each is an alias to
//     USER@sink.test, so a message "delivered to the mailbox of alice" is
//     one the sink receives for alice@sink.test. Sendmail delivers
//     alice+anything to alice, and refuses any other local recipient with
//     "550 5.1.1 User unknown";
//   - every other domain relayed to the sink (SMART_HOST [127.0.0.1] on the
//     sink's port); relaying is allowed from 127.0.0.1, Sendmail's default.
//
// opts.MC holds the lines under test (INPUT_MAIL_FILTER and the milter
// macros), inserted before the MAILER lines. Nothing outside the directory is
// read or written except the Sendmail binaries and cf macros: no /etc/mail,
// no DNS (nocanonify, a hosts file, a service switch of files only), no
// syslog (Sendmail's log lines are lost; the SMTP traffic log, written with
// -X, is shown when a test fails).
//
// # Finding Sendmail
//
// Sendmail cannot be installed beside Postfix on Debian (both are the
// system's mail-transport-agent), so the tests can use Debian's packages
// unpacked into a directory: set BATV_SENDMAIL_ROOT to a directory holding
// the contents of sendmail-bin and sendmail-cf (what "dpkg-deb -x" makes of
// them; .ci/run does this). Without it, an installed Sendmail is used
// (/usr/libexec/sendmail/sendmail, /usr/lib/sm.bin/sendmail). m4 and
// unshare must be in PATH, and the test must run as root.
//
// The daemon runs in a UTS namespace of its own with the host name
// mx.example.com: Sendmail wants a fully qualified host name at start and
// otherwise sleeps a minute and retries, and the test machine's name is not
// always qualified.
package sendmailtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/postfixtest"
)

// EnvRoot names the directory holding unpacked sendmail-bin and
// sendmail-cf packages.
const EnvRoot = "BATV_SENDMAIL_ROOT"

// hostname is the instance's host name ($j).
const hostname = "mx.example.com"

// users are the local users of example.com.
var users = []string{"alice", "bob", "postmaster"}

// Options configure an Instance.
type Options struct {
	// MC are .mc lines inserted before the MAILER lines: the milter
	// configuration under test.
	MC string
}

// Instance is a running Sendmail.
type Instance struct {
	dir      string
	mtaPort  int
	msaPort  int
	sink     *postfixtest.Sink
	cmd      *exec.Cmd
	done     chan struct{}
	stopOnce sync.Once
}

// binaries are the paths Start needs.
type binaries struct {
	sendmail, cfDir, m4, unshare string
}

func findBinaries() (binaries, string) {
	var b binaries
	root := os.Getenv(EnvRoot)
	if root == "" {
		root = "/"
	}
	for _, p := range []string{"usr/libexec/sendmail/sendmail", "usr/lib/sm.bin/sendmail"} {
		if fi, err := os.Stat(filepath.Join(root, p)); err == nil && fi.Mode().IsRegular() {
			b.sendmail = filepath.Join(root, p)
			break
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "usr/share/sendmail/cf/m4/cf.m4")); err == nil && fi.Mode().IsRegular() {
		b.cfDir = filepath.Join(root, "usr/share/sendmail/cf")
	}
	const install = "run .ci/install-deps, which unpacks Debian's sendmail-bin and sendmail-cf into .ci/sendmail, " +
		"where make test finds them; or unpack them into a directory and set " + EnvRoot + " to it"
	if b.sendmail == "" {
		return b, "sendmailtest: Sendmail not found; " + install
	}
	if b.cfDir == "" {
		return b, "sendmailtest: Sendmail's cf macros (usr/share/sendmail/cf/m4/cf.m4) not found; " + install
	}
	var err error
	if b.m4, err = exec.LookPath("m4"); err != nil {
		return b, "sendmailtest: m4 not found; apt-get install m4"
	}
	if b.unshare, err = exec.LookPath("unshare"); err != nil {
		return b, "sendmailtest: unshare not found; apt-get install util-linux"
	}
	if os.Geteuid() != 0 {
		return b, "sendmailtest: not running as root: Sendmail's daemon needs root"
	}
	return b, ""
}

// Start builds and starts an instance and its sink, and stops and removes
// them in t.Cleanup. It skips the test (fails it with BATV_E2E=1) when
// Sendmail, m4 or root is missing.
func Start(t testing.TB, opts Options) *Instance {
	t.Helper()
	bins, reason := findBinaries()
	if reason != "" {
		postfixtest.SkipOrFail(t, reason)
		return nil
	}
	i := &Instance{dir: postfixtest.TempDir(t), sink: postfixtest.NewSink(t), done: make(chan struct{})}
	ports, err := postfixtest.FreePorts(2)
	if err != nil {
		t.Fatalf("sendmailtest: %v", err)
	}
	i.mtaPort, i.msaPort = ports[0], ports[1]
	if err := i.configure(bins, opts); err != nil {
		t.Fatalf("sendmailtest: %v", err)
	}
	t.Cleanup(func() {
		i.Stop()
		if t.Failed() {
			t.Logf("sendmailtest: sendmail output:\n%s\nSMTP traffic (tail):\n%s", i.Output(), i.TrafficTail(60))
		}
	})
	if err := i.start(bins); err != nil {
		t.Fatalf("sendmailtest: %v\n%s", err, i.Output())
	}
	return i
}

func (i *Instance) configure(bins binaries, opts Options) error {
	if err := os.Mkdir(filepath.Join(i.dir, "mqueue"), 0o700); err != nil {
		return err
	}
	var aliases strings.Builder
	for _, u := range users {
		fmt.Fprintf(&aliases, "%s: %s@sink.test\n", u, u)
	}
	files := map[string]string{
		"sendmail.mc":    i.mc(opts),
		"aliases":        aliases.String(),
		"hosts":          "127.0.0.1 localhost " + hostname + "\n",
		"service.switch": "hosts files\naliases files\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(i.dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	m4 := exec.Command(bins.m4, "-D_CF_DIR_="+bins.cfDir+"/", filepath.Join(bins.cfDir, "m4", "cf.m4"), "sendmail.mc")
	m4.Dir = i.dir
	cf, err := m4.Output()
	if err != nil {
		return fmt.Errorf("m4 sendmail.mc: %v: %s", err, stderrOf(err))
	}
	if err := os.WriteFile(i.cfPath(), cf, 0o644); err != nil {
		return err
	}
	if out, err := i.command(bins, "-bi").CombinedOutput(); err != nil {
		return fmt.Errorf("sendmail -bi (aliases): %v: %s", err, out)
	}
	return nil
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// mc is the instance's sendmail.mc.
func (i *Instance) mc(opts Options) string {
	path := func(name string) string { return filepath.Join(i.dir, name) }
	var b strings.Builder
	// line writes MACRO(`arg', `arg'...)dnl, with m4's quotes.
	line := func(macro string, args ...string) {
		for n, a := range args {
			args[n] = "`" + a + "'"
		}
		fmt.Fprintf(&b, "%s(%s)dnl\n", macro, strings.Join(args, ", "))
	}
	b.WriteString("divert(-1)\ndivert(0)dnl\n")
	line("OSTYPE", "linux")
	for _, d := range [][2]string{
		{"confDOMAIN_NAME", hostname},
		{"QUEUE_DIR", path("mqueue")},
		{"confPID_FILE", path("sendmail.pid")},
		{"ALIAS_FILE", path("aliases")},
		{"confSERVICE_SWITCH_FILE", path("service.switch")},
		{"confHOSTS_FILE", path("hosts")},
		{"confSTATUS_FILE", path("statistics")},
		{"confHELP_FILE", ""},
		{"confDONT_PROBE_INTERFACES", "true"},
		// The directory is under /tmp.
		{"confDONT_BLAME_SENDMAIL", "GroupWritableDirPathSafe,TrustStickyBit"},
		{"confTO_IDENT", "0"},
		{"SMART_HOST", "[127.0.0.1]"},
		{"RELAY_MAILER_ARGS", fmt.Sprintf("TCP $h %d", i.sink.Port())},
		{"ESMTP_MAILER_ARGS", fmt.Sprintf("TCP $h %d", i.sink.Port())},
	} {
		line("define", d[0], d[1])
	}
	line("FEATURE", "nocanonify")
	line("FEATURE", "accept_unresolvable_domains")
	line("FEATURE", "no_default_msa")
	line("DAEMON_OPTIONS", fmt.Sprintf("Port=%d, Addr=127.0.0.1, Name=MTA", i.mtaPort))
	line("DAEMON_OPTIONS", fmt.Sprintf("Port=%d, Addr=127.0.0.1, Name=MSA, M=E", i.msaPort))
	line("LOCAL_DOMAIN", "example.com")
	b.WriteString(opts.MC)
	b.WriteString("\n")
	line("MAILER", "local")
	line("MAILER", "smtp")
	return b.String()
}

func (i *Instance) cfPath() string { return filepath.Join(i.dir, "sendmail.cf") }

// command runs Sendmail with the instance's configuration and args in a
// UTS namespace where the host name is hostname (see the package doc).
func (i *Instance) command(bins binaries, args ...string) *exec.Cmd {
	script := `hostname "$0" && exec "$@"`
	argv := append([]string{"--uts", "sh", "-c", script, hostname, bins.sendmail, "-C", i.cfPath()}, args...)
	cmd := exec.Command(bins.unshare, argv...)
	cmd.Dir = i.dir
	return cmd
}

func (i *Instance) start(bins binaries) error {
	// -bD: the daemon in the foreground; -q1m: a queue run every minute;
	// -X: the SMTP traffic, for the report of a failed test.
	i.cmd = i.command(bins, "-bD", "-q1m", "-X", filepath.Join(i.dir, "traffic.log"))
	out, err := os.Create(filepath.Join(i.dir, "output"))
	if err != nil {
		return err
	}
	defer out.Close()
	// A file, not a pipe: Wait must not wait for children that keep it.
	i.cmd.Stdout, i.cmd.Stderr = out, out
	// Its own process group, so that Stop reaches the children that
	// handle connections and deliveries.
	i.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := i.cmd.Start(); err != nil {
		return err
	}
	go func() { _ = i.cmd.Wait(); close(i.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for _, port := range []int{i.mtaPort, i.msaPort} {
		for {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-i.done:
				return fmt.Errorf("sendmail exited at start")
			default:
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("sendmail does not listen on 127.0.0.1:%d after 30s", port)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// Stop stops the daemon and every process it started.
func (i *Instance) Stop() {
	i.stopOnce.Do(func() {
		if i.cmd == nil || i.cmd.Process == nil {
			return
		}
		_ = syscall.Kill(-i.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-i.done:
		case <-time.After(10 * time.Second):
		}
		_ = syscall.Kill(-i.cmd.Process.Pid, syscall.SIGKILL)
		<-i.done
	})
}

// MTAAddr is the address of the MTA listener (Name=MTA).
func (i *Instance) MTAAddr() string { return fmt.Sprintf("127.0.0.1:%d", i.mtaPort) }

// MSAAddr is the address of the submission listener (Name=MSA).
func (i *Instance) MSAAddr() string { return fmt.Sprintf("127.0.0.1:%d", i.msaPort) }

// Sink is where the instance delivers.
func (i *Instance) Sink() *postfixtest.Sink { return i.sink }

// Send runs one SMTP transaction against addr (MTAAddr or MSAAddr).
func (i *Instance) Send(addr, from string, rcpts []string, data []byte) (*postfixtest.Result, error) {
	return postfixtest.Send(addr, postfixtest.Envelope{From: from, Rcpts: rcpts, Data: data, Helo: "client.test"})
}

// WaitMessage waits for the sink to receive a message matching match, and
// fails the test after timeout.
func (i *Instance) WaitMessage(t testing.TB, timeout time.Duration, match func(postfixtest.Message) bool) postfixtest.Message {
	t.Helper()
	m, err := i.sink.WaitTimeout(timeout, match)
	if err != nil {
		t.Fatalf("sendmailtest: no matching message after %v (%v); the sink has %v\nSMTP traffic (tail):\n%s",
			timeout, err, i.sink.Messages(), i.TrafficTail(40))
	}
	return m
}

// TrafficTail returns the last n lines of the SMTP traffic log.
func (i *Instance) TrafficTail(n int) string {
	data, _ := os.ReadFile(filepath.Join(i.dir, "traffic.log"))
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Output is what the daemon wrote to its standard output and error.
func (i *Instance) Output() string {
	data, _ := os.ReadFile(filepath.Join(i.dir, "output"))
	return string(data)
}
