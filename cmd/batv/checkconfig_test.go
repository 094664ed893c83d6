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

// check-config prints what is valid but exposes batv beyond Postfix as
// warnings (exit 0), and refuses what would stop the start: a socket
// directory that does not exist, the same socket twice, a sub-address
// form the verifier cannot read.
func TestCheckConfigWarningsAndStartProblems(t *testing.T) {
	kr := newKeyring(t)
	dir := t.TempDir()
	for _, tt := range []struct {
		name, body string
		code       int
		want       string // in standard error
	}{
		{"every interface", "[[listener]]\nname = \"m\"\naddress = \"inet:0.0.0.0:8891\"\nroles = [\"inbound\"]\n", 0,
			`batv: warning: listener[0].address: "inet:0.0.0.0:8891" listens on every interface`},
		{"empty host", "[socketmap]\naddress = \"inet::8892\"\n", 0,
			`batv: warning: socketmap.address: "inet::8892" listens on every interface`},
		{"another host's address", "[metrics]\nlisten = \"192.0.2.1:9466\"\n", 0,
			`batv: warning: metrics.listen: "192.0.2.1:9466" is not a loopback address: other hosts can talk to the metrics endpoint`},
		{"a host name", "[[listener]]\nname = \"m\"\naddress = \"inet:mail.example.com:8891\"\nroles = [\"inbound\"]\n", 0,
			`is a host name: batv listens on the first address it resolves to`},
		{"missing socket directory", "[[listener]]\nname = \"m\"\naddress = \"unix:" + dir + "/none/m.sock\"\nroles = [\"inbound\"]\n", exitUsage,
			`listener[0].address: the socket's directory: stat ` + dir + `/none: no such file or directory`},
		{"socket directory is a file", "[[listener]]\nname = \"m\"\naddress = \"unix:" + kr + "/m.sock\"\nroles = [\"inbound\"]\n", exitUsage,
			`the socket's directory ` + kr + ` is not a directory`},
		{"two spellings of one socket", "[[listener]]\nname = \"m\"\naddress = \"inet:[::1]:8891\"\nroles = [\"inbound\"]\n" +
			"[[listener]]\nname = \"n\"\naddress = \"inet6:[0:0::1]:8891\"\nroles = [\"outbound\"]\n", exitUsage,
			`listener[1].address: "inet6:[0:0::1]:8891" is the same socket as listener[0].address ("inet:[::1]:8891")`},
		{"sub-address the verifier cannot read", "[sign]\nsub_address = \"-\"\n", exitUsage,
			`verify.delimiter: "+" differs from sign.sub_address "-"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := writeDaemonConfig(t, kr, tt.body)
			code, out, errOut := runCLI(t, "check-config", "-c", cfg)
			if code != tt.code || !strings.Contains(errOut, tt.want) {
				t.Fatalf("exit %d, want %d; stderr %q, want %q", code, tt.code, errOut, tt.want)
			}
			if (code == 0) != strings.Contains(out, "are valid") {
				t.Fatalf("stdout %q", out)
			}
		})
	}
}

// A domain that is not one stops batv milter with status 2 before it
// creates anything: no trial keyring, no directory for it.
func TestMilterBadDomainCreatesNothing(t *testing.T) {
	for _, domain := range []string{"bad domain", "example..com", "-example.com"} {
		trial := trialHome(t)
		code, _, errOut := runCLI(t, "milter", "--domain", domain)
		if code != exitUsage || !strings.Contains(errOut, fmt.Sprintf("sign.domains: %q", domain)) {
			t.Fatalf("--domain %q: exit %d, stderr %q", domain, code, errOut)
		}
		if _, err := os.Stat(filepath.Dir(trial)); !os.IsNotExist(err) {
			t.Fatalf("--domain %q: the trial keyring's directory was created (%v)", domain, err)
		}
	}
}
