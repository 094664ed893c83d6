//go:build unix

package main

import (
	"crypto/sha256"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/keyring"
	"github.com/batv/batv/keyring/keyringtest"
)

// TestKeysFIFO: a FIFO in place of the keyring, or given as a key file to
// import, is refused at once by every command (exit 2), instead of hanging
// until a writer comes.
func TestKeysFIFO(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "keyring.json")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("cannot make a FIFO: %v", err)
	}
	_, path := newKeysDir(t)
	initKeyring(t, path)
	for _, args := range [][]string{
		{"--keyring", fifo, "check"},
		{"--keyring", fifo, "list"},
		{"--keyring", fifo, "rotate", "--now"},
		{"--keyring", fifo, "export", "--id", "0"},
		{"--keyring", path, "import", "--id", "3", fifo},
		{"check-config", "--keyring", fifo, "-d", "example.com"},
		{"verify", "--keyring", fifo, "prvs=0123abcdef=user@example.com"},
	} {
		done := make(chan keysResult, 1)
		go func() {
			if args[0] == "--keyring" {
				done <- runKeys(t, "", args...)
			} else {
				done <- runBatv(args...)
			}
		}()
		select {
		case r := <-done:
			expectKeys(t, r, exitUsage, "not a regular file")
		case <-time.After(5 * time.Second):
			if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				f.Close() // lets the blocked command go
			}
			<-done
			t.Errorf("%v blocked on a FIFO", args)
		}
	}
}

// TestKeysRotateThroughSymlink: rotate through a symbolic link changes the
// file it points to; the link stays.
func TestKeysRotateThroughSymlink(t *testing.T) {
	_, target := newKeysDir(t)
	initKeyring(t, target)
	link := filepath.Join(t.TempDir(), "keyring.json")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	expectKeys(t, runKeys(t, "", "--keyring", link, "--at", keysAt(t, time.Hour), "rotate", "--now"), exitOK, "key 1 added")
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the link was replaced: %v", err)
	}
	l := listJSON(t, target, keysAt(t, time.Hour))
	if *l.SigningKey != 1 {
		t.Errorf("the target was not rotated: key %d signs", *l.SigningKey)
	}
}

// TestKeysCheckOwner: keys check names the owner of a keyring that
// another user owns, and says the daemon's user must own it.
func TestKeysCheckOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("giving a file to another user needs root")
	}
	_, path := newKeysDir(t)
	initKeyring(t, path)
	os.Chown(path, 65534, 65534)
	expectKeys(t, runKeys(t, "", "--keyring", path, "--at", keysT0, "check"), exitOK,
		"warning: "+path+": the file is owned by", "uid 65534", "not by root (uid 0)", "the user the daemon runs as", "1 warning")
}

// TestKeysShortKeyNeverSigns: a key shorter than 16 bytes imports to
// verify, with a warning, and --sign refuses it.
func TestKeysShortKeyNeverSigns(t *testing.T) {
	dir, path := newKeysDir(t)
	initKeyring(t, path)
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("k"), 0o600)
	expectKeys(t, runKeys(t, "", "--keyring", path, "--at", keysT0, "import", "--id", "3", "--sign", short), exitUsage,
		"the secret is 1 bytes; a key shorter than 16 bytes may be imported to verify the old system's tags, never to sign")
	expectKeys(t, runKeys(t, "", "--keyring", path, "--at", keysT0, "import", "--id", "3", short), exitOK,
		"key 3 only verifies", "warning: key 3 is only 1 bytes long")
	r := runKeys(t, "", "--keyring", path, "--at", keysT0, "list")
	expectKeys(t, r, exitOK, "signing key: 0", "! shorter than 16 bytes: the key only verifies, it never signs")
}

// TestKeysKeyRetiresBeforeTheWrap is the example of the documentation: a
// tag made on 2026-12-02 is within its window again on 2029-08-28, 1000
// days later. The keyring's key has retired by then, so batv verify says
// unknown-key; the warnings come three months before signing stops.
func TestKeysKeyRetiresBeforeTheWrap(t *testing.T) {
	_, path := newKeysDir(t)
	expectKeys(t, runKeys(t, "", "--keyring", path, "--at", "2026-12-02T12:00:00Z", "init"), exitOK)
	r := runBatv("sign", "--keyring", path, "--at", "2026-12-02", "user@example.com")
	if r.code != exitOK {
		t.Fatalf("sign:\n%s", r)
	}
	tag := strings.TrimSpace(r.stdout)
	expectKeys(t, runBatv("verify", "--keyring", path, "--at", "2026-12-09", tag), exitOK, "valid")
	expectKeys(t, runBatv("verify", "--keyring", path, "--at", "2029-08-28", tag), 5, "unknown-key")
	// 981 days: signing stops on 2029-08-09; the notice starts 90 days before.
	expectKeys(t, runKeys(t, "", "--keyring", path, "--at", "2029-05-11T11:59:59Z", "check"), exitOK, "0 warnings")
	expectKeys(t, runKeys(t, "", "--keyring", path, "--at", "2029-05-11T12:00:00Z", "check"), exitOK,
		"stops signing at 2029-08-09T12:00:00Z, 90 days from now", "rotate before then", "1 warning")
	expectKeys(t, runKeys(t, "", "--keyring", path, "--at", "2029-08-09T12:00:00Z", "check"), exitOK,
		"no key signs now: key 0 reached the end of its longest signing period")
	expectKeys(t, runBatv("sign", "--keyring", path, "--at", "2029-08-10", "user@example.com"), exitUsage, "no signing key")
}

// TestKeysSecretInTimeFieldNotShown: a base64 secret pasted into a time
// field of a key entry is not printed by keys check, keys list or
// check-config.
func TestKeysSecretInTimeFieldNotShown(t *testing.T) {
	_, path := newKeysDir(t)
	initKeyring(t, path)
	sum := sha256.Sum256([]byte("pasted"))
	secret := sum[:]
	data, _ := os.ReadFile(path)
	damaged := strings.Replace(string(data), `"not_before": "`+keysT0+`"`, `"not_before": "`+base64.StdEncoding.EncodeToString(secret)+`"`, 1)
	if damaged == string(data) {
		t.Fatal("the test did not change the file")
	}
	os.WriteFile(path, []byte(damaged), 0o600)
	for _, r := range []keysResult{
		runKeys(t, "", "--keyring", path, "check"),
		runKeys(t, "", "--keyring", path, "list"),
		runBatv("check-config", "--keyring", path, "-d", "example.com"),
	} {
		expectKeys(t, r, exitUsage, "key 0: not_before is not an RFC 3339 time")
		keyringtest.AssertNone(t, "output", r.stdout+r.stderr, [][]byte{secret})
	}
	if _, err := (keyring.File{Path: path}).Load(); err == nil {
		t.Error("the damaged keyring loads")
	}
}
