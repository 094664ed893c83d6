package policyd

import (
	"bufio"
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// postfixRequest is a request as Postfix 3.7.11 sends it at RCPT, captured
// from the private instance of TestPostfix (testdata/postfix-3.7-rcpt.txt).
func postfixRequest(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("testdata/postfix-3.7-rcpt.txt")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// logBuf collects a server's log lines (slog text format, debug level).
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitFor waits until the log has a line containing every one of substrs.
func (l *logBuf) waitFor(t *testing.T, substrs ...string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, line := range strings.Split(l.String(), "\n") {
			ok := line != ""
			for _, s := range substrs {
				ok = ok && strings.Contains(line, s)
			}
			if ok {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line containing %q; log:\n%s", substrs, l.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// socketPair returns the two ends of a connected unix stream socket pair.
func socketPair(t testing.TB) (client, server net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	return conns[0], conns[1]
}

// serve starts s.ServeConn on the server end of a socket pair and returns
// the client end and a channel closed when ServeConn returns.
func serve(t testing.TB, s *Server, ctx context.Context) (net.Conn, <-chan struct{}) {
	t.Helper()
	client, server := socketPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.ServeConn(ctx, server)
	}()
	t.Cleanup(func() {
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("ServeConn did not return after the client closed")
		}
	})
	return client, done
}

// newReader reads s through the smallest buffer bufio allows, so that
// lines longer than the buffer are read in pieces.
func newReader(s string) *bufio.Reader {
	return bufio.NewReaderSize(strings.NewReader(s), 16)
}
