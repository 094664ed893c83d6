package socketmap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestSeveralRequestsOnOneConnection(t *testing.T) {
	h := &recordingHandler{}
	ts := startServer(t, &Server{Handler: h})
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
	if n := ts.OpenConns(); n != 1 {
		t.Errorf("OpenConns = %d, want 1", n)
	}
}

func TestPipelinedRequests(t *testing.T) {
	h := &recordingHandler{}
	ts := startServer(t, &Server{Handler: h})
	c := ts.dial(t)
	// Three requests in one write, then a fourth split across writes.
	c.send(t, netstring("m found-a")+netstring("m nobody")+netstring("m temp")+"8:m fou")
	time.Sleep(20 * time.Millisecond)
	c.send(t, "nd2,")
	want := []string{"21:OK value-of-m:found-a,", "9:NOTFOUND ,", "25:TEMP database unavailable,", "20:OK value-of-m:found2,"}
	for i, w := range want {
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

func TestMalformedRequests(t *testing.T) {
	tests := []struct {
		name, input, reason string
		closeWrite          bool // half-close after the input: a truncated stream
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
		{"truncated payload", "10:m key", "truncated request: unexpected EOF", true},
		{"truncated before comma", "5:m key", "truncated request: unexpected EOF", true},
		{"truncated length", "12", "truncated request: unexpected EOF", true},
		{"truncated after colon", "5:", "truncated request: unexpected EOF", true},
		{"bad request after a good one", netstring("m found") + "x", "not a decimal number", false},
		{"http", "GET / HTTP/1.0\r\n\r\n", "not a decimal number", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &recordingHandler{}
			ts := startServer(t, &Server{Handler: h})
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
			rec := ts.log.wait(t, "WARN", "malformed request", tt.reason)
			t.Logf("log: %s", rec)
			if n := len(h.got()); n > 1 || n == 1 && !strings.HasPrefix(tt.input, netstring("m found")) {
				t.Errorf("handler called for malformed input: %q", h.got())
			}
		})
	}
}

func TestLongestRequest(t *testing.T) {
	h := &recordingHandler{}
	ts := startServer(t, &Server{Handler: h})
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
	ts := startServer(t, &Server{Handler: &recordingHandler{}})
	c := ts.dial(t)
	c.lookup(t, "m", "x")
	c.Close()
	ts.log.wait(t, "DEBUG", "connection closed by client")
	for _, r := range ts.log.all() {
		if strings.HasPrefix(r, "WARN") || strings.HasPrefix(r, "ERROR") {
			t.Errorf("unexpected log record: %s", r)
		}
	}
}

func TestIdleTimeout(t *testing.T) {
	ts := startServer(t, &Server{Handler: &recordingHandler{}, IdleTimeout: 100 * time.Millisecond})

	// A silent connection.
	c := ts.dial(t)
	start := time.Now()
	c.expectClosed(t)
	if d := time.Since(start); d < 90*time.Millisecond || d > 3*time.Second {
		t.Errorf("silent connection closed after %v, want about 100ms", d)
	}
	ts.log.wait(t, "idle timeout")

	// The deadline is renewed for each request.
	c = ts.dial(t)
	for range 5 {
		time.Sleep(50 * time.Millisecond)
		c.lookup(t, "m", "found")
	}

	// A request that stalls half-way.
	c = ts.dial(t)
	c.send(t, "20:m part")
	c.expectClosed(t)
	ts.log.wait(t, "malformed request", "truncated request", "timeout")
}

func TestDefaultTimeouts(t *testing.T) {
	s := &Server{}
	if s.idleTimeout() != DefaultIdleTimeout || s.writeTimeout() != DefaultWriteTimeout {
		t.Fatalf("defaults: idle %v write %v", s.idleTimeout(), s.writeTimeout())
	}
	if DefaultIdleTimeout < 5*time.Minute {
		t.Fatalf("DefaultIdleTimeout %v is not well above Postfix's 100s timeouts", DefaultIdleTimeout)
	}
}

// blockingHandler blocks each lookup of key "slow" until release is closed
// (or its context ends), and signals started when it begins.
type blockingHandler struct {
	started  chan struct{}
	release  chan struct{}
	canceled atomic.Bool
}

func newBlockingHandler() *blockingHandler {
	return &blockingHandler{started: make(chan struct{}, 10), release: make(chan struct{})}
}

func (h *blockingHandler) Lookup(ctx context.Context, name, key string) Reply {
	if key != "slow" {
		return NotFound()
	}
	h.started <- struct{}{}
	select {
	case <-h.release:
		return OK("done")
	case <-ctx.Done():
		h.canceled.Store(true)
		return Temp(ctx.Err().Error())
	}
}

func TestShutdownWaitsForSlowLookup(t *testing.T) {
	h := newBlockingHandler()
	ts := startServer(t, &Server{Handler: h})
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
		if !errors.Is(err, ErrServerClosed) {
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
	case <-time.After(100 * time.Millisecond):
	}
	if n := ts.OpenConns(); n != 1 {
		t.Errorf("OpenConns during shutdown = %d, want 1", n)
	}

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
	if h.canceled.Load() {
		t.Error("handler context canceled during a graceful shutdown")
	}
	if n := ts.OpenConns(); n != 0 {
		t.Errorf("OpenConns after shutdown = %d", n)
	}
	// Serve after Shutdown.
	ln, err := net.Listen("unix", filepath.Join(filepath.Dir(ts.path), "again.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.Serve(ln); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Shutdown = %v", err)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("listener not closed by Serve after Shutdown: %v", err)
	}
}

func TestShutdownDeadlineForcesClose(t *testing.T) {
	h := newBlockingHandler()
	ts := startServer(t, &Server{Handler: h})
	busy := ts.dial(t)
	busy.send(t, netstring("m slow"))
	<-h.started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := ts.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Shutdown took %v", d)
	}
	busy.expectClosed(t)
	deadline := time.Now().Add(5 * time.Second)
	for !h.canceled.Load() || ts.OpenConns() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after a forced shutdown: handler canceled %v, open conns %d", h.canceled.Load(), ts.OpenConns())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestShutdownIdleServer(t *testing.T) {
	ts := startServer(t, &Server{Handler: &recordingHandler{}})
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

func TestMaxConns(t *testing.T) {
	ts := startServer(t, &Server{Handler: &recordingHandler{}, MaxConns: 2})
	a, b := ts.dial(t), ts.dial(t)
	a.lookup(t, "m", "found")
	b.lookup(t, "m", "found")
	over := ts.dial(t)
	_, _ = over.Write([]byte(netstring("m found"))) // may fail: closed already
	over.expectClosed(t)
	ts.log.wait(t, "WARN", "too many connections")
	a.lookup(t, "m", "found")
	a.Close()
	deadline := time.Now().Add(5 * time.Second)
	for ts.OpenConns() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("OpenConns = %d", ts.OpenConns())
		}
		time.Sleep(5 * time.Millisecond)
	}
	c := ts.dial(t)
	if got := c.lookup(t, "m", "found"); got != "19:OK value-of-m:found," {
		t.Errorf("got %q after a slot was freed", got)
	}
}

