package postfixtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Defaults used when the corresponding Options field is empty.
const (
	DefaultDomain               = "example.com"
	DefaultHostname             = "mx.postfix.test"
	DefaultMXDaemonName         = "MX"
	DefaultSubmissionDaemonName = "ORIGINATING"
	// DefaultUser and DefaultPassword are the SASL account created when
	// Options.Users is nil.
	DefaultUser     = "alice@example.com"
	DefaultPassword = "alice-secret"
)

// EnvE2E is the environment variable that turns "skip" into "fail" when
// Postfix is missing or the tests do not run as root. CI sets BATV_E2E=1.
const EnvE2E = "BATV_E2E"

// Options configure an Instance. The zero value is usable.
type Options struct {
	// Domains are the protected domains (relay_domains), default
	// [example.com]. The first one is also the SASL realm
	// (smtpd_sasl_local_domain).
	Domains []string
	// Recipients are the valid mailboxes of Domains (relay_recipient_maps;
	// "@domain" accepts every local part). Any other recipient in Domains is
	// refused by Postfix with 550 5.1.1 "User unknown in relay recipient
	// table". Nil means alice@ and bob@ of every domain.
	Recipients []string
	// Users are the SASL accounts for the submission port, login →
	// password. A login "user@domain" is stored as user in realm domain; a
	// login without "@" gets the realm Domains[0]. Clients may log in as
	// "user@domain" or, for realm Domains[0], as plain "user". Nil means
	// {DefaultUser: DefaultPassword}; an empty non-nil map creates no
	// account.
	Users map[string]string
	// Hostname is myhostname (also the EHLO name Postfix uses towards the
	// sink, and the domain of MAILER-DAEMON in bounces). Default
	// DefaultHostname. Do not use a name in Domains.
	Hostname string
	// MXDaemonName and SubmissionDaemonName are the values of
	// milter_macro_daemon_name ({daemon_name} for milters) of the two smtpd
	// services. Defaults DefaultMXDaemonName (set in main.cf, so cleanup
	// and non-SMTP mail also see it) and DefaultSubmissionDaemonName (set
	// with -o on the submission service only).
	MXDaemonName, SubmissionDaemonName string
	// Main are extra main.cf parameters, applied last (they replace the
	// harness's own values): smtpd_milters, non_smtpd_milters,
	// milter_default_action, milter_protocol, recipient_canonical_maps,
	// bounce_queue_lifetime, ...
	Main map[string]string
	// MXOptions and SubmissionOptions are "-o name=value" overrides for
	// the MX and submission smtpd services in master.cf; they replace the
	// harness's own -o values of the same name.
	MXOptions, SubmissionOptions map[string]string
	// ServiceOptions are "-o name=value" options added to the harness's
	// other master.cf services, by service name (e.g. "bounce").
	ServiceOptions map[string]map[string]string
	// MasterExtra are whole master.cf lines appended at the end: extra
	// services such as a second cleanup.
	MasterExtra []string
	// ChrootMX runs the MX smtpd chrooted in the queue directory, as the
	// smtpd of Debian's stock master.cf is: it then reaches unix sockets
	// of milters and lookup tables by paths relative to the queue
	// directory only.
	ChrootMX bool
	// StartTimeout bounds "postfix start" and the wait for the listeners;
	// default 60s.
	StartTimeout time.Duration
	// FullStartupChecks lets "postfix start" create the queue directories
	// and run its integrity checks (post-install create-missing,
	// check-fatal, check-warn), which costs about 0.6 s more per start
	// here (several seconds on a loaded machine). By default the harness creates the queue layout of
	// Postfix's postfix-files itself and starts with the quick-start
	// marker, which skips those checks (TestQueueLayoutMatchesPostfix
	// keeps the two in step).
	FullStartupChecks bool

	// pickPorts replaces FreePorts in tests of the port retry.
	pickPorts func(n int) ([]int, error)
}

// Service names one of the two smtpd services of an Instance.
type Service int

const (
	// MX is the smtpd service without AUTH for inbound mail.
	MX Service = iota
	// Submission is the smtpd service with SASL AUTH.
	Submission
)

func (s Service) String() string {
	if s == Submission {
		return "submission"
	}
	return "mx"
}

// Instance is a running private Postfix instance. All methods are safe for
// use by several goroutines.
type Instance struct {
	opts Options
	bins map[string]string

	base, configDir, queueDir, dataDir, logDir, logFile, socketDir, saslDir string

	uid, gid int
	sink     *Sink

	mu         sync.Mutex
	mxPort     int
	subPort    int
	masterPID  int
	stopped    bool
	svcOptions map[Service]map[string]string
}

// Start creates and starts a private Postfix instance and its sink, and
// registers their shutdown and removal with t.Cleanup. It skips the test
// (or fails it when BATV_E2E=1) when Postfix is not installed or the test
// does not run as root. On a start failure the test fails with the output
// of "postfix start" and the tail of the instance's log.
func Start(t testing.TB, opts Options) *Instance {
	t.Helper()
	bins, reason := requirements()
	if reason != "" {
		SkipOrFail(t, "postfixtest: "+reason)
		return nil
	}
	uid, gid, err := PostfixIDs()
	if err != nil {
		SkipOrFail(t, "postfixtest: "+err.Error())
		return nil
	}
	t0 := time.Now()
	inst, err := start(t, opts, bins, uid, gid)
	if err != nil {
		t.Fatalf("postfixtest: %v", err)
	}
	t.Logf("postfixtest: Postfix started in %v: config %s, MX %s, submission %s, sink %s",
		time.Since(t0).Round(time.Millisecond), inst.configDir, inst.MXAddr(), inst.SubmissionAddr(), inst.sink.Addr())
	return inst
}

