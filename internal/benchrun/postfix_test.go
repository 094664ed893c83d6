package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/load"
	"github.com/batv/batv/internal/testenv/daemontest"
	"github.com/batv/batv/internal/testenv/postfixtest"
	"github.com/batv/batv/keyring"
)

// TestPostfixThroughput measures what the batv milter costs a real
// Postfix: the same private instance (internal/testenv/postfixtest) with
// and without smtpd_milters, the same smtp-source load, the time until
// every message has been accepted and until every message has reached the
// sink. It runs only with BATV_BENCH_POSTFIX=1 (as root, with Postfix
// and smtp-source installed). It fails unless every message was delivered,
// signed or rewritten as the milter must; the figures it logs in a table
// (go test -v) are not asserted, since the machine's load decides them.
// internal/stormbench measures the MX under a backscatter storm.
//
//	BATV_BENCH_POSTFIX=1 go test -v -run TestPostfixThroughput -timeout 30m ./internal/benchrun/
//
// BATV_BENCH_MESSAGES (default 2000), BATV_BENCH_SESSIONS (default 16) and
// BATV_BENCH_RUNS (default 3) change the load; BATV_BENCH_REUSE=1 sends all
// the messages of an smtp-source session over one SMTP connection (-d),
// and so over one milter connection, instead of one message per session.
// BATV_BENCH_MILTER_ENV adds environment variables to both milters
// ("GOMAXPROCS=1 GOGC=150"). Besides the rates it logs the CPU time of the whole machine (/proc/stat)
// and of the milter process per message.
func TestPostfixThroughput(t *testing.T) {
	if os.Getenv("BATV_BENCH_POSTFIX") != "1" {
		t.Skip("set BATV_BENCH_POSTFIX=1 to measure Postfix with and without the milter")
	}
	source, err := exec.LookPath("smtp-source")
	if err != nil {
		if source, err = exec.LookPath("/usr/sbin/smtp-source"); err != nil {
			t.Fatal("smtp-source (from the postfix package) is needed")
		}
	}
	messages, sessions, runs := envInt("BATV_BENCH_MESSAGES", 2000), envInt("BATV_BENCH_SESSIONS", 16), envInt("BATV_BENCH_RUNS", 3)
	reuse := os.Getenv("BATV_BENCH_REUSE") == "1"

	dir := postfixtest.TempDir(t)
	bin, refBin := filepath.Join(dir, "batv"), filepath.Join(dir, "refmilter")
	for out, pkg := range map[string]string{bin: "github.com/batv/batv/cmd/batv", refBin: "github.com/batv/batv/internal/refmilter"} {
		if b, err := exec.Command("go", "build", "-trimpath", "-o", out, pkg).CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, b)
		}
	}
	kr := filepath.Join(dir, "keyring.json")
	if b, err := exec.Command(bin, "keys", "init", "--keyring", kr).CombinedOutput(); err != nil {
		t.Fatalf("batv keys init: %v\n%s", err, b)
	}
	keys, err := keyring.File{Path: kr}.Load()
	if err != nil {
		t.Fatal(err)
	}
	signer := batv.Signer{Keys: keys}
	signed, err := signer.Sign("bob@example.com")
	if err != nil {
		t.Fatal(err)
	}
	tagged := signed.Address
	sock := filepath.Join(dir, "milter.sock")
	cfg := writeFile(dir, "batv.toml", daemontest.Config{
		Keyring: kr, LogLevel: "info",
		Listeners: []daemontest.Listener{{Name: "milter", Address: "unix:" + sock, Roles: []string{"outbound", "inbound"}, Postfix: true}},
	}.TOML())

	// The message: six headers, as in batv bench, and a 2 KiB body.
	msgFile := func(from, to string) string {
		var b strings.Builder
		fmt.Fprintf(&b, "From: %s\r\nTo: <%s>\r\nSubject: postfix throughput\r\nDate: %s\r\nMessage-ID: <%d@client.test>\r\nMIME-Version: 1.0\r\n\r\n",
			from, to, time.Now().Format(time.RFC1123Z), time.Now().UnixNano())
		for b.Len() < 2300 {
			b.WriteString("The quick brown fox jumps over the lazy dog, again and again.\r\n")
		}
		return writeFile(dir, "msg-"+strconv.Itoa(len(to)), b.String())
	}
	type workload struct {
		name, from, to, file, delivered string
	}
	workloads := []workload{
		// From 127.0.0.1, in mynetworks and in batv's default internal
		// networks: relayed, and signed by batv.
		{"outbound (signed)", "alice@example.com", "carol@remote.test", msgFile("Alice <alice@example.com>", "carol@remote.test"), "carol@remote.test"},
		// A bounce to a valid tag: verified and rewritten by batv.
		{"inbound valid bounce", "", tagged, msgFile("MAILER-DAEMON@remote.test", tagged), "bob@example.com"},
	}

	const (
		alone    = "Postfix alone"
		withRef  = "Postfix + reference"
		withBATV = "Postfix + batv"
	)
	setups := []string{alone, withRef, withBATV}
	refSock := filepath.Join(dir, "ref.sock")
	results := map[string]map[string][]pfResult{} // workload → setup → runs
	for _, setup := range setups {
		withMilter := setup == withBATV
		main := map[string]string{
			"mynetworks":               "127.0.0.0/8",
			"smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
			"default_process_limit":    "200",
		}
		if setup != alone {
			main["smtpd_milters"] = "unix:" + sock
			if setup == withRef {
				main["smtpd_milters"] = "unix:" + refSock
			}
			main["milter_default_action"] = "tempfail"
			main["milter_protocol"] = "6"
		}
		pf := postfixtest.Start(t, postfixtest.Options{
			Recipients: []string{"alice@example.com", "bob@example.com", tagged},
			Main:       main,
		})
		var d *exec.Cmd
		if setup != alone {
			d = exec.Command(bin, "milter", "--config", cfg)
			if setup == withRef {
				d = exec.Command(refBin, "-listen", "unix:"+refSock)
			}
			if env := os.Getenv("BATV_BENCH_MILTER_ENV"); env != "" {
				d.Env = append(os.Environ(), strings.Fields(env)...)
			}
			logPath := filepath.Join(dir, "milter.log")
			logf, err := os.Create(logPath)
			if err != nil {
				t.Fatal(err)
			}
			d.Stdout, d.Stderr = logf, logf
			if err := d.Start(); err != nil {
				t.Fatal(err)
			}
			if setup == withRef {
				waitSocket(t, refSock, logPath)
			} else {
				waitSocket(t, sock, logPath)
			}
		}
		for _, w := range workloads {
			if results[w.name] == nil {
				results[w.name] = map[string][]pfResult{}
			}
			// One warm-up round, then the measured runs.
			for r := -1; r < runs; r++ {
				pf.Sink().Reset()
				n := messages
				if r < 0 {
					n = messages / 10
				}
				busy0 := machineBusy(t)
				var cpu0 time.Duration
				if d != nil {
					cpu0, _ = load.ProcessCPU(d.Process.Pid)
				}
				start := time.Now()
				args := []string{"-s", strconv.Itoa(sessions), "-m", strconv.Itoa(n), "-M", "client.test",
					"-f", w.from, "-t", w.to, "-F", w.file}
				if reuse {
					args = append(args, "-d")
				}
				args = append(args, pf.MXAddr())
				if out, err := exec.Command(source, args...).CombinedOutput(); err != nil {
					t.Fatalf("smtp-source %s: %v\n%s\n%s", strings.Join(args, " "), err, out, pf.LogTail(30))
				}
				accepted := time.Since(start)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				for len(pf.Sink().Messages()) < n && ctx.Err() == nil {
					time.Sleep(5 * time.Millisecond)
				}
				cancel()
				delivered := time.Since(start)
				busy := machineBusy(t) - busy0
				var cpu time.Duration
				if d != nil {
					cpu1, _ := load.ProcessCPU(d.Process.Pid)
					cpu = cpu1 - cpu0
				}
				msgs := pf.Sink().Messages()
				if len(msgs) < n {
					t.Fatalf("%s, %s: %d of %d messages delivered\n%s", setup, w.name, len(msgs), n, pf.LogTail(30))
				}
				m := msgs[len(msgs)/2]
				want := w.to
				if withMilter {
					want = w.delivered
				}
				if !m.HasRcpt(want) || withMilter && w.from != "" && !strings.HasPrefix(m.From, "prvs=") {
					t.Fatalf("%s, %s: delivered %v", setup, w.name, m)
				}
				if r >= 0 {
					results[w.name][setup] = append(results[w.name][setup], pfResult{
						float64(n) / accepted.Seconds(), float64(n) / delivered.Seconds(),
						busy / time.Duration(n), cpu / time.Duration(n)})
				}
			}
		}
		if d != nil {
			_ = d.Process.Signal(os.Interrupt)
			_ = d.Wait()
		}
		pf.Stop()
	}

	pattern := "one message per SMTP session"
	if reuse {
		pattern = "all messages of a session on one connection (smtp-source -d)"
	}
	t.Logf("%d messages per run, %d smtp-source sessions, %s, median of %d runs, milter environment %q; %s",
		messages, sessions, pattern, runs, os.Getenv("BATV_BENCH_MILTER_ENV"), machine())
	t.Logf("%-22s %-22s %11s %12s %9s %10s %13s %11s", "workload", "setup", "accepted/s", "delivered/s",
		"x accept", "x deliver", "machine CPU", "milter CPU")
	for _, w := range workloads {
		base := medianResult(results[w.name][alone])
		for _, setup := range setups {
			m := medianResult(results[w.name][setup])
			t.Logf("%-22s %-22s %11.0f %12.0f %9.3f %10.3f %13v %11v", w.name, setup, m.accept, m.deliver,
				m.accept/base.accept, m.deliver/base.deliver, m.busy.Round(time.Microsecond), m.milter.Round(time.Microsecond))
		}
	}
}

// pfResult is one run: messages per second accepted, and delivered; the
// CPU time of the whole machine (all processes) and of the milter, per
// message.
type pfResult struct {
	accept, deliver float64
	busy, milter    time.Duration
}

// machineBusy is the CPU time all CPUs have spent outside idle and iowait
// since boot, from /proc/stat.
func machineBusy(t *testing.T) time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal guest...
	var busy uint64
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		if i != 3 && i != 4 && i < 7 { // not idle, iowait, steal
			busy += n
		}
	}
	return time.Duration(busy) * 10 * time.Millisecond
}

func medianResult(rs []pfResult) pfResult {
	mid := func(f func(pfResult) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return pfResult{
		accept:  mid(func(r pfResult) float64 { return r.accept }),
		deliver: mid(func(r pfResult) float64 { return r.deliver }),
		busy:    time.Duration(mid(func(r pfResult) float64 { return float64(r.busy) })),
		milter:  time.Duration(mid(func(r pfResult) float64 { return float64(r.milter) })),
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func waitSocket(t *testing.T, path, logPath string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("no milter socket %s; batv log:\n%s", path, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
