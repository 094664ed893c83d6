package stormbench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/testenv/daemontest"
	"github.com/batv/batv/internal/testenv/postfixdoc"
	"github.com/batv/batv/internal/testenv/postfixtest"
	"github.com/batv/batv/keyring"
)

var (
	flagSessions    = flag.Int("sessions", 3000, "SMTP sessions per measurement")
	flagConcurrency = flag.String("concurrency", "20,100", "comma-separated numbers of concurrent clients")
	flagRuns        = flag.Int("runs", 3, "measurements per scenario and concurrency; the tables show medians")
	flagLegit       = flag.Int("legit", 10, "percentage of sessions that send legitimate mail; the rest are bounces, half untagged, half forged")
	flagOnly        = flag.String("only", "", "run only the scenarios whose name contains this (the reference scenarios always run)")
	flagOut         = flag.String("out", "", "also write the tables to this file")
	flagUntaggedAt  = flag.String("refuse-untagged-at", "data", "batv's [verify] refuse_untagged_at: data (the default, callouts pass) or rcpt, to measure what the DATA stage costs")
)

// envStorm switches TestStorm on.
const envStorm = "BATV_STORM"

// scenario is one configuration of the MX: an smtpd service of the shared
// Postfix instance on its own port, with its -o options, the main.cf
// parameters they refer to, and the daemons it needs.
type scenario struct {
	name    string
	options map[string]string // -o options of its smtpd service
	main    map[string]string // main.cf parameters, e.g. named in options as $name
	master  []string          // master.cf lines of the services it adds
	// start starts the scenario's daemons and returns them, for CPU
	// accounting; nil for none.
	start func(t *testing.T) []*daemon
	// untaggedAccepted: untagged bounces get in (Postfix alone). Every
	// other scenario must refuse every bounce; all must accept every
	// legitimate message.
	untaggedAccepted bool
}

const (
	nameAlone   = "Postfix alone"
	nameBlanket = "Postfix, check_sender_access <> REJECT"
)

// scenarios are the configurations measured, the two references first,
// then batv's two front ends as docs/postfix.md sets them up.
func (e *env) scenarios() []scenario {
	nullSender := e.file("null_sender", "<> REJECT Bounces are not accepted here\n")
	return []scenario{
		{name: nameAlone, untaggedAccepted: true},
		{name: nameBlanket, options: map[string]string{
			"smtpd_sender_restrictions": "check_sender_access texthash:" + nullSender}},
		{
			// The same rule at DATA, where batv refuses untagged bounces
			// so that callouts pass: what the stage costs Postfix itself
			// (an accepted RCPT opens a queue file).
			name: nameBlanket + " at DATA",
			options: map[string]string{
				"smtpd_data_restrictions": "check_sender_access texthash:" + nullSender}},
		{
			// docs/postfix.md: the milter, and recipient validation that
			// knows tagged addresses through the strip table.
			name: "batv milter (docs/postfix.md)",
			options: map[string]string{
				"smtpd_milters":         "unix:" + e.sock("milter.sock"),
				"milter_protocol":       "6",
				"milter_default_action": "accept",
				"relay_recipient_maps":  "$batv_relay_recipient_maps",
			},
			main: map[string]string{"batv_relay_recipient_maps": fmt.Sprintf("texthash:%[1]s, pipemap:{socketmap:unix:%[2]s:strip, texthash:%[1]s}",
				e.recipients, e.sock("socketmap.sock"))},
			start: func(t *testing.T) []*daemon {
				return []*daemon{e.startDaemon(t, "batv", []string{e.batvBin, "milter", "--config", e.batvConfig()}, nil,
					e.sock("milter.sock"), e.sock("socketmap.sock"))}
			},
		},
		e.policyScenario(),
	}
}

// policySection is the section of docs/postfix.md whose lines the policy
// scenario runs.
const policySection = "## An MX without a milter"