// EnvSkipReport names a file to which SkipOrFail appends one line for
// each test it skips: the package's directory, the test's name and the
// reason, separated by tabs. "make test" sets it, and after go test (whose
// "ok" line does not say that a package skipped its tests) says what did
// not run and how to install what it needs.
const EnvSkipReport = "BATV_SKIP_REPORT"

// SkipOrFail skips the test for reason, or fails it when BATV_E2E=1 makes
// the end-to-end tests mandatory. A skip is noted in the file that
// BATV_SKIP_REPORT names. The tests of real software use it: sendmailtest,
// postmap, systemd-analyze, groff.
func SkipOrFail(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv(EnvE2E) == "1" {
		t.Fatalf("%s (%s=1: the end-to-end tests are mandatory here)", reason, EnvE2E)
		return
	}
	reportSkip(t, reason)
	t.Skipf("%s; skipping (set %s=1 to make this a failure)", reason, EnvE2E)
}

// reportSkip appends the skip to the BATV_SKIP_REPORT file, if one is set.
func reportSkip(t testing.TB, reason string) {
	path := os.Getenv(EnvSkipReport)
	if path == "" {
		return
	}
	dir, _ := os.Getwd() // go test runs a package's tests in its directory
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		t.Logf("%s: %v", EnvSkipReport, err)
		return
	}
	defer f.Close()
	line := strings.Join([]string{dir, t.Name(), strings.Join(strings.Fields(reason), " ")}, "\t") + "\n"
	if _, err := f.WriteString(line); err != nil { // one write: O_APPEND keeps lines whole
		t.Logf("%s: %v", EnvSkipReport, err)
	}
}

// requirements finds the programs Start needs and checks that we are root.
// It returns a non-empty reason when the tests cannot run.
func requirements() (map[string]string, string) {
	bins := map[string]string{}
	var missing []string
	for _, name := range []string{"postfix", "postconf", "postqueue", "postsuper", "saslpasswd2", "sendmail"} {
		p, err := lookPath(name)
		if err != nil {
			missing = append(missing, name)
			continue
		}
		bins[name] = p
	}
	if len(missing) > 0 {
		if _, ok := bins["postfix"]; !ok {
			return nil, "postfix not installed; install postfix sasl2-bin libsasl2-modules swaks (apt-get install postfix sasl2-bin libsasl2-modules swaks)"
		}
		return nil, fmt.Sprintf("%s not found; install postfix sasl2-bin libsasl2-modules swaks (apt-get install postfix sasl2-bin libsasl2-modules swaks)", strings.Join(missing, ", "))
	}
	for _, mod := range []struct{ file, pkg string }{{"libplain.so*", "libsasl2-modules"}, {"libsasldb.so*", "libsasl2-modules-db"}} {
		var found []string
		for _, dir := range []string{"/usr/lib/*/sasl2", "/usr/lib/sasl2", "/usr/lib64/sasl2", "/usr/local/lib/sasl2"} {
			m, _ := filepath.Glob(filepath.Join(dir, mod.file))
			found = append(found, m...)
		}
		if len(found) == 0 {
			return nil, fmt.Sprintf("Cyrus SASL module %s not found; install %s (apt-get install postfix sasl2-bin libsasl2-modules swaks)", mod.file, mod.pkg)
		}
	}
	if os.Geteuid() != 0 {
		return nil, "not running as root: a private Postfix instance needs root to start (run the end-to-end tests as root)"
	}
	return bins, ""
}

func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

// PostfixIDs returns the uid and gid of the "postfix" user, as which
// Postfix's daemons run and connect to milter and socketmap sockets.
func PostfixIDs() (uid, gid int, err error) {
	u, err := user.Lookup("postfix")
	if err != nil {
		return 0, 0, fmt.Errorf("user postfix not found (is postfix installed?): %v", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("user postfix has a non-numeric uid/gid %q/%q", u.Uid, u.Gid)
	}
	return uid, gid, nil
}

// TempDir creates a directory that the postfix user can reach (mode 0755,
// under os.TempDir() or /tmp, every ancestor searchable by others) and
// removes it in t.Cleanup. Use it for unix sockets Postfix must connect to
// when Instance.SocketDir does not suit (e.g. before Start).
func TempDir(t testing.TB) string {
	t.Helper()
	dir, err := makeReachableDir("batv-sock-")
	if err != nil {
		t.Fatalf("postfixtest: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func makeReachableDir(prefix string) (string, error) {
	var tried []string
	for _, parent := range []string{os.TempDir(), "/tmp"} {
		if err := searchableByOthers(parent); err != nil {
			tried = append(tried, err.Error())
			continue
		}
		dir, err := os.MkdirTemp(parent, prefix)
		if err != nil {
			tried = append(tried, err.Error())
			continue
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			_ = os.RemoveAll(dir)
			return "", err
		}
		return dir, nil
	}
	return "", fmt.Errorf("no temporary directory the postfix user can traverse: %s", strings.Join(tried, "; "))
}

// searchableByOthers checks that every directory from / to dir has the
// "x" bit for others, so that user postfix can reach files below it.
func searchableByOthers(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	p := abs
	for {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if !fi.IsDir() || fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s (ancestor of %s) is not searchable by the postfix user (mode %v)", p, abs, fi.Mode().Perm())
		}
		parent := filepath.Dir(p)
		if parent == p {
			return nil
		}
		p = parent
	}
}

const ownerFile = "owner.pid"

var reapOnce sync.Once

// reapStale stops and removes instances left behind by test binaries that
// died before their cleanup ran (killed by a timeout, say). An instance is
// stale when the process recorded in its owner.pid is gone; its master is
// signalled only if its working directory is that instance's queue
// directory (the master chdirs there), so no other process is touched.
func reapStale() {
	for _, parent := range []string{os.TempDir(), "/tmp"} {
		dirs, _ := filepath.Glob(filepath.Join(parent, "batv-postfix-*"))
		for _, dir := range dirs {
			data, err := os.ReadFile(filepath.Join(dir, ownerFile))
			if err != nil {
				continue
			}
			owner, err := strconv.Atoi(strings.TrimSpace(string(data)))
			if err != nil || owner <= 0 || owner == os.Getpid() || alive(owner) {
				continue
			}
			queue := filepath.Join(dir, "queue")
			if pidData, err := os.ReadFile(filepath.Join(queue, "pid", "master.pid")); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(pidData))); err == nil && pid > 1 {
					if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil && cwd == queue {
						_ = syscall.Kill(pid, syscall.SIGTERM)
						waitGone(func() bool { return alive(pid) }, 5*time.Second)
					}
				}
			}
			_ = os.RemoveAll(dir)
		}
	}
}

