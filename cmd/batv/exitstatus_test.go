package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/daemontest"
)

// TestExitStatusTable runs a case for every row of the exit-status table,
// and has no case the table lacks: the table the help, batv(8) and
// docs/operations.md show is what the commands do.
func TestExitStatusTable(t *testing.T) {
	kr := newKeyring(t)
	dir := t.TempDir()
	key := writeSecret(t, "demo key for batv\n")
	const tagged = "prvs=27924241c2=user@example.com" // key id 2 of key, 2026-11-28
	verify := func(args ...string) []string {
		return append([]string{"verify", "--secret-file", key, "--key-id", "2", "--at", "2026-11-28"}, args...)
	}
	config := func(name, body string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	valid := config("valid.toml", fmt.Sprintf("keyring = %q\n[sign]\ndomains = [\"example.com\"]\n", kr))
	invalid := config("invalid.toml", fmt.Sprintf("keyring = %q\n[sign]\ndomains = [\"example.com\"]\nlifetime = 0\n", kr))
	// A port in use: the daemon cannot bind it.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	inUse := config("inuse.toml", fmt.Sprintf("keyring = %q\n[[listener]]\nname = \"m\"\naddress = \"inet:%s\"\nroles = [\"outbound\"]\n[sign]\ndomains = [\"example.com\"]\n",
		kr, busy.Addr()))
	milterAddr := benchMilter(t, key)
	bench := func(args ...string) []string {
		return append([]string{"bench", "--milter", milterAddr, "--messages", "5", "--warmup", "0", "-c", "1"}, args...)
	}

	cases := map[string][]string{
		"check-config 0": {"check-config", "-c", valid},
		"check-config 2": {"check-config", "-c", invalid},
		"explain 0":      {"explain", "--keyring", kr, "alice@example.com"},
		"explain 2":      {"explain", "--keyring", kr, "--at", "yesterday", "alice@example.com"},
		"sign 0":         {"sign", "--keyring", kr, "alice@example.com"},
		"sign 2":         {"sign", "--keyring", filepath.Join(dir, "none.json"), "alice@example.com"},
		"sign 3":         {"sign", "--keyring", kr, tagged},
		"verify 0":       verify(tagged),
		"verify 2":       verify("--delimiter", "==", tagged),
		"verify 3":       verify("user@example.com"),
		"verify 4":       verify("prvs=2792=user@example.com"),
		"verify 5":       verify("prvs=37924241c2=user@example.com"),
		"verify 6":       verify("--at", "2026-12-06", tagged),
		"verify 7":       verify("prvs=27924241c3=user@example.com"),
		"keys 0":         {"keys", "list", "--keyring", kr},
		"keys 1":         {"keys", "init", "--keyring", kr},
		"keys 2":         {"keys", "list", "--keyring", filepath.Join(dir, "none.json")},
		"keys check 0":   {"keys", "check", kr},
		"keys check 2":   {"keys", "check", filepath.Join(dir, "none.json")},
		"completion 0":   {"completion", "bash"},
		"completion 2":   {"completion", "tcsh"},
		"bench 0":        bench("--secret-file", key, "--key-id", "2"),
		"bench 1":        bench("--secret-file", writeSecret(t, "another key\n"), "--key-id", "2"),
		"bench 2":        {"bench", "--milter", "unix:" + filepath.Join(dir, "none.sock"), "--any-reply"},
		"milter 1":       {"milter", "-c", inUse},
		"milter 2":       {"milter", "-c", invalid},
		"any command 2":  {"nosuch"},
	}
	rows := map[string]bool{}
	for _, r := range exitTable {
		name := fmt.Sprintf("%s %d", r.command, r.code)
		rows[name] = true
		t.Run(name, func(t *testing.T) {
			if name == "milter 0" {
				if code := milterStoppedCleanly(t, kr); code != 0 {
					t.Fatalf("exit %d", code)
				}
				return
			}
			args, ok := cases[name]
			if !ok {
				t.Fatalf("no case for the row %q", name)
			}
			code, out, errOut := runCLI(t, args...)
			if code != r.code {
				t.Fatalf("batv %s: exit %d, want %d (%s)\n%s%s", strings.Join(args, " "), code, r.code, r.meaning, out, errOut)
			}
		})
	}
	for name := range cases {
		if !rows[name] {
			t.Errorf("case %q has no row in the table", name)
		}
	}
}

// milterStoppedCleanly runs batv milter on a unix socket until it listens,
// sends this process SIGTERM, which the milter command catches, and
// returns its exit status.
func milterStoppedCleanly(t *testing.T, kr string) int {
	dir, err := os.MkdirTemp("", "batv-exit") // short enough for a socket path
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "m.sock")
	cfg := filepath.Join(dir, "batv.toml")
	body := fmt.Sprintf("keyring = %q\n[[listener]]\nname = \"m\"\naddress = \"unix:%s\"\nroles = [\"outbound\"]\n[sign]\ndomains = [\"example.com\"]\n", kr, sock)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr daemontest.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"batv", "milter", "-c", cfg}, strings.NewReader(""), &bytes.Buffer{}, &stderr)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), "batv started") {
		select {
		case code := <-done:
			t.Fatalf("milter exited with %d before it started:\n%s", code, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("milter did not start:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		return code
	case <-time.After(10 * time.Second):
		t.Fatalf("milter did not stop on SIGTERM:\n%s", stderr.String())
	}
	return -1
}

// TestExitStatusDocs: docs/operations.md has the exit-status table as
// exitTable makes it, and batv(8) its rendering.
func TestExitStatusDocs(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	want := exitStatusMarkdown()
	if !strings.Contains(string(doc), "## Exit statuses\n\n"+want) {
		t.Errorf("docs/operations.md: the section \"Exit statuses\" must start with this table, made from exitTable:\n%s", want)
	}
	page, err := manPage()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(page, exitStatusRoff()) {
		t.Error("batv(8) lacks the exit statuses")
	}
	// Each command's help ends with its rows.
	app := newApp(strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{})
	for _, c := range manCommands(app.Commands, "") {
		name := strings.TrimSpace(c.path)
		if strings.HasPrefix(name, "keys ") && name != "keys check" {
			name = "keys"
		}
		if !strings.HasSuffix(c.UsageText, exitStatusHelp(name)) {
			t.Errorf("the help of batv %s does not end with its exit statuses:\n%s", c.path, exitStatusHelp(name))
		}
	}
}