func TestHandlerPanic(t *testing.T) {
	ts := startServer(t, &Server{Handler: HandlerFunc(func(_ context.Context, _, key string) Reply {
		if key == "boom" {
			panic("kaboom")
		}
		return OK("fine")
	})})
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
	ts := startServer(t, &Server{Handler: HandlerFunc(func(_ context.Context, _, key string) Reply {
		switch key {
		case "newline":
			return OK("alice@example.com\nX-Injected: yes")
		case "big":
			return OK(strings.Repeat("x", MaxReplySize))
		case "zero":
			return Reply{}
		}
		return Temp("two\nlines")
	})})
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

func TestOnLookupAndConnContext(t *testing.T) {
	type ctxKey struct{}
	var (
		mu  sync.Mutex
		got []string
	)
	s := &Server{
		Handler: HandlerFunc(func(ctx context.Context, name, key string) Reply {
			if ctx.Value(ctxKey{}) != "peer" {
				return Perm("no conn context")
			}
			return toyReply(name, key)
		}),
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return context.WithValue(ctx, ctxKey{}, "peer")
		},
		OnLookup: func(name, key string, r Reply, elapsed time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			if elapsed < 0 || elapsed > time.Minute {
				got = append(got, fmt.Sprintf("bad elapsed %v", elapsed))
			}
			got = append(got, name+"|"+key+"|"+r.String())
		},
	}
	ts := startServer(t, s)
	c := ts.dial(t)
	c.lookup(t, "m", "found")
	c.lookup(t, "m", "nothing")
	c.lookup(t, "m", "temp")
	mu.Lock()
	defer mu.Unlock()
	want := []string{"m|found|OK value-of-m:found", "m|nothing|NOTFOUND ", "m|temp|TEMP database unavailable"}
	if !slices.Equal(got, want) {
		t.Errorf("OnLookup calls:\n got %q\nwant %q", got, want)
	}
}

func TestServeListenerClosedElsewhere(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Handler: &recordingHandler{}}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ln) }()
	time.Sleep(20 * time.Millisecond)
	ln.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) || errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve = %v, want an error wrapping net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
}

func TestServeNilHandler(t *testing.T) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := (&Server{}).Serve(ln); err == nil {
		t.Fatal("Serve with a nil Handler returned nil")
	}
}

func TestServeSeveralListeners(t *testing.T) {
	h := &recordingHandler{}
	ts := startServer(t, &Server{Handler: h})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- ts.Serve(ln) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(netstring("tcp found"))); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "21:OK value-of-tcp:found," {
		t.Fatalf("tcp reply %q, %v", buf[:n], err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve(tcp) = %v", err)
	}
}

func TestManyConcurrentClients(t *testing.T) {
	ts := startServer(t, &Server{Handler: &recordingHandler{}})
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
