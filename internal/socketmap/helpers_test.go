package socketmap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/batv/batv/internal/metrics"
	"github.com/batv/batv/internal/serve"
	"github.com/batv/batv/internal/testenv/conntest"
)

// logRecorder is a slog.Handler that keeps every record, rendered as
// "LEVEL msg k=v k=v".
type logRecorder struct {
	mu      sync.Mutex
	records []string
	changed chan struct{}
}

func newLogRecorder() *logRecorder { return &logRecorder{changed: make(chan struct{}, 1)} }

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }

func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String())
	b.WriteString(" ")
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "stack" {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		}
		return true
	})
	l.mu.Lock()
	l.records = append(l.records, b.String())
	l.mu.Unlock()
	select {
	case l.changed <- struct{}{}:
	default:
	}
	return nil
}

func (l *logRecorder) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.records...)
}

// wait waits until a record contains every one of substrs and returns it.
func (l *logRecorder) wait(t *testing.T, substrs ...string) string {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		for _, r := range l.all() {
			ok := true
			for _, s := range substrs {
				ok = ok && strings.Contains(r, s)
			}
			if ok {
				return r
			}
		}
		select {
		case <-l.changed:
		case <-deadline:
			t.Fatalf("no log record containing %q; records:\n%s", substrs, strings.Join(l.all(), "\n"))
		}
	}
}

// testServer is a serve.Listener on a unix socket in a temporary
// directory, serving the socketmap protocol.
type testServer struct {
	*serve.Listener
	path    string
	log     *logRecorder
	reg     *prometheus.Registry
	serveCh chan error
}

// startServer serves h with opts (its Name, Logger and Metrics are set
// here) and shuts the listener down at the end of the test.
func startServer(t *testing.T, h Handler, opts serve.Options) *testServer {
	t.Helper()
	return startServerFunc(t, opts, func(c *serve.Conn) { ServeConn(c, h) })
}

// startServerFunc is startServer with the function that serves each
// connection.
func startServerFunc(t *testing.T, opts serve.Options, handle func(*serve.Conn)) *testServer {
	t.Helper()
	ln, path := conntest.ListenUnix(t, "map.sock")
	ts := &testServer{path: path, log: newLogRecorder(), reg: prometheus.NewRegistry(), serveCh: make(chan error, 1)}
	opts.Name = "socketmap"
	opts.Logger = slog.New(ts.log)
	opts.Metrics = metrics.New(ts.reg)
	ts.Listener = serve.New(ln, opts)
	go func() { ts.serveCh <- ts.Serve(handle) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := ts.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-ts.serveCh:
			if !errors.Is(err, serve.ErrClosed) {
				t.Errorf("Serve returned %v, want serve.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Shutdown")
		}
		if t.Failed() {
			t.Logf("server log:\n%s", strings.Join(ts.log.all(), "\n"))
		}
	})
	return ts
}

