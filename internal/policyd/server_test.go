package policyd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/internal/serve"
)

// client is the Postfix end of a policy connection in tests.
type client struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func newClient(t *testing.T, c net.Conn) *client {
	return &client{t: t, c: c, br: bufio.NewReader(c)}
}

// send writes raw bytes.
func (c *client) send(s string) {
	c.t.Helper()
	_ = c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatal(err)
	}
}

// reply reads one reply and returns its action, or the read error.
func (c *client) reply() (string, error) {
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := c.br.ReadString('\n')
	if err != nil {
		return "", err
	}
	end, err := c.br.ReadString('\n')
	if err != nil {
		return "", err
	}
	action, ok := strings.CutPrefix(line, "action=")
	if !ok || end != "\n" {
		return "", fmt.Errorf("malformed reply %q %q", line, end)
	}
	return strings.TrimSuffix(action, "\n"), nil
}

// ask sends a request made of attrs (plus request=smtpd_access_policy)
// and returns the action of the reply.
func (c *client) ask(attrs ...string) string {
	c.t.Helper()
	c.send(request(attrs...))
	a, err := c.reply()
	if err != nil {
		c.t.Fatalf("no reply: %v", err)
	}
	return a
}

// closed checks that the server closed the connection without a reply.
func (c *client) closed() {
	c.t.Helper()
	if a, err := c.reply(); !errors.Is(err, io.EOF) {
		c.t.Fatalf("got reply %q, %v; want the connection closed", a, err)
	}
}

func request(attrs ...string) string {
	return "request=smtpd_access_policy\n" + strings.Join(attrs, "\n") + "\n\n"
}

// senderHandler refuses the null sender and answers DUNNO otherwise.
var senderHandler = HandlerFunc(func(_ *Conn, req *Request) Reply {
	if req.Sender() == "" {
		return Reject("5.7.1 bounce refused")
	}
	return Dunno()
})

func TestServeRoundTrips(t *testing.T) {
	var lb logBuf
	conn, done := serveOne(t, &Server{Handler: senderHandler}, &lb)
	c := newClient(t, conn)
	for _, want := range []struct{ sender, action string }{
		{"", "REJECT 5.7.1 bounce refused"},
		{"alice@example.com", "DUNNO"},
		{"", "REJECT 5.7.1 bounce refused"},
	} {
		if got := c.ask("sender=" + want.sender); got != want.action {
			t.Fatalf("sender <%s>: %q, want %q", want.sender, got, want.action)
		}
	}
	// Postfix's request, in one write or byte by byte.
	c.send(postfixRequest(t))
	if a, err := c.reply(); err != nil || a != "DUNNO" {
		t.Fatalf("%q, %v", a, err)
	}
	for _, b := range []byte(request("sender=")) {
		c.send(string(b))
	}
	if a, err := c.reply(); err != nil || a != "REJECT 5.7.1 bounce refused" {
		t.Fatalf("%q, %v", a, err)
	}
	// Two requests in one write: two replies, in order.
	c.send(request("sender=") + request("sender=bob@example.com"))
	for _, want := range []string{"REJECT 5.7.1 bounce refused", "DUNNO"} {
		if a, err := c.reply(); err != nil || a != want {
			t.Fatalf("%q, %v; want %q", a, err, want)
		}
	}
	conn.Close()
	<-done
	lb.waitFor(t, "connection ended", "listener=policy", "how=closed")
}

