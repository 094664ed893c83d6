package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI runs the application with args and returns its exit status,
// stdout and stderr.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(append([]string{"batv"}, args...), strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// writeSecret writes a batv-tools style key file: the bytes as given,
// trailing newline included.
func writeSecret(t *testing.T, secret string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(path, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSignVerifyCLI(t *testing.T) {
	// The tag was computed independently:
	//   python3 -c 'import hmac,hashlib; print(hmac.new(b"demo key for batv\n",
	//     b"2792user@example.com", hashlib.sha1).hexdigest()[:6])'
	key := writeSecret(t, "demo key for batv\n")
	const tagged = "prvs=27924241c2=user@example.com"
	common := []string{"--secret-file", key, "--key-id", "2", "--at", "2026-11-28"}

	code, out, errOut := runCLI(t, append(append([]string{"sign"}, common...), "user@example.com")...)
	if code != 0 || out != tagged+"\n" || errOut != "" {
		t.Fatalf("sign: %d %q %q", code, out, errOut)
	}

	// A tag the key does not verify names the key on standard error.
	keyUsed := "batv: %s: checked with key id 2 of --secret-file " + key + "\n"
	tests := []struct {
		name   string
		args   []string
		code   int
		out    string
		errOut string
	}{
		{"valid", []string{tagged}, 0, "valid user@example.com\n", ""},
		{"valid on the last day", []string{"--at", "2026-12-05", tagged}, 0, "valid user@example.com\n", ""},
		{"expired the day after", []string{"--at", "2026-12-06", tagged}, 6, "expired\n", ""},
		{"missing", []string{"user@example.com"}, 3, "missing\n", ""},
		{"malformed", []string{"prvs=2792=user@example.com"}, 4, "malformed\n", ""},
		{"unknown key", []string{"prvs=37924241c2=user@example.com"}, 5, "unknown-key\n", fmt.Sprintf(keyUsed, "unknown-key")},
		{"bad signature", []string{"prvs=27924241c3=user@example.com"}, 7, "bad-signature\n", fmt.Sprintf(keyUsed, "bad-signature")},
		{"folded accepted", []string{"prvs=27924241c2=user@EXAMPLE.com"}, 0, "valid user@EXAMPLE.com\n", ""},
		{"folded refused when strict", []string{"--strict", "prvs=27924241c2=user@EXAMPLE.com"}, 7, "bad-signature\n", fmt.Sprintf(keyUsed, "bad-signature")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"verify"}, common...)
			code, out, errOut := runCLI(t, append(args, tt.args...)...)
			if code != tt.code || out != tt.out || errOut != tt.errOut {
				t.Fatalf("verify %v: %d %q %q, want %d %q %q", tt.args, code, out, errOut, tt.code, tt.out, tt.errOut)
			}
		})
	}
}

func TestSignCLISkipAndSubAddress(t *testing.T) {
	key := writeSecret(t, "demo key for batv\n")
	common := []string{"sign", "--secret-file", key, "--key-id", "2", "--at", "2026-11-28"}

	code, out, errOut := runCLI(t, append(common, "SRS0=abc=de=example.org=x@example.com")...)
	if code != exitNotSigned || out != "SRS0=abc=de=example.org=x@example.com\n" || !strings.Contains(errOut, "not signed: srs") {
		t.Fatalf("srs: %d %q %q", code, out, errOut)
	}
	code, out, _ = runCLI(t, append(common, "--sub-address", "-", "user@example.com")...)
	if code != 0 || out != "user-prvs=27924241c2@example.com\n" {
		t.Fatalf("sub-address: %d %q", code, out)
	}
}

func TestTagCLIUsageErrors(t *testing.T) {
	key := writeSecret(t, "k")
	for name, args := range map[string][]string{
		"no address":        {"sign", "--secret-file", key},
		"two addresses":     {"verify", "--secret-file", key, "a@b", "c@d"},
		"missing key file":  {"sign", "--secret-file", "/nonexistent/key", "a@b"},
		"empty key file":    {"sign", "--secret-file", writeSecret(t, ""), "a@b"},
		"bad key id":        {"sign", "--secret-file", key, "--key-id", "10", "a@b"},
		"bad date":          {"sign", "--secret-file", key, "--at", "28/11/2026", "a@b"},
		"bad lifetime":      {"sign", "--secret-file", key, "--lifetime", "31", "a@b"},
		"long delimiter":    {"sign", "--secret-file", key, "--sub-address", "++", "a@b"},
		"bad delimiter":     {"verify", "--secret-file", key, "--delimiter", "=", "a@b"},
		"unknown flag":      {"sign", "--no-such-flag", "a@b"},
		"missing keyring":   {"sign", "--keyring", "/nonexistent/keyring.json", "a@b"},
		"keyring and file":  {"sign", "--keyring", "/x", "--secret-file", key, "a@b"},
		"non-numeric keyid": {"sign", "--secret-file", key, "--key-id", "x", "a@b"},
	} {
		t.Run(name, func(t *testing.T) {
			code, out, errOut := runCLI(t, args...)
			lines := strings.Count(strings.TrimSpace(errOut), "\n") + 1
			if code != exitUsage || out != "" || errOut == "" || lines != 1 {
				t.Fatalf("%v: status %d, stdout %q, stderr %q", args, code, out, errOut)
			}
		})
	}
}

// An unknown command or flag is a usage error (exit 2, one line naming the
// help to read), never urfave/cli's exit 3, which verify means "no tag".
func TestUnknownCommandsAndFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"nosuch"}, `batv: unknown command "nosuch" (see batv --help)`},
		{[]string{"keys", "nosuch"}, `batv: unknown command "nosuch" (see batv keys --help)`},
		{[]string{"--bogus"}, "(see batv --help)"},
		{[]string{"keys", "rotate", "--bogus"}, "(see batv keys rotate --help)"},
	} {
		code, out, errOut := runCLI(t, tt.args...)
		if code != exitUsage || out != "" || !strings.Contains(errOut, tt.want) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("%v: status %d, stdout %q, stderr %q; want 2 and %q", tt.args, code, out, errOut, tt.want)
		}
	}
	// Without arguments, help on stdout and success.
	for _, args := range [][]string{nil, {"keys"}} {
		if code, out, _ := runCLI(t, args...); code != 0 || !strings.Contains(out, "USAGE") {
			t.Errorf("%v: status %d, stdout %q", args, code, out)
		}
	}
}