// policyScenario is docs/postfix.md's MX without a milter, with the
// page's lines (package postfixdoc): batv's policy service, the strip
// table for recipient validation, the untag table in the MX's cleanup
// service, and header_checks. The page's main.cf lines apply here to the
// scenario's smtpd and the cleanup service the page adds, not to the
// other scenarios; its submission and bounce services and the lines for
// local submission (non_smtpd_milters, milter_protocol) do not take part
// in a storm. The sockets are relative to the queue directory, as on the
// page, so this batv listens in QUEUE/batv.
func (e *env) policyScenario() scenario {
	d, err := postfixdoc.Read(filepath.Join("..", "..", "docs", "postfix.md"), policySection)
	if err != nil {
		e.t.Fatal(err)
	}
	checks := e.file("batv_header_checks", d.Files["/etc/postfix/batv_header_checks"])
	local := strings.NewReplacer("hash:/etc/postfix/relay_recipients", "texthash:"+e.recipients,
		"regexp:/etc/postfix/batv_header_checks", "regexp:"+checks)
	sc := scenario{name: "batv policy service (docs/postfix.md)", options: map[string]string{}, main: map[string]string{}}
	var fromMain []string
	for k, v := range d.Main {
		if k == "non_smtpd_milters" || k == "milter_protocol" {
			continue
		}
		sc.main["storm_policy_"+k] = local.Replace(v)
		sc.options[k] = "$storm_policy_" + k
		fromMain = append(fromMain, "  -o "+k+"=$storm_policy_"+k)
	}
	sort.Strings(fromMain)
	for _, svc := range d.Services {
		switch svc.Name() {
		case "smtp":
			for _, o := range svc.Options {
				sc.options[o[0]] = o[1]
			}
		case "submission", "bounce", "defer", "trace":
		default:
			sc.master = append(sc.master, svc.Line("n"))
			for _, o := range svc.Options {
				sc.master = append(sc.master, "  -o "+o[0]+"="+o[1])
			}
			sc.master = append(sc.master, fromMain...)
		}
	}
	sc.start = func(t *testing.T) []*daemon {
		dir := filepath.Join(e.pf.QueueDir(), "batv")
		if err := os.Mkdir(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, 0, e.pf.PostfixGID()); err != nil {
			t.Fatal(err)
		}
		config := e.config("batv-policy.toml", daemontest.Config{
			Listeners:     []daemontest.Listener{{Name: "milter", Address: "unix:" + dir + "/milter.sock", Roles: []string{"outbound"}}},
			Socketmap:     "unix:" + dir + "/socketmap.sock",
			PolicyService: "unix:" + dir + "/policy.sock",
		})
		return []*daemon{e.startDaemon(t, "batv-policy", []string{e.batvBin, "milter", "--config", config}, nil,
			filepath.Join(dir, "socketmap.sock"), filepath.Join(dir, "policy.sock"))}
	}
	return sc
}

// env is what the scenarios share: a directory Postfix can reach, the
// batv binary and keyring, the addresses.
type env struct {
	t                    *testing.T
	pf                   *postfixtest.Instance // once it runs
	dir                  string
	batvBin, keyring     string
	recipients           string // texthash file of the valid recipients
	tagged               string // a valid tag of alice@example.com
	legit, bounce        []byte
	legitFrom, legitRcpt string
}

