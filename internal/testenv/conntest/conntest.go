// Package conntest holds what the tests of batv's listeners share: a
// listener fed through a channel, a unix socket in a temporary directory,
// and checks that goroutines and file descriptors come back to a baseline.
package conntest

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// ChanListener is a net.Listener whose Accept returns the connections
// sent on Conns.
type ChanListener struct {
	Conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

// NewChanListener returns a ChanListener with an unbuffered Conns.
func NewChanListener() *ChanListener {
	return &ChanListener{Conns: make(chan net.Conn), closed: make(chan struct{})}
}

// Accept returns the next connection sent on Conns, or net.ErrClosed once
// the listener is closed.
func (l *ChanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.Conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close makes Accept return net.ErrClosed.
func (l *ChanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Addr is a placeholder address.
func (l *ChanListener) Addr() net.Addr { return &net.UnixAddr{Name: "chan", Net: "unix"} }

// ListenUnix listens on a unix socket called name in a new temporary
// directory (short enough for sun_path's 108 bytes), removed when the test
// ends, and returns the listener and the socket's path. Closing the
// listener is the caller's.
func ListenUnix(t testing.TB, name string) (net.Listener, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "batv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, name)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	return ln, path
}

// Settle waits up to 10 seconds for cur() to come down to at most want,
// and fails the test if it does not (with a dump of the goroutines when
// what is "goroutines").
func Settle(t testing.TB, what string, cur func() int, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := cur()
		if n <= want {
			return
		}
		if time.Now().After(deadline) {
			if what == "goroutines" {
				buf := make([]byte, 1<<20)
				t.Logf("goroutines:\n%s", buf[:runtime.Stack(buf, true)])
			}
			t.Fatalf("%s: %d, want at most the baseline %d", what, n, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// OpenFDs counts this process's open file descriptors; it skips the test
// where /proc is not there.
func OpenFDs(t testing.TB) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count file descriptors: %v", err)
	}
	return len(entries)
}
