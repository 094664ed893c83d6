package socketmap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/internal/serve"
)

func TestSeveralRequestsOnOneConnection(t *testing.T) {
	h := &recordingHandler{}
	ts := startServer(t, h, serve.Options{})
	c := ts.dial(t)
	steps := []struct{ name, key, want string }{
		{"untag", "found-1@example.com", "37:OK value-of-untag:found-1@example.com,"},
		{"untag", "nobody@example.com", "9:NOTFOUND ,"},
		{"other", "temp-1", "25:TEMP database unavailable,"},
		{"other", "perm-1", "16:PERM no such map,"},
		{"other", "timeout-1", "25:TIMEOUT backend timed out,"},
		{"untag", "found with  spaces", "36:OK value-of-untag:found with  spaces,"},
		{"untag", "", "9:NOTFOUND ,"},
		{"", "found", "18:OK value-of-:found,"},
		{"untag", "Mixed.Case@Example.COM", "9:NOTFOUND ,"},
	}
	for _, s := range steps {
		if got := c.lookup(t, s.name, s.key); got != s.want {
			t.Errorf("lookup %q %q: got %q, want %q", s.name, s.key, got, s.want)
		}
	}
	var want []string
	for _, s := range steps {
		want = append(want, s.name+"|"+s.key)
	}
	if got := h.got(); !slices.Equal(got, want) {
		t.Errorf("handler calls:\n got %q\nwant %q", got, want)
	}
	if n := ts.Open(); n != 1 {
		t.Errorf("Open = %d, want 1", n)
	}
}

func TestPipelinedRequests(t *testing.T) {
	h := &recordingHandler{}
	ts := startServer(t, h, serve.Options{})
	c := ts.dial(t)
	// Three requests in one write, then a fourth split across writes:
	// its end is sent once the first three are answered.
	c.send(t, netstring("m found-a")+netstring("m nobody")+netstring("m temp")+"8:m fou")
	want := []string{"21:OK value-of-m:found-a,", "9:NOTFOUND ,", "25:TEMP database unavailable,", "20:OK value-of-m:found2,"}
	for i, w := range want {
		if i == 3 {
			c.send(t, "nd2,")
		}
		got, err := c.readRaw()
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if got != w {
			t.Errorf("reply %d: got %q, want %q", i, got, w)
		}
	}
	if got := h.got(); !slices.Equal(got, []string{"m|found-a", "m|nobody", "m|temp", "m|found2"}) {
		t.Errorf("handler calls %q", got)
	}
}

// TestMalformedRequests: a request a socketmap client cannot have sent
// is logged and its connection closed, without a call to the handler. A
// stream that ends in the middle of a request is a close, not an error.
func TestMalformedRequests(t *testing.T) {
	tests := []struct {
		name, input string
		reason      string // logged; "" for a truncated stream
		closeWrite  bool   // half-close after the input: a truncated stream
	}{
		{"letter in length", "1a:x y,", "not a decimal number", false},
		{"no length", ":x y,", "not a decimal number", false},
		{"negative length", "-3:x y,", "not a decimal number", false},
		{"space before length", " 3:x y,", "not a decimal number", false},
		{"plus sign", "+3:x y,", "not a decimal number", false},
		{"leading zero", "03:x y,", "leading zero", false},
		{"double zero", "00:", "leading zero", false},
		{"length over limit", "10001:", "exceeds 10000 bytes", false},
		{"huge length", "99999999999999999999999999:x y,", "exceeds 10000 bytes", false},
		{"missing colon", "3;x y,", "not a decimal number", false},
		{"missing comma", "3:x y;", "does not end with ','", false},
		{"payload longer than length", "3:x yz,", "does not end with ','", false},
		{"missing space", "3:xyz,", "no space between map name and key", false},
		{"zero length", "0:,", "no space between map name and key", false},
		{"NUL in key", "5:m a\x00b,", "NUL byte", false},
		{"NUL in name", "5:m\x00 ab,", "NUL byte", false},
		{"truncated payload", "10:m key", "", true},
		{"truncated before comma", "5:m key", "", true},
		{"truncated length", "12", "", true},
		{"truncated after colon", "5:", "", true},
		{"bad request after a good one", netstring("m found") + "x", "not a decimal number", false},
		{"http", "GET / HTTP/1.0\r\n\r\n", "not a decimal number", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &recordingHandler{}
			ts := startServer(t, h, serve.Options{})
			c := ts.dial(t)
			c.send(t, tt.input)
			if tt.closeWrite {
				if err := c.CloseWrite(); err != nil {
					t.Fatal(err)
				}
			}
			if strings.HasPrefix(tt.input, netstring("m found")) {
				if got, err := c.readRaw(); err != nil || got != "19:OK value-of-m:found," {
					t.Fatalf("first reply %q, %v", got, err)
				}
			}
			c.expectClosed(t)
			how := "error"
			if tt.reason == "" {
				how = "closed"
			} else {
				t.Logf("log: %s", ts.log.wait(t, "WARN", "malformed request", tt.reason))
			}
			ts.waitOpen(t, 0)
			if got := ts.metric(t, `batv_sessions_ended_total{how="`+how+`",listener="socketmap"}`); got != 1 {
				t.Errorf("sessions ended with %q: %v, want 1", how, got)
			}
			if tt.reason == "" {
				if n := countLog(ts.log, "WARN"); n != 0 {
					t.Errorf("a truncated stream logged as malformed: %q", ts.log.all())
				}
			}
			if n := len(h.got()); n > 1 || n == 1 && !strings.HasPrefix(tt.input, netstring("m found")) {
				t.Errorf("handler called for malformed input: %q", h.got())
			}
		})
	}
}