func start(t testing.TB, opts Options, bins map[string]string, uid, gid int) (*Instance, error) {
	opts = normalize(opts)
	reapOnce.Do(reapStale)
	base, err := makeReachableDir("batv-postfix-")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(base, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		_ = os.RemoveAll(base)
		return nil, err
	}
	inst := &Instance{
		opts:       opts,
		bins:       bins,
		base:       base,
		configDir:  filepath.Join(base, "etc"),
		queueDir:   filepath.Join(base, "queue"),
		dataDir:    filepath.Join(base, "data"),
		logDir:     filepath.Join(base, "log"),
		socketDir:  filepath.Join(base, "sock"),
		saslDir:    filepath.Join(base, "etc", "sasl"),
		uid:        uid,
		gid:        gid,
		svcOptions: map[Service]map[string]string{MX: copyMap(opts.MXOptions), Submission: copyMap(opts.SubmissionOptions)},
	}
	inst.logFile = filepath.Join(inst.logDir, "maillog")
	// One cleanup, in the right order: dump the log on failure, stop
	// Postfix, stop the sink, remove the files.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("postfixtest: tail of %s:\n%s", inst.logFile, inst.LogTail(60))
		}
		t0 := time.Now()
		if err := inst.Stop(); err != nil {
			t.Errorf("postfixtest: %v", err)
		}
		t.Logf("postfixtest: Postfix stopped in %v", time.Since(t0).Round(time.Millisecond))
		if inst.sink != nil {
			inst.sink.Close()
		}
		if os.Getenv("POSTFIXTEST_KEEP") == "" {
			_ = os.RemoveAll(base)
		} else {
			t.Logf("postfixtest: keeping %s (POSTFIXTEST_KEEP is set)", base)
		}
	})

	for _, d := range []string{inst.configDir, inst.queueDir, inst.dataDir, inst.logDir, inst.socketDir, inst.saslDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		if err := os.Chmod(d, 0o755); err != nil {
			return nil, err
		}
	}
	// data_directory must belong to postfix (0700): post-install does not
	// fix the owner of an existing directory, and the master then dies
	// at start-up without logging why.
	if err := os.Chown(inst.dataDir, uid, 0); err != nil {
		return nil, err
	}
	if err := os.Chmod(inst.dataDir, 0o700); err != nil {
		return nil, err
	}
	if !opts.FullStartupChecks {
		if err := inst.makeQueueLayout(); err != nil {
			return nil, err
		}
	}
	if inst.sink, err = newSink(); err != nil {
		return nil, fmt.Errorf("starting SMTP sink: %v", err)
	}
	if err := inst.writeStaticFiles(); err != nil {
		return nil, err
	}

	timeout := opts.StartTimeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	deadline := time.Now().Add(timeout)
	var lastErr error
	// The ports are found free and then released before Postfix binds
	// them; another process may take one in between. Retry with new ports.
	for attempt := 0; attempt < 4; attempt++ {
		pick := FreePorts
		if opts.pickPorts != nil {
			pick = opts.pickPorts
		}
		ports, err := pick(2)
		if err != nil {
			return nil, err
		}
		inst.mu.Lock()
		inst.mxPort, inst.subPort = ports[0], ports[1]
		err = inst.writeMasterCFLocked()
		inst.mu.Unlock()
		if err != nil {
			return nil, err
		}
		lastErr = inst.startPostfix(deadline)
		if lastErr == nil {
			return inst, nil
		}
		// The master logs "fatal: bind 127.0.0.1 port N: Address
		// already in use"; retry only for that.
		if !strings.Contains(inst.MailLog(), "Address already in use") && !portTaken(ports[0]) && !portTaken(ports[1]) {
			break
		}
	}
	// "postfix check" may name a cause that the master could not log.
	check := "no complaint"
	if _, err := inst.run("postfix", "check"); err != nil {
		check = err.Error()
	}
	return nil, fmt.Errorf("%v\n--- postfix -c %s check ---\n%s", lastErr, inst.configDir, check)
}

