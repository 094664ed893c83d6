package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// newKeyring creates a keyring with "batv keys init" as of a month ago, so
// that sign --at can sign as on past days.
func newKeyring(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keyring.json")
	if code, _, errOut := runCLI(t, "keys", "--at", "2026-10-01T00:00:00Z", "init", "--keyring", path); code != 0 {
		t.Fatalf("keys init: %d %s", code, errOut)
	}
	return path
}

func TestCheckConfigCLI(t *testing.T) {
	kr := newKeyring(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	os.WriteFile(good, []byte(fmt.Sprintf("keyring = %q\n[sign]\ndomains = [\"example.com\"]\n", kr)), 0o600)
	code, out, errOut := runCLI(t, "check-config", "-c", good)
	if code != 0 || !strings.Contains(out, "are valid") {
		t.Fatalf("good config: %d %q %q", code, out, errOut)
	}
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte(fmt.Sprintf("keyring = %q\n[sign]\ndomains = [\"example.com\"]\nlifetime = 60\nbogus = true\n", kr)), 0o600)
	code, out, errOut = runCLI(t, "check-config", "-c", bad)
	if code != exitUsage || out != "" || !strings.Contains(errOut, "bad.toml:4: sign.lifetime: 60") || !strings.Contains(errOut, `bad.toml:5: unknown key "sign.bogus"`) {
		t.Fatalf("bad config: %d %q %q", code, out, errOut)
	}
	// The embedded default with the domains on the command line.
	code, _, errOut = runCLI(t, "check-config", "--keyring", kr, "-d", "example.com")
	if code != 0 {
		t.Fatalf("embedded default: %d %q", code, errOut)
	}
	code, _, errOut = runCLI(t, "check-config", "--keyring", kr)
	if code != exitUsage || !strings.Contains(errOut, "--domain") {
		t.Fatalf("embedded default without domains: %d %q", code, errOut)
	}
}

// A keyring that does not exist yet is fine when the daemon creates it at
// start (create_keyring), as on a first start under the systemd unit,
// whose ExecStartPre runs check-config; otherwise it is an error.
func TestCheckConfigMissingKeyring(t *testing.T) {
	dir := t.TempDir()
	kr := filepath.Join(dir, "state", "keyring.json")
	cfg := filepath.Join(dir, "batv.toml")
	write := func(extra string) {
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf("keyring = %q\n%s[sign]\ndomains = [\"example.com\"]\n", kr, extra)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("create_keyring = true\n")
	code, out, errOut := runCLI(t, "check-config", "-c", cfg)
	if code != 0 || !strings.Contains(out, "does not exist yet and batv milter will create it at start") {
		t.Fatalf("missing keyring, create_keyring: %d %q %q", code, out, errOut)
	}
	if _, err := os.Stat(kr); !os.IsNotExist(err) {
		t.Fatalf("check-config created the keyring: %v", err)
	}
	code, out, errOut = runCLI(t, "explain", "-c", cfg, "alice@example.com")
	if code != exitUsage || out != "" || !strings.Contains(errOut, "does not exist yet") {
		t.Fatalf("explain without a keyring: %d %q %q", code, out, errOut)
	}
	write("")
	code, _, errOut = runCLI(t, "check-config", "-c", cfg)
	if code != exitUsage || !strings.Contains(errOut, "no such file") {
		t.Fatalf("missing keyring without create_keyring: %d %q", code, errOut)
	}
}
