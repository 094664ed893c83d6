package daemon

import (
	"bufio"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/mta"
	"github.com/batv/batv/internal/testenv/daemontest"
	"github.com/batv/batv/keyring"
	"github.com/batv/batv/keyring/keyringtest"
)

// Security checks of the running daemon: no key material in any log line,
// error or metrics output, and files and sockets created with the modes
// docs/security.md promises.

// readerOf yields b, then fails: the test knows every secret the daemon
// has.
type readerOf struct{ b []byte }

func (r *readerOf) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// socketmapQuery sends one socketmap request and returns the reply.
func socketmapQuery(t *testing.T, path, name, key string) string {
	t.Helper()
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	q := name + " " + key
	fmt.Fprintf(c, "%d:%s,", len(q), q)
	r := bufio.NewReader(c)
	lenStr, err := r.ReadString(':')
	if err != nil {
		t.Fatalf("socketmap %s %s: %v", name, key, err)
	}
	n, _ := strconv.Atoi(strings.TrimSuffix(lenStr, ":"))
	buf := make([]byte, n+1)
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

// TestNoKeyMaterialInLogsErrorsOrMetrics runs the daemon at debug level
// with a keyring whose secrets the test knows, in both log formats,
// through every kind of decision, socketmap lookups, reloads that work and
// reloads that fail, and a keyring damaged inside its secrets, and scans
// the whole log, the errors and the metrics output for any part of any
// secret.
func TestNoKeyMaterialInLogsErrorsOrMetrics(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) { noKeyMaterial(t, format) })
	}
}