// TestServeTxState: the state lives as long as the instance on one
// connection.
func TestServeTxState(t *testing.T) {
	type counter struct{ n int }
	h := HandlerFunc(func(c *Conn, req *Request) Reply {
		st := TxState[counter](c)
		st.n++
		return Reject(fmt.Sprintf("%s %d", c.Instance(), st.n))
	})
	ts := newTestServer(t, &Server{Handler: h}, serve.Options{})
	c1conn, _ := ts.connect()
	c2conn, _ := ts.connect()
	c1, c2 := newClient(t, c1conn), newClient(t, c2conn)
	for i, step := range []struct {
		c        *client
		instance string
		want     string
	}{
		{c1, "", "REJECT  1"}, // CONNECT: no transaction
		{c1, "", "REJECT  1"}, // EHLO: still none, nothing kept
		{c1, "a.1", "REJECT a.1 1"},
		{c1, "a.1", "REJECT a.1 2"},
		{c2, "a.1", "REJECT a.1 1"}, // another connection, its own state
		{c1, "a.1", "REJECT a.1 3"},
		{c1, "", "REJECT  1"}, // the transaction ended
		{c1, "a.1", "REJECT a.1 1"},
		{c1, "b.2", "REJECT b.2 1"}, // the next transaction
		{c1, "b.2", "REJECT b.2 2"},
	} {
		if got := step.c.ask("instance=" + step.instance); got != step.want {
			t.Fatalf("step %d: %q, want %q", i, got, step.want)
		}
	}
	// Without a connection, no state is kept.
	TxState[counter](nil).n = 5
	if n := TxState[counter](nil).n; n != 0 {
		t.Errorf("without a connection: n=%d", n)
	}
}

func TestServeMalformed(t *testing.T) {
	for _, c := range []struct{ name, input, log string }{
		{"no '='", "request=smtpd_access_policy\nsender\n\n", "line without '='"},
		{"duplicate", "request=smtpd_access_policy\nsender=a\nsender=b\n\n", "duplicate attribute"},
		{"NUL", "request=smtpd_access_policy\nsender=a\x00\n\n", "NUL byte"},
		{"not UTF-8", "request=smtpd_access_policy\nsender=\xff\n\n", "not valid UTF-8"},
		{"no request attribute", "sender=a\n\n", "no request attribute"},
		{"too long", "request=" + strings.Repeat("x", 200) + "\n\n", "line too long"},
		{"truncated", "request=smtpd_access_policy\nsen", "connection closed in the middle of a request"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var lb logBuf
			conn, done := serveOne(t, &Server{Handler: senderHandler, MaxLineLen: 100}, &lb)
			cl := newClient(t, conn)
			if got := cl.ask("sender=x@example.com"); got != "DUNNO" {
				t.Fatalf("valid request before: %q", got)
			}
			cl.send(c.input)
			if c.name == "truncated" {
				conn.(*net.UnixConn).CloseWrite()
			}
			cl.closed()
			<-done
			lb.waitFor(t, "level=WARN", "refusing a malformed request", c.log)
			how := "how=error"
			if c.name == "truncated" {
				how = "how=closed" // the client closed it first
			}
			lb.waitFor(t, "connection ended", how)
		})
	}
}

func TestServeBadHandler(t *testing.T) {
	for _, c := range []struct {
		name string
		h    HandlerFunc
		log  []string
	}{
		{"newline in reply", func(*Conn, *Request) Reply { return Reject("a\nb") },
			[]string{"level=ERROR", "invalid reply", "control character"}},
		{"empty reply", func(*Conn, *Request) Reply { return Reply{} },
			[]string{"level=ERROR", "invalid reply", "empty action"}},
		{"panic", func(*Conn, *Request) Reply { panic("boom") },
			[]string{"level=ERROR", "handler panicked", "panic=boom"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var lb logBuf
			conn, done := serveOne(t, &Server{Handler: c.h}, &lb)
			cl := newClient(t, conn)
			cl.send(request("sender="))
			cl.closed()
			<-done
			lb.waitFor(t, c.log...)
		})
	}
	t.Run("nil handler", func(t *testing.T) {
		var lb logBuf
		conn, done := serveOne(t, &Server{}, &lb)
		newClient(t, conn).closed()
		<-done
		lb.waitFor(t, "level=ERROR", "Handler is nil")
	})
}