// metric returns the value of one series of the listener's metrics, e.g.
// `batv_connections_total{listener="socketmap",result="accepted"}`; 0 if
// there is none.
func (ts *testServer) metric(t *testing.T, series string) float64 {
	t.Helper()
	families, err := ts.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			if mf.GetName()+"{"+strings.Join(labels, ",")+"}" == series {
				if g := m.GetGauge(); g != nil {
					return g.GetValue()
				}
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// accepted is the number of connections accepted so far.
func (ts *testServer) accepted(t *testing.T) int {
	t.Helper()
	return int(ts.metric(t, `batv_connections_total{listener="socketmap",result="accepted"}`))
}

// waitOpen waits until n connections are open.
func (ts *testServer) waitOpen(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for ts.Open() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections open, want %d", ts.Open(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (ts *testServer) dial(t *testing.T) *testClient {
	t.Helper()
	c, err := net.Dial("unix", ts.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &testClient{UnixConn: c.(*net.UnixConn), br: bufio.NewReader(c)}
}

// testClient is a raw socketmap client.
type testClient struct {
	*net.UnixConn
	br *bufio.Reader
}

func (c *testClient) send(t *testing.T, raw string) {
	t.Helper()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// readRaw reads one reply netstring and returns it whole, framing included.
func (c *testClient) readRaw() (string, error) {
	payload, err := readNetstring(c.br, MaxReplySize)
	if err != nil {
		return "", err
	}
	return strconv.Itoa(len(payload)) + ":" + payload + ",", nil
}

// lookup sends a request for name and key and returns the raw reply.
func (c *testClient) lookup(t *testing.T, name, key string) string {
	t.Helper()
	c.send(t, netstring(name+" "+key))
	r, err := c.readRaw()
	if err != nil {
		t.Fatalf("lookup %q %q: reading reply: %v", name, key, err)
	}
	return r
}

// expectClosed checks that the server closes the connection without
// sending anything more.
func (c *testClient) expectClosed(t *testing.T) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c.br)
	// A unix socket closed with unread input resets the connection.
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("waiting for the server to close: %v (read %q)", err, b)
	}
	if len(b) != 0 {
		t.Fatalf("server sent %q before closing, want nothing", b)
	}
}

func netstring(s string) string { return strconv.Itoa(len(s)) + ":" + s + "," }

// readNetstring is an independent, strict netstring reader for replies.
func readNetstring(br *bufio.Reader, limit int) (string, error) {
	digits, err := br.ReadString(':')
	if err != nil {
		return "", err
	}
	digits = digits[:len(digits)-1]
	if digits == "" || len(digits) > 1 && digits[0] == '0' || strings.Trim(digits, "0123456789") != "" {
		return "", fmt.Errorf("bad netstring length %q", digits)
	}
	n, err := strconv.Atoi(digits)
	if err != nil || n > limit {
		return "", fmt.Errorf("bad netstring length %q", digits)
	}
	buf := make([]byte, n+1)
	if _, err := io.ReadFull(br, buf); err != nil {
		return "", err
	}
	if buf[n] != ',' {
		return "", fmt.Errorf("netstring not terminated by ','")
	}
	return string(buf[:n]), nil
}

// checkReplyPayload checks that a reply payload is one Postfix accepts and
// that contains nothing that could confuse it.
func checkReplyPayload(p string) error {
	if len(p) > MaxReplySize {
		return fmt.Errorf("reply of %d bytes exceeds %d", len(p), MaxReplySize)
	}
	word, data, ok := strings.Cut(p, " ")
	if !ok {
		return fmt.Errorf("reply %q has no space after the status word", p)
	}
	switch word {
	case "OK", "TEMP", "TIMEOUT", "PERM":
	case "NOTFOUND":
		if data != "" {
			return fmt.Errorf("NOTFOUND reply with data %q", data)
		}
	default:
		return fmt.Errorf("reply %q has an unknown status word", p)
	}
	if !validData(data) {
		return fmt.Errorf("reply %q has control characters or invalid UTF-8", p)
	}
	if word != "OK" && len(data) > MaxReasonSize {
		return fmt.Errorf("reason of %d bytes exceeds %d", len(data), MaxReasonSize)
	}
	return nil
}

// recordingHandler records its calls and answers with a toy table:
// "found*" → OK(value), "temp*" → TEMP, "perm*" → PERM, "timeout*" →
// TIMEOUT, anything else → NOTFOUND.
type recordingHandler struct {
	mu    sync.Mutex
	calls []string
}

func (h *recordingHandler) Lookup(name, key string) Reply {
	h.mu.Lock()
	h.calls = append(h.calls, name+"|"+key)
	h.mu.Unlock()
	return toyReply(name, key)
}

func toyReply(name, key string) Reply {
	switch {
	case strings.HasPrefix(key, "found"):
		return OK("value-of-" + name + ":" + key)
	case strings.HasPrefix(key, "temp"):
		return Temp("database unavailable")
	case strings.HasPrefix(key, "perm"):
		return Perm("no such map")
	case strings.HasPrefix(key, "timeout"):
		return Timeout("backend timed out")
	}
	return NotFound()
}

func (h *recordingHandler) got() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.calls...)
}