func normalize(o Options) Options {
	if len(o.Domains) == 0 {
		o.Domains = []string{DefaultDomain}
	}
	if o.Recipients == nil {
		for _, d := range o.Domains {
			o.Recipients = append(o.Recipients, "alice@"+d, "bob@"+d)
		}
	}
	if o.Users == nil {
		o.Users = map[string]string{DefaultUser: DefaultPassword}
	}
	if o.Hostname == "" {
		o.Hostname = DefaultHostname
	}
	if o.MXDaemonName == "" {
		o.MXDaemonName = DefaultMXDaemonName
	}
	if o.SubmissionDaemonName == "" {
		o.SubmissionDaemonName = DefaultSubmissionDaemonName
	}
	o.Main = copyMap(o.Main)
	return o
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func portTaken(port int) bool {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return true
	}
	l.Close()
	return false
}

// FreePorts returns n distinct TCP ports of 127.0.0.1 that were free a
// moment ago.
func FreePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %v", err)
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

type kv struct{ k, v string }

// mainCF returns the generated main.cf parameters, in order.
func (i *Instance) mainCF() []kv {
	o := i.opts
	sink := fmt.Sprintf("[127.0.0.1]:%d", i.sink.Port())
	params := []kv{
		{"compatibility_level", "3.6"},
		// Locations: everything private to this instance.
		{"queue_directory", i.queueDir},
		{"data_directory", i.dataDir},
		// maillog_file must start with an entry of
		// maillog_file_prefixes, or every postfix command exits 1
		// without a message.
		{"maillog_file_prefixes", i.base},
		{"maillog_file", i.logFile},
		{"syslog_name", "postfix"},
		// Names: explicit, so that nothing looks up the host name.
		{"myhostname", o.Hostname},
		{"mydomain", "postfix.test"},
		{"myorigin", "$myhostname"},
		{"append_dot_mydomain", "no"},
		{"biff", "no"},
		// Loopback only; no local delivery at all.
		{"inet_interfaces", "127.0.0.1"},
		{"inet_protocols", "ipv4"},
		// Not even loopback is "trusted": test clients are outsiders.
		{"mynetworks", ""},
		{"mydestination", ""},
		{"local_recipient_maps", ""},
		{"local_transport", "error:5.1.1 local delivery is disabled in this test instance"},
		{"alias_maps", ""},
		{"alias_database", ""},
		// Protected domains with recipient validation.
		{"relay_domains", strings.Join(o.Domains, ", ")},
		{"relay_recipient_maps", "texthash:" + filepath.Join(i.configDir, "relay_recipients")},
		{"smtpd_reject_unlisted_recipient", "yes"},
		// Every delivery goes to the sink; no DNS anywhere.
		{"transport_maps", ""},
		{"relayhost", sink},
		{"default_transport", "smtp:" + sink},
		{"relay_transport", "smtp:" + sink},
		{"smtp_dns_support_level", "disabled"},
		{"smtp_host_lookup", "native"},
		{"lmtp_host_lookup", "native"},
		{"smtp_tls_security_level", "none"},
		{"smtp_sasl_auth_enable", "no"},
		{"smtpd_peername_lookup", "no"},
		// The MX policy (the submission service overrides with -o).
		{"smtpd_banner", "$myhostname ESMTP Postfix (postfixtest)"},
		{"smtpd_tls_security_level", "none"},
		{"smtpd_sasl_auth_enable", "no"},
		{"smtpd_relay_restrictions", "reject_unauth_destination"},
		{"smtpd_recipient_restrictions", "reject_unlisted_recipient"},
		{"milter_macro_daemon_name", o.MXDaemonName},
		// Cyrus SASL files of the submission service.
		{"cyrus_sasl_config_path", i.saslDir},
		{"smtpd_sasl_local_domain", o.Domains[0]},
		// Fast tests: no tarpitting, quick retries.
		{"smtpd_error_sleep_time", "0"},
		{"smtpd_soft_error_limit", "100"},
		{"smtpd_hard_error_limit", "200"},
		{"in_flow_delay", "0"},
		{"queue_run_delay", "1s"},
		{"minimal_backoff_time", "1s"},
		{"maximal_backoff_time", "2s"},
		{"smtp_connect_timeout", "10s"},
		{"delay_warning_time", "0"},
	}
	keys := make([]string, 0, len(o.Main))
	for k := range o.Main {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		params = setKV(params, k, o.Main[k])
	}
	return params
}

func setKV(list []kv, k, v string) []kv {
	for j := range list {
		if list[j].k == k {
			list[j].v = v
			return list
		}
	}
	return append(list, kv{k, v})
}

// serviceOptionsLocked returns the -o options of svc, harness defaults
// first, replaced and extended by the caller's.
func (i *Instance) serviceOptionsLocked(svc Service) []kv {
	var opts []kv
	if svc == Submission {
		opts = []kv{
			{"syslog_name", "postfix/submission"},
			{"milter_macro_daemon_name", i.opts.SubmissionDaemonName},
			{"smtpd_tls_security_level", "none"},
			{"smtpd_tls_auth_only", "no"},
			{"smtpd_sasl_auth_enable", "yes"},
			{"smtpd_sasl_type", "cyrus"},
			{"smtpd_sasl_path", "smtpd"},
			{"smtpd_sasl_security_options", "noanonymous"},
			{"smtpd_client_restrictions", ""},
			{"smtpd_relay_restrictions", "permit_sasl_authenticated,reject"},
			{"smtpd_recipient_restrictions", "permit_sasl_authenticated,reject"},
		}
	}
	extra := i.svcOptions[svc]
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		opts = setKV(opts, k, extra[k])
	}
	return opts
}

