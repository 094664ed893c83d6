package serve

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/conntest"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/batv/batv/internal/metrics"
)

// Tests on real unix sockets, on the real clock: what the fake network of
// the other tests cannot show (how the kernel's errors are classified,
// file descriptors, a flood).

// socketServer serves handle on a unix socket in a new temporary
// directory until the test ends.
type socketServer struct {
	*Listener
	path   string
	log    *recorder
	reg    *prometheus.Registry
	served chan error
}

func startSocket(t *testing.T, opts Options, handle func(*Conn)) *socketServer {
	t.Helper()
	return startSocketLogging(t, opts, handle, func(h slog.Handler) slog.Handler { return h })
}

// startSocketLogging is startSocket with the recording log handler
// wrapped by wrap.
func startSocketLogging(t *testing.T, opts Options, handle func(*Conn), wrap func(slog.Handler) slog.Handler) *socketServer {
	t.Helper()
	ln, path := conntest.ListenUnix(t, "s.sock")
	s := &socketServer{path: path, log: &recorder{}, reg: prometheus.NewRegistry(), served: make(chan error, 1)}
	opts.Name = "t"
	opts.Logger = slog.New(wrap(recHandler{r: s.log}))
	opts.Metrics = metrics.New(s.reg)
	s.Listener = New(ln, opts)
	go func() { s.served <- s.Serve(handle) }()
	t.Cleanup(func() { s.stop(t) })
	return s
}

// stop shuts the server down and checks that Serve returned ErrClosed; it
// does nothing the second time.
func (s *socketServer) stop(t *testing.T) {
	t.Helper()
	if s.served == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	select {
	case err := <-s.served:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Serve returned %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Serve did not return after Shutdown")
	}
	s.served = nil
	if t.Failed() {
		t.Logf("server log:\n%s", s.log)
	}
}

func (s *socketServer) dial(t *testing.T) *client {
	t.Helper()
	c, err := net.Dial("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return newClient(c)
}

// waitClosed waits until the server closes c, with nothing sent.
func (c *client) waitClosed(t *testing.T) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c.br)
	if err != nil || len(b) != 0 {
		t.Fatalf("waiting for the server to close: read %q, %v", b, err)
	}
}

func (s *socketServer) metrics(t *testing.T) map[string]float64 {
	t.Helper()
	return gather(t, s.reg, "batv_connections_total", "batv_connections_open", "batv_sessions_ended_total")
}

// TestRecordedBeforeClose: by the time the peer sees its connection
// closed (refused over the limit, or its session ended), that is counted
// and logged, so that an operator (or a test) who looks then finds it.
// The log is made slow to show the order.
func TestRecordedBeforeClose(t *testing.T) {
	s := startSocketLogging(t, Options{MaxConns: 1}, lineHandler, func(h slog.Handler) slog.Handler {
		return slowHandler{Handler: h, delay: 50 * time.Millisecond,
			msgs: []string{"connection refused: limit reached", "connection ended"}}
	})
	first := s.dial(t)
	first.say(t, "x")
	s.dial(t).waitClosed(t)
	if got := s.log.grep("connection refused: limit reached"); len(got) != 1 {
		t.Errorf("log lines of the refusal when the peer saw the close: %q, want 1", got)
	}
	if got := s.metrics(t)[`batv_connections_total{listener="t",result="refused"}`]; got != 1 {
		t.Errorf("refusals counted when the peer saw the close: %v, want 1", got)
	}
	if _, err := io.WriteString(first, "quit\n"); err != nil {
		t.Fatal(err)
	}
	first.waitClosed(t)
	if got := s.log.grep("connection ended", "how=quit"); len(got) != 1 {
		t.Errorf("log lines of the session's end when the peer saw the close: %q, want 1", got)
	}
	if got := s.metrics(t)[`batv_sessions_ended_total{how="quit",listener="t"}`]; got != 1 {
		t.Errorf("sessions ended counted when the peer saw the close: %v, want 1", got)
	}
}

// slowHandler waits delay before it handles a record with one of the
// messages msgs.
type slowHandler struct {
	slog.Handler
	msgs  []string
	delay time.Duration
}

func (h slowHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.Handler = h.Handler.WithAttrs(as)
	return h
}

func (h slowHandler) Handle(ctx context.Context, r slog.Record) error {
	if slices.Contains(h.msgs, r.Message) {
		time.Sleep(h.delay)
	}
	return h.Handler.Handle(ctx, r)
}

// TestUnixSocket: how connections end on a real socket (the idle timeout:
// TestThousandsOfIdleConnections), counted, and nothing logged as a
// failure.
func TestUnixSocket(t *testing.T) {
	s := startSocket(t, Options{MaxConns: 2}, lineHandler)
	a, b := s.dial(t), s.dial(t)
	a.say(t, "x")
	b.say(t, "begin")
	s.dial(t).waitClosed(t) // over the limit
	a.Close()
	waitUntil(t, 10*time.Second, func() bool { return s.Open() == 1 }, func() string { return "the closed connection counted open" })
	c := s.dial(t)
	c.say(t, "x")
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- s.Shutdown(ctx)
	}()
	c.waitClosed(t)
	if got := b.say(t, "end"); got != "ok end" {
		t.Fatalf("unit in progress at the shutdown: reply %q", got)
	}
	b.waitClosed(t)
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := net.Dial("unix", s.path); err == nil {
		t.Error("connected after the shutdown")
	}
	want := map[string]float64{
		`batv_connections_total{listener="t",result="accepted"}`: 3,
		`batv_connections_total{listener="t",result="refused"}`:  1,
		`batv_connections_open{listener="t"}`:                    0,
		`batv_sessions_ended_total{how="closed",listener="t"}`:   1,
		`batv_sessions_ended_total{how="shutdown",listener="t"}`: 2,
	}
	if got := s.metrics(t); !maps.Equal(got, want) {
		t.Errorf("metrics:\n got %v\nwant %v", got, want)
	}
	if w := s.log.grep("failed"); len(w) != 0 {
		t.Errorf("logged as failures: %q", w)
	}
}

