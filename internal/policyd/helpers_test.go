package policyd

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/internal/serve"
	"github.com/batv/batv/internal/testenv/conntest"
	"github.com/batv/batv/internal/testenv/daemontest"
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
type logBuf struct{ daemontest.Buffer }

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

// testServer is a listener of package serve that serves s on the server
// ends of socket pairs, as the daemon serves a socket.
type testServer struct {
	t  testing.TB
	l  *serve.Listener
	ln *conntest.ChanListener
}

// newTestServer starts a listener with opts (a discarding logger by
// default) that serves s; it shuts down when the test ends.
func newTestServer(t testing.TB, s *Server, opts serve.Options) *testServer {
	t.Helper()
	if opts.Name == "" {
		opts.Name = "policy"
	}
	ts := &testServer{t: t, ln: conntest.NewChanListener()}
	ts.l = serve.New(ts.ln, opts)
	served := make(chan struct{})
	go func() { defer close(served); _ = ts.l.Serve(s.ServeConn) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := ts.l.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		<-served
	})
	return ts
}

// connect hands the server end of a new socket pair to the listener and
// returns the client end and a channel closed when the server has closed
// its end.
func (ts *testServer) connect() (net.Conn, <-chan struct{}) {
	ts.t.Helper()
	client, server := socketPair(ts.t)
	done := make(chan struct{})
	ts.ln.Conns <- &notifyConn{Conn: server, closed: done}
	return client, done
}

// notifyConn closes closed when the server closes the connection.
type notifyConn struct {
	net.Conn
	closed chan struct{}
	once   sync.Once
}

func (c *notifyConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// serveOne serves s on one socket pair with a logger writing to lb (nil:
// none), and returns the client end and a channel closed when the server
// has closed its end.
func serveOne(t testing.TB, s *Server, lb *logBuf) (net.Conn, <-chan struct{}) {
	t.Helper()
	var opts serve.Options
	if lb != nil {
		opts.Logger = lb.logger()
	}
	return newTestServer(t, s, opts).connect()
}

// newReader reads s through the smallest buffer bufio allows, so that
// lines longer than the buffer are read in pieces.
func newReader(s string) *bufio.Reader {
	return bufio.NewReaderSize(strings.NewReader(s), 16)
}
