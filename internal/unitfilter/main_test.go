package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/postfixtest"
)

// The test binary is unitfilter itself when this is set, so that the
// tests run batv through it.
const envAsMain = "UNITFILTER_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envAsMain) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// Small sets in the shape of systemd 252's: @privileged includes @chown.
var testSets = map[string][]string{
	"@default":        {"execve", "exit_group", "read"},
	"@chown":          {"chown", "fchownat"},
	"@privileged":     {"@chown", "setuid"},
	"@resources":      {"setrlimit"},
	"@file-system":    {"openat"},
	"@system-service": {"@default", "@chown", "@file-system", "@resources", "setsid"},
}

func TestSyscalls(t *testing.T) {
	for _, tt := range []struct {
		filters       []string
		allow         bool
		listed, other []string
	}{
		// batv.service: the last line allows @chown again.
		{[]string{"@system-service", "~@privileged @resources", "@chown"}, true,
			[]string{"chown", "fchownat", "openat", "execve", "setsid"}, []string{"setuid", "setrlimit"}},
		// The unit before: @chown removed with @privileged.
		{[]string{"@system-service", "~@privileged @resources"}, true,
			[]string{"openat", "setsid"}, []string{"chown", "fchownat", "setuid", "setrlimit"}},
		// An allow list always has @default.
		{[]string{"openat"}, true, []string{"openat", "read", "execve"}, []string{"chown"}},
		// A deny list: "~" adds, a line without it removes.
		{[]string{"~@privileged", "fchownat"}, false, []string{"chown", "setuid"}, []string{"fchownat", "read"}},
		// A per-call errno does not change the list.
		{[]string{"@file-system setsid:EPERM"}, true, []string{"setsid"}, nil},
	} {
		list, allow, err := unitFilter{filters: tt.filters}.syscalls(testSets)
		if err != nil {
			t.Fatalf("%q: %v", tt.filters, err)
		}
		if allow != tt.allow {
			t.Errorf("%q: allow list %v, want %v", tt.filters, allow, tt.allow)
		}
		for _, c := range tt.listed {
			if !list[c] {
				t.Errorf("%q: %s is not listed", tt.filters, c)
			}
		}
		for _, c := range tt.other {
			if list[c] {
				t.Errorf("%q: %s is listed", tt.filters, c)
			}
		}
	}
	if _, _, err := (unitFilter{filters: []string{"@nonexistent"}}).syscalls(testSets); err == nil {
		t.Error("an unknown set was accepted")
	}
}

func TestParseUnit(t *testing.T) {
	u, err := parseUnit([]byte("[Unit]\nSystemCallFilter=@ignored\n[Service]\n# a comment\nSystemCallFilter=@a\nSystemCallFilter=\n" +
		"SystemCallFilter=@system-service\nSystemCallFilter=~@privileged\nSystemCallErrorNumber=EPERM\n[Install]\nWantedBy=x\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"@system-service", "~@privileged"}; strings.Join(u.filters, "|") != strings.Join(want, "|") || u.errno != "EPERM" {
		t.Errorf("got %q, errno %q; want %q, EPERM", u.filters, u.errno, want)
	}
	if _, err := parseUnit([]byte("[Service]\nUser=batv\n")); err == nil {
		t.Error("a unit without a filter was accepted")
	}
}

// systemdAnalyze returns the sets this machine's systemd lists, or skips
// the test (fails it in CI) without systemd-analyze.
func systemdAnalyze(t *testing.T) map[string][]string {
	t.Helper()
	out, err := exec.Command("systemd-analyze", "syscall-filter").Output()
	if err != nil {
		postfixtest.SkipOrFail(t, fmt.Sprintf("systemd-analyze syscall-filter: %v (apt-get install systemd)", err))
	}
	return parseSets(out)
}

func TestParseSets(t *testing.T) {
	sets := systemdAnalyze(t)
	calls, err := expand("@system-service", sets)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"fchownat", "openat", "execve", "accept4", "prlimit64"} {
		if !strings.Contains(" "+strings.Join(calls, " ")+" ", " "+want+" ") {
			t.Errorf("@system-service lacks %s", want)
		}
	}
	if len(calls) < 200 {
		t.Errorf("@system-service has only %d calls: the parser missed some", len(calls))
	}
}

