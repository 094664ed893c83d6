package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/batv/batv/keyring"
)

// trialHome points the trial keyring into a temporary state directory
// and returns the keyring's path there.
func trialHome(t *testing.T) string {
	t.Helper()
	state := t.TempDir()
	t.Setenv("XDG_STATE_HOME", state)
	t.Setenv(envKeyring, "")
	os.Unsetenv(envKeyring)
	t.Setenv(envConfig, "")
	os.Unsetenv(envConfig)
	return filepath.Join(state, "batv", "keyring.json")
}

// Without a configuration file, milter, check-config, sign, verify and
// explain use one keyring, the trial keyring in the user's state
// directory, for root too: a trial never writes where the daemon keeps its
// keyring, and what the trial signs the next commands verify.
func TestTrialKeyringIsOneForAll(t *testing.T) {
	trial := trialHome(t)
	// batv milter says at start where a trial run keeps its keys (here it
	// stops at once: no domain).
	code, _, errOut := runCLI(t, "milter")
	if code != exitUsage || !strings.Contains(errOut, "a trial run on the embedded configuration (no --config): keyring "+trial) {
		t.Fatalf("milter without a configuration: %d %q", code, errOut)
	}
	code, out, errOut := runCLI(t, "check-config", "-d", "example.com")
	if code != 0 || !strings.Contains(out, "keyring "+trial+" does not exist yet and batv milter will create it") {
		t.Fatalf("check-config: %d %q %q", code, out, errOut)
	}
	// Before the trial run made it, sign says which keyring it wanted and
	// how to name the daemon's.
	code, _, errOut = runCLI(t, "sign", "alice@example.com")
	if code != exitUsage || !strings.Contains(errOut, trial+" (the trial keyring") || !strings.Contains(errOut, "--config") {
		t.Fatalf("sign without a keyring: %d %q", code, errOut)
	}
	if err := os.MkdirAll(filepath.Dir(trial), 0o700); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runCLI(t, "keys", "init", "--keyring", trial); code != 0 {
		t.Fatalf("keys init: %s", errOut)
	}
	code, tagged, errOut := runCLI(t, "sign", "alice@example.com")
	tagged = strings.TrimSpace(tagged)
	if code != 0 || !strings.HasPrefix(tagged, "prvs=0") {
		t.Fatalf("sign: %d %q %q", code, tagged, errOut)
	}
	if code, out, errOut := runCLI(t, "verify", tagged); code != 0 || out != "valid alice@example.com\n" {
		t.Fatalf("verify: %d %q %q", code, out, errOut)
	}
	if code, out, errOut := runCLI(t, "explain", tagged); code != 0 || !strings.Contains(out, "outcome: valid") {
		t.Fatalf("explain: %d %s %s", code, out, errOut)
	}
	// A tag the trial keyring did not make: the error names the keyring.
	code, out, errOut = runCLI(t, "verify", tagForge(tagged))
	if code != 7 || out != "bad-signature\n" || !strings.Contains(errOut, "batv: bad-signature: checked with keyring "+trial+" (the trial keyring") {
		t.Fatalf("forged tag: %d %q %q", code, out, errOut)
	}
	if keyring.DefaultPath == trial {
		t.Fatal("the trial keyring is the daemon's")
	}
}

// sign and verify with --config use the daemon's keyring and its settings;
// a flag given wins over the file, and --keyring or $BATV_KEYRING over its
// keyring.
func TestSignVerifyWithConfig(t *testing.T) {
	trialHome(t)
	kr := newKeyring(t)
	other := newKeyring(t)
	cfg := filepath.Join(t.TempDir(), "batv.toml")
	body := fmt.Sprintf("keyring = %q\n[sign]\ndomains = [\"example.com\"]\nlifetime = 3\nsub_address = \"-\"\n[verify]\nstrict = true\ndelimiter = \"-\"\n", kr)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	// Signed with sign.lifetime 3 and in the sub-address form: 2026-11-28
	// is day 785 (mod 1000) since 1970, so the expiry day is 788.
	code, tagged, errOut := runCLI(t, "sign", "-c", cfg, "--at", "2026-11-28", "alice@example.com")
	tagged = strings.TrimSpace(tagged)
	if code != 0 || !strings.HasPrefix(tagged, "alice-prvs=0788") {
		t.Fatalf("sign -c: %d %q %q", code, tagged, errOut)
	}
	code, out, _ := runCLI(t, "sign", "-c", cfg, "--at", "2026-11-28", "--lifetime", "5", "--sub-address", "+", "alice@example.com")
	if code != 0 || !strings.HasPrefix(out, "alice+prvs=0790") {
		t.Fatalf("sign -c with flags: %d %q", code, out)
	}
	// Verified as the daemon verifies: valid on the third day, expired
	// after; case-sensitive (verify.strict).
	for _, tt := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"--at", "2026-12-01", tagged}, 0, "valid alice@example.com\n"},
		{[]string{"--at", "2026-12-02", tagged}, 6, "expired\n"},
		{[]string{"--at", "2026-11-28", strings.ToUpper(tagged[:5]) + tagged[5:]}, 7, "bad-signature\n"},
		{[]string{"--at", "2026-11-28", "--strict=false", strings.ToUpper(tagged[:5]) + tagged[5:]}, 0, "valid ALICE@example.com\n"},
	} {
		code, out, errOut := runCLI(t, append([]string{"verify", "-c", cfg}, tt.args...)...)
		if code != tt.code || out != tt.out {
			t.Errorf("verify -c %q: %d %q %q, want %d %q", tt.args, code, out, errOut, tt.code, tt.out)
		}
	}
	code, _, errOut = runCLI(t, "verify", "-c", cfg, "--at", "2026-11-28", tagForge(tagged))
	if code != 7 || !strings.Contains(errOut, "checked with keyring "+kr+" (the keyring of "+cfg+")") {
		t.Errorf("forged tag with -c: %d %q", code, errOut)
	}
	// $BATV_KEYRING wins over the file's keyring, and says so.
	t.Setenv(envKeyring, other)
	code, _, errOut = runCLI(t, "verify", "-c", cfg, "--at", "2026-11-28", tagged)
	if code != 7 || !strings.Contains(errOut, "checked with keyring "+other+" (from $BATV_KEYRING)") {
		t.Errorf("verify -c with $BATV_KEYRING: %d %q", code, errOut)
	}
	// A key file excludes the configuration.
	os.Unsetenv(envKeyring)
	code, _, errOut = runCLI(t, "sign", "-c", cfg, "--secret-file", writeSecret(t, "k"), "alice@example.com")
	if code != exitUsage || !strings.Contains(errOut, "--secret-file and --config exclude each other") {
		t.Errorf("sign -c --secret-file: %d %q", code, errOut)
	}
}

// An error of package batv, which starts with "batv: ", is printed with
// the program's "batv: " once; a keyring that cannot sign says which and
// when.
func TestErrorPrefixOnce(t *testing.T) {
	trialHome(t)
	kr := newKeyring(t) // key 0 signs from 2026-10-01
	code, _, errOut := runCLI(t, "sign", "--keyring", kr, "--at", "2026-09-01", "alice@example.com")
	if code != exitUsage || strings.Count(errOut, "batv:") != 1 ||
		!strings.Contains(errOut, "2026-09-01T12:00:00Z; keyring "+kr+" (from --keyring)") {
		t.Fatalf("no signing key: %d %q", code, errOut)
	}
	if got := errorLine("batv: batv: x"); got != "batv: batv: x" && got != "batv: x" {
		t.Fatal(got)
	}
}
