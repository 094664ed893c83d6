package daemon

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
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

// testDaemon is a daemon run in-process on unix sockets in a temp dir.
type testDaemon struct {
	t       *testing.T
	dir     string
	config  string
	keyring string
	sock    string
	reload  chan struct{}
	stop    chan struct{}
	done    chan error
	d       *Daemon
	log     daemontest.Buffer
}

// testConfig is the daemon configuration of these tests: keyring kr,
// milter socket sock, then extra [sign] and [verify] settings.
func testConfig(kr, sock, sign, verify string) string {
	return daemontest.Config{
		Keyring: kr, KeyringPoll: "100ms", LogLevel: "debug", Metrics: "127.0.0.1:0", ShutdownTimeout: "2s",
		Listeners: []daemontest.Listener{{Name: "milter", Address: "unix:" + sock, Roles: []string{"outbound", "inbound"}}},
		Sign:      "internal_networks = []\n" + sign,
		Verify:    verify,
	}.TOML()
}

// keyringCreated is when the test keyrings are made: long enough ago that
// tags of the past days verify.
var keyringCreated = time.Now().Add(-30 * 24 * time.Hour)

func startTestDaemon(t *testing.T) *testDaemon {
	t.Helper()
	return startTestDaemonWith(t, func(td *testDaemon) string { return testConfig(td.keyring, td.sock, "", "") })
}

// startTestDaemonWith is startTestDaemon with the configuration that
// config returns.
func startTestDaemonWith(t *testing.T, config func(td *testDaemon) string) *testDaemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "batvd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	td := &testDaemon{t: t, dir: dir, keyring: filepath.Join(dir, "keyring.json"), sock: filepath.Join(dir, "m.sock"),
		config: filepath.Join(dir, "batv.toml"), reload: make(chan struct{}), stop: make(chan struct{}, 2), done: make(chan error, 1)}
	if _, err := (keyring.File{Path: td.keyring}).Create(keyringCreated, rand.Reader, keyring.DefaultOptions()); err != nil {
		t.Fatal(err)
	}
	td.writeConfig(config(td))
	td.d = runTestDaemon(t, Options{ConfigPath: td.config, Stderr: &td.log, Reload: td.reload}, td.stop, td.done)
	return td
}

func (td *testDaemon) writeConfig(s string) {
	td.t.Helper()
	if err := os.WriteFile(td.config, []byte(s), 0o600); err != nil {
		td.t.Fatal(err)
	}
}

