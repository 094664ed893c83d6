package policyd

import (
	"bytes"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/batv/batv/internal/serve"
)

// memConn is an in-memory net.Conn: reads come from a fixed input in
// chunks of at most chunk bytes, then io.EOF; writes go to a buffer.
// Nothing blocks. closed is closed by Close.
type memConn struct {
	in     *bytes.Reader
	chunk  int
	out    bytes.Buffer
	closed chan struct{}
}

func (c *memConn) Read(p []byte) (int, error) {
	return c.in.Read(p[:min(len(p), c.chunk)])
}

func (c *memConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *memConn) Close() error                     { close(c.closed); return nil }
func (c *memConn) LocalAddr() net.Addr              { return &net.UnixAddr{Name: "mem", Net: "unix"} }
func (c *memConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Name: "mem", Net: "unix"} }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

// toyReply is the fuzz handler's answer: the "reply" attribute as the
// action when there is one (any string the fuzzer makes), a refusal of
// the null sender, else a PREPEND of the recipient (any value).
func toyReply(req *Request) Reply {
	if v, ok := req.Get("reply"); ok {
		return Reply{Action: v}
	}
	if req.Sender() == "" {
		return Reject("5.7.1 bounce refused")
	}
	return Prepend("X-Fuzz", req.Recipient())
}

// refRequests is an independent reference parser with the default limits:
// the requests a strict server must pass to its handler before it stops at
// the first malformed or incomplete one, each as its lines joined by "\n".
func refRequests(data []byte) []string {
	s := string(data)
	var out []string
	for {
		var lines []string
		names := map[string]bool{}
		size := 0
		for {
			line, rest, ok := strings.Cut(s, "\n")
			if !ok {
				return out // end of input, between or inside a request
			}
			s = rest
			size += len(line) + 1
			if line != "" {
				size++ // the empty line that must follow
			}
			if len(line) > DefaultMaxLineLen || size > DefaultMaxRequestSize {
				return out
			}
			if line == "" {
				break
			}
			name, value, ok := strings.Cut(line, "=")
			if !ok || len(lines) == DefaultMaxAttributes || name == "" || names[name] ||
				strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r >= 0x7f }) ||
				strings.Contains(value, "\x00") || !utf8.ValidString(value) {
				return out
			}
			names[name] = true
			lines = append(lines, line)
		}
		if !names["request"] || !refNumber(lines, "recipient_count=", 31) || !refNumber(lines, "size=", 63) {
			return out
		}
		out = append(out, strings.Join(lines, "\n"))
	}
}

// refNumber checks the attribute with prefix: absent, empty, or decimal
// digits that fit in bits bits.
func refNumber(lines []string, prefix string, bits int) bool {
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, prefix); ok && v != "" {
			_, err := strconv.ParseUint(v, 10, bits)
			return err == nil
		}
	}
	return true
}

// FuzzServe feeds arbitrary bytes to ServeConn as the client's stream. The
// server must not panic or hang, must pass the handler exactly the
// requests before the first malformed one, in order, and must answer each
// with one well-formed reply, stopping without a reply at the first reply
// the handler gets wrong.
func FuzzServe(f *testing.F) {
	f.Add([]byte(postfixRequest(f)), uint8(0))
	for _, seed := range []string{
		"",
		request("sender=", "recipient=alice@example.com") + request("sender=bob@example.com", "recipient=x\ry"),
		request("reply=550 5.7.1 no") + request("reply=DUNNO") + request("reply=550 4.7.1 wrong class"),
		request("reply=PREPEND X-A: b") + request("reply=PREPEND bad name: x"),
		request("sender=a", "sender=b"),
		request("recipient_count=2147483648"),
		request("size=12", "x\xff=1"),
		"request=x\nsender\n\n",
		"request=smtpd_access_policy\nsen",
		"sender=\n\n",
		"\n\n",
		request("sender=\x00"),
	} {
		f.Add([]byte(seed), uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		var calls []string
		h := HandlerFunc(func(_ *Conn, req *Request) Reply {
			var lines []string
			for k, v := range req.All() {
				lines = append(lines, k+"="+v)
			}
			calls = append(calls, strings.Join(lines, "\n"))
			return toyReply(req)
		})
		conn := &memConn{in: bytes.NewReader(data), chunk: 1 + int(chunk)*int(chunk), closed: make(chan struct{})}
		ts := newTestServer(t, &Server{Handler: h}, serve.Options{})
		ts.ln.Conns <- conn
		<-conn.closed

		// What must have happened, from the reference parser and the toy
		// handler: a call per request up to the first invalid reply, a
		// reply per call before it.
		var wantCalls []string
		var wantOut strings.Builder
		for _, r := range refRequests(data) {
			wantCalls = append(wantCalls, r)
			req, err := parseOne(r + "\n\n")
			if err != nil {
				t.Fatalf("the reference accepts what the parser refuses: %q: %v", r, err)
			}
			reply := toyReply(req)
			if reply.Validate() != nil {
				break
			}
			wantOut.WriteString("action=" + reply.Action + "\n\n")
		}
		if !slices.Equal(calls, wantCalls) {
			t.Fatalf("handler calls\n%q\nwant\n%q", calls, wantCalls)
		}
		out := conn.out.String()
		if out != wantOut.String() {
			t.Fatalf("output %q, want %q", out, wantOut.String())
		}
		// Every reply on the wire is one line Postfix can read.
		for _, r := range strings.SplitAfter(out, "\n\n") {
			if r == "" {
				continue
			}
			a, ok := strings.CutPrefix(strings.TrimSuffix(r, "\n\n"), "action=")
			if !ok || a == "" || strings.ContainsAny(a, "\n\r\x00") || !utf8.ValidString(a) || len(a) > MaxActionLen {
				t.Fatalf("malformed reply %q", r)
			}
		}
	})
}