// TestReadErrorInARequest: a read that fails in the middle of a request
// is the listener's to log, as it is between requests: the socketmap
// server does not call it a malformed request too.
func TestReadErrorInARequest(t *testing.T) {
	for _, tt := range []struct {
		err      error
		how, log string
	}{
		{io.EOF, "closed", ""},
		{net.ErrClosed, "closed", ""}, // closed by a shutdown, say
		{os.ErrDeadlineExceeded, "timeout", "INFO connection closed: the peer sent nothing for too long"},
		{syscall.ECONNRESET, "error", "WARN connection read failed err=connection reset by peer"},
	} {
		t.Run(tt.how+" "+tt.err.Error(), func(t *testing.T) {
			rec := newLogRecorder()
			conn := newMemConn([]byte(netstring("m found")+"20:m part"), 64)
			conn.end = tt.err
			if err := serveMem(&recordingHandler{}, slog.New(rec), conn, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			if out, _ := conn.output(); string(out) != "19:OK value-of-m:found," {
				t.Errorf("output %q", out)
			}
			var logged []string
			for _, r := range rec.all() {
				if !strings.HasPrefix(r, "DEBUG") {
					logged = append(logged, r)
				}
			}
			if want := []string{tt.log}; tt.log == "" && len(logged) != 0 || tt.log != "" && (len(logged) != 1 || !strings.HasPrefix(logged[0], tt.log)) {
				t.Errorf("logged %q, want %q", logged, want)
			}
			if !slices.ContainsFunc(rec.all(), func(r string) bool { return strings.HasPrefix(r, "DEBUG connection ended how="+tt.how) }) {
				t.Errorf("the connection did not end with %q: %q", tt.how, rec.all())
			}
		})
	}
}

func TestLongestRequest(t *testing.T) {
	h := &recordingHandler{}
	ts := startServer(t, h, serve.Options{})
	c := ts.dial(t)
	key := "found" + strings.Repeat("k", MaxRequestSize-len("m found"))
	got := c.lookup(t, "m", key)
	if want := netstring("OK value-of-m:" + key); got != want {
		t.Errorf("reply to the longest request: %.60q..., want %.60q...", got, want)
	}
	// One byte more is refused.
	c.send(t, netstring("m "+key+"x"))
	c.expectClosed(t)
	ts.log.wait(t, "exceeds 10000 bytes")
}

func TestCleanCloseIsNotAnError(t *testing.T) {
	ts := startServer(t, &recordingHandler{}, serve.Options{})
	c := ts.dial(t)
	c.lookup(t, "m", "x")
	c.Close()
	ts.log.wait(t, "DEBUG", "connection ended", "how=closed")
	for _, r := range ts.log.all() {
		if strings.HasPrefix(r, "WARN") || strings.HasPrefix(r, "ERROR") {
			t.Errorf("unexpected log record: %s", r)
		}
	}
}

// TestIdleTimeout: the listener's idle timeout closes a silent connection
// and one whose request stalls half-way, as a timeout, not a malformed
// request. (The timeout itself is tested in package serve.)
func TestIdleTimeout(t *testing.T) {
	ts := startServer(t, &recordingHandler{}, serve.Options{IdleTimeout: 100 * time.Millisecond})

	c := ts.dial(t)
	start := time.Now()
	c.expectClosed(t)
	if d := time.Since(start); d < 90*time.Millisecond {
		t.Errorf("silent connection closed after %v, want 100ms", d)
	}

	c = ts.dial(t)
	c.lookup(t, "m", "found")
	c.send(t, "20:m part")
	c.expectClosed(t)
	ts.waitOpen(t, 0)
	if n := countLog(ts.log, "the peer sent nothing for too long"); n != 2 {
		t.Errorf("%d idle timeouts logged, want 2", n)
	}
	if got := ts.metric(t, `batv_sessions_ended_total{how="timeout",listener="socketmap"}`); got != 2 {
		t.Errorf("%v sessions ended by the idle timeout, want 2", got)
	}
	if n := countLog(ts.log, "WARN"); n != 0 {
		t.Errorf("warnings: %q", ts.log.all())
	}
}

// blockingHandler blocks each lookup of key "slow" until release is
// closed, and signals started when it begins.
type blockingHandler struct {
	started chan struct{}
	release chan struct{}
}

func newBlockingHandler() *blockingHandler {
	return &blockingHandler{started: make(chan struct{}, 10), release: make(chan struct{})}
}

func (h *blockingHandler) Lookup(_, key string) Reply {
	if key != "slow" {
		return NotFound()
	}
	h.started <- struct{}{}
	<-h.release
	return OK("done")
}

// TestShutdownWaitsForSlowLookup: Shutdown closes the idle connections and
// the listener, lets the lookup in progress finish and send its reply,
// then closes that connection too.
func TestShutdownWaitsForSlowLookup(t *testing.T) {
	h := newBlockingHandler()
	ts := startServer(t, h, serve.Options{})
	busy := ts.dial(t)
	idle := ts.dial(t)
	idle.lookup(t, "m", "fast")
	busy.send(t, netstring("m slow"))
	<-h.started

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- ts.Shutdown(ctx)
	}()

	// The idle connection is closed, the listener too.
	idle.expectClosed(t)
	select {
	case err := <-ts.serveCh:
		if !errors.Is(err, serve.ErrClosed) {
			t.Errorf("Serve returned %v", err)
		}
		ts.serveCh <- err // for the cleanup check
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	if c, err := net.Dial("unix", ts.path); err == nil {
		c.Close()
		t.Error("new connection accepted during shutdown")
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a lookup in progress", err)
	default:
	}
	ts.waitOpen(t, 1) // the busy one

	// The lookup finishes and its reply is sent, then the connection closes.
	close(h.release)
	if got, err := busy.readRaw(); err != nil || got != "7:OK done," {
		t.Fatalf("reply of the in-flight lookup: %q, %v", got, err)
	}
	busy.expectClosed(t)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if n := ts.Open(); n != 0 {
		t.Errorf("Open after shutdown = %d", n)
	}
	if got := ts.metric(t, `batv_sessions_ended_total{how="shutdown",listener="socketmap"}`); got != 2 {
		t.Errorf("%v sessions ended by the shutdown, want 2", got)
	}
}

// TestShutdownDeadlineForcesClose: when Shutdown's deadline passes during
// a lookup, the connection is closed at once; Shutdown returns the
// deadline's error when the lookup returns, and its reply goes nowhere.
func TestShutdownDeadlineForcesClose(t *testing.T) {
	h := newBlockingHandler()
	ts := startServer(t, h, serve.Options{})
	busy := ts.dial(t)
	busy.send(t, netstring("m slow"))
	<-h.started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ts.Shutdown(ctx) }()
	busy.expectClosed(t)
	close(h.release)
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if n := ts.Open(); n != 0 {
		t.Errorf("Open after a forced shutdown = %d", n)
	}
	ts.log.wait(t, "WARN", "shutdown deadline passed", "connections=1")
	if n := countLog(ts.log, "failed"); n != 0 {
		t.Errorf("the forced close logged as a failure: %q", ts.log.all())
	}
}