// TestServeIdleTimeout: the listener's idle timeout closes a connection
// that sends nothing, between requests or in the middle of one.
func TestServeIdleTimeout(t *testing.T) {
	for _, input := range []string{"", "request=smtpd_access_policy\n"} {
		t.Run(fmt.Sprintf("%q", input), func(t *testing.T) {
			var lb logBuf
			ts := newTestServer(t, &Server{Handler: senderHandler}, serve.Options{IdleTimeout: 100 * time.Millisecond, Logger: lb.logger()})
			conn, done := ts.connect()
			cl := newClient(t, conn)
			if got := cl.ask("sender="); got != "REJECT 5.7.1 bounce refused" {
				t.Fatal(got)
			}
			start := time.Now()
			cl.send(input)
			cl.closed()
			<-done
			if d := time.Since(start); d < 90*time.Millisecond || d > 3*time.Second {
				t.Errorf("closed after %v, want about 100ms", d)
			}
			lb.waitFor(t, "the peer sent nothing for too long")
			lb.waitFor(t, "connection ended", "how=timeout")
		})
	}
}

// TestServeWriteTimeout: a client that does not read its replies does not
// hold the connection beyond the listener's write timeout.
func TestServeWriteTimeout(t *testing.T) {
	var lb logBuf
	ts := newTestServer(t, &Server{Handler: senderHandler}, serve.Options{WriteTimeout: 50 * time.Millisecond, Logger: lb.logger()})
	cc, sc := net.Pipe() // a write blocks until the other end reads
	done := make(chan struct{})
	ts.ln.Conns <- &notifyConn{Conn: sc, closed: done}
	defer cc.Close()
	_ = cc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(cc, request("sender=")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the server is still blocked in its write")
	}
	lb.waitFor(t, "level=WARN", "connection write failed")
}

// TestServeDrain: a listener that shuts down closes idle policy
// connections at once, and answers a request that has begun first.
func TestServeDrain(t *testing.T) {
	shutdown := func(ts *testServer) <-chan error {
		errc := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			errc <- ts.l.Shutdown(ctx)
		}()
		return errc
	}
	t.Run("idle connection", func(t *testing.T) {
		var lb logBuf
		ts := newTestServer(t, &Server{Handler: senderHandler}, serve.Options{Logger: lb.logger()})
		conn, done := ts.connect()
		cl := newClient(t, conn)
		cl.ask("sender=")
		errc := shutdown(ts)
		cl.closed()
		<-done
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		lb.waitFor(t, "connection ended", "how=shutdown")
	})
	t.Run("request being checked", func(t *testing.T) {
		entered, release := make(chan struct{}), make(chan struct{})
		h := HandlerFunc(func(*Conn, *Request) Reply {
			close(entered)
			<-release
			return Defer("4.7.1 done")
		})
		ts := newTestServer(t, &Server{Handler: h}, serve.Options{})
		conn, done := ts.connect()
		cl := newClient(t, conn)
		cl.send(request("sender="))
		<-entered
		errc := shutdown(ts)
		close(release)
		if a, err := cl.reply(); err != nil || a != "DEFER 4.7.1 done" {
			t.Fatalf("reply %q, %v; want the request finished", a, err)
		}
		cl.closed()
		<-done
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	})
	t.Run("request half sent", func(t *testing.T) {
		ts := newTestServer(t, &Server{Handler: senderHandler}, serve.Options{})
		conn, done := ts.connect()
		cl := newClient(t, conn)
		req := request("sender=")
		cl.send(req[:10])
		time.Sleep(50 * time.Millisecond) // the server has the first bytes
		errc := shutdown(ts)
		time.Sleep(50 * time.Millisecond)
		cl.send(req[10:])
		if a, err := cl.reply(); err != nil || a != "REJECT 5.7.1 bounce refused" {
			t.Fatalf("reply %q, %v; want the request answered", a, err)
		}
		cl.closed()
		<-done
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	})
}
