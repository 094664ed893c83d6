package daemon

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/mta"
	"github.com/batv/batv/internal/testenv/daemontest"
	"github.com/batv/batv/keyring"
)

// Faults while mail flows: the daemon runs in-process on a unix socket
// with a clock the test sets, mail goes through it from several MTA
// connections and every answer is checked, and the keyring, the
// configuration, the clock and the MTA misbehave in turn. docs/robustness.md
// has the table of what the daemon does for each.

// fakeClock is a settable clock.
type fakeClock struct{ ns atomic.Int64 }

func newClock(t time.Time) *fakeClock {
	c := &fakeClock{}
	c.Set(t)
	return c
}

func (c *fakeClock) Now() time.Time      { return time.Unix(0, c.ns.Load()).UTC() }
func (c *fakeClock) Set(t time.Time)     { c.ns.Store(t.UnixNano()) }
func (c *fakeClock) Add(d time.Duration) { c.ns.Add(int64(d)) }

// faultDaemon is a daemon run in-process for the fault tests.
type faultDaemon struct {
	t                       *testing.T
	dir, config, kr, sock   string
	clock                   *fakeClock
	reload, stop            chan struct{}
	done                    chan error
	d                       *Daemon
	log                     daemontest.Buffer
	goodKeyring, goodConfig []byte
	keys                    *keyring.Keyring // the keyring the daemon started with
}

// startFaultDaemon creates a keyring made at created and runs the daemon
// with the clock; signExtra and verifyExtra are added to the [sign] and
// [verify] tables.
func startFaultDaemon(t *testing.T, clock *fakeClock, created time.Time, signExtra, verifyExtra string) *faultDaemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "batv-fault")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	fd := &faultDaemon{t: t, dir: dir, config: filepath.Join(dir, "batv.toml"), kr: filepath.Join(dir, "keyring.json"),
		sock: filepath.Join(dir, "milter.sock"), clock: clock,
		reload: make(chan struct{}), stop: make(chan struct{}, 2), done: make(chan error, 1)}
	if fd.keys, err = (keyring.File{Path: fd.kr}).Create(created, rand.Reader, keyring.DefaultOptions()); err != nil {
		t.Fatal(err)
	}
	fd.goodKeyring, _ = os.ReadFile(fd.kr)
	fd.goodConfig = []byte(testConfig(fd.kr, fd.sock, signExtra, verifyExtra))
	if err := os.WriteFile(fd.config, fd.goodConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	fd.d = runTestDaemon(t, Options{ConfigPath: fd.config, Stderr: &fd.log, Now: clock.Now, Reload: fd.reload}, fd.stop, fd.done)
	return fd
}

func (fd *faultDaemon) dial() *mta.Session { return dialMX(fd.t, fd.sock) }

// scraper does not keep connections open, so that goroutine counts are
// not disturbed by idle HTTP connections.
var scraper = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

