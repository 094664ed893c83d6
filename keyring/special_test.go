//go:build unix

package keyring

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gofrs/flock"
)

// mkfifo makes a FIFO at path. A test that opens it must not hang: if the
// code under test blocks on it, unblockFIFO lets it go.
func mkfifo(t *testing.T, path string) {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skipf("cannot make a FIFO: %v", err)
	}
}

// unblockFIFO opens the FIFO for writing and closes it, which releases a
// reader blocked in open(2) or read(2) on it.
func unblockFIFO(path string) {
	if f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
		f.Close()
	}
}

// within runs fn and fails the test if it has not returned after 5
// seconds: what it does must not block on the FIFO at fifo.
func within(t *testing.T, what, fifo string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		unblockFIFO(fifo)
		<-done
		t.Fatalf("%s blocked on a FIFO", what)
	}
}

// TestFIFOInPlaceOfKeyring: a keyring path replaced by a FIFO (with no
// writer) is refused at once, as not a regular file, by every reader.
func TestFIFOInPlaceOfKeyring(t *testing.T) {
	path := createTestFile(t)
	w, err := NewWatcher(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	good := w.Current()
	os.Remove(path)
	mkfifo(t, path)
	isNotRegular := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("%s: %v; want ErrInvalid saying not a regular file", what, err)
		}
	}
	within(t, "Load", path, func() { _, err := (File{Path: path}).Load(); isNotRegular("Load", err) })
	within(t, "Check", path, func() {
		res := File{Path: path}.Check(t0)
		if len(res.Problems) != 1 || !strings.Contains(res.Problems[0], "not a regular file") {
			t.Errorf("Check: %q", res.Problems)
		}
	})
	within(t, "Rotate", path, func() {
		_, _, err := File{Path: path}.Rotate(t0.Add(day), 0, &countingReader{})
		isNotRegular("Rotate", err)
	})
	within(t, "Import", path, func() {
		_, err := File{Path: path}.Import(t0, 4, []byte("0123456789abcdef"), ImportOptions{})
		isNotRegular("Import", err)
	})
	within(t, "NewWatcher", path, func() { _, err := NewWatcher(path, nil); isNotRegular("NewWatcher", err) })
	within(t, "Watcher.Reload", path, func() { isNotRegular("Reload", w.Reload()) })
	within(t, "Watcher.poll", path, func() { w.poll() })
	if w.Current() != good {
		t.Error("the watcher dropped its keyring for a FIFO")
	}
	within(t, "ReadKeyFile", path, func() {
		if _, err := ReadKeyFile(path); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("ReadKeyFile: %v", err)
		}
	})
}

// TestSymlinkedKeyring: the operations through a symbolic link change the
// file it points to, lock beside that file, and leave the link a link.
func TestSymlinkedKeyring(t *testing.T) {
	target := createTestFile(t)
	link := filepath.Join(t.TempDir(), "keyring.json")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	f := File{Path: link}
	if f.LockPath() != target+".lock" {
		t.Errorf("LockPath %s, want beside the target", f.LockPath())
	}
	w, err := NewWatcher(link, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, id, err := f.Rotate(t0.Add(day), 0, &countingReader{next: 77}); err != nil || id != 1 {
		t.Fatalf("Rotate through the link: id %d, %v", id, err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the link was replaced: %v", err)
	}
	r, err := File{Path: target}.Load()
	if err != nil || mustSigner(t, r, t0.Add(day)) != 1 {
		t.Fatalf("the target was not rotated: %v", err)
	}
	if names := dirEntries(t, filepath.Dir(link)); len(names) != 1 {
		t.Errorf("the link's directory holds %v; want the link alone", names)
	}
	if names := dirEntries(t, filepath.Dir(target)); len(names) != 2 {
		t.Errorf("the target's directory holds %v; want the keyring and its lock", names)
	}
	if !w.poll() || mustSigner(t, w.Current(), t0.Add(day)) != 1 {
		t.Error("the watcher of the link did not see the rotation")
	}
	if _, _, err := f.Prune(t0.Add(30 * day)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Import(t0.Add(30*day), 5, []byte("0123456789abcdef"), ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("the link was replaced by prune or import")
	}
	if r, _ := (File{Path: target}).Load(); !verifies(r, t0.Add(30*day), 5) {
		t.Error("the import did not reach the target")
	}
	// Create never follows or replaces a link, even a dangling one.
	dangling := filepath.Join(t.TempDir(), "dangling.json")
	os.Symlink(filepath.Join(t.TempDir(), "none.json"), dangling)
	if _, err := (File{Path: dangling}).Create(t0, &countingReader{}, DefaultOptions()); !errors.Is(err, ErrExists) {
		t.Errorf("Create over a dangling link: %v", err)
	}
}

// TestCheckReportsOwner: a keyring owned by another user than the one
// running the check is reported, naming the owner.
func TestCheckReportsOwner(t *testing.T) {
	path := createTestFile(t)
	if res := (File{Path: path}).Check(t0); len(res.Warnings) != 0 {
		t.Errorf("own file: warnings %q", res.Warnings)
	}
	if os.Geteuid() != 0 {
		t.Skip("giving a file to another user needs root")
	}
	if err := os.Chown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	res := File{Path: path}.Check(t0)
	w := strings.Join(res.Warnings, "\n")
	if len(res.Problems) != 0 || !strings.Contains(w, "uid 65534") || !strings.Contains(w, "not by root (uid 0)") ||
		!strings.Contains(w, "the user the daemon runs as") {
		t.Errorf("file owned by uid 65534: problems %q, warnings %q", res.Problems, res.Warnings)
	}
}

// TestLockTimeout: an operation waits LockTimeout for the lock another
// process holds, then fails with ErrLocked; the file is untouched. The
// clock is synctest's, so 30 seconds pass at once.
func TestLockTimeout(t *testing.T) {
	path := createTestFile(t)
	before := readFile(t, path)
	held := flock.New(File{Path: path}.LockPath())
	if err := held.Lock(); err != nil {
		t.Fatal(err)
	}
	defer held.Unlock()
	for _, tc := range []struct {
		f    File
		wait time.Duration
	}{
		{File{Path: path}, DefaultLockTimeout},
		{File{Path: path, LockTimeout: 2 * time.Second}, 2 * time.Second},
	} {
		synctest.Test(t, func(t *testing.T) {
			start := time.Now()
			_, _, err := tc.f.Rotate(t0.Add(day), 0, &countingReader{})
			if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), tc.wait.String()) {
				t.Errorf("Rotate with the lock held: %v; want ErrLocked after %s", err, tc.wait)
			}
			if waited := time.Since(start); waited < tc.wait || waited > tc.wait+time.Second {
				t.Errorf("waited %s for the lock, want %s", waited, tc.wait)
			}
		})
	}
	if got := readFile(t, path); string(got) != string(before) {
		t.Error("the keyring changed while locked")
	}
}
