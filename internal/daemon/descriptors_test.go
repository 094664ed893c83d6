package daemon

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/batv/batv/internal/mta"
	"github.com/batv/batv/internal/testenv/daemontest"
	"github.com/batv/batv/keyring"
)

// The test binary runs a daemon in a process of its own, with a
// descriptor limit of envNofile, when envHelperConfig names a
// configuration file: a test can then exhaust the daemon's descriptors
// without exhausting its own.
const (
	envHelperConfig = "BATV_TEST_DAEMON_CONFIG"
	envNofile       = "BATV_TEST_DAEMON_NOFILE"
)

func TestMain(m *testing.M) {
	if cfg := os.Getenv(envHelperConfig); cfg != "" {
		os.Exit(helperDaemon(cfg))
	}
	os.Exit(m.Run())
}

// helperDaemon runs the daemon on cfg until SIGTERM, with RLIMIT_NOFILE
// lowered to $BATV_TEST_DAEMON_NOFILE, soft and hard, and returns the
// exit status batv milter would.
func helperDaemon(cfg string) int {
	n, err := strconv.ParseUint(os.Getenv(envNofile), 10, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: n, Max: n}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	stop := make(chan struct{}, 2)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM)
	go func() {
		for range sigs {
			stop <- struct{}{}
		}
	}()
	err = Run(Options{ConfigPath: cfg, Stderr: os.Stderr, Stop: stop})
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrConfig):
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Fprintln(os.Stderr, err)
	return 1
}

// helper is a daemon in a process of its own.
type helper struct {
	cmd      *exec.Cmd
	log      daemontest.Buffer
	exited   chan struct{}
	metrics  string // the metrics endpoint's address
	milter   string
	lookup   string
	exitCode int
}

// startHelper runs the daemon with max_connections and a descriptor
// limit of nofile, and waits until it serves (or exits).
func startHelper(t *testing.T, maxConns, nofile int) *helper {
	t.Helper()
	dir := shortTempDir(t)
	kr := filepath.Join(dir, "keyring.json")
	if _, err := (keyring.File{Path: kr}).Create(keyringCreated, rand.Reader, keyring.DefaultOptions()); err != nil {
		t.Fatal(err)
	}
	h := &helper{exited: make(chan struct{}), milter: filepath.Join(dir, "m.sock"), lookup: filepath.Join(dir, "map.sock")}
	cfg := filepath.Join(dir, "batv.toml")
	body := lookupConfig(kr, h.milter, h.lookup, fmt.Sprintf("max_connections = %d", maxConns))
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	h.cmd = exec.Command(os.Args[0], "-test.run=^$")
	h.cmd.Env = append(os.Environ(), envHelperConfig+"="+cfg, envNofile+"="+strconv.Itoa(nofile))
	h.cmd.Stderr = &h.log
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = h.cmd.Wait()
		h.exitCode = h.cmd.ProcessState.ExitCode()
		close(h.exited)
	}()
	t.Cleanup(func() {
		_ = h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.exited:
		case <-time.After(10 * time.Second):
			_ = h.cmd.Process.Kill()
			t.Error("the daemon did not stop")
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", h.log.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(h.log.String(), "batv started") {
		select {
		case <-h.exited:
			return h
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the daemon did not start")
		}
	}
	if m := regexp.MustCompile(`msg="metrics listening" address=(\S+)`).FindStringSubmatch(h.log.String()); m != nil {
		h.metrics = m[1]
	}
	return h
}

// openFDs counts the daemon's open descriptors.
func (h *helper) openFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", h.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// TestDescriptorFloodLeavesTheMilter: with every descriptor the lookup
// service and the metrics endpoint will take in use, by idle lookup
// connections at their limit, more refused, and hundreds of idle metrics
// connections, the milter still accepts and signs; and a limit below
// what the configuration needs stops the start, with status 2, saying so.
func TestDescriptorFloodLeavesTheMilter(t *testing.T) {
	const maxConns, nofile = 40, 200 // needs 2 × 40 + 16 + 64 = 160
	h := startHelper(t, maxConns, nofile)
	if h.metrics == "" {
		t.Fatalf("the daemon did not start (status %d)", h.exitCode)
	}
	for i := range maxConns + 10 {
		m := dialMap(t, h.lookup)
		r, err := m.lookup("strip", "alice@example.com")
		if i < maxConns && (err != nil || r != "NOTFOUND ") {
			t.Fatalf("lookup connection %d: %q %v", i, r, err)
		}
		if i >= maxConns && err == nil {
			t.Fatalf("lookup connection %d over the limit of %d answered %q", i, maxConns, r)
		}
	}
	for range 3 * nofile {
		c, err := net.DialTimeout("tcp", h.metrics, time.Second)
		if err != nil {
			t.Fatalf("metrics connection: %v", err)
		}
		t.Cleanup(func() { c.Close() })
	}
	time.Sleep(100 * time.Millisecond)
	fds := h.openFDs(t)
	s, err := mta.New("unix", h.milter, 5*time.Second).Session(mta.SMTPClient{Addr: "192.0.2.1", Port: 4000})
	if err != nil {
		t.Fatalf("milter connection with %d descriptors open: %v", fds, err)
	}
	defer s.Close()
	res, err := s.Send(&mta.Message{Sender: "alice@example.com", Recipients: []string{"bob@example.org"}, AuthUser: "alice"})
	if err != nil || res.SignedSender() == "" {
		t.Fatalf("submission with %d descriptors open: %v %v", fds, res, err)
	}
	t.Logf("descriptor limit %d: %d open with %d lookup connections and %d metrics connections waiting; the milter signed %s",
		nofile, fds, maxConns, 3*nofile, res.SignedSender())
	if fds > nofile-10 {
		t.Errorf("%d descriptors open, near the limit of %d", fds, nofile)
	}
}

// TestDescriptorLimitTooLow: the daemon refuses to start when the
// descriptor limit is below what its listeners may take.
func TestDescriptorLimitTooLow(t *testing.T) {
	h := startHelper(t, 100, 150) // needs 2 × 100 + 16 + 64 = 280
	<-h.exited
	want := "batv may need 280 file descriptors (2 listeners × limits.max_connections 100, 16 for the metrics endpoint, 64 reserved), but may open only 150"
	if h.exitCode != 2 || !strings.Contains(h.log.String(), want) {
		t.Fatalf("exit status %d, log:\n%s\nwant %q", h.exitCode, h.log.String(), want)
	}
}