func masterOption(k, v string) (string, error) {
	if strings.ContainsAny(k, " \t\n={}") || k == "" {
		return "", fmt.Errorf("bad master.cf option name %q", k)
	}
	if strings.ContainsAny(v, "\n\r") {
		return "", fmt.Errorf("master.cf option %s: value contains a newline", k)
	}
	if strings.ContainsAny(v, " \t{}") {
		// Postfix ≥ 3.0 syntax for values with spaces.
		return fmt.Sprintf("  -o { %s = %s }", k, v), nil
	}
	return fmt.Sprintf("  -o %s=%s", k, v), nil
}

// masterServices are the fixed services. No chroot (but see
// Options.ChrootMX): the sockets and files tests create are then reachable
// by their real paths.
const masterServices = `pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
  -o syslog_name=postfix/$service_name
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`

func (i *Instance) writeMasterCFLocked() error {
	var b strings.Builder
	b.WriteString("# Generated by postfixtest.\n")
	for _, svc := range []Service{MX, Submission} {
		port, chroot := i.mxPort, "n"
		if svc == Submission {
			port = i.subPort
		} else if i.opts.ChrootMX {
			chroot = "y"
		}
		fmt.Fprintf(&b, "# %s\n127.0.0.1:%d inet n - %s - - smtpd\n", svc, port, chroot)
		for _, o := range i.serviceOptionsLocked(svc) {
			line, err := masterOption(o.k, o.v)
			if err != nil {
				return err
			}
			b.WriteString(line + "\n")
		}
	}
	for _, line := range strings.SplitAfter(masterServices, "\n") {
		b.WriteString(line)
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(line, " ") {
			continue
		}
		opts := i.opts.ServiceOptions[fields[0]]
		names := make([]string, 0, len(opts))
		for k := range opts {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			o, err := masterOption(k, opts[k])
			if err != nil {
				return err
			}
			b.WriteString(o + "\n")
		}
	}
	for _, line := range i.opts.MasterExtra {
		b.WriteString(line + "\n")
	}
	return writeConfigFile(filepath.Join(i.configDir, "master.cf"), b.String())
}

// writeConfigFile writes a Postfix configuration file and backdates it.
func writeConfigFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		return err
	}
	return backdate(path)
}

// backdate sets a file's times 10 s into the past. Postfix reads main.cf
// only once it is at least a second or two old (it waits in 300 ms steps
// for an editor to finish), which made every start and every command after
// a change take up to 2 s longer.
func backdate(path string) error {
	old := time.Now().Add(-10 * time.Second)
	return os.Chtimes(path, old, old)
}

func (i *Instance) writeStaticFiles() error {
	// main.cf
	var b strings.Builder
	b.WriteString("# Generated by postfixtest.\n")
	for _, p := range i.mainCF() {
		if strings.ContainsAny(p.k, " \t\n=") || strings.ContainsAny(p.v, "\n\r") {
			return fmt.Errorf("bad main.cf parameter %q = %q", p.k, p.v)
		}
		fmt.Fprintf(&b, "%s = %s\n", p.k, p.v)
	}
	if err := writeConfigFile(filepath.Join(i.configDir, "main.cf"), b.String()); err != nil {
		return err
	}
	// relay_recipients (texthash: read when the daemons start)
	b.Reset()
	for _, r := range i.opts.Recipients {
		fmt.Fprintf(&b, "%s OK\n", r)
	}
	if err := writeConfigFile(filepath.Join(i.configDir, "relay_recipients"), b.String()); err != nil {
		return err
	}
	// Cyrus SASL
	sasldb := filepath.Join(i.saslDir, "sasldb2")
	conf := fmt.Sprintf("pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: %s\n", sasldb)
	if err := os.WriteFile(filepath.Join(i.saslDir, "smtpd.conf"), []byte(conf), 0o644); err != nil {
		return err
	}
	logins := make([]string, 0, len(i.opts.Users))
	for l := range i.opts.Users {
		logins = append(logins, l)
	}
	sort.Strings(logins)
	for _, login := range logins {
		name, realm := login, i.opts.Domains[0]
		if at := strings.LastIndexByte(login, '@'); at >= 0 {
			name, realm = login[:at], login[at+1:]
		}
		cmd := exec.Command(i.bins["saslpasswd2"], "-f", sasldb, "-c", "-p", "-u", realm, name)
		cmd.Stdin = strings.NewReader(i.opts.Users[login])
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("saslpasswd2 for %s: %v: %s", login, err, out)
		}
	}
	if len(logins) > 0 {
		// Read by smtpd, which runs as postfix. Owned by root so that
		// "postfix check" does not warn about the config directory.
		if err := os.Chown(sasldb, 0, i.gid); err != nil {
			return err
		}
		if err := os.Chmod(sasldb, 0o640); err != nil {
			return err
		}
	}
	return nil
}