func TestShutdownIdleServer(t *testing.T) {
	ts := startServer(t, &recordingHandler{}, serve.Options{})
	var conns []*testClient
	for range 5 {
		c := ts.dial(t)
		c.lookup(t, "m", "found")
		conns = append(conns, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		c.expectClosed(t)
	}
	// Twice is fine.
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestMaxConns: the listener's limit holds for the lookup tables too.
func TestMaxConns(t *testing.T) {
	ts := startServer(t, &recordingHandler{}, serve.Options{MaxConns: 2})
	a, b := ts.dial(t), ts.dial(t)
	a.lookup(t, "m", "found")
	b.lookup(t, "m", "found")
	over := ts.dial(t)
	_, _ = over.Write([]byte(netstring("m found"))) // may fail: closed already
	over.expectClosed(t)
	ts.log.wait(t, "WARN", "connection refused: limit reached", "max_connections=2")
	a.lookup(t, "m", "found")
	a.Close()
	ts.waitOpen(t, 1)
	c := ts.dial(t)
	if got := c.lookup(t, "m", "found"); got != "19:OK value-of-m:found," {
		t.Errorf("got %q after a slot was freed", got)
	}
}

func TestHandlerPanic(t *testing.T) {
	ts := startServer(t, HandlerFunc(func(_, key string) Reply {
		if key == "boom" {
			panic("kaboom")
		}
		return OK("fine")
	}), serve.Options{})
	c := ts.dial(t)
	if got := c.lookup(t, "m", "boom"); got != "37:TEMP internal error in lookup handler," {
		t.Errorf("got %q", got)
	}
	ts.log.wait(t, "ERROR", "panicked", "kaboom")
	// The connection survives.
	if got := c.lookup(t, "m", "x"); got != "7:OK fine," {
		t.Errorf("got %q", got)
	}
}

func TestInvalidHandlerResult(t *testing.T) {
	ts := startServer(t, HandlerFunc(func(_, key string) Reply {
		switch key {
		case "newline":
			return OK("alice@example.com\nX-Injected: yes")
		case "big":
			return OK(strings.Repeat("x", MaxReplySize))
		case "zero":
			return Reply{}
		}
		return Temp("two\nlines")
	}), serve.Options{})
	c := ts.dial(t)
	for key, want := range map[string]string{
		"newline": "40:TEMP invalid characters in lookup result,",
		"big":     "27:TEMP lookup result too long,",
		"zero":    "45:TEMP invalid reply status from lookup handler,",
		"reason":  "14:TEMP two?lines,",
	} {
		if got := c.lookup(t, "m", key); got != want {
			t.Errorf("%s: got %q, want %q", key, got, want)
		}
	}
	ts.log.wait(t, "WARN", "invalid reply", "status=OK", "invalid characters")
	ts.log.wait(t, "WARN", "invalid reply", "status=Status(0)")
}

// TestHandlerPerConnection: each connection has its handler, made when it
// is accepted (with what the daemon knows of the peer, say).
func TestHandlerPerConnection(t *testing.T) {
	ts := startServerFunc(t, serve.Options{}, func(c *serve.Conn) {
		id := fmt.Sprint(c.ID())
		ServeConn(c, HandlerFunc(func(name, key string) Reply { return OK("conn" + id + ":" + key) }))
	})
	a, b := ts.dial(t), ts.dial(t)
	for i := range 3 {
		key := fmt.Sprint(i)
		if got := a.lookup(t, "m", key); got != netstring("OK conn1:"+key) {
			t.Errorf("first connection: %q", got)
		}
		if got := b.lookup(t, "m", key); got != netstring("OK conn2:"+key) {
			t.Errorf("second connection: %q", got)
		}
	}
}

// TestTCP: the lookup tables on a TCP listener.
func TestTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := serve.New(ln, serve.Options{})
	errc := make(chan error, 1)
	go func() { errc <- l.Serve(func(c *serve.Conn) { ServeConn(c, &recordingHandler{}) }) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(netstring("tcp found"))); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := readNetstring(bufio.NewReader(c), MaxReplySize)
	if err != nil || got != "OK value-of-tcp:found" {
		t.Fatalf("tcp reply %q, %v", got, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, serve.ErrClosed) {
		t.Fatalf("Serve(tcp) = %v", err)
	}
}

func TestManyConcurrentClients(t *testing.T) {
	ts := startServer(t, &recordingHandler{}, serve.Options{})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("unix", ts.path)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			tc := &testClient{UnixConn: c.(*net.UnixConn)}
			tc.br = bufio.NewReader(c)
			for j := range 50 {
				key := fmt.Sprintf("found-%d-%d", i, j)
				if _, err := c.Write([]byte(netstring("m " + key))); err != nil {
					t.Error(err)
					return
				}
				got, err := tc.readRaw()
				if want := netstring("OK value-of-m:" + key); err != nil || got != want {
					t.Errorf("got %q, %v; want %q", got, err, want)
					return
				}
			}
		}()
	}
	wg.Wait()
}
