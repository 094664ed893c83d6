package daemon

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestStaleSocketOnly: a socket file at a listener's path is removed only
// when a connection to it is refused (nothing is bound to it); a live
// stream socket, one with a full backlog, a live datagram socket and a
// file that is no socket stay, and the start fails saying why.
func TestStaleSocketOnly(t *testing.T) {
	for _, tt := range []struct {
		name   string
		make   func(t *testing.T, path string) // leaves something at path
		refuse string                          // "" if the listener opens
	}{
		{"no file", func(*testing.T, string) {}, ""},
		{"stale stream socket", func(t *testing.T, path string) {
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			ln.SetUnlinkOnClose(false)
			ln.Close()
		}, ""},
		{"stale datagram socket", func(t *testing.T, path string) {
			c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		}, ""},
		{"live stream socket", func(t *testing.T, path string) {
			ln, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
		}, "another process is listening on it"},
		{"live stream socket with a full backlog", fullBacklog, "with a full backlog"},
		{"live datagram socket", func(t *testing.T, path string) {
			c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
		}, "socket of another type (datagram)"},
		{"regular file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "is not a socket"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortTempDir(t)
			path := filepath.Join(dir, "m.sock")
			tt.make(t, path)
			before, statErr := os.Lstat(path)
			ln, err := openListener("unix:"+path, Socket{})
			if tt.refuse == "" {
				if err != nil {
					t.Fatalf("openListener: %v", err)
				}
				ln.Close()
				return
			}
			if err == nil {
				ln.Close()
				t.Fatalf("openListener replaced the live socket at %s", path)
			}
			if !strings.Contains(err.Error(), tt.refuse) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q: want the path and %q", err, tt.refuse)
			}
			after, err := os.Lstat(path)
			if statErr != nil || err != nil || !os.SameFile(before, after) {
				t.Errorf("the file at %s was removed or replaced", path)
			}
		})
	}
}

// fullBacklog binds a stream socket at path with a backlog of 0 and
// connects to it without accepting until the kernel says the queue is
// full.
func fullBacklog(t *testing.T, path string) {
	fd := socketFD(t)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		c := socketFD(t)
		err := unix.Connect(c, &unix.SockaddrUnix{Name: path})
		if err == unix.EAGAIN {
			return
		}
		if err != nil || i > 100 {
			t.Fatalf("filling the backlog: connection %d: %v", i, err)
		}
	}
}

func socketFD(t *testing.T) int {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// TestSocketInUseWording: an answer other than "refused" is never taken
// for a dead socket; the ones a test cannot make as root (permission) are
// worded too.
func TestSocketInUseWording(t *testing.T) {
	for err, want := range map[error]string{
		unix.EACCES:    "permission denied",
		unix.ETIMEDOUT: "cannot tell whether it is in use (connection timed out)",
	} {
		if got := socketInUse(err); !strings.Contains(got, want) {
			t.Errorf("%v: %q, want %q", err, got, want)
		}
	}
}

// shortTempDir is a temporary directory with a short path: a unix
// socket's path is at most 107 bytes.
func shortTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "batvd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