// queueLayout is the queue_directory part of Postfix's postfix-files
// (Postfix 3.7): name, owned by postfix (else root), group postdrop (else
// root), mode.
var queueLayout = []struct {
	name     string
	postfix  bool
	postdrop bool
	mode     os.FileMode
}{
	{"active", true, false, 0o700},
	{"bounce", true, false, 0o700},
	{"corrupt", true, false, 0o700},
	{"defer", true, false, 0o700},
	{"deferred", true, false, 0o700},
	{"flush", true, false, 0o700},
	{"hold", true, false, 0o700},
	{"incoming", true, false, 0o700},
	{"private", true, false, 0o700},
	{"maildrop", true, true, 0o730},
	{"public", true, true, 0o710},
	{"pid", false, false, 0o755},
	{"saved", true, false, 0o700},
	{"trace", true, false, 0o700},
}

// makeQueueLayout creates what "postfix start" (post-install
// create-missing) would create, so that the start can skip that work.
func (i *Instance) makeQueueLayout() error {
	grp, err := user.LookupGroup("postdrop")
	if err != nil {
		return fmt.Errorf("group postdrop (Postfix's setgid_group) not found: %v", err)
	}
	postdrop, err := strconv.Atoi(grp.Gid)
	if err != nil {
		return fmt.Errorf("group postdrop has a non-numeric gid %q", grp.Gid)
	}
	mk := func(path string, uid, gid int, mode os.FileMode) error {
		if err := os.Mkdir(path, mode); err != nil && !os.IsExist(err) {
			return err
		}
		if err := os.Chown(path, uid, gid); err != nil {
			return err
		}
		return os.Chmod(path, mode)
	}
	for _, d := range queueLayout {
		uid, gid := 0, 0
		if d.postfix {
			uid = i.uid
		}
		if d.postdrop {
			gid = postdrop
		}
		if err := mk(filepath.Join(i.queueDir, d.name), uid, gid, d.mode); err != nil {
			return err
		}
	}
	return nil
}

func (i *Instance) startPostfix(deadline time.Time) error {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if !i.opts.FullStartupChecks {
		// postfix-script skips check-fatal and check-warn (and removes
		// the marker) when it finds this file.
		if err := os.WriteFile(filepath.Join(i.queueDir, "quick-start"), nil, 0o644); err != nil {
			return err
		}
	}
	if _, err := i.runCtx(ctx, "postfix", "start"); err != nil {
		return fmt.Errorf("%v\n--- tail of %s ---\n%s", err, i.logFile, i.LogTail(40))
	}
	pid, err := i.readMasterPID()
	if err != nil {
		return fmt.Errorf("postfix started but %v\n--- tail of %s ---\n%s", err, i.logFile, i.LogTail(40))
	}
	i.mu.Lock()
	i.masterPID = pid
	i.stopped = false
	i.mu.Unlock()
	// "master -w" returns once the master has bound its listeners. Check
	// that the ports are taken without connecting: a probe connection
	// would reach smtpd (and any milter) and show up in the log.
	for _, port := range []int{i.MXPort(), i.SubmissionPort()} {
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			l.Close()
			_ = i.Stop()
			return fmt.Errorf("postfix started but nothing listens on 127.0.0.1:%d\n--- tail of %s ---\n%s", port, i.logFile, i.LogTail(40))
		}
	}
	return nil
}

func (i *Instance) readMasterPID() (int, error) {
	data, err := os.ReadFile(filepath.Join(i.queueDir, "pid", "master.pid"))
	if err != nil {
		return 0, fmt.Errorf("no master pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("bad master pid file content %q", data)
	}
	return pid, nil
}

// Stop stops the instance the way "postfix stop" does (SIGTERM to the
// master, which terminates its process group), waits for the master and
// its children to exit, and kills them if they do not. The sink keeps
// running. Start registers Stop with t.Cleanup; calling it earlier is
// allowed, and calling it again does nothing.
//
// "postfix -c DIR stop" itself is used only when the signal cannot be
// sent: its script polls the master once a second, which would add a
// second to every test.
func (i *Instance) Stop() error {
	i.mu.Lock()
	pid, stopped := i.masterPID, i.stopped
	i.stopped = true
	i.mu.Unlock()
	if stopped || pid == 0 {
		return nil
	}
	var errs []error
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && alive(pid) {
		if out, err := i.run("postfix", "stop"); err != nil && alive(pid) {
			errs = append(errs, fmt.Errorf("postfix stop: %v: %s", err, out))
		}
	}
	if !waitGone(func() bool { return alive(pid) }, 10*time.Second) {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		errs = append(errs, fmt.Errorf("postfix master %d did not exit within 10s of SIGTERM; killed its process group", pid))
	}
	// The master kills its process group on SIGTERM; make sure no child
	// is left (the group id is the master's pid: the master calls
	// setsid).
	groupAlive := func() bool { return groupHasLiveMember(pid) }
	if !waitGone(groupAlive, 5*time.Second) {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		waitGone(groupAlive, 5*time.Second)
	}
	return errors.Join(errs...)
}

// Restart stops the instance as Stop does and starts it again with the same
// configuration, ports, queue and sink, as "postfix stop; postfix start"
// does. Every smtpd, cleanup and milter connection of the old master is
// gone when it returns.
func (i *Instance) Restart() error {
	if err := i.Stop(); err != nil {
		return err
	}
	timeout := i.opts.StartTimeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	return i.startPostfix(time.Now().Add(timeout))
}

// groupHasLiveMember reports whether process group pgid has a member that
// is not a zombie.
func groupHasLiveMember(pgid int) bool {
	if syscall.Kill(-pgid, 0) != nil {
		return false
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := syscall.Getpgid(pid); err == nil && g == pgid && alive(pid) {
			return true
		}
	}
	return false
}

// alive reports whether process pid exists and is not a zombie (the
// daemonized master is reparented to init, which may reap it late).
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // no /proc: trust kill(2)
	}
	// Format: pid (comm) state ...; comm may contain ") ".
	if j := bytes.LastIndexByte(stat, ')'); j >= 0 && j+2 < len(stat) {
		return stat[j+2] != 'Z' && stat[j+2] != 'X'
	}
	return true
}

