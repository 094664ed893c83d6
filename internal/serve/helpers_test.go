package serve

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/batv/batv/internal/metrics"
)

// pipeListener is a net.Listener of in-memory connections (net.Pipe), so
// that a Listener can be tested in a synctest bubble, on a fake clock.
type pipeListener struct {
	conns  chan net.Conn
	errs   chan error
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), errs: make(chan error), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errs:
		return nil, err
	case <-l.closed:
		return nil, &net.OpError{Op: "accept", Net: "pipe", Err: net.ErrClosed}
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// connect hands the server end of a new pipe to Accept (or nc, when not
// nil, as the accepted connection) and waits until the listener is done
// with it. It fails if the listener is closed.
func (l *pipeListener) connect(nc net.Conn) (*client, error) {
	var cl net.Conn
	if nc == nil {
		nc, cl = net.Pipe()
	}
	select {
	case l.conns <- nc:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	synctest.Wait()
	return newClient(cl), nil
}

// fail makes an Accept fail with err.
func (l *pipeListener) fail(err error) { l.errs <- err }

// client is the peer's end of a connection.
type client struct {
	net.Conn
	br *bufio.Reader
}

func newClient(c net.Conn) *client {
	if c == nil {
		return nil
	}
	return &client{Conn: c, br: bufio.NewReader(c)}
}

// say sends line and returns the reply line.
func (c *client) say(t *testing.T, line string) string {
	t.Helper()
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		t.Fatalf("sending %q: %v", line, err)
	}
	reply, err := c.br.ReadString('\n')
	if err != nil {
		t.Fatalf("reply to %q: %v", line, err)
	}
	return strings.TrimSuffix(reply, "\n")
}

// closed reports whether the server has closed its end, without waiting.
func (c *client) closed(t *testing.T) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now())
	defer c.SetReadDeadline(time.Time{})
	var buf [1]byte
	_, err := c.br.Read(buf[:])
	switch {
	case err == io.EOF:
		return true
	case errors.Is(err, os.ErrDeadlineExceeded):
		return false
	}
	t.Fatalf("checking whether the server closed the connection: read %q, %v", buf, err)
	return false
}

// lineHandler is a line protocol with units of work: "begin" starts one,
// "end" ends it, "quit" ends the session; every line but "quit" is
// answered with "ok <line>".
func lineHandler(c *Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSuffix(line, "\n")
		switch line {
		case "begin":
			c.Busy(true)
		case "quit":
			c.SetEnd("quit")
			return
		}
		if _, err := io.WriteString(c, "ok "+line+"\n"); err != nil {
			return
		}
		if line == "end" {
			c.Busy(false)
		}
	}
}

// fixture is a Listener serving on a pipeListener, named "t", with its
// log and metrics recorded. Use it in a synctest bubble.
type fixture struct {
	*Listener
	ln  *pipeListener
	log *recorder
	reg *prometheus.Registry

	served   chan error
	stopOnce sync.Once
}

func start(t *testing.T, opts Options, handle func(*Conn)) *fixture {
	t.Helper()
	f := &fixture{ln: newPipeListener(), log: &recorder{}, reg: prometheus.NewRegistry(), served: make(chan error, 1)}
	opts.Name = "t"
	opts.Logger = slog.New(recHandler{r: f.log})
	opts.Metrics = metrics.New(f.reg)
	f.Listener = New(f.ln, opts)
	go func() { f.served <- f.Serve(handle) }()
	synctest.Wait()
	t.Cleanup(func() { f.stop(t) })
	return f
}

// dial connects a client and fails the test if the listener is closed.
func (f *fixture) dial(t *testing.T) *client {
	t.Helper()
	c, err := f.ln.connect(nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// stop shuts the listener down, if that is not done yet, and checks that
// Serve returned ErrClosed.
func (f *fixture) stop(t *testing.T) {
	t.Helper()
	f.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		_ = f.Shutdown(ctx)
		if err := <-f.served; !errors.Is(err, ErrClosed) {
			t.Errorf("Serve returned %v, want ErrClosed", err)
		}
	})
}

// metrics returns the listener's series of the connection metrics, as
// `name{label="value",...}` → value.
func (f *fixture) metrics(t *testing.T) map[string]float64 {
	t.Helper()
	return gather(t, f.reg, "batv_connections_total", "batv_connections_open", "batv_sessions_ended_total")
}

// gather returns the series of the named metric families in reg.
func gather(t testing.TB, reg *prometheus.Registry, names ...string) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range families {
		if !slices.Contains(names, mf.GetName()) {
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			v := m.GetCounter().GetValue()
			if g := m.GetGauge(); g != nil {
				v = g.GetValue()
			}
			got[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = v
		}
	}
	return got
}

// recorder keeps the log records, each as "LEVEL msg k=v k=v".
type recorder struct {
	mu    sync.Mutex
	lines []string
}

// grep returns the records that contain every one of subs.
func (r *recorder) grep(subs ...string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, l := range r.lines {
		if containsAll(l, subs) {
			out = append(out, l)
		}
	}
	return out
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.lines, "\n")
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

type recHandler struct {
	r     *recorder
	attrs string
}

func (h recHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recHandler) WithGroup(string) slog.Handler            { return h }

func (h recHandler) WithAttrs(as []slog.Attr) slog.Handler {
	s := h.attrs
	for _, a := range as {
		s += " " + a.String()
	}
	return recHandler{r: h.r, attrs: s}
}

func (h recHandler) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Level.String() + " " + rec.Message + h.attrs)
	rec.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	h.r.mu.Lock()
	h.r.lines = append(h.r.lines, b.String())
	h.r.mu.Unlock()
	return nil
}

// waitUntil polls cond until it holds or d passes, for tests on real
// sockets, where synctest cannot tell when the server is done.
func waitUntil(t testing.TB, d time.Duration, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