// sendReload asks for a reload and waits until the daemon logged its result.
func (td *testDaemon) sendReload(want string) {
	td.t.Helper()
	before := strings.Count(td.log.String(), want)
	td.reload <- struct{}{}
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(td.log.String(), want) == before {
		if time.Now().After(deadline) {
			td.t.Fatalf("no %q in the log after reload", want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (td *testDaemon) dial() *mta.Session { return dialMX(td.t, td.sock) }

// dialMX connects to the milter socket as Postfix's smtpd does for a
// client at 192.0.2.1, a remote MX; the milter must continue at CONNECT
// and HELO.
func dialMX(t *testing.T, sock string) *mta.Session {
	t.Helper()
	c, err := mta.New("unix", sock, 10*time.Second).Session(mta.SMTPClient{Addr: "192.0.2.1", Port: 4000})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// beginBounce sends MAIL FROM:<> and RCPT TO:<rcpt> on c and leaves the
// message open; the milter must continue at both.
func beginBounce(t *testing.T, c *mta.Session, rcpt string) {
	t.Helper()
	if r, err := c.Raw().Mail("", ""); err != nil || r.Type != gomilter.ActionContinue {
		t.Fatal(r, err)
	}
	if r, err := c.Raw().Rcpt(rcpt, ""); err != nil || r.Type != gomilter.ActionContinue {
		t.Fatal(r, err)
	}
}

// endMessage sends the end of the message begun on c: DATA, the end of
// the headers and the end of the message, of which Postfix sends batv
// only the last (batv opts out of the others).
func endMessage(c *mta.Session) ([]gomilter.ModifyAction, *gomilter.Action, error) {
	if _, err := c.Raw().DataStart(); err != nil {
		return nil, nil, err
	}
	if _, err := c.Raw().HeaderEnd(); err != nil {
		return nil, nil, err
	}
	return c.Raw().BodyReadFrom(strings.NewReader(""))
}

// metric returns the value of one series from the metrics endpoint, or -1.
func (td *testDaemon) metric(series string) float64 {
	td.t.Helper()
	resp, err := http.Get("http://" + td.d.MetricsAddr() + "/metrics")
	if err != nil {
		td.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return seriesValue(string(body), series)
}

// runTestDaemon runs the daemon with opts until the test ends, stopped by
// stop and sending Run's result to done, and returns it once it is ready.
// At the end it stops the daemon, fails the test if Run failed or did not
// return, and logs the daemon's log (opts.Stderr) if the test failed. A
// test that reads done itself puts a result back for the cleanup.
func runTestDaemon(t *testing.T, opts Options, stop chan struct{}, done chan error) *Daemon {
	t.Helper()
	opts.Stop = stop
	ready := make(chan *Daemon, 1)
	opts.Ready = func(d *Daemon) { ready <- d }
	go func() { done <- Run(opts) }()
	var d *Daemon
	select {
	case d = <-ready:
	case err := <-done:
		t.Fatalf("Run: %v\n%s", err, opts.Stderr)
	case <-time.After(10 * time.Second):
		t.Fatalf("daemon not ready\n%s", opts.Stderr)
	}
	t.Cleanup(func() {
		select {
		case stop <- struct{}{}:
		default:
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("the daemon did not stop")
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", opts.Stderr)
		}
	})
	return d
}

// seriesValue returns the value of one series in a metrics page, or -1.
func seriesValue(page, series string) float64 {
	for _, line := range strings.Split(page, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return -1
}

// signer signs with whatever the keyring file says now.
func (td *testDaemon) sign(addr string, daysAgo int) string {
	td.t.Helper()
	kr, err := keyring.File{Path: td.keyring}.Load()
	if err != nil {
		td.t.Fatal(err)
	}
	s := batv.Signer{Keys: kr, Now: func() time.Time { return time.Now().Add(-time.Duration(daysAgo) * 24 * time.Hour) }}
	r, err := s.Sign(addr)
	if err != nil {
		td.t.Fatal(err)
	}
	return r.Address
}

// mail is one checked transaction of the load.
type mail struct {
	msg   mta.Message
	check func(*mta.Result) error
}

// load runs transactions from n connections until stop is closed and
// returns how many were checked and every wrong answer.
func (td *testDaemon) load(n int, stop <-chan struct{}, next func(i int) mail) (int64, []error) {
	var (
		wg    sync.WaitGroup
		count atomic.Int64
		mu    sync.Mutex
		errs  []error
	)
	for w := range n {
		wg.Go(func() {
			c := td.dial()
			defer c.Close()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				m := next(w*1_000_000 + i)
				res, err := c.Send(&m.msg)
				if err == nil {
					err = m.check(res)
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
				count.Add(1)
			}
		})
	}
	wg.Wait()
	return count.Load(), errs
}

// mixedMail is the load of the reload tests: signed submissions, valid and
// forged bounces, each checked against every key the test ever used.
func (td *testDaemon) mixedMail(valid string, verifier func() *batv.Verifier) func(int) mail {
	forged := valid[:14] + string("01"[(valid[14]-'0'+1)%2]) + valid[15:]
	if forged == valid {
		forged = valid[:14] + "f" + valid[15:]
	}
	return func(i int) mail {
		switch i % 3 {
		case 0:
			return mail{msg: mta.Message{Sender: "alice@example.com", Recipients: []string{"x@example.org"}, AuthUser: "alice"},
				check: func(r *mta.Result) error {
					if len(r.Changes) != 1 || r.SignedSender() == "" {
						return fmt.Errorf("submission: %v", r)
					}
					v, _ := verifier().Verify(r.SignedSender())
					if v.Status != batv.Valid {
						return fmt.Errorf("submission signed %s: %v", r.SignedSender(), v.Status)
					}
					return nil
				}}
		case 1:
			return mail{msg: mta.Message{Sender: "", Recipients: []string{valid}},
				check: func(r *mta.Result) error {
					if !r.Delivered() || len(r.Changes) != 2 {
						return fmt.Errorf("valid bounce: %v", r)
					}
					return nil
				}}
		}
		return mail{msg: mta.Message{Sender: "", Recipients: []string{forged}},
			check: func(r *mta.Result) error {
				if r.Rcpts[0].SMTPCode != 550 {
					return fmt.Errorf("forged bounce: %v", r.Rcpts[0])
				}
				return nil
			}}
	}
}

func TestReloadUnderLoad(t *testing.T) {
	td := startTestDaemon(t)
	valid := td.sign("alice@example.com", 1)
	// Every key the keyring ever held verifies the signed senders.
	var keysMu sync.Mutex
	allKeys := map[int][]byte{}
	remember := func() {
		kr, err := keyring.File{Path: td.keyring}.Load()
		if err != nil {
			t.Fatal(err)
		}
		keysMu.Lock()
		defer keysMu.Unlock()
		for _, k := range kr.Keys(time.Now()) {
			key, _ := kr.VerificationKey(time.Now(), k.ID, "example.com")
			allKeys[k.ID] = key.Secret
		}
	}
	remember()
	verifier := func() *batv.Verifier {
		keysMu.Lock()
		defer keysMu.Unlock()
		keys := multiKeys{}
		for id, s := range allKeys {
			keys[id] = s
		}
		return &batv.Verifier{Keys: keys, Strict: true}
	}

	stop := make(chan struct{})
	var count int64
	var errs []error
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		count, errs = td.load(8, stop, td.mixedMail(valid, verifier))
	}()

	time.Sleep(200 * time.Millisecond)
	// (a) a new valid keyring: rotated, signing with the new key at once.
	if _, _, err := (keyring.File{Path: td.keyring}).Rotate(time.Now(), 0, rand.Reader); err != nil {
		t.Fatal(err)
	}
	remember()
	td.sendReload("msg=reloaded")
	newID, _ := td.d.keys.Current().SigningKeyID(time.Now())
	time.Sleep(200 * time.Millisecond)

	// (b) a broken keyring: the daemon keeps the keys it has.
	good, _ := os.ReadFile(td.keyring)
	if err := os.WriteFile(td.keyring, []byte("{ this is not a keyring"), 0o600); err != nil {
		t.Fatal(err)
	}
	td.sendReload("reload failed")
	time.Sleep(200 * time.Millisecond)

	// (c) a broken configuration.
	if err := os.WriteFile(td.keyring, good, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _ := os.ReadFile(td.config)
	td.writeConfig(string(cfg) + "\n[sign]\nlifetime = 99\n")
	td.sendReload("reload failed")
	time.Sleep(200 * time.Millisecond)
	close(stop)
	<-loaded

	if len(errs) > 0 {
		t.Fatalf("%d wrong answers out of %d; first: %v", len(errs), count, errs[0])
	}
	if count < 30 {
		t.Fatalf("only %d messages during the reloads", count)
	}
	if id, _ := td.d.keys.Current().SigningKeyID(time.Now()); id != newID || newID == 0 {
		t.Fatalf("signing key %d after the failed reloads, want %d", id, newID)
	}
	if got := td.metric(`batv_reloads_total{result="success",what="config"}`); got != 1 {
		t.Errorf("config reload successes: %v", got)
	}
	if got := td.metric(`batv_reloads_total{result="failure",what="config"}`); got != 2 {
		t.Errorf("config reload failures: %v", got)
	}
	if got := td.metric(`batv_keyring_signing_key_id`); got != float64(newID) {
		t.Errorf("signing key id metric %v, want %d", got, newID)
	}
	t.Logf("%d messages checked during three reloads", count)
}

type multiKeys map[int][]byte

func (m multiKeys) SigningKey(time.Time, string) (batv.Key, error) {
	return batv.Key{}, batv.ErrNoSigningKey
}
func (m multiKeys) VerificationKey(_ time.Time, id int, _ string) (batv.Key, bool) {
	s, ok := m[id]
	return batv.Key{ID: id, Secret: s}, ok
}

func TestKeyringFileChangeIsPickedUp(t *testing.T) {
	td := startTestDaemon(t)
	if _, _, err := (keyring.File{Path: td.keyring}).Rotate(time.Now(), 0, rand.Reader); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(td.log.String(), "keyring reloaded") {
		if time.Now().After(deadline) {
			t.Fatal("keyring change not picked up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if id, _ := td.d.keys.Current().SigningKeyID(time.Now()); id != 1 {
		t.Fatalf("signing key %d, want 1", id)
	}
	if err := os.Chmod(td.keyring, 0o644); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(td.log.String(), "keyring changed but cannot be used") {
		if time.Now().After(deadline) {
			t.Fatal("world-readable keyring not reported")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := td.metric(`batv_reloads_total{result="failure",what="keyring"}`); got != 1 {
		t.Errorf("keyring reload failures: %v", got)
	}
}

func TestShutdownUnderLoad(t *testing.T) {
	td := startTestDaemon(t)
	valid := td.sign("alice@example.com", 1)
	// Messages in flight: MAIL and RCPT sent, end of message not yet.
	var conns []*mta.Session
	for range 6 {
		c := td.dial()
		beginBounce(t, c, valid)
		conns = append(conns, c)
	}
	idle := td.dial()
	start := time.Now()
	td.stop <- struct{}{}
	// The idle connection is closed at once.
	if err := idle.WaitClosed(2 * time.Second); err != nil {
		t.Fatalf("idle connection after SIGTERM: %v", err)
	}
	// Half the messages in flight finish in time, with the right answer
	// (at the end of the message, accept is continue).
	for _, c := range conns[:3] {
		changes, end, err := endMessage(c)
		if err != nil || end.Type != gomilter.ActionContinue && end.Type != gomilter.ActionAccept || len(changes) != 2 {
			t.Fatalf("message finishing during shutdown: %v %v %v", end, changes, err)
		}
	}
	// The others never finish: their connections are closed at the
	// deadline, which Postfix turns into its milter_default_action.
	select {
	case err := <-td.done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		td.done <- nil // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("daemon did not exit")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("shutdown took %v with a 2s deadline", took)
	}
	for _, c := range conns[3:] {
		if _, _, err := endMessage(c); err == nil {
			t.Fatal("a connection outlived the shutdown deadline")
		}
	}
}

func TestMetricsCountExactly(t *testing.T) {
	td := startTestDaemon(t)
	valid := td.sign("alice@example.com", 1)
	c := td.dial()
	defer c.Close()
	for _, m := range []mta.Message{
		{Sender: "alice@example.com", Recipients: []string{"x@example.org"}, AuthUser: "alice"},      // signed
		{Sender: "alice@example.com", Recipients: []string{"x@example.org"}, AuthUser: "alice"},      // signed
		{Sender: "alice@example.org", Recipients: []string{"x@example.org"}, AuthUser: "alice"},      // foreign domain
		{Sender: "", Recipients: []string{valid}},                                                    // valid
		{Sender: "", Recipients: []string{valid, "prvs=0000000000=bob@example.com"}},                 // valid + expired
		{Sender: "", Recipients: []string{"bob@example.com"}},                                        // untagged
		{Sender: "", Recipients: []string{"postmaster@example.com"}},                                 // exempt
		{Sender: "someone@example.org", Recipients: []string{"bob@example.com", "x@elsewhere.test"}}, // not a bounce
	} {
		if _, err := c.Send(&m); err != nil {
			t.Fatal(err)
		}
	}
	// Submitted on the MTA host: ours to sign, but a bounce is no outbound
	// message; a reply to an expired tag is accepted as expired.
	lo, err := mta.New("unix", td.sock, 10*time.Second).Session(mta.SMTPClient{})
	if err != nil {
		t.Fatal(err)
	}
	defer lo.Close()
	for _, m := range []mta.Message{
		{Sender: "", Recipients: []string{valid}},
		{Sender: "someone@example.org", Recipients: []string{td.sign("alice@example.com", 20)}},
	} {
		if _, err := lo.Send(&m); err != nil {
			t.Fatal(err)
		}
	}
	for series, want := range map[string]float64{
		`batv_outbound_messages_total{result="signed"}`:                    2,
		`batv_outbound_messages_total{result="foreign-domain"}`:            2,  // the reply from the MTA host too
		`batv_outbound_messages_total{result="null-sender"}`:               -1, // bounces are not outbound
		`batv_decision_seconds_count{direction="outbound"}`:                4,  // one per message ours to sign but the bounce
		`batv_inbound_recipients_total{action="accept",outcome="expired"}`: 1,
		`batv_inbound_recipients_total{action="accept",outcome="valid"}`:   3,
		`batv_inbound_recipients_total{action="reject",outcome="expired"}`: 1,
		`batv_inbound_recipients_total{action="reject",outcome="missing"}`: 1,
		`batv_inbound_recipients_total{action="exempt",outcome="missing"}`: 1,
		`batv_bounces_multiple_recipients_total`:                           1,
		`batv_connections_open{listener="milter"}`:                         2,
		`batv_connections_total{listener="milter",result="accepted"}`:      2,
		// Every recipient of every message is decided by the inbound role.
		`batv_decision_seconds_count{direction="inbound"}`:                     12,
		`batv_keyring_keys{state="signing"}`:                                   1,
		`batv_grace_period_remaining_seconds`:                                  0,
		`batv_reloads_total{result="success",what="config"}`:                   0,
		`batv_build_info{goversion="` + runtime.Version() + `",version="dev"}`: 1,
		`batv_inbound_recipients_total{action="pass",outcome="missing"}`:       1,  // mail with a sender, counted too
		`batv_socketmap_lookups_total{map="untag",result="found"}`:             -1, // no socketmap here
		`batv_inbound_recipients_total{action="deliver-mark",outcome="valid"}`: -1,
	} {
		if got := td.metric(series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	// Loaded at start, a few seconds ago at most.
	for _, what := range []string{"config", "keyring"} {
		at := td.metric(`batv_last_load_success_timestamp_seconds{what="` + what + `"}`)
		if age := float64(time.Now().Unix()) - at; age < 0 || age > 60 {
			t.Errorf("%s loaded %v seconds ago", what, age)
		}
	}
	resp, err := http.Get("http://" + td.d.MetricsAddr() + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
}

func TestRunRefusesBadStart(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "batv.toml")
	kr := filepath.Join(dir, "keyring.json")
	os.WriteFile(cfg, []byte(fmt.Sprintf("keyring = %q\n[sign]\ndomains = [\"example.com\"]\n", kr)), 0o600)
	// A missing keyring is not created unless create_keyring is set.
	err := Run(Options{ConfigPath: cfg, Stderr: io.Discard})
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing keyring: %v", err)
	}
	// A world-readable keyring is refused.
	keyring.File{Path: kr}.Create(time.Now(), rand.Reader, keyring.DefaultOptions())
	os.Chmod(kr, 0o644)
	if err := Run(Options{ConfigPath: cfg, Stderr: io.Discard}); !errors.Is(err, keyring.ErrInsecureMode) {
		t.Fatalf("world-readable keyring: %v", err)
	}
	// A configuration error is ErrConfig, with every problem.
	os.WriteFile(cfg, []byte("[sign]\nlifetime = 0\ndomains = [\"a b\"]\nbogus = 1\n"), 0o600)
	err = Run(Options{ConfigPath: cfg, Stderr: io.Discard})
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "bogus") || !strings.Contains(err.Error(), "sign.lifetime: 0") {
		t.Fatalf("bad configuration: %v", err)
	}
}
