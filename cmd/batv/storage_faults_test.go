package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/keyring"
)

// Storage faults while "batv keys" writes: a full file system, one out of
// inodes, and a read-only one. Each runs on a small tmpfs of its own, which
// needs root (and a kernel that lets this process mount); elsewhere the
// tests skip and say why. In every case the command fails with exit
// status 1 and a message naming the file and the reason, the keyring is
// byte for byte what it was, and no temporary file is left behind.

// smallFS mounts a tmpfs with the given options on a new directory.
func smallFS(t *testing.T, opts string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, opts); err != nil {
		t.Skipf("cannot mount a tmpfs (%v): storage faults not tested here", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fill writes files in dir until the file system says it is full, and
// returns the error that said so.
func fill(t *testing.T, dir string, empty bool) error {
	t.Helper()
	block := bytes.Repeat([]byte{'x'}, 4096)
	for i := 0; ; i++ {
		f, err := os.Create(filepath.Join(dir, "filler"+string(rune('a'+i%26))+strings.Repeat("z", i/26)))
		if err != nil {
			return err
		}
		if empty {
			f.Close()
			continue
		}
		for {
			if _, err := f.Write(block); err != nil {
				f.Close()
				return err
			}
		}
	}
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "filler") {
			out = append(out, e.Name())
		}
	}
	return out
}

// expectUnchanged checks that the keyring at path is the one before, that
// it loads, and that only it and its lock file are in its directory.
func expectUnchanged(t *testing.T, path string, before []byte) {
	t.Helper()
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, before) {
		t.Errorf("the keyring changed (%v)", err)
	}
	if _, err := (keyring.File{Path: path}).Load(); err != nil {
		t.Errorf("the keyring no longer loads: %v", err)
	}
	if got := names(t, filepath.Dir(path)); !slices.Equal(got, []string{"keyring.json", "keyring.json.lock"}) {
		t.Errorf("the directory holds %v: a temporary file was left", got)
	}
}

func TestRotateOnFullDisk(t *testing.T) {
	dir := smallFS(t, "size=64k,mode=0700")
	path := filepath.Join(dir, "keyring.json")
	initKeyring(t, path)
	before, _ := os.ReadFile(path)
	if err := fill(t, dir, false); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the file system: %v", err)
	}
	at := keysAt(t, 24*time.Hour)
	r := runKeys(t, "", "--keyring", path, "--at", at, "rotate")
	t.Logf("rotate on a full disk: %s", r)
	expectKeys(t, r, exitFailure, path, "no space left on device")
	expectUnchanged(t, path, before)

	// Space again: the same command works.
	for _, e := range mustReadDir(t, dir) {
		if strings.HasPrefix(e, "filler") {
			os.Remove(filepath.Join(dir, e))
		}
	}
	expectKeys(t, runKeys(t, "", "--keyring", path, "--at", at, "rotate"), exitOK)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("after the rotation: %v %v", fi.Mode(), err)
	}
	if l := listJSON(t, path, at); len(l.Keys) != 2 {
		t.Errorf("after the rotation: %s", states(l))
	}
}

func TestRotateWithoutInodes(t *testing.T) {
	dir := smallFS(t, "size=1m,nr_inodes=16,mode=0700")
	path := filepath.Join(dir, "keyring.json")
	initKeyring(t, path)
	before, _ := os.ReadFile(path)
	if err := fill(t, dir, true); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("using up the inodes: %v", err)
	}
	r := runKeys(t, "", "--keyring", path, "--at", keysAt(t, 24*time.Hour), "rotate")
	t.Logf("rotate without a free inode: %s", r)
	expectKeys(t, r, exitFailure, path, "no space left on device")
	expectUnchanged(t, path, before)
}

func TestRotateOnReadOnlyFileSystem(t *testing.T) {
	dir := smallFS(t, "size=64k,mode=0700")
	path := filepath.Join(dir, "keyring.json")
	initKeyring(t, path)
	before, _ := os.ReadFile(path)
	if err := syscall.Mount("", dir, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Skipf("cannot remount read-only: %v", err)
	}
	defer syscall.Mount("", dir, "", syscall.MS_REMOUNT, "")
	r := runKeys(t, "", "--keyring", path, "--at", keysAt(t, 24*time.Hour), "rotate")
	t.Logf("rotate on a read-only file system: %s", r)
	expectKeys(t, r, exitFailure, path, "read-only file system")
	expectUnchanged(t, path, before)
	// Commands that change nothing do not write, and work: the lock is
	// taken on a file opened read-only.
	expectKeys(t, runKeys(t, "", "--keyring", path, "--at", keysAt(t, 24*time.Hour), "prune"), exitOK, "nothing removed")
	expectKeys(t, runKeys(t, "", "--keyring", path, "--at", keysAt(t, 24*time.Hour), "list"), exitOK)
	expectUnchanged(t, path, before)
}

func TestInitOnFullDisk(t *testing.T) {
	dir := smallFS(t, "size=64k,mode=0700")
	if err := fill(t, dir, false); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the file system: %v", err)
	}
	path := filepath.Join(dir, "keyring.json")
	r := runKeys(t, "", "--keyring", path, "--at", keysT0, "init")
	t.Logf("init on a full disk: %s", r)
	expectKeys(t, r, exitFailure, path, "no space left on device")
	// No keyring at all rather than a partial one: the next start or the
	// next init finds nothing and says so.
	if got := names(t, dir); !slices.Equal(got, []string{"keyring.json.lock"}) {
		t.Errorf("the directory holds %v", got)
	}
}

func mustReadDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}