func waitGone(cond func() bool, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// run runs a Postfix command against this instance: "-c DIR" is inserted
// first ("-C DIR" for sendmail). It returns the standard output.
func (i *Instance) run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return i.runCtx(ctx, name, args...)
}

func (i *Instance) runCtx(ctx context.Context, name string, args ...string) (string, error) {
	return i.runInput(ctx, nil, name, args...)
}

func (i *Instance) runInput(ctx context.Context, stdin []byte, name string, args ...string) (string, error) {
	bin, ok := i.bins[name]
	if !ok {
		p, err := lookPath(name)
		if err != nil {
			return "", fmt.Errorf("%s: %v", name, err)
		}
		bin = p
	}
	flag := "-c"
	if name == "sendmail" {
		flag = "-C"
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{flag, i.configDir}, args...)...)
	cmd.Env = append(os.Environ(), "MAIL_CONFIG="+i.configDir)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	// Postfix commands print their errors only to a terminal.
	stdout, stderr, err := runWithTTYStderr(cmd)
	if err != nil {
		return stdout + stderr, fmt.Errorf("%s %s: %v: %s", name, strings.Join(cmd.Args[1:], " "), err, strings.TrimSpace(stdout+stderr))
	}
	return stdout, nil
}

// Command runs a Postfix program (postfix, postconf, postqueue, postsuper,
// postcat, postmap, sendmail...) for this instance, with "-c DIR" ("-C DIR"
// for sendmail) inserted before args, and returns its standard output. Its
// standard error is a pseudo-terminal (Postfix programs print their
// errors only to a terminal); the error includes what it printed there.
func (i *Instance) Command(name string, args ...string) (string, error) {
	return i.run(name, args...)
}

// Postconf sets main.cf parameters with "postconf -c DIR -e". Call Reload
// afterwards for the running daemons to see them.
func (i *Instance) Postconf(params map[string]string) error {
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	args := []string{"-e"}
	for _, k := range keys {
		args = append(args, k+"="+params[k])
	}
	if _, err := i.run("postconf", args...); err != nil {
		return err
	}
	return backdate(filepath.Join(i.configDir, "main.cf"))
}

// PostconfValue returns the value of a main.cf parameter ("postconf -h";
// "postconf -x -h" when expand is true).
func (i *Instance) PostconfValue(name string, expand bool) (string, error) {
	args := []string{"-h", name}
	if expand {
		args = []string{"-x", "-h", name}
	}
	out, err := i.run("postconf", args...)
	return strings.TrimSpace(out), err
}

// SetServiceOption sets an "-o name=value" override of svc in master.cf
// (rewriting master.cf). An empty value sets the parameter to the empty
// string. Call Reload afterwards.
func (i *Instance) SetServiceOption(svc Service, name, value string) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.svcOptions[svc][name] = value
	return i.writeMasterCFLocked()
}

// Reload runs "postfix reload" and waits until the master has logged the
// reload, so that new connections see the new configuration.
func (i *Instance) Reload() error {
	before := strings.Count(i.MailLog(), "reload -- version")
	if _, err := i.run("postfix", "reload"); err != nil {
		return err
	}
	if !waitGone(func() bool { return strings.Count(i.MailLog(), "reload -- version") <= before }, 10*time.Second) {
		return fmt.Errorf("postfix reload: the master did not log the reload\n%s", i.LogTail(20))
	}
	// Idle daemons of the old generation exit when the master tells them;
	// give them a moment so a new connection meets a new process.
	time.Sleep(200 * time.Millisecond)
	return nil
}

// Flush asks Postfix to retry deferred mail now ("postqueue -f").
func (i *Instance) Flush() error {
	_, err := i.run("postqueue", "-f")
	return err
}

// QueuedRecipient is one recipient of a queued message.
type QueuedRecipient struct {
	Address     string `json:"address"`
	DelayReason string `json:"delay_reason,omitempty"`
}

// QueuedMessage is one message in the queue, as "postqueue -j" shows it.
type QueuedMessage struct {
	QueueName    string            `json:"queue_name"` // incoming, active, deferred, hold, maildrop
	QueueID      string            `json:"queue_id"`
	ArrivalTime  int64             `json:"arrival_time"`
	MessageSize  int64             `json:"message_size"`
	ForcedExpire bool              `json:"forced_expire"`
	Sender       string            `json:"sender"`
	Recipients   []QueuedRecipient `json:"recipients"`
}

// Queue lists the messages still in the queue ("postqueue -c DIR -j").
func (i *Instance) Queue() ([]QueuedMessage, error) {
	out, err := i.run("postqueue", "-j")
	if err != nil {
		return nil, err
	}
	var msgs []QueuedMessage
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var m QueuedMessage
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			return msgs, fmt.Errorf("postqueue -j: %v in %q", err, line)
		}
		msgs = append(msgs, m)
	}
	return msgs, sc.Err()
}