func noKeyMaterial(t *testing.T, format string) {
	dir := t.TempDir()
	kr := filepath.Join(dir, "keyring.json")
	sock, mapSock := filepath.Join(dir, "milter.sock"), filepath.Join(dir, "map.sock")
	rng := rand.New(rand.NewChaCha8([32]byte{'k', 'e', 'y', 's'}))
	secrets := [][]byte{make([]byte, 32), make([]byte, 32), []byte("an-exim-style-secret")}
	for _, s := range secrets[:2] {
		for i := range s {
			s[i] = byte(rng.Uint32())
		}
	}
	now := time.Now()
	created := now.Add(-30 * 24 * time.Hour)
	if _, err := (keyring.File{Path: kr}).Create(created, &readerOf{b: secrets[0]}, keyring.DefaultOptions()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := (keyring.File{Path: kr}).Rotate(now.Add(-24*time.Hour), 0, &readerOf{b: secrets[1]}); err != nil {
		t.Fatal(err)
	}
	if _, err := (keyring.File{Path: kr}).Import(now.Add(-24*time.Hour), 7, secrets[2], keyring.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(kr)
	for _, s := range secrets {
		if !strings.Contains(string(good), base64.StdEncoding.EncodeToString(s)) {
			t.Fatal("the keyring does not hold the test secrets")
		}
	}
	// The scan finds a secret quoted in part, in any encoding.
	for _, leak := range []string{
		base64.StdEncoding.EncodeToString(secrets[0])[7:20], base64.RawURLEncoding.EncodeToString(secrets[1][1:])[3:16],
		hex.EncodeToString(secrets[1])[30:43], strings.ToUpper(hex.EncodeToString(secrets[0]))[1:14], string(secrets[2][5:14]),
	} {
		if w, _ := keyringtest.Find("error: "+leak+" here", secrets); w == "" {
			t.Fatalf("the scan misses %q", leak)
		}
	}
	loaded, err := keyring.File{Path: kr}.Load()
	if err != nil {
		t.Fatal(err)
	}

	config := filepath.Join(dir, "batv.toml")
	goodConfig := fmt.Sprintf(`keyring = %q
keyring_poll = "100ms"
[log]
level = "debug"
format = %q
[metrics]
listen = "127.0.0.1:0"
[limits]
shutdown_timeout = "2s"
[[listener]]
name = "milter"
address = "unix:%s"
roles = ["outbound", "inbound"]
[socketmap]
address = "unix:%s"
[sign]
domains = ["example.com"]
internal_networks = []
[verify]
grace_until = 2000-01-01T00:00:00Z
`, kr, format, sock, mapSock)
	os.WriteFile(config, []byte(goodConfig), 0o600)
	var logBuf daemontest.Buffer
	reload, stop, done := make(chan struct{}), make(chan struct{}, 1), make(chan error, 1)
	ready := make(chan *Daemon, 1)
	go func() {
		done <- Run(Options{ConfigPath: config, Stderr: &logBuf, Reload: reload, Stop: stop, Ready: func(d *Daemon) { ready <- d }})
	}()
	var d *Daemon
	select {
	case d = <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not ready")
	}
	// waitFor waits until the log holds more than n lines with any of
	// subs, and returns how many it holds.
	waitFor := func(n int, subs ...string) int {
		t.Helper()
		count := func() int {
			c := 0
			for _, s := range subs {
				c += strings.Count(logBuf.String(), s)
			}
			return c
		}
		deadline := time.Now().Add(10 * time.Second)
		for count() <= n {
			if time.Now().After(deadline) {
				t.Fatalf("no new %q in the log:\n%s", subs, logBuf.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
		return count()
	}
	reloaded := "msg=reloaded"
	if format == "json" {
		reloaded = `"msg":"reloaded"`
	}
	const bad, ok = "keyring changed but cannot be used", "keyring reloaded"

	// Every kind of decision.
	c := dialMX(t, sock)
	signer := func(ago time.Duration) batv.Signer {
		return batv.Signer{Keys: loaded, Now: func() time.Time { return now.Add(-ago) }}
	}
	s := signer(time.Hour)
	valid, _ := s.Sign("alice@example.com")
	s = signer(10 * 24 * time.Hour)
	expired, _ := s.Sign("alice@example.com")
	forged := valid.Address[:14] + string("01"[(valid.Address[14]-'0'+1)%2]) + valid.Address[15:]
	for _, m := range []mta.Message{
		{Sender: "alice@example.com", Recipients: []string{"x@example.org"}, AuthUser: "alice"},
		{Sender: "alice@example.org", Recipients: []string{"x@example.org"}, AuthUser: "alice"},
		{Recipients: []string{valid.Address, forged, expired.Address, "prvs=3000000000=alice@example.com", "prvs=x=alice@example.com",
			"alice@example.com", "postmaster@example.com", "someone@example.org"}},
		{Sender: "carol@example.org", Recipients: []string{forged, valid.Address}, Headers: []mta.Header{{Name: "X-BATV-Status", Value: "valid"}}},
	} {
		if _, err := c.Send(&m); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	for _, q := range [][2]string{{"untag", valid.Address}, {"untag", forged}, {"strip", forged}, {"strip", "prvs=0000000000=alice"}, {"bogus", "x"}} {
		socketmapQuery(t, mapSock, q[0], q[1])
	}

	// Reloads: one that works, one refused.
	reload <- struct{}{}
	waitFor(0, reloaded)
	os.WriteFile(config, []byte(goodConfig+"\n[sign\n"), 0o600)
	reload <- struct{}{}
	waitFor(0, "reload failed")
	os.WriteFile(config, []byte(goodConfig), 0o600)

	// The keyring damaged inside each secret, in ways that keep it JSON
	// and ways that do not. Some damage leaves valid base64 of an allowed
	// length: the key's check value catches it, so no damaged file is
	// accepted. The log is scanned either way.
	reactions, accepted := 0, 0
	for _, s := range secrets {
		b64 := base64.StdEncoding.EncodeToString(s)
		for _, damaged := range []string{
			strings.Replace(string(good), b64, b64[:len(b64)/2]+"!"+b64[len(b64)/2+1:], 1),        // not base64
			strings.Replace(string(good), b64, b64[:len(b64)-4], 1),                               // shortened
			strings.Replace(string(good), b64, b64+b64, 1),                                        // doubled
			strings.Replace(string(good), b64+`"`, b64, 1),                                        // unterminated string
			string(good)[:strings.Index(string(good), b64)+len(b64)/2],                            // truncated in it
			strings.Replace(string(good), b64, hex.EncodeToString(s), 1),                          // hex, not base64
			strings.Replace(string(good), `"secret": "`+b64, `"secret": 1234, "x": "`+b64, 1),     // wrong type
			strings.Replace(string(good), `"secret": "`+b64+`"`, `"secret": "`+b64+`" "oops"`, 1), // syntax error after it
		} {
			oks := strings.Count(logBuf.String(), ok)
			replaceFile(t, kr, []byte(damaged), 0o600)
			reactions = waitFor(reactions, bad, ok)
			if strings.Count(logBuf.String(), ok) > oks {
				accepted++
			}
			if _, err := (keyring.File{Path: kr}).Load(); err != nil {
				keyringtest.AssertNone(t, "keyring.Load error", err.Error(), secrets)
			}
			res := keyring.File{Path: kr}.Check(now)
			keyringtest.AssertNone(t, "keyring.Check problems", strings.Join(res.Problems, "\n"), secrets)
		}
	}
	replaceFile(t, kr, good, 0o600)
	reactions = waitFor(reactions, bad, ok)
	os.Chmod(kr, 0o644)
	waitFor(reactions, bad, ok)
	os.Chmod(kr, 0o600)
	t.Logf("%d damaged keyrings; %d of them accepted as a different key", 8*len(secrets), accepted)
	if accepted != 0 {
		t.Errorf("%d damaged keyrings accepted as a different key", accepted)
	}

	metrics, err := scraper.Get("http://" + d.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(metrics.Body)
	metrics.Body.Close()
	// A map name from the client is not a label value: "bogus" is counted
	// as unknown.
	if !strings.Contains(string(body), `batv_socketmap_lookups_total{map="unknown",result="error"} 1`) || strings.Contains(string(body), `map="bogus"`) {
		t.Errorf("lookups of an unknown map not counted under map=\"unknown\":\n%s", body)
	}
	health, err := scraper.Get("http://" + d.MetricsAddr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	hbody, _ := io.ReadAll(health.Body)
	health.Body.Close()

	stop <- struct{}{}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// An error from a start that fails on a damaged keyring.
	replaceFile(t, kr, []byte(strings.Replace(string(good), `"`+base64.StdEncoding.EncodeToString(secrets[0])[:20], `"!`, 1)), 0o600)
	startErr := Run(Options{ConfigPath: config, Stderr: &logBuf})
	if startErr == nil {
		t.Fatal("the daemon started with a damaged keyring")
	}

	logText := logBuf.String()
	for _, want := range []string{"signed", "bad-signature", "expired", "unknown-key", "malformed", "socketmap lookup", "reload failed", bad} {
		if !strings.Contains(logText, want) {
			t.Errorf("the log has no %q line: the test did not exercise it", want)
		}
	}
	t.Logf("scanned %d log lines and %d bytes of metrics", strings.Count(logText, "\n"), len(body))
	keyringtest.AssertNone(t, "the log", logText, secrets)
	keyringtest.AssertNone(t, "the metrics", string(body), secrets)
	keyringtest.AssertNone(t, "healthz", string(hbody), secrets)
	keyringtest.AssertNone(t, "the start error", startErr.Error(), secrets)
}

// TestCreatedFileModes: with a umask of 0, the keyring the daemon creates
// is 0600 in a 0700 directory, its lock file 0600, the sockets have the
// configured mode and group, and a rotation keeps the file 0600.
func TestCreatedFileModes(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	gid := os.Getgid()
	if os.Geteuid() == 0 {
		gid = 65534 // nogroup: root can give the socket any group
	}
	dir := t.TempDir()
	kr := filepath.Join(dir, "state", "batv", "keyring.json")
	sock, mapSock := filepath.Join(dir, "milter.sock"), filepath.Join(dir, "map.sock")
	config := filepath.Join(dir, "batv.toml")
	os.WriteFile(config, []byte(fmt.Sprintf(`keyring = %q
create_keyring = true
[limits]
shutdown_timeout = "2s"
[[listener]]
name = "milter"
address = "unix:%s"
roles = ["outbound", "inbound"]
socket_group = "%d"
[socketmap]
address = "unix:%s"
socket_group = "%d"
socket_mode = "0600"
[sign]
domains = ["example.com"]
`, kr, sock, gid, mapSock, gid)), 0o600)
	stop, done, ready := make(chan struct{}, 1), make(chan error, 1), make(chan struct{})
	go func() {
		done <- Run(Options{ConfigPath: config, Stderr: io.Discard, Stop: stop, Ready: func(*Daemon) { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not ready")
	}
	defer func() {
		stop <- struct{}{}
		<-done
	}()

	check := func(path string, wantMode os.FileMode, wantGID int) {
		t.Helper()
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != wantMode || (wantGID >= 0 && int(st.Gid) != wantGID) || int(st.Uid) != os.Geteuid() {
			t.Errorf("%s: mode %v owner %d:%d; want %v, owner %d, group %d", path, fi.Mode(), st.Uid, st.Gid, wantMode, os.Geteuid(), wantGID)
		}
	}
	check(filepath.Dir(kr), 0o700, -1)
	check(kr, 0o600, -1)
	check(keyring.File{Path: kr}.LockPath(), 0o600, -1)
	check(sock, 0o660, gid)
	check(mapSock, 0o600, gid)
	if fi, _ := os.Lstat(sock); fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("%s is not a socket", sock)
	}

	// A rotation, as "batv keys rotate" does it, keeps the file private.
	if _, _, err := (keyring.File{Path: kr}).Rotate(time.Now(), 0, &readerOf{b: make([]byte, 32)}); err != nil {
		t.Fatal(err)
	}
	check(kr, 0o600, -1)
	entries, _ := os.ReadDir(filepath.Dir(kr))
	if len(entries) != 2 {
		t.Errorf("the keyring directory holds %d entries", len(entries))
	}
}

// TestSocketModeRefusesOthers: a socket mode that lets any local user talk
// to the milter or ask the lookup service is a configuration error (the
// lookup service answers whether a tag is valid: it is an oracle for
// guessing MACs).
func TestSocketModeRefusesOthers(t *testing.T) {
	for _, mode := range []string{"0666", "0662", "0664", "0777", "0601"} {
		cfg := fmt.Sprintf("keyring = \"/k\"\n[sign]\ndomains = [\"example.com\"]\n[socketmap]\naddress = \"unix:/s\"\nsocket_mode = %q\n", mode)
		if _, err := ParseConfig("batv.toml", []byte(cfg)); err == nil || !strings.Contains(err.Error(), "every local user") {
			t.Errorf("socket_mode %s: %v", mode, err)
		}
	}
}