// TestThousandsOfIdleConnections: the connection limit holds against a
// flood of connections that never speak, the ones over the limit are
// closed at once, the rest at the idle timeout, the refusals are logged
// once per RefusalLogEvery, goroutines and file descriptors come back to
// where they were, and a connection is served again afterwards.
func TestThousandsOfIdleConnections(t *testing.T) {
	const limit = 500
	n := 2000
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < rl.Max {
		old := rl
		rl.Cur = rl.Max
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl) == nil {
			t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
		}
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	if room := int(rl.Cur) - limit - 200; room < n {
		n = room
		t.Logf("file descriptor limit %d: %d connections", rl.Cur, n)
	}
	if n < 2*limit {
		t.Skipf("file descriptor limit %d is too low for this test", rl.Cur)
	}
	s := startSocket(t, Options{MaxConns: limit, IdleTimeout: time.Second}, lineHandler)
	// The baseline, once the server serves and the runtime's poller runs.
	warm := s.dial(t)
	warm.say(t, "x")
	warm.Close()
	waitUntil(t, 10*time.Second, func() bool { return s.Open() == 0 }, func() string { return "the first connection counted open" })
	goroutines, fds := runtime.NumGoroutine(), conntest.OpenFDs(t)

	// Watch the number of open connections while the flood lasts.
	var peak atomic.Int64
	stopWatch := make(chan struct{})
	var watching sync.WaitGroup
	watching.Go(func() {
		for {
			if c := int64(s.Open()); c > peak.Load() {
				peak.Store(c)
			}
			select {
			case <-stopWatch:
				return
			case <-time.After(time.Millisecond):
			}
		}
	})

	begin := time.Now()
	conns := make([]net.Conn, 0, n)
	for len(conns) < n {
		nc, err := net.Dial("unix", s.path)
		if errors.Is(err, syscall.EAGAIN) {
			time.Sleep(time.Millisecond) // the listen backlog is full
			continue
		}
		if err != nil {
			t.Fatalf("connection %d: %v", len(conns), err)
		}
		conns = append(conns, nc)
	}
	dialled := time.Since(begin)
	// Every connection is closed by the server: over the limit at once,
	// the others at the idle timeout.
	var wg sync.WaitGroup
	var closedFast atomic.Int64
	for _, nc := range conns {
		wg.Go(func() {
			_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			t0 := time.Now()
			_, err := nc.Read(make([]byte, 1))
			if err == nil {
				t.Error("the server spoke first")
			} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Error("a connection was not closed within 10s")
			}
			if time.Since(t0) < 500*time.Millisecond {
				closedFast.Add(1)
			}
			nc.Close()
		})
	}
	wg.Wait()
	close(stopWatch)
	watching.Wait()
	m := s.metrics(t)
	refused := int(m[`batv_connections_total{listener="t",result="refused"}`])
	accepted := int(m[`batv_connections_total{listener="t",result="accepted"}`]) - 1 // the first
	t.Logf("%d connections in %v: peak %d open (limit %d), %d refused at once, %d closed within 0.5s, all closed after %v",
		n, dialled.Round(time.Millisecond), peak.Load(), limit, refused, closedFast.Load(), time.Since(begin).Round(time.Millisecond))
	if peak.Load() > limit {
		t.Errorf("%d connections open at once, over the limit of %d", peak.Load(), limit)
	}
	if refused < n-2*limit || accepted+refused != n {
		t.Errorf("%d refused and %d accepted out of %d", refused, accepted, n)
	}
	// The log says so once per RefusalLogEvery, with the count.
	if lines := len(s.log.grep("connection refused: limit reached", "refused=")); lines < 1 || lines > 1+int(time.Since(begin)/RefusalLogEvery) {
		t.Errorf("%d log lines for %d refusals", lines, refused)
	}
	// Each accepted connection ended with its idle timeout, logged.
	waitUntil(t, 10*time.Second, func() bool { return s.Open() == 0 }, func() string { return "connections still open" })
	if got := s.metrics(t)[`batv_sessions_ended_total{how="timeout",listener="t"}`]; int(got) != accepted {
		t.Errorf("%v sessions ended by the idle timeout, want %d", got, accepted)
	}
	if got := len(s.log.grep("the peer sent nothing for too long")); got != accepted {
		t.Errorf("%d idle timeouts logged, want %d", got, accepted)
	}
	conntest.Settle(t, "goroutines", runtime.NumGoroutine, goroutines)
	conntest.Settle(t, "file descriptors", func() int { return conntest.OpenFDs(t) }, fds)

	// Served again; then the listener's goroutine and socket go too.
	again := s.dial(t)
	if got := again.say(t, "again"); got != "ok again" {
		t.Fatalf("after the flood: reply %q", got)
	}
	s.stop(t)
	again.Close()
	conntest.Settle(t, "goroutines", runtime.NumGoroutine, goroutines-1)
	conntest.Settle(t, "file descriptors", func() int { return conntest.OpenFDs(t) }, fds-1)
}