// WaitQueueEmpty waits until the queue is empty, flushing it now and then;
// on timeout it returns an error listing what is left.
func (i *Instance) WaitQueueEmpty(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for n := 0; ; n++ {
		q, err := i.Queue()
		if err != nil {
			return err
		}
		if len(q) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("queue not empty after %v: %+v", timeout, q)
		}
		if n%10 == 9 {
			_ = i.Flush()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// MailLog returns the whole log file of the instance ("" if there is none
// yet).
func (i *Instance) MailLog() string {
	data, _ := os.ReadFile(i.logFile)
	return string(data)
}

// LogTail returns the last n lines of the log.
func (i *Instance) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(i.MailLog(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WaitLog waits until the log contains substr.
func (i *Instance) WaitLog(substr string, timeout time.Duration) error {
	if waitGone(func() bool { return !strings.Contains(i.MailLog(), substr) }, timeout) {
		return nil
	}
	return fmt.Errorf("log has no %q after %v", substr, timeout)
}

// Sink is the SMTP server that receives everything the instance delivers.
func (i *Instance) Sink() *Sink { return i.sink }

// WaitMessage waits for a sink message matching match (one already
// received counts) and fails the test (with the sink's messages, the queue
// and the log tail) when none arrives within timeout. Call it from the
// test's goroutine.
func (i *Instance) WaitMessage(t testing.TB, timeout time.Duration, match func(Message) bool) Message {
	t.Helper()
	m, err := i.sink.WaitTimeout(timeout, match)
	if err != nil {
		var got []string
		for _, m := range i.sink.Messages() {
			got = append(got, m.String())
		}
		q, qerr := i.Queue()
		t.Fatalf("%v\nsink has: %v\nqueue: %+v %v\n--- log tail ---\n%s", err, got, q, qerr, i.LogTail(40))
	}
	return m
}

// SendMX sends a message to the MX port without AUTH.
func (i *Instance) SendMX(from string, rcpts []string, data []byte) (*Result, error) {
	return Send(i.MXAddr(), Envelope{From: from, Rcpts: rcpts, Data: data})
}

// Submit sends a message to the submission port, after AUTH PLAIN with
// user and pass when user is not empty.
func (i *Instance) Submit(user, pass, from string, rcpts []string, data []byte) (*Result, error) {
	return Send(i.SubmissionAddr(), Envelope{Username: user, Password: pass, From: from, Rcpts: rcpts, Data: data})
}

// Sendmail injects a message with Postfix's sendmail command (postdrop,
// pickup and cleanup: non_smtpd_milters apply, smtpd_milters do not). An
// empty from means no -f (sender root@myhostname); use "<>" for the null
// sender.
func (i *Instance) Sendmail(from string, rcpts []string, data []byte) error {
	args := []string{"-i"}
	if from != "" {
		args = append(args, "-f", from)
	}
	args = append(args, "--")
	args = append(args, rcpts...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := i.runInput(ctx, data, "sendmail", args...)
	return err
}

// MXAddr is the MX listener, "127.0.0.1:PORT".
func (i *Instance) MXAddr() string { return fmt.Sprintf("127.0.0.1:%d", i.MXPort()) }

// SubmissionAddr is the submission listener, "127.0.0.1:PORT".
func (i *Instance) SubmissionAddr() string { return fmt.Sprintf("127.0.0.1:%d", i.SubmissionPort()) }

// MXPort is the TCP port of the MX listener.
func (i *Instance) MXPort() int { i.mu.Lock(); defer i.mu.Unlock(); return i.mxPort }

// SubmissionPort is the TCP port of the submission listener.
func (i *Instance) SubmissionPort() int { i.mu.Lock(); defer i.mu.Unlock(); return i.subPort }

// ConfigDir is the instance's config_directory (main.cf, master.cf): the
// DIR of "postfix -c DIR".
func (i *Instance) ConfigDir() string { return i.configDir }

// QueueDir is the instance's queue_directory.
func (i *Instance) QueueDir() string { return i.queueDir }

// DataDir is the instance's data_directory.
func (i *Instance) DataDir() string { return i.dataDir }

// BaseDir is the directory holding everything of the instance; it is
// removed in t.Cleanup (unless POSTFIXTEST_KEEP is set).
func (i *Instance) BaseDir() string { return i.base }

// LogFile is the path of the instance's maillog_file.
func (i *Instance) LogFile() string { return i.logFile }

// SocketDir is a short directory (mode 0755) the postfix user can reach,
// for milter and socketmap sockets of the test. Sockets created there must
// still be made writable for the postfix user (see ListenUnix).
func (i *Instance) SocketDir() string { return i.socketDir }

// SocketPath is filepath.Join(SocketDir(), name).
func (i *Instance) SocketPath(name string) string { return filepath.Join(i.socketDir, name) }

// PostfixUID is the uid as which Postfix's daemons run (user postfix).
func (i *Instance) PostfixUID() int { return i.uid }

// PostfixGID is the primary gid of user postfix.
func (i *Instance) PostfixGID() int { return i.gid }

// MasterPID is the process id of the instance's master daemon.
func (i *Instance) MasterPID() int { i.mu.Lock(); defer i.mu.Unlock(); return i.masterPID }

// Options returns the options the instance was started with, defaults
// filled in.
func (i *Instance) Options() Options { return i.opts }

// ListenUnix listens on a unix socket at path and makes it connectable by
// the postfix user (mode 0666); the listener is closed in t.Cleanup. The
// directory must be reachable by postfix (Instance.SocketDir or TempDir).
func ListenUnix(t testing.TB, path string) net.Listener {
	t.Helper()
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("postfixtest: %v", err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		l.Close()
		t.Fatalf("postfixtest: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}