func (e *env) file(name, content string) string {
	path := filepath.Join(e.dir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return path
}

func (e *env) sock(name string) string { return filepath.Join(e.dir, name) }

// batvConfig is docs/postfix.md's batv.toml with the grace period over and
// no internal network on loopback, where the storm comes from.
func (e *env) batvConfig() string {
	return e.config("batv.toml", daemontest.Config{
		Listeners: []daemontest.Listener{{Name: "milter", Address: "unix:" + e.sock("milter.sock"), Roles: []string{"outbound", "inbound"}, Postfix: true}},
		Socketmap: "unix:" + e.sock("socketmap.sock"),
	})
}

// config writes file name, a batv.toml of c with the keyring,
// info-level logs, and the [sign] and [verify] of both batv scenarios: no
// internal network on loopback, where the storm comes from, and the stage
// of -refuse-untagged-at.
func (e *env) config(name string, c daemontest.Config) string {
	c.Keyring, c.LogLevel = e.keyring, "info"
	c.Sign = `internal_networks = ["192.0.2.0/24"]`
	c.Verify = fmt.Sprintf("untagged_bounce = \"reject\"\nrefuse_untagged_at = %q", *flagUntaggedAt)
	return e.file(name, c.TOML())
}

// envelope is the message of session i: about legit percent legitimate
// mail spread evenly, the rest bounces, untagged and forged in turn.
func (e *env) envelope(legit int) func(i int) Envelope {
	return func(i int) Envelope {
		if i*legit/100 != (i+1)*legit/100 {
			return Envelope{Kind: Legit, From: e.legitFrom, To: e.legitRcpt, Data: e.legit}
		}
		if i%2 == 0 {
			return Envelope{Kind: Untagged, From: "", To: "alice@example.com", Data: e.bounce}
		}
		return Envelope{Kind: Forged, From: "", To: forge(e.tagged), Data: e.bounce}
	}
}

// forge replaces the hash of a valid tag (prvs=KDDDSSSSSS=...) with six
// random hex digits: the key and the day are right, the MAC is not, which
// is the most work for a verifier.
func forge(tagged string) string {
	b := make([]byte, 3)
	for {
		_, _ = rand.Read(b)
		if f := tagged[:9] + hex.EncodeToString(b) + tagged[15:]; f != tagged {
			return f
		}
	}
}

// message is a message of about 2 KiB in wire form for DATA.
func message(header string) []byte {
	var b strings.Builder
	b.WriteString(strings.ReplaceAll(header, "\n", "\r\n") + "\r\n")
	for b.Len() < 2048 {
		b.WriteString("The quick brown fox jumps over the lazy dog, again and again.\r\n")
	}
	b.WriteString(".\r\n")
	return []byte(b.String())
}

// daemon is a process a scenario started.
type daemon struct {
	cmd  *exec.Cmd
	log  string
	done chan error
}

// startDaemon starts argv with extra environment variables, logging to a
// file, waits until every socket accepts connections and stops it (SIGTERM)
// in t.Cleanup.
func (e *env) startDaemon(t *testing.T, name string, argv, environ []string, sockets ...string) *daemon {
	t.Helper()
	d := &daemon{log: filepath.Join(e.dir, name+".log"), done: make(chan error, 1)}
	f, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d.cmd = exec.Command(argv[0], argv[1:]...)
	d.cmd.Env = append(os.Environ(), environ...)
	d.cmd.Stdout, d.cmd.Stderr = f, f
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(10 * time.Second):
			_ = d.cmd.Process.Kill()
			<-d.done
			t.Errorf("%s did not stop on SIGTERM", name)
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for _, s := range sockets {
		for {
			c, err := net.Dial("unix", s)
			if err == nil {
				c.Close()
				break
			}
			select {
			case err := <-d.done:
				b, _ := os.ReadFile(d.log)
				t.Fatalf("%s exited (%v):\n%s", name, err, b)
			default:
			}
			if time.Now().After(deadline) {
				b, _ := os.ReadFile(d.log)
				t.Fatalf("%s: no socket %s:\n%s", name, s, b)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return d
}

// TestStorm is the storm benchmark of issue 15 (make bench-storm). It runs
// only with BATV_STORM=1, as root, with Postfix installed; the flags
// (after -args) set the load. It checks that every scenario treats every
// session as it should (bounces refused, legitimate mail accepted) and
// prints a markdown table per concurrency level.
func TestStorm(t *testing.T) {
	if os.Getenv(envStorm) != "1" {
		t.Skipf("set %s=1 to run the storm benchmark (make bench-storm)", envStorm)
	}
	var levels []int
	for _, f := range strings.Split(*flagConcurrency, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			t.Fatalf("-concurrency %q: want numbers like 20,100", *flagConcurrency)
		}
		levels = append(levels, n)
	}
	e := &env{t: t, dir: postfixtest.TempDir(t), legitFrom: "someone@remote.test", legitRcpt: "bob@example.com"}
	e.setup()
	scs := e.scenarios()
	scs = slices.DeleteFunc(scs, func(s scenario) bool {
		return !strings.Contains(s.name, *flagOnly) && s.name != nameAlone && s.name != nameBlanket
	})

	ports, err := postfixtest.FreePorts(len(scs))
	if err != nil {
		t.Fatal(err)
	}
	main := map[string]string{
		// The load comes from 127.0.0.1: no per-client limits (anvil).
		"smtpd_client_event_limit_exceptions": "127.0.0.0/8",
		"default_process_limit":               strconv.Itoa(max(slices.Max(levels)+20, 100)),
	}
	var master []string
	for i, s := range scs {
		for k, v := range s.main {
			main[k] = v
		}
		master = append(master, fmt.Sprintf("127.0.0.1:%d inet n - n - - smtpd", ports[i]),
			"  -o syslog_name=postfix/storm"+strconv.Itoa(i))
		keys := make([]string, 0, len(s.options))
		for k := range s.options {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			master = append(master, fmt.Sprintf("  -o { %s = %s }", k, s.options[k]))
		}
	}
	for _, s := range scs {
		master = append(master, s.master...)
	}
	pf := postfixtest.Start(t, postfixtest.Options{
		Recipients:  []string{"alice@example.com", "bob@example.com"},
		Main:        main,
		MasterExtra: master,
	})
	e.pf = pf
	daemons := make([][]*daemon, len(scs))
	for i, s := range scs {
		if s.start != nil {
			daemons[i] = s.start(t)
		}
	}
	version, _ := pf.PostconfValue("mail_version", false)

	var out strings.Builder
	fmt.Fprintf(&out, "# Storm benchmark (internal/stormbench)\n\n%d SMTP sessions per measurement, one message each, "+
		"%d%% legitimate (2 KiB, valid sender and recipient), the rest bounces (MAIL FROM:<>, 2 KiB), "+
		"half to an untagged address, half to a forged tag; batv refuses untagged bounces at %s; Postfix %s; %s.\n"+
		"CPU: Postfix's whole process tree plus the scenario's daemons, from the start of the load "+
		"until every accepted message has reached the sink.\n",
		*flagSessions, *flagLegit, strings.ToUpper(*flagUntaggedAt), version, machine())
	for _, clients := range levels {
		rows := make([]Row, len(scs))
		for i := range scs {
			rows[i].Scenario = scs[i].name
		}
		for run := range *flagRuns {
			for j := range scs {
				i := (j + run) % len(scs) // a different order in each run
				addr := fmt.Sprintf("127.0.0.1:%d", ports[i])
				m := e.measure(pf, addr, clients, daemons[i])
				e.check(scs[i], m.Result)
				t.Logf("%d clients, run %d, %s: %.0f refusals/s, %.1f legitimate/s, CPU %v, p99 %v",
					clients, run+1, scs[i].name, m.refusalsPerSec(), m.legitPerSec(), m.CPU, m.Result.Percentile(99))
				rows[i].Runs = append(rows[i].Runs, m)
			}
		}
		if err := WriteTable(&out, clients, rows, 1, 0); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Fprintf(&out, "\nMachine at the end: %s.\n", machine())
	fmt.Print(out.String())
	if *flagOut != "" {
		if err := os.WriteFile(*flagOut, []byte(out.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// setup builds batv from the tree, makes its keyring and the messages.
func (e *env) setup() {
	t := e.t
	e.batvBin, e.keyring = filepath.Join(e.dir, "batv"), filepath.Join(e.dir, "keyring.json")
	if b, err := exec.Command("go", "build", "-trimpath", "-o", e.batvBin, "github.com/batv/batv/cmd/batv").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	if b, err := exec.Command(e.batvBin, "keys", "init", "--keyring", e.keyring).CombinedOutput(); err != nil {
		t.Fatalf("batv keys init: %v\n%s", err, b)
	}
	keys, err := keyring.File{Path: e.keyring}.Load()
	if err != nil {
		t.Fatal(err)
	}
	signed, err := (&batv.Signer{Keys: keys}).Sign("alice@example.com")
	if err != nil {
		t.Fatal(err)
	}
	e.tagged = signed.Address
	e.recipients = e.file("relay_recipients", "alice@example.com x\nbob@example.com x\n")
	e.legit = message("From: Someone <someone@remote.test>\nTo: <bob@example.com>\nSubject: legitimate\nMessage-ID: <storm@remote.test>\n")
	e.bounce = message("From: MAILER-DAEMON@remote.test\nTo: <alice@example.com>\nSubject: Undelivered Mail Returned to Sender\n" +
		"Message-ID: <bounce@remote.test>\nContent-Type: text/plain\n")
}

// measure runs a warm-up, then the load on addr, and takes the CPU time of
// Postfix and the daemons until every accepted message has been delivered.
func (e *env) measure(pf *postfixtest.Instance, addr string, clients int, daemons []*daemon) Measurement {
	load := Load{Addr: addr, Concurrency: clients, Envelope: e.envelope(*flagLegit)}
	// Warm-up: smtpd processes and daemon connections as in steady state.
	pf.Sink().Reset()
	load.Sessions = 2 * clients
	warm := load.Run(context.Background())
	e.waitDelivered(pf, warm.Total(Accepted))

	pf.Sink().Reset()
	load.Sessions = *flagSessions
	cpu0 := e.cpu(pf, daemons)
	res := load.Run(context.Background())
	e.waitDelivered(pf, res.Total(Accepted))
	cpu := e.cpu(pf, daemons) - cpu0
	return Measurement{Result: res, CPU: cpu}
}

func (e *env) cpu(pf *postfixtest.Instance, daemons []*daemon) time.Duration {
	total, err := TreeCPU(pf.MasterPID())
	if err != nil {
		e.t.Fatal(err)
	}
	for _, d := range daemons {
		c, err := TreeCPU(d.cmd.Process.Pid)
		if err != nil {
			e.t.Fatal(err)
		}
		total += c
	}
	return total
}

// waitDelivered waits until the sink has n messages.
func (e *env) waitDelivered(pf *postfixtest.Instance, n int) {
	deadline := time.Now().Add(2 * time.Minute)
	for len(pf.Sink().Messages()) < n {
		if time.Now().After(deadline) {
			e.t.Fatalf("%d of %d accepted messages delivered after 2 minutes\n%s", len(pf.Sink().Messages()), n, pf.LogTail(30))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// check reports every session whose outcome is not what the scenario
// must do with its kind.
func (e *env) check(s scenario, r *Result) {
	want := [numKinds]Outcome{Untagged: Refused, Forged: Refused, Legit: Accepted}
	if s.untaggedAccepted {
		want[Untagged] = Accepted
	}
	for k := range numKinds {
		for o := range numOutcomes {
			if n := r.Count[k][o]; n > 0 && o != want[k] {
				e.t.Errorf("%s: %d %s sessions %s %s", s.name, n, k, o, r.Sample[k][o])
			}
		}
	}
}

// machine describes the machine: CPUs and load.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = ", load average " + strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return fmt.Sprintf("%d CPUs (%s)%s", runtime.NumCPU(), model, load)
}
