package keyring

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// reports collects what a Watcher reports.
type reports struct {
	mu   sync.Mutex
	errs []error
	ch   chan error
}

func newReports() *reports { return &reports{ch: make(chan error, 100)} }

func (r *reports) report(err error) {
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.mu.Unlock()
	r.ch <- err
}

func (r *reports) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.errs)
}

func (r *reports) last() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.errs[len(r.errs)-1]
}

func TestWatcherPoll(t *testing.T) {
	path := createTestFile(t)
	rep := newReports()
	w, err := NewWatcher(path, rep.report)
	if err != nil {
		t.Fatal(err)
	}
	first := w.Current()
	if id := mustSigner(t, first, t0); id != 0 {
		t.Fatalf("key %d signs", id)
	}
	if w.poll() {
		t.Error("poll reloaded an unchanged file")
	}

	// A rotation (rename over the file) is picked up.
	if _, _, err := (File{Path: path}).Rotate(t0.Add(day), 0, &countingReader{next: 100}); err != nil {
		t.Fatal(err)
	}
	if !w.poll() || rep.last() != nil {
		t.Fatalf("rotation not reloaded: %v", rep.last())
	}
	good := w.Current()
	if good == first || mustSigner(t, good, t0.Add(day)) != 1 {
		t.Fatal("the rotated keyring is not current")
	}
	if first.Keys(t0)[0].ID != 0 || len(first.Keys(t0)) != 1 {
		t.Error("the old snapshot changed")
	}
	goodData := readFile(t, path)

	// Each kind of bad file: the good snapshot stays, the error is
	// reported once, and the next good file is loaded.
	for _, tc := range []struct {
		name   string
		break_ func()
		want   error
	}{
		{"truncated in place", func() { os.WriteFile(path, goodData[:len(goodData)/3], 0o600) }, ErrInvalid},
		{"garbage", func() { os.WriteFile(path, []byte("garbage"), 0o600) }, ErrInvalid},
		{"world-readable", func() { os.Chmod(path, 0o644) }, ErrInsecureMode},
		{"deleted", func() { os.Remove(path) }, fs.ErrNotExist},
		{"unsupported version", func() {
			os.WriteFile(path, []byte(strings.Replace(string(goodData), `"version": 1`, `"version": 9`, 1)), 0o600)
		}, ErrUnsupportedVersion},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := rep.count()
			tc.break_()
			if !w.poll() {
				t.Fatal("change not noticed")
			}
			if err := rep.last(); !errors.Is(err, tc.want) {
				t.Errorf("reported %v, want %v", err, tc.want)
			}
			if w.Current() != good {
				t.Error("a bad file replaced the current keyring")
			}
			if w.poll() || rep.count() != n+1 {
				t.Error("an unchanged bad file was reported again")
			}
			if err := w.Reload(); !errors.Is(err, tc.want) || w.Current() != good {
				t.Errorf("Reload: %v", err)
			}
			// Restore, as an atomic replacement would.
			tmp := path + ".new"
			os.WriteFile(tmp, goodData, 0o600)
			os.Rename(tmp, path)
			if !w.poll() || rep.last() != nil {
				t.Fatalf("restored file not loaded: %v", rep.last())
			}
			if w.Current() == good || mustSigner(t, w.Current(), t0.Add(day)) != 1 {
				t.Error("the restored keyring is not current")
			}
			good = w.Current()
		})
	}

	if _, err := NewWatcher(filepath.Join(t.TempDir(), "none"), nil); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("NewWatcher on a missing file: %v", err)
	}
}

// TestWatcherRun drives Run on synctest's clock: each poll interval
// passes at once, and synctest.Wait returns when the poll is done, so the
// test knows exactly which changes one interval picks up.
func TestWatcherRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := createTestFile(t)
		rep := newReports()
		w, err := NewWatcher(path, rep.report)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			w.Run(ctx, time.Minute)
			close(done)
		}()
		// next lets one interval pass and returns the report of its poll,
		// or nil and false if it made none.
		next := func() (error, bool) {
			time.Sleep(time.Minute)
			synctest.Wait()
			select {
			case err := <-rep.ch:
				return err, true
			default:
				return nil, false
			}
		}

		if _, ok := next(); ok {
			t.Fatal("an unchanged file was reported")
		}
		if _, _, err := (File{Path: path}).Rotate(t0.Add(day), 0, &countingReader{next: 1}); err != nil {
			t.Fatal(err)
		}
		if err, ok := next(); !ok || err != nil {
			t.Fatalf("rotation: reported %t, %v", ok, err)
		}
		if id := mustSigner(t, w.Current(), t0.Add(day)); id != 1 {
			t.Errorf("key %d signs after the reload", id)
		}
		os.WriteFile(path, []byte("{"), 0o600)
		if err, ok := next(); !ok || !errors.Is(err, ErrInvalid) {
			t.Errorf("damaged file: reported %t, %v", ok, err)
		}
		if _, ok := next(); ok {
			t.Error("the damaged file was reported twice")
		}
		if id := mustSigner(t, w.Current(), t0.Add(day)); id != 1 {
			t.Error("a damaged file replaced the keyring")
		}
		cancel()
		<-done
	})
}

// TestWatcherConcurrent reads the current keyring while it is reloaded.
func TestWatcherConcurrent(t *testing.T) {
	path := createTestFile(t)
	w, err := NewWatcher(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := w.Current().SigningKey(t0.Add(30*day), "example.com"); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for i := range 5 {
		if _, _, err := (File{Path: path}).Rotate(t0.Add(time.Duration(i+1)*day), 0, &countingReader{next: byte(i * 40)}); err != nil {
			t.Fatal(err)
		}
		w.poll()
		if err := w.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}
