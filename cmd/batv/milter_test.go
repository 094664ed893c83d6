package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeDaemonConfig writes a configuration file with keyring kr, then
// body, then example.com as the domain to sign (in body's [sign] table if
// it has one) and returns its path.
func writeDaemonConfig(t *testing.T, kr, body string) string {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "batv.toml")
	body = fmt.Sprintf("keyring = %q\n%s", kr, body)
	if !strings.Contains(body, "[sign]") {
		body += "[sign]\n"
	}
	body += "domains = [\"example.com\"]\n"
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// The exit status of a daemon that cannot start tells systemd whether a
// restart can help (RestartPreventExitStatus=2): not for a configuration or
// a keyring that needs a person, yes for anything else, such as a socket
// directory another unit has not created yet.
func TestMilterStartFailureExitStatus(t *testing.T) {
	kr := newKeyring(t)
	insecure := newKeyring(t)
	if err := os.Chmod(insecure, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "m.sock")
	for _, tt := range []struct {
		name, keyring, address, extra string
		code                          int
		want                          string
	}{
		{"missing keyring", filepath.Join(dir, "none.json"), sock, "", exitUsage, "no such file"},
		{"keyring readable by others", insecure, sock, "", exitUsage, "0644"},
		{"invalid configuration", kr, sock, "[sign]\nlifetime = 0\n", exitUsage, "sign.lifetime"},
		{"socket directory missing", kr, filepath.Join(dir, "nodir", "m.sock"), "", exitFailure, "nodir"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := writeDaemonConfig(t, tt.keyring, fmt.Sprintf("[[listener]]\nname = \"m\"\naddress = \"unix:%s\"\nroles = [\"outbound\"]\n%s", tt.address, tt.extra))
			code, _, errOut := runCLI(t, "milter", "-c", cfg)
			if code != tt.code || !strings.Contains(errOut, tt.want) {
				t.Fatalf("exit %d, want %d; stderr %q, want it to mention %q", code, tt.code, errOut, tt.want)
			}
		})
	}
}