// metrics returns the metrics endpoint's text.
func (fd *faultDaemon) metrics() string {
	fd.t.Helper()
	resp, err := scraper.Get("http://" + fd.d.MetricsAddr() + "/metrics")
	if err != nil {
		fd.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// metric returns one series' value, or -1.
func (fd *faultDaemon) metric(series string) float64 {
	fd.t.Helper()
	return seriesValue(fd.metrics(), series)
}

// waitLog waits until the log holds more than n lines containing s, and
// returns the new count.
func (fd *faultDaemon) waitLog(s string, n int) int {
	fd.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c := strings.Count(fd.log.String(), s); c > n {
			return c
		}
		if time.Now().After(deadline) {
			fd.t.Fatalf("no new %q in the log", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sign signs addr with the daemon's starting keyring, as of at.
func (fd *faultDaemon) sign(addr string, at time.Time) string {
	fd.t.Helper()
	s := batv.Signer{Keys: fd.keys, Now: func() time.Time { return at }}
	r, err := s.Sign(addr)
	if err != nil || r.Address == "" {
		fd.t.Fatalf("sign %s: %v %v", addr, r.Skip, err)
	}
	return r.Address
}

// faultMail is the checked mail of the fault tests: a signed submission,
// a valid bounce, a forged bounce and an untagged bounce, in turn. The
// daemon must decide each one the same way whatever happens to its files.
func (fd *faultDaemon) faultMail(i int, c *mta.Session) error {
	now := fd.clock.Now()
	valid := fd.sign("alice@example.com", now.Add(-24*time.Hour))
	forged := valid[:14] + string("01"[(valid[14]-'0'+1)%2]) + valid[15:]
	verifier := batv.Verifier{Keys: fd.keys, Now: fd.clock.Now, Strict: true}
	switch i % 4 {
	case 0:
		res, err := c.Send(&mta.Message{Sender: "alice@example.com", Recipients: []string{"x@example.org"}, AuthUser: "alice"})
		if err != nil {
			return err
		}
		if len(res.Changes) != 1 || res.SignedSender() == "" {
			return fmt.Errorf("submission: %v", res)
		}
		if r, _ := verifier.Verify(res.SignedSender()); r.Status != batv.Valid {
			return fmt.Errorf("submission signed as %s: %v", res.SignedSender(), r.Status)
		}
	case 1:
		res, err := c.Send(&mta.Message{Recipients: []string{valid}})
		if err != nil {
			return err
		}
		if !res.Delivered() || len(res.Changes) != 2 {
			return fmt.Errorf("valid bounce to %s: %v", valid, res)
		}
	case 2, 3:
		rcpt := forged
		if i%4 == 3 {
			rcpt = "alice@example.com"
		}
		res, err := c.Send(&mta.Message{Recipients: []string{rcpt}})
		if err != nil {
			return err
		}
		// A forged tag is refused at RCPT, an untagged address at DATA.
		if res.Reply == nil || res.Reply.SMTPCode != 550 || len(res.Changes) != 0 {
			return fmt.Errorf("bounce to %s: %v", rcpt, res)
		}
	}
	return nil
}

// mailLoad is faultMail sent from several connections until stopped.
type mailLoad struct {
	count atomic.Int64
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	first error
}

// runLoad sends faultMail from n connections until stopped.
func (fd *faultDaemon) runLoad(n int) *mailLoad {
	l := &mailLoad{stop: make(chan struct{})}
	for w := range n {
		c := fd.dial()
		l.wg.Go(func() {
			defer c.Close()
			for i := w; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				if err := fd.faultMail(i, c); err != nil {
					l.mu.Lock()
					if l.first == nil {
						l.first = err
					}
					l.mu.Unlock()
					return
				}
				l.count.Add(1)
			}
		})
	}
	return l
}

// flow waits until n more messages were checked, and fails the test if
// they take more than 10 s or one was decided wrong.
func (l *mailLoad) flow(t *testing.T, n int64) {
	t.Helper()
	start := l.count.Load()
	for deadline := time.Now().Add(10 * time.Second); l.count.Load() < start+n; time.Sleep(time.Millisecond) {
		l.mu.Lock()
		err := l.first
		l.mu.Unlock()
		if err != nil {
			t.Fatalf("a wrong answer after %d right ones: %v", l.count.Load(), err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d messages in 10 s", l.count.Load()-start)
		}
	}
}

// end stops the load and returns the number of messages checked and the
// first wrong answer.
func (l *mailLoad) end() (int64, error) {
	close(l.stop)
	l.wg.Wait()
	return l.count.Load(), l.first
}

// replaceFile puts content at path the way a careful tool does: a
// temporary file renamed over it.
func replaceFile(t *testing.T, path string, content []byte, mode os.FileMode) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, content, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestKeyringFaultsWhileMailFlows: the keyring file is deleted, truncated,
// replaced by garbage, emptied, made world-readable and replaced by a
// directory while mail flows. Each time the daemon keeps the keys it has,
// logs why, counts a failed keyring reload, and decides every message as
// before; when the file is put back it reloads it. It never writes the
// file.
func TestKeyringFaultsWhileMailFlows(t *testing.T) {
	clock := newClock(time.Now())
	fd := startFaultDaemon(t, clock, clock.Now().Add(-30*24*time.Hour), "", "")
	load := fd.runLoad(4)
	const bad, good = "keyring changed but cannot be used", "keyring reloaded"

	faults := []struct {
		name   string
		break_ func()
		// restore puts the good file back.
		restore func()
	}{
		{"deleted", func() { os.Remove(fd.kr) }, func() { replaceFile(t, fd.kr, fd.goodKeyring, 0o600) }},
		{"truncated in place", func() { os.WriteFile(fd.kr, fd.goodKeyring[:len(fd.goodKeyring)/2], 0o600) },
			func() { os.WriteFile(fd.kr, fd.goodKeyring, 0o600) }},
		{"replaced by garbage", func() {
			garbage := make([]byte, len(fd.goodKeyring))
			rand.Read(garbage)
			replaceFile(t, fd.kr, garbage, 0o600)
		}, func() { replaceFile(t, fd.kr, fd.goodKeyring, 0o600) }},
		{"emptied", func() { replaceFile(t, fd.kr, nil, 0o600) }, func() { replaceFile(t, fd.kr, fd.goodKeyring, 0o600) }},
		{"made world-readable", func() { os.Chmod(fd.kr, 0o644) }, func() { os.Chmod(fd.kr, 0o600) }},
		{"replaced by a directory", func() {
			os.Remove(fd.kr)
			os.Mkdir(fd.kr, 0o700)
		}, func() {
			os.Remove(fd.kr)
			replaceFile(t, fd.kr, fd.goodKeyring, 0o600)
		}},
		{"a keyring of the wrong version", func() {
			replaceFile(t, fd.kr, []byte(strings.Replace(string(fd.goodKeyring), `"version": 1`, `"version": 99`, 1)), 0o600)
		}, func() { replaceFile(t, fd.kr, fd.goodKeyring, 0o600) }},
	}
	nBad, nGood := 0, 0
	for _, f := range faults {
		load.flow(t, 10)
		f.break_()
		nBad = fd.waitLog(bad, nBad)
		load.flow(t, 20) // with the file broken
		f.restore()
		nGood = fd.waitLog(good, nGood)
		t.Logf("%s: reported, then reloaded when put back", f.name)
	}
	load.flow(t, 10)
	count, err := load.end()
	if err != nil {
		t.Fatalf("a wrong answer after %d right ones: %v", count, err)
	}
	t.Logf("%d messages checked, each decided right, through %d faults", count, len(faults))
	if count < 100 {
		t.Errorf("only %d messages during the faults", count)
	}
	// The counters match the log: one failure per broken state the
	// watcher saw (a file rewritten in place can be seen twice: empty,
	// then half written), one success per repair.
	// The watcher's last poll may still be under way: wait until the
	// counters and the log agree, at most 10 s.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		nBad, nGood = strings.Count(fd.log.String(), bad), strings.Count(fd.log.String(), good)
		if fd.metric(`batv_reloads_total{result="failure",what="keyring"}`) == float64(nBad) &&
			fd.metric(`batv_reloads_total{result="success",what="keyring"}`) == float64(nGood) || time.Now().After(deadline) {
			break
		}
	}
	if got := fd.metric(`batv_reloads_total{result="failure",what="keyring"}`); got != float64(nBad) || nBad < len(faults) {
		t.Errorf("keyring reload failures counted %v, logged %d, for %d faults", got, nBad, len(faults))
	}
	if got := fd.metric(`batv_reloads_total{result="success",what="keyring"}`); got != float64(nGood) || nGood < len(faults) {
		t.Errorf("keyring reload successes counted %v, logged %d", got, nGood)
	}
	// The daemon never wrote the file: it is the one put back, and there
	// is nothing else in the directory but what the test made.
	if got, _ := os.ReadFile(fd.kr); string(got) != string(fd.goodKeyring) {
		t.Error("the keyring file changed")
	}
	var names []string
	entries, _ := os.ReadDir(fd.dir)
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"batv.toml", "keyring.json", "keyring.json.lock", "milter.sock"}; !slices.Equal(names, want) {
		t.Errorf("directory holds %v, want %v", names, want)
	}
	for _, line := range strings.Split(fd.log.String(), "\n") {
		if strings.Contains(line, bad) && !strings.Contains(line, fd.kr) {
			t.Errorf("a failure line that does not name the file: %s", line)
		}
	}
}

// TestConfigFaultsOnReload: a broken configuration on reload leaves the
// running one in force; mail is decided as before; each failure is logged
// and counted.
func TestConfigFaultsOnReload(t *testing.T) {
	clock := newClock(time.Now())
	fd := startFaultDaemon(t, clock, clock.Now().Add(-30*24*time.Hour), "", "")
	load := fd.runLoad(4)
	broken := []struct{ name, content string }{
		{"a syntax error", string(fd.goodConfig) + "\n[sign\n"},
		{"an unknown key", string(fd.goodConfig) + "\nlifetme = 3\n"},
		{"an invalid value", strings.Replace(string(fd.goodConfig), `level = "debug"`, `level = "verbose"`, 1)},
		{"an empty file", ""},
		{"no file", "-"},
	}
	failures := 0
	for _, b := range broken {
		load.flow(t, 10)
		if b.content == "-" {
			os.Remove(fd.config)
		} else if err := os.WriteFile(fd.config, []byte(b.content), 0o600); err != nil {
			t.Fatal(err)
		}
		fd.reload <- struct{}{}
		failures = fd.waitLog("reload failed: the running configuration and keyring stay in force", failures)
		t.Logf("%s: reload refused", b.name)
	}
	// A good file again: the reload succeeds.
	if err := os.WriteFile(fd.config, fd.goodConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	fd.reload <- struct{}{}
	reloads := fd.waitLog("msg=reloaded", 0)

	// A new keyring path is not used before a restart (the watcher keeps
	// the file it has), and the reload says so, and that the restart will
	// fail when the new path cannot be loaded.
	moved := strings.Replace(string(fd.goodConfig), fd.kr, fd.kr+".missing", 1)
	if err := os.WriteFile(fd.config, []byte(moved), 0o600); err != nil {
		t.Fatal(err)
	}
	// Every reload until the restart says so, not only the first.
	for i := range 2 {
		fd.reload <- struct{}{}
		fd.waitLog("msg=reloaded", reloads+i)
	}
	if n := strings.Count(fd.log.String(), "take effect at the next restart"); n != 2 {
		t.Errorf("a changed keyring path reported as needing a restart by %d reloads of 2", n)
	}
	if !strings.Contains(fd.log.String(), "the new keyring path cannot be used, so the next restart will fail") {
		t.Error("a keyring path that does not exist was not reported")
	}
	if err := os.WriteFile(fd.config, fd.goodConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	fd.reload <- struct{}{}
	fd.waitLog("msg=reloaded", reloads+2)
	load.flow(t, 10)
	count, err := load.end()
	if err != nil {
		t.Fatalf("a wrong answer after %d right ones: %v", count, err)
	}
	t.Logf("%d messages checked through %d refused reloads", count, len(broken))
	if got := fd.metric(`batv_reloads_total{result="failure",what="config"}`); got != float64(len(broken)) {
		t.Errorf("config reload failures %v, want %d", got, len(broken))
	}
	if got := fd.metric(`batv_reloads_total{result="success",what="config"}`); got != 4 {
		t.Errorf("config reload successes %v, want 4", got)
	}
}

// day returns the start of UTC day number n.
func day(n int) time.Time { return time.Unix(int64(n)*86400, 0).UTC() }

// bounce sends a bounce to rcpt and reports "accept", or the 550 reply.
func bounce(t *testing.T, c *mta.Session, rcpt string) string {
	t.Helper()
	res, err := c.Send(&mta.Message{Recipients: []string{rcpt}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Rcpts[0].Type == gomilter.ActionContinue {
		want := []string{"DELRCPT", "ADDRCPT"}
		if !res.Delivered() || len(res.Changes) != 2 {
			t.Fatalf("bounce to %s accepted without %v: %v", rcpt, want, res)
		}
		return "accept"
	}
	return res.Rcpts[0].SMTPReply
}

// signNow sends an authenticated submission and returns the signed sender.
func signNow(t *testing.T, c *mta.Session) string {
	t.Helper()
	res, err := c.Send(&mta.Message{Sender: "alice@example.com", Recipients: []string{"x@example.org"}, AuthUser: "alice"})
	if err != nil || len(res.Changes) != 1 || res.SignedSender() == "" {
		t.Fatalf("submission: %v %v", res, err)
	}
	return res.SignedSender()
}

// TestClockSteps: tags signed before the clock steps across midnight, the
// end of a year and the day-number wrap of 2027-07-01 (day 21000) verify
// after it, exactly as long as they should.
func TestClockSteps(t *testing.T) {
	if d := day(21000); d != time.Date(2027, 7, 1, 0, 0, 0, 0, time.UTC) {
		t.Fatalf("day 21000 is %v", d)
	}
	clock := newClock(time.Date(2026, 12, 31, 23, 59, 59, 900_000_000, time.UTC))
	fd := startFaultDaemon(t, clock, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), "", "")
	c := fd.dial()
	defer c.Close()
	const expired = "550 5.7.1 Bounce refused: the recipient address tag is expired (BATV)"
	check := func(when string, rcpt, want string) {
		t.Helper()
		if got := bounce(t, c, rcpt); got != want {
			t.Errorf("%s (%s): bounce to %s: %q, want %q", when, clock.Now().Format(time.RFC3339Nano), rcpt, got, want)
		}
	}

	// Across midnight and the new year.
	d := int(clock.Now().Unix() / 86400)
	a := signNow(t, c) // expiry day d+7
	clock.Set(day(d + 1).Add(100 * time.Millisecond))
	check("just after midnight", a, "accept")
	b := signNow(t, c) // expiry day d+8
	if a[6:9] == b[6:9] {
		t.Fatalf("tags before and after midnight have the same expiry: %s %s", a, b)
	}
	clock.Set(day(d + 8).Add(-time.Second))
	check("last second of the first tag", a, "accept")
	check("last second of the first tag", b, "accept")
	clock.Set(day(d + 8).Add(time.Second))
	check("first tag expired", a, expired)
	check("second tag on its last day", b, "accept")
	clock.Set(day(d + 9).Add(time.Second))
	check("second tag expired", b, expired)

	// Across the day-number wrap: day 20999 has expiry digits 999+7 = 006.
	clock.Set(day(20995).Add(12 * time.Hour))
	w0 := signNow(t, c) // expiry 21002: digits 002
	clock.Set(day(21000).Add(-100 * time.Millisecond))
	w1 := signNow(t, c) // expiry 21006: digits 006
	if w0[6:9] != "002" || w1[6:9] != "006" {
		t.Fatalf("expiry digits %s and %s, want 002 and 006", w0, w1)
	}
	check("the last instant of day 20999", w0, "accept")
	clock.Set(day(21000).Add(100 * time.Millisecond))
	check("day 21000 begins", w0, "accept")
	check("day 21000 begins", w1, "accept")
	w2 := signNow(t, c)
	if w2[6:9] != "007" {
		t.Fatalf("signed on day 21000: %s", w2)
	}
	clock.Set(day(21003).Add(-time.Second))
	check("last second of day 21002", w0, "accept")
	clock.Set(day(21003))
	check("day 21003", w0, expired)
	check("day 21003", w1, "accept")
	clock.Set(day(21007))
	check("day 21007", w1, expired)
	check("day 21007", w2, "accept")
	clock.Set(day(21008))
	check("day 21008", w2, expired)
}

// TestClockStepsBack: a clock stepped back across midnight makes a tag
// signed just before the step read as expiring one day beyond the window,
// so a bounce to it in that moment is refused as expired; verify.clock_skew
// covers it. (NTP slews small errors rather than stepping; this is for a
// host whose clock is corrected by a step, or a fleet with a skewed host.)
func TestClockStepsBack(t *testing.T) {
	for _, tt := range []struct {
		extra, want string
	}{
		{"", "550 5.7.1 Bounce refused: the recipient address tag is expired (BATV)"},
		{`clock_skew = "5m"`, "accept"},
	} {
		t.Run(tt.extra, func(t *testing.T) {
			clock := newClock(day(20500).Add(time.Second))
			fd := startFaultDaemon(t, clock, day(20400), "", tt.extra)
			c := fd.dial()
			defer c.Close()
			tagged := signNow(t, c)
			clock.Set(day(20500).Add(-2 * time.Second)) // stepped back 3 seconds
			if got := bounce(t, c, tagged); got != tt.want {
				t.Errorf("bounce to a tag signed 3 seconds later by the clock: %q, want %q", got, tt.want)
			}
		})
	}
}

// TestMTADropsConnectionsMidMessage: the MTA stops (Postfix's smtpd
// processes are killed when it stops or restarts) with messages in flight
// on every connection. The daemon logs each session's end, forgets the
// transactions, returns to its goroutine baseline, and serves the MTA
// when it comes back.
func TestMTADropsConnectionsMidMessage(t *testing.T) {
	clock := newClock(time.Now())
	fd := startFaultDaemon(t, clock, clock.Now().Add(-30*24*time.Hour), "", "")
	warm := fd.dial()
	if err := fd.faultMail(0, warm); err != nil {
		t.Fatal(err)
	}
	warm.Close()
	// The warm-up connection's goroutines end.
	for deadline, last := time.Now().Add(2*time.Second), 0; time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if n := runtime.NumGoroutine(); n == last {
			break
		} else {
			last = n
		}
	}
	baseline := runtime.NumGoroutine()
	valid := fd.sign("alice@example.com", clock.Now().Add(-time.Hour))

	const n = 50
	var conns []*mta.Session
	for range n {
		c := fd.dial()
		beginBounce(t, c, valid)
		conns = append(conns, c)
	}
	if got := fd.metric(`batv_connections_open{listener="milter"}`); got != n {
		t.Fatalf("%v connections open, want %d", got, n)
	}
	// The MTA goes away: every connection closes without a word.
	for _, c := range conns {
		c.Drop()
	}
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(fd.log.String(), "session ended in the middle of a message") < n {
		if time.Now().After(deadline) {
			t.Fatalf("not every session end logged:\n%s", fd.log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := fd.metric(`batv_connections_open{listener="milter"}`); got != 0 {
		t.Errorf("%v connections open after the MTA went away", got)
	}
	if got := fd.metric(`batv_sessions_ended_total{how="closed",listener="milter"}`); got != n {
		t.Errorf("sessions ended closed: %v, want %d", got, n)
	}
	for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > baseline; {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, baseline %d", runtime.NumGoroutine(), baseline)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The MTA is back: mail flows and is decided right, and nothing of
	// the dropped transactions leaks into the new ones.
	load := fd.runLoad(4)
	load.flow(t, 20)
	if count, err := load.end(); err != nil || count < 20 {
		t.Fatalf("after the MTA came back: %d messages, %v", count, err)
	}
	// No change, and the message goes on (at the end of a message, accept
	// is continue).
	if replies := rawEndOfMessage(t, fd.sock); len(replies) != 1 || replies[0] != 'c' && replies[0] != 'a' {
		t.Fatalf("end of message on a new connection: replies %q, want continue or accept alone", replies)
	}
}

// rawEndOfMessage opens a milter connection as Postfix does (OPTNEG with
// its offer, CONNECT from a remote MX) and sends an end of message with no
// transaction, which the milter library's client will not send. It returns
// the codes of the milter's replies, up to its final one.
func rawEndOfMessage(t *testing.T, sock string) []byte {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	write := func(cmd byte, data []byte) {
		t.Helper()
		p := binary.BigEndian.AppendUint32(nil, uint32(len(data)+1))
		if _, err := c.Write(append(append(p, cmd), data...)); err != nil {
			t.Fatal(err)
		}
	}
	read := func() byte {
		t.Helper()
		var hdr [5]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint32(hdr[:4]))-1); err != nil {
			t.Fatal(err)
		}
		return hdr[4]
	}
	var optneg []byte
	for _, v := range []uint32{6, 0x1ff, 0x1fffff} { // version, actions, protocol
		optneg = binary.BigEndian.AppendUint32(optneg, v)
	}
	write('O', optneg)
	if code := read(); code != 'O' {
		t.Fatalf("reply %q to OPTNEG", code)
	}
	// batv asked for no reply to CONNECT.
	write('C', []byte("mx.example.org\x004\x0f\xa0192.0.2.1\x00"))
	write('E', nil)
	var codes []byte
	for {
		code := read()
		codes = append(codes, code)
		if !strings.ContainsRune("+-2behimpq", rune(code)) { // not a modification or progress
			return codes
		}
	}
}

// TestNoSigningKey: when no key signs (here the only key starts signing in
// an hour), outbound mail goes out unsigned and the failure is logged and
// counted (sign.on_error = "continue"), or is deferred with 451 at the end
// of the message ("tempfail"); verification goes on; /healthz says 503.
func TestNoSigningKey(t *testing.T) {
	for _, tt := range []struct {
		onError string
		reply   string
	}{
		{"continue", ""},
		{"tempfail", "451 4.3.0"},
	} {
		t.Run(tt.onError, func(t *testing.T) {
			clock := newClock(time.Now())
			created := clock.Now().Add(time.Hour)
			fd := startFaultDaemon(t, clock, created, "on_error = \""+tt.onError+"\"", "")
			c := fd.dial()
			defer c.Close()
			res, err := c.Send(&mta.Message{Sender: "alice@example.com", Recipients: []string{"x@example.org"}, AuthUser: "alice"})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Changes) != 0 {
				t.Fatalf("signed with no signing key: %v", res)
			}
			switch {
			case tt.reply == "" && !res.Delivered():
				t.Fatalf("on_error=continue: %v", res)
			case tt.reply != "" && (res.Reply == nil || !strings.HasPrefix(res.Reply.SMTPReply, tt.reply)):
				t.Fatalf("on_error=tempfail: %v, want %s", res, tt.reply)
			}
			fd.waitLog("signing failed", 0) // sessions log through a queue
			if got := fd.metric(`batv_outbound_messages_total{result="error"}`); got != 1 {
				t.Errorf("outbound errors counted: %v", got)
			}
			// A pending key verifies: a bounce to a tag it made is accepted.
			tagged := fd.sign("alice@example.com", created.Add(time.Minute))
			clock.Set(created.Add(-time.Minute))
			if got := bounce(t, c, tagged); got != "accept" {
				t.Errorf("bounce to a tag of the pending key: %s", got)
			}
			resp, err := scraper.Get("http://" + fd.d.MetricsAddr() + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Errorf("/healthz: %d, want 503", resp.StatusCode)
			}
		})
	}
}
