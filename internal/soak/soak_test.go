// Package soak holds the soak test: the batv binary under a load of at
// least 1,000 concurrent MTA sessions for a set time, with its memory,
// goroutines and file descriptors sampled and required to stay flat after
// warm-up. It runs only when BATV_SOAK is set to a duration:
//
//	BATV_SOAK=1m go test -run TestSoak -v ./internal/soak/    # CI (make soak-short)
//	BATV_SOAK=30m go test -run TestSoak -v -timeout 40m ./internal/soak/   # make soak
//
// BATV_SOAK_CONNS (default 1000) is the number of concurrent sessions,
// BATV_SOAK_RATE (default 1000) the messages per second they send in all,
// and BATV_SOAK_OUT a file to write the samples to, as a Markdown table.
// Everything runs on loopback: unix sockets for the milter, 127.0.0.1 for
// the metrics endpoint.
package soak

import (
	"bufio"
	"crypto/rand"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/mta"
	"github.com/batv/batv/internal/testenv/daemontest"
	"github.com/batv/batv/keyring"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// sample is one measurement of the daemon.
type sample struct {
	at                           time.Duration
	rss, heap                    float64 // bytes
	cpu                          float64 // seconds of CPU used by the daemon so far
	goroutines, fds, open        float64
	messages, wrong, reconnected int64
}

type daemonProc struct {
	cmd     *exec.Cmd
	log     *daemontest.Buffer
	metrics string
}

var client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

// scrape returns the metrics endpoint's series, by full name with labels.
func (d *daemonProc) scrape() (map[string]float64, error) {
	resp, err := client.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

// procStatus reads VmRSS (bytes) and the number of open descriptors.
func procStatus(pid int) (rss, fds float64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			rss = kb * 1024
		}
	}
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return rss, float64(len(entries)), err
}

func (d *daemonProc) sample() (sample, error) {
	m, err := d.scrape()
	if err != nil {
		return sample{}, err
	}
	rss, fds, err := procStatus(d.cmd.Process.Pid)
	if err != nil {
		return sample{}, err
	}
	return sample{rss: rss, fds: fds, heap: m["go_memstats_heap_inuse_bytes"], goroutines: m["go_goroutines"], cpu: m["process_cpu_seconds_total"],
		open: m[`batv_connections_open{listener="milter"}`]}, nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return math.NaN()
	}
	return s[len(s)/2]
}

