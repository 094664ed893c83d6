package socketmap

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/batv/batv/internal/testenv/conntest"

	"github.com/batv/batv/internal/serve"
)

// memConn is an in-memory net.Conn: reads come from a fixed input in
// chunks of at most chunk bytes (then io.EOF, or end if set), writes go
// to a buffer. Nothing blocks, so a server reading it cannot hang.
type memConn struct {
	in     *bytes.Reader
	chunk  int
	end    error
	mu     sync.Mutex
	out    bytes.Buffer
	writes int
	closed chan struct{}
	once   sync.Once
}

func newMemConn(input []byte, chunk int) *memConn {
	return &memConn{in: bytes.NewReader(input), chunk: chunk, closed: make(chan struct{})}
}

func (c *memConn) Read(p []byte) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	if len(p) > c.chunk {
		p = p[:c.chunk]
	}
	n, err := c.in.Read(p)
	if err == io.EOF && c.end != nil {
		err = c.end
	}
	return n, err
}

func (c *memConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	return c.out.Write(p)
}

func (c *memConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *memConn) output() ([]byte, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes()), c.writes
}

type memAddr struct{}

func (memAddr) Network() string { return "mem" }
func (memAddr) String() string  { return "mem" }

func (c *memConn) LocalAddr() net.Addr              { return memAddr{} }
func (c *memConn) RemoteAddr() net.Addr             { return memAddr{} }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }
func (c *memConn) waitClosed(d time.Duration) bool {
	select {
	case <-c.closed:
		return true
	case <-time.After(d):
		return false
	}
}

// serveMem serves conn with h through a serve.Listener, as a socket is
// served, and returns once the server has closed conn and the listener is
// shut down; or an error if the server did not close conn within d.
func serveMem(h Handler, log *slog.Logger, conn *memConn, d time.Duration) error {
	ln := conntest.NewChanListener()
	l := serve.New(ln, serve.Options{Name: "mem", Logger: log})
	served := make(chan error, 1)
	go func() { served <- l.Serve(func(c *serve.Conn) { ServeConn(c, h) }) }()
	ln.Conns <- conn
	closed := conn.waitClosed(d)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	err := l.Shutdown(ctx)
	<-served
	switch {
	case !closed:
		return fmt.Errorf("the server did not close the connection within %v", d)
	case err != nil:
		return fmt.Errorf("Shutdown: %w", err)
	}
	return nil
}

// refRequests is an independent reference parser: the requests that a
// strict server must answer before it stops at the first malformed or
// incomplete one.
func refRequests(data []byte) []string {
	s := string(data)
	var reqs []string
	for {
		i := strings.IndexByte(s, ':')
		if i <= 0 {
			return reqs
		}
		digits := s[:i]
		if strings.Trim(digits, "0123456789") != "" || len(digits) > 1 && digits[0] == '0' || len(digits) > 5 {
			return reqs
		}
		n, _ := strconv.Atoi(digits)
		if n > MaxRequestSize {
			return reqs
		}
		rest := s[i+1:]
		if len(rest) < n+1 || rest[n] != ',' {
			return reqs
		}
		p := rest[:n]
		name, key, ok := strings.Cut(p, " ")
		if !ok || strings.Contains(p, "\x00") {
			return reqs
		}
		reqs = append(reqs, name+"\x00"+key)
		s = rest[n+1:]
	}
}

// refReply is the payload the server must send for the toy handler's
// answer to name and key, computed independently of sanitize.
func refReply(name, key string) string {
	r := toyReply(name, key)
	switch r.Status {
	case StatusNotFound:
		return "NOTFOUND "
	case StatusOK:
		if !utf8.ValidString(r.Data) || strings.ContainsFunc(r.Data, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
			return "TEMP invalid characters in lookup result"
		}
	}
	return r.Status.String() + " " + r.Data
}

// FuzzServe feeds arbitrary bytes to a server connection as the client's
// stream. The server must not panic or hang, must answer exactly the
// requests before the first malformed one, in order, and every reply must
// be a well-formed netstring with a payload Postfix accepts.
func FuzzServe(f *testing.F) {
	for _, seed := range []string{
		"",
		"5:m key,",
		"7:m found,8:m nobody,6:m temp,6:m perm,9:m timeout,",
		"0:,",
		"01:a b,",
		"10001:",
		"3:a b;",
		"3:abc,",
		"5:m a\x00b,",
		"10:m trunc",
		"9:m found\xff\xfe,",
		"9:m found\nX,",
		"7:m found,3:m x,garbage",
	} {
		f.Add([]byte(seed), uint8(0))
	}
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		// NUL separates name and key in the records: it cannot be in a
		// request.
		var (
			mu    sync.Mutex
			calls []string
		)
		h := HandlerFunc(func(name, key string) Reply {
			mu.Lock()
			calls = append(calls, name+"\x00"+key)
			mu.Unlock()
			return toyReply(name, key)
		})
		rec := newLogRecorder()
		conn := newMemConn(data, 1+int(chunk%16)*int(chunk%16)*40)
		if err := serveMem(h, slog.New(rec), conn, 10*time.Second); err != nil {
			t.Fatal(err)
		}

		want := refRequests(data)
		if got := calls; !slices.Equal(got, want) {
			t.Fatalf("handler calls %q, want %q", got, want)
		}
		out, writes := conn.output()
		if writes != len(want) {
			t.Fatalf("%d writes for %d requests", writes, len(want))
		}
		br := bufio.NewReader(bytes.NewReader(out))
		for i, req := range want {
			p, err := readNetstring(br, MaxReplySize)
			if err != nil {
				t.Fatalf("reply %d: %v (output %q)", i, err, out)
			}
			if err := checkReplyPayload(p); err != nil {
				t.Fatalf("reply %d: %v", i, err)
			}
			name, key, _ := strings.Cut(req, "\x00")
			if w := refReply(name, key); p != w {
				t.Fatalf("reply %d to %q: %q, want %q", i, req, p, w)
			}
		}
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
			t.Fatalf("extra output after %d replies: %q", len(want), out)
		}
		for _, r := range rec.all() {
			if strings.HasPrefix(r, "ERROR") {
				t.Fatalf("error logged: %s", r)
			}
		}
	})
}

// FuzzReply checks that any reply a handler returns is sent as a
// well-formed netstring with a payload Postfix accepts.
func FuzzReply(f *testing.F) {
	f.Add(uint8(StatusOK), "alice@example.com")
	f.Add(uint8(StatusTemp), "a\nb")
	f.Add(uint8(0), "")
	f.Add(uint8(StatusPerm), strings.Repeat("é", 150))
	f.Fuzz(func(t *testing.T, status uint8, data string) {
		r := Reply{Status: Status(status), Data: data}
		wire := appendReply(nil, r.sanitize())
		br := bufio.NewReader(bytes.NewReader(wire))
		p, err := readNetstring(br, MaxReplySize)
		if err != nil {
			t.Fatalf("%q: %v", wire, err)
		}
		if br.Buffered() != 0 {
			t.Fatalf("%q: trailing bytes", wire)
		}
		if err := checkReplyPayload(p); err != nil {
			t.Fatal(err)
		}
		if p != r.String() {
			t.Fatalf("String() = %q, wire payload %q", r.String(), p)
		}
		// What can be sent as is, is.
		if r.Status == StatusOK && p != "OK "+data && utf8.ValidString(data) &&
			!strings.ContainsFunc(data, func(c rune) bool { return c < 0x20 || c == 0x7f }) && len(data) < MaxReplySize-3 {
			t.Fatalf("valid OK data %q changed to %q", data, p)
		}
	})
}