// batv starts, answers a lookup, reloads and stops under the filter of
// dist/batv.service, as the check-config of its ExecStartPre does; and
// the filter the unit had before, which refused @chown, does stop it. That
// second run shows the test sees what the unit refuses.
func TestBatvUnderUnitFilter(t *testing.T) {
	systemdAnalyze(t)
	bin := batvBinary(t)
	unit, err := os.ReadFile(filepath.Join("..", "..", "dist", "batv.service"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	shipped, before := filepath.Join(dir, "batv.service"), filepath.Join(dir, "before.service")
	if err := os.WriteFile(shipped, unit, 0o644); err != nil {
		t.Fatal(err)
	}
	old := strings.Replace(string(unit), "\nSystemCallFilter=@chown\n", "\n", 1)
	if old == string(unit) {
		t.Fatal("dist/batv.service has no line SystemCallFilter=@chown: update this test")
	}
	if err := os.WriteFile(before, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}

	// The configuration of the package, on sockets in dir, given to this
	// process's group: batv changes the group of its sockets at every
	// start, whatever the group.
	grp, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		t.Fatal(err)
	}
	kr, config := filepath.Join(dir, "keyring.json"), filepath.Join(dir, "batv.toml")
	milterSock, mapSock := filepath.Join(dir, "milter.sock"), filepath.Join(dir, "socketmap.sock")
	if out, err := exec.Command(bin, "keys", "init", "--keyring", kr).CombinedOutput(); err != nil {
		t.Fatalf("keys init: %v\n%s", err, out)
	}
	cfg := fmt.Sprintf(`keyring = %q
[log]
level = "debug"
[[listener]]
name = "milter"
address = "unix:%s"
roles = ["outbound", "inbound"]
socket_group = %q
socket_mode = "0660"
[socketmap]
address = "unix:%s"
socket_group = %q
socket_mode = "0660"
[sign]
domains = ["example.com"]
`, kr, milterSock, grp.Name, mapSock, grp.Name)
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("shipped", func(t *testing.T) {
		if out, err := underFilter(shipped, bin, "check-config", "--config", config).CombinedOutput(); err != nil {
			t.Fatalf("check-config under the filter: %v\n%s", err, out)
		}
		cmd := underFilter(shipped, bin, "milter", "--config", config)
		log := startLogged(t, cmd)
		waitFor(t, log, "batv started")
		waitFor(t, log, "start-up pages of the executable released")
		fi, err := os.Stat(milterSock)
		if err != nil {
			t.Fatal(err)
		}
		if gid := fi.Sys().(*syscall.Stat_t).Gid; int(gid) != os.Getgid() || fi.Mode().Perm() != 0o660 {
			t.Errorf("milter socket: group %d, mode %v; want %d, 0660", gid, fi.Mode().Perm(), os.Getgid())
		}
		if got := postmapQuery(t, mapSock, "strip", "prvs=0123456789=alice@example.com"); got != "alice@example.com" && got != "" {
			t.Errorf("lookup in the strip table: %q, want alice@example.com", got)
		}
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, log, "msg=reloaded")
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("batv milter under the filter: %v\n%s", err, log)
		}
		if strings.Contains(log.String(), "not permitted") {
			t.Errorf("a call was refused:\n%s", log)
		}
	})
	t.Run("before", func(t *testing.T) {
		out, err := underFilter(before, bin, "milter", "--config", config).CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "chown") ||
			!strings.Contains(string(out), "operation not permitted") {
			t.Errorf("the filter without @chown: %v, want exit status 1 and chown refused\n%s", err, out)
		}
	})
}

// batvBinary is $BATV_BIN (the installed binary, in CI), or one built for
// the test.
func batvBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("BATV_BIN"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "batv")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/batv/batv/cmd/batv").CombinedOutput(); err != nil {
		t.Fatalf("building batv: %v\n%s", err, out)
	}
	return bin
}

// underFilter is a command that runs args under the unit's filter.
func underFilter(unit string, args ...string) *exec.Cmd {
	self, _ := os.Executable()
	cmd := exec.Command(self, append([]string{"-unit", unit, "--"}, args...)...)
	cmd.Env = append(os.Environ(), envAsMain+"=1")
	return cmd
}

// lockedLog collects a process's output.
type lockedLog struct {
	ch  chan struct{}
	buf strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.ch <- struct{}{}
	defer func() { <-l.ch }()
	return l.buf.Write(p)
}

func (l *lockedLog) String() string {
	l.ch <- struct{}{}
	defer func() { <-l.ch }()
	return l.buf.String()
}

// startLogged starts cmd with its output collected, and kills it at the
// end of the test if it still runs.
func startLogged(t *testing.T, cmd *exec.Cmd) *lockedLog {
	t.Helper()
	log := &lockedLog{ch: make(chan struct{}, 1)}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return log
}

func waitFor(t *testing.T, log *lockedLog, want string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(log.String(), want); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log:\n%s", want, log)
		}
	}
}

// postmapQuery looks key up in the socketmap table name of the server on
// sock with Postfix's postmap, as Postfix does. It skips (fails in CI)
// without Postfix.
func postmapQuery(t *testing.T, sock, name, key string) string {
	t.Helper()
	postmap, err := exec.LookPath("postmap")
	if err != nil {
		if os.Getenv("BATV_E2E") != "" {
			t.Fatal("postmap: Postfix is not installed")
		}
		t.Log("no lookup: Postfix is not installed")
		return ""
	}
	conf := t.TempDir() // postmap wants a main.cf; the defaults will do
	if err := os.WriteFile(filepath.Join(conf, "main.cf"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(postmap, "-c", conf, "-q", key, "socketmap:unix:"+sock+":"+name).CombinedOutput()
	if err != nil {
		t.Errorf("postmap -q %s: %v\n%s", key, err, out)
	}
	return strings.TrimSpace(string(out))
}
