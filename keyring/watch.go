package keyring

import (
	"context"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batv/batv/batv"
)

// DefaultPollInterval is how often Watcher.Run looks at the file when given
// no interval.
const DefaultPollInterval = 5 * time.Second

// identity tells one version of a file from another: device and inode
// (changed by a rename over the file), size, modification time and mode.
type identity struct {
	exists   bool
	dev, ino uint64
	size     int64
	mtime    int64
	mode     fs.FileMode
}

// Watcher holds the current keyring of a daemon and replaces it when the
// file changes. Current never blocks and always returns a usable snapshot:
// a reload that fails (file deleted, truncated, damaged, not private, not a
// regular file) keeps the previous one. A Watcher is safe for concurrent
// use.
//
// A Watcher is itself a batv.Keyring (and a batv.LifetimeKeyring): each
// call uses the snapshot current at that moment. A program that signs or
// verifies several addresses of one message with the same keys takes
// Current once instead.
type Watcher struct {
	path   string
	report func(error)

	cur atomic.Pointer[Keyring]

	mu   sync.Mutex // serialises reloads
	seen identity   // the file as of the last load attempt
}

// NewWatcher loads the keyring at path and returns a Watcher holding it; it
// fails if the first load does. report, which may be nil, is called by Run
// after each reload it attempts, with nil on success or the reason the old
// keyring was kept, for logs and metrics.
func NewWatcher(path string, report func(error)) (*Watcher, error) {
	w := &Watcher{path: path, report: report}
	r, id, err := load(path)
	if err != nil {
		return nil, err
	}
	w.cur.Store(r)
	w.seen = id
	return w, nil
}

var _ batv.LifetimeKeyring = (*Watcher)(nil)

// Current returns the current keyring. A caller handling one message
// should call it once and use that snapshot throughout.
func (w *Watcher) Current() *Keyring { return w.cur.Load() }

// SigningKey returns the signing key of the current keyring, so that a
// Watcher can be the Keys of a batv.Signer; see Keyring.SigningKey.
func (w *Watcher) SigningKey(now time.Time, domain string) (batv.Key, error) {
	return w.Current().SigningKey(now, domain)
}

// VerificationKey returns a verification key of the current keyring, so
// that a Watcher can be the Keys of a batv.Verifier; see
// Keyring.VerificationKey.
func (w *Watcher) VerificationKey(now time.Time, id int, domain string) (batv.Key, bool) {
	return w.Current().VerificationKey(now, id, domain)
}

// MaxLifetimeDays returns the maximum lifetime of the current keyring; see
// Keyring.MaxLifetimeDays and batv.CheckLifetime. The commands never change
// it, so it is the same in every keyring the Watcher loads unless the file
// is edited by hand.
func (w *Watcher) MaxLifetimeDays() int { return w.Current().MaxLifetimeDays() }

// Reload loads the file now (on SIGHUP, say) and makes it current. On any
// error the current keyring stays and the error says why. It does not call
// the report function.
func (w *Watcher) Reload() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reloadLocked()
}

func (w *Watcher) reloadLocked() error {
	r, id, err := load(w.path)
	w.seen = id
	if err != nil {
		return err
	}
	w.cur.Store(r)
	return nil
}

// Run looks at the file every interval (DefaultPollInterval if interval is
// not positive) until ctx is done, and reloads it when its identity (inode,
// size, modification time, mode) has changed since the last load attempt,
// reporting each attempt. A file that stays broken is reported once, not at
// every poll.
func (w *Watcher) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.poll()
		}
	}
}

// poll reloads the file if it changed, and reports the result. It reports
// whether it attempted a reload.
func (w *Watcher) poll() bool {
	var id identity
	fi, statErr := os.Stat(w.path)
	if statErr == nil {
		id = identityOf(fi)
	}
	w.mu.Lock()
	if id == w.seen {
		w.mu.Unlock()
		return false
	}
	err := w.reloadLocked()
	if statErr != nil {
		// Gone (or unreachable) rather than changed: remember that, so
		// it is reported once, and report the stat error.
		w.seen = identity{}
	}
	w.mu.Unlock()
	if w.report != nil {
		w.report(err)
	}
	return true
}