func TestSoak(t *testing.T) {
	dur, err := time.ParseDuration(os.Getenv("BATV_SOAK"))
	if err != nil || dur <= 0 {
		t.Skip("set BATV_SOAK to a duration (1m in CI, 30m for the documented figures) to run the soak test")
	}
	conns := envInt("BATV_SOAK_CONNS", 1000)
	rate := envInt("BATV_SOAK_RATE", 1000)
	interval := max(5*time.Second, dur/60)
	warmup := max(15*time.Second, dur/5)

	// Descriptors: the sessions on both ends, with room to spare.
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < uint64(4*conns) {
		rl.Cur = min(rl.Max, uint64(4*conns+1024))
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur < uint64(2*conns+256) {
			t.Fatalf("file descriptor limit %d is too low for %d sessions: %v", rl.Cur, conns, err)
		}
	}

	dir := t.TempDir()
	bin := filepath.Join(dir, "batv")
	build := exec.Command("go", "build", "-o", bin, "github.com/batv/batv/cmd/batv")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("building batv: %v", err)
	}
	kr := filepath.Join(dir, "keyring.json")
	if _, err := (keyring.File{Path: kr}).Create(time.Now().Add(-30*24*time.Hour), rand.Reader, keyring.DefaultOptions()); err != nil {
		t.Fatal(err)
	}
	keys, err := keyring.File{Path: kr}.Load()
	if err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{log: &daemontest.Buffer{}, metrics: freeLoopbackPort(t)}
	sock := filepath.Join(dir, "milter.sock")
	config := filepath.Join(dir, "batv.toml")
	os.WriteFile(config, []byte(daemontest.Config{
		Keyring: kr, LogLevel: "warn", Metrics: d.metrics, MaxConnections: 2*conns + 100,
		Listeners: []daemontest.Listener{{Name: "milter", Address: "unix:" + sock, Roles: []string{"outbound", "inbound"}}},
		Sign:      `internal_networks = ["10.0.0.0/8"]`,
	}.TOML()), 0o600)

	// The daemon logs at warn level (a line per decision at 1,000
	// messages a second is too much to keep), so the test gives it a
	// metrics port rather than reading it from the log.
	d.cmd = exec.Command(bin, "milter", "--config", config)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- d.cmd.Wait() }()
	defer func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(60 * time.Second):
			d.cmd.Process.Kill()
		}
	}()
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, err := d.scrape(); err == nil {
			if _, err := os.Stat(sock); err == nil {
				break
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("batv exited: %v\n%s", err, d.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("batv did not start:\n%s", d.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	idle, err := d.sample()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("batv pid %d idle: RSS %.1f MiB, heap %.1f MiB, %v goroutines, %v fds",
		d.cmd.Process.Pid, idle.rss/(1<<20), idle.heap/(1<<20), idle.goroutines, idle.fds)

	// The load.
	var (
		messages, wrong, reconnects atomic.Int64
		firstErr                    atomic.Value
		wg                          sync.WaitGroup
	)
	stop := make(chan struct{})
	verifier := batv.Verifier{Keys: keys, Strict: true}
	signer := batv.Signer{Keys: keys, Now: func() time.Time { return time.Now().Add(-time.Hour) }}
	valid, err := signer.Sign("alice@example.com")
	if err != nil {
		t.Fatal(err)
	}
	forged := valid.Address[:14] + string("01"[(valid.Address[14]-'0'+1)%2]) + valid.Address[15:]
	perConn := float64(rate) / float64(conns) // messages per second per session
	fail := func(err error) {
		wrong.Add(1)
		firstErr.CompareAndSwap(nil, err)
	}
	for w := range conns {
		wg.Go(func() {
			rng := mrand.New(mrand.NewPCG(uint64(w), 1))
			// Spread the first connections over a second.
			time.Sleep(time.Duration(rng.Int64N(int64(time.Second))))
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if n > 0 {
					reconnects.Add(1)
				}
				soakSession(rng, sock, w, perConn, stop, &messages, fail, verifier, valid.Address, forged)
			}
		})
	}

	var samples []sample
	start := time.Now()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for time.Since(start) < dur {
		select {
		case err := <-exited:
			t.Fatalf("batv exited under load: %v\n%s", err, d.log.String())
		case <-tick.C:
		}
		s, err := d.sample()
		if err != nil {
			t.Fatalf("sampling: %v", err)
		}
		s.at, s.messages, s.wrong, s.reconnected = time.Since(start).Round(time.Second), messages.Load(), wrong.Load(), reconnects.Load()
		samples = append(samples, s)
		t.Logf("%8v  RSS %6.1f MiB  heap %6.1f MiB  goroutines %5.0f  fds %5.0f  open %5.0f  messages %9d  reconnects %7d  wrong %d",
			s.at, s.rss/(1<<20), s.heap/(1<<20), s.goroutines, s.fds, s.open, s.messages, s.reconnected, s.wrong)
	}
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)

	// After the load: every connection closed, back to the idle figures.
	var after sample
	for deadline := time.Now().Add(30 * time.Second); ; {
		if after, err = d.sample(); err != nil {
			t.Fatal(err)
		}
		if after.open == 0 && after.goroutines <= idle.goroutines && after.fds <= idle.fds || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("after the load: RSS %.1f MiB, heap %.1f MiB, %v goroutines, %v fds, %v open connections",
		after.rss/(1<<20), after.heap/(1<<20), after.goroutines, after.fds, after.open)

	// The verdict.
	if err, _ := firstErr.Load().(error); err != nil {
		t.Errorf("%d wrong answers; the first: %v", wrong.Load(), err)
	}
	var warnings []string
	for _, line := range strings.Split(d.log.String(), "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			warnings = append(warnings, line)
		}
	}
	if len(warnings) > 0 {
		t.Errorf("%d warnings in the daemon's log; the first: %s", len(warnings), warnings[0])
	}
	var post []sample
	for _, s := range samples {
		if s.at >= warmup {
			post = append(post, s)
		}
	}
	if len(post) < 3 {
		t.Fatalf("only %d samples after the warm-up", len(post))
	}
	third := max(1, len(post)/3)
	pick := func(ss []sample, f func(sample) float64) []float64 {
		var out []float64
		for _, s := range ss {
			out = append(out, f(s))
		}
		return out
	}
	type check struct {
		name            string
		f               func(sample) float64
		ratio, absolute float64
		unit            float64
		unitName        string
	}
	var report strings.Builder
	fmt.Fprintf(&report, "soak: %d sessions, %d messages/s asked, %v (warm-up %v, a sample every %v)\n\n", conns, rate, dur, warmup, interval)
	fmt.Fprintf(&report, "| after | RSS MiB | heap in use MiB | goroutines | fds | open connections | messages | reconnections |\n|---|---|---|---|---|---|---|---|\n")
	for _, s := range samples {
		fmt.Fprintf(&report, "| %v | %.1f | %.1f | %.0f | %.0f | %.0f | %d | %d |\n", s.at, s.rss/(1<<20), s.heap/(1<<20), s.goroutines, s.fds, s.open, s.messages, s.reconnected)
	}
	fmt.Fprintf(&report, "\nidle before: RSS %.1f MiB, heap %.1f MiB, %.0f goroutines, %.0f fds; after: RSS %.1f MiB, heap %.1f MiB, %.0f goroutines, %.0f fds, %.0f open\n",
		idle.rss/(1<<20), idle.heap/(1<<20), idle.goroutines, idle.fds, after.rss/(1<<20), after.heap/(1<<20), after.goroutines, after.fds, after.open)
	fmt.Fprintf(&report, "messages: %d checked in %v (%.0f/s), %d wrong, %d reconnections\n", messages.Load(), elapsed.Round(time.Second),
		float64(messages.Load())/elapsed.Seconds(), wrong.Load(), reconnects.Load())
	fmt.Fprintf(&report, "daemon CPU: %.1f s in %v (%.0f%% of one core, %.0f µs a message)\n\n", after.cpu-idle.cpu, elapsed.Round(time.Second),
		100*(after.cpu-idle.cpu)/elapsed.Seconds(), 1e6*(after.cpu-idle.cpu)/float64(max(1, messages.Load())))
	for _, c := range []check{
		{"goroutines", func(s sample) float64 { return s.goroutines }, 1.05, 50, 1, ""},
		{"file descriptors", func(s sample) float64 { return s.fds }, 1.05, 50, 1, ""},
		{"heap in use", func(s sample) float64 { return s.heap }, 1.25, 16 << 20, 1 << 20, " MiB"},
		{"RSS", func(s sample) float64 { return s.rss }, 1.25, 16 << 20, 1 << 20, " MiB"},
	} {
		first, last := median(pick(post[:third], c.f)), median(pick(post[len(post)-third:], c.f))
		limit := first*c.ratio + c.absolute
		verdict := "flat"
		if last > limit {
			verdict = "GREW"
			t.Errorf("%s grew after the warm-up: median %.1f%s in the first third, %.1f%s in the last (limit %.1f%s)",
				c.name, first/c.unit, c.unitName, last/c.unit, c.unitName, limit/c.unit, c.unitName)
		}
		fmt.Fprintf(&report, "- %s: median %.1f%s in the first third after warm-up, %.1f%s in the last third (limit %.1f%s): %s\n",
			c.name, first/c.unit, c.unitName, last/c.unit, c.unitName, limit/c.unit, c.unitName, verdict)
	}
	minOpen := math.Inf(1)
	for _, s := range post {
		minOpen = min(minOpen, s.open)
	}
	fmt.Fprintf(&report, "- open connections after warm-up: at least %.0f at every sample\n", minOpen)
	if minOpen < float64(conns)*0.95 {
		t.Errorf("only %.0f connections open at one sample, want about %d", minOpen, conns)
	}
	if after.open != 0 || after.goroutines > idle.goroutines+5 || after.fds > idle.fds+5 {
		t.Errorf("not back to idle after the load: %+v, idle %+v", after, idle)
	}
	t.Log("\n" + report.String())
	if out := os.Getenv("BATV_SOAK_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(report.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// soakSession is one MTA connection: a few messages at the session's pace,
// then an ending chosen at random (QUIT mostly; sometimes the connection
// just closes, between messages or in the middle of one, as when an MTA
// process dies).
func soakSession(rng *mrand.Rand, sock string, w int, perConn float64, stop <-chan struct{}, messages *atomic.Int64,
	fail func(error), verifier batv.Verifier, valid, forged string) {
	client := fmt.Sprintf("10.%d.%d.%d", w>>16&255, w>>8&255, w&255) // internal: ours to sign
	if w%2 == 1 {
		client = fmt.Sprintf("192.0.%d.%d", w>>8&255, w&255) // outside
	}
	// The milter must continue at CONNECT (and HELO).
	c, err := mta.New("unix", sock, 30*time.Second).Session(mta.SMTPClient{Addr: client, Port: 25000})
	if err != nil {
		fail(fmt.Errorf("session %d: connect: %w", w, err))
		time.Sleep(time.Second)
		return
	}
	defer c.Drop()
	n := 1 + rng.IntN(8)
	for i := range n {
		// Exponential gaps: a Poisson arrival of messages per session.
		gap := time.Duration(rng.ExpFloat64() / perConn * float64(time.Second))
		select {
		case <-stop:
			c.Close()
			return
		case <-time.After(gap):
		}
		if i == n-1 && rng.IntN(20) == 0 {
			// Dies in the middle of a message.
			c.Raw().Mail("", "")
			c.Raw().Rcpt(valid, "")
			return
		}
		if err := soakMessage(rng, c, client, w%2 == 0, verifier, valid, forged); err != nil {
			fail(fmt.Errorf("session %d: %w", w, err))
			return
		}
		messages.Add(1)
	}
	if rng.IntN(10) == 0 {
		return // closes without QUIT
	}
	c.Close()
}

func soakMessage(rng *mrand.Rand, c *mta.Session, client string, internal bool, verifier batv.Verifier, valid, forged string) error {
	switch rng.IntN(4) {
	case 0: // outbound: signed when the client is internal or authenticated
		auth := ""
		if rng.IntN(2) == 0 {
			auth = "alice"
		}
		res, err := c.Send(&mta.Message{Sender: "alice@example.com", Recipients: []string{"x@example.org"}, AuthUser: auth,
			Headers: []mta.Header{{Name: "Subject", Value: "soak"}}, Body: []byte("soak\r\n")})
		if err != nil {
			return err
		}
		if !internal && auth == "" {
			if len(res.Changes) != 0 {
				return fmt.Errorf("outside client %s, unauthenticated: signed anyway: %v", client, res)
			}
			return nil
		}
		if len(res.Changes) != 1 {
			return fmt.Errorf("submission from %s: %v", client, res)
		}
		signed := res.SignedSender()
		if signed == "" {
			return fmt.Errorf("submission: %v", res)
		}
		if r, _ := verifier.Verify(signed); r.Status != batv.Valid {
			return fmt.Errorf("signed as %s: %v", signed, r.Status)
		}
	case 1: // a valid bounce
		res, err := c.Send(&mta.Message{Recipients: []string{valid}})
		if err != nil {
			return err
		}
		if !res.Delivered() || len(res.Changes) != 2 {
			return fmt.Errorf("valid bounce: %v", res)
		}
	case 2: // a forged bounce
		res, err := c.Send(&mta.Message{Recipients: []string{forged}})
		if err != nil {
			return err
		}
		if res.Rcpts[0].SMTPCode != 550 {
			return fmt.Errorf("forged bounce: %v", res.Rcpts[0])
		}
	case 3: // a reply to a tag, with a forged status header
		res, err := c.Send(&mta.Message{Sender: "carol@example.org", Recipients: []string{valid},
			Headers: []mta.Header{{Name: "X-BATV-Status", Value: "valid"}}})
		if err != nil {
			return err
		}
		if !res.Delivered() || len(res.Changes) != 3 {
			return fmt.Errorf("reply: %v", res)
		}
	}
	return nil
}

// freeLoopbackPort returns a 127.0.0.1 address with a port free a moment
// ago.
func freeLoopbackPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
