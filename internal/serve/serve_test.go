package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// The tests here run in synctest bubbles over in-memory connections, on a
// fake clock: timeouts of minutes take no time and are exact. The tests
// on real sockets are in socket_test.go.

// TestMetricsAfterAKnownSequence: every way a connection can end, each
// counted once, and the gauge back at zero.
func TestMetricsAfterAKnownSequence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := start(t, Options{MaxConns: 2, IdleTimeout: time.Minute}, lineHandler)
		quit, idle := f.dial(t), f.dial(t)
		if got := quit.say(t, "hello"); got != "ok hello" {
			t.Fatalf("reply %q", got)
		}
		if refused := f.dial(t); !refused.closed(t) {
			t.Fatal("third connection open with a limit of 2")
		}
		if _, err := io.WriteString(quit, "quit\n"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if !quit.closed(t) {
			t.Fatal("not closed after quit")
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if !idle.closed(t) {
			t.Fatal("not closed after the idle timeout")
		}
		peerClosed := f.dial(t)
		peerClosed.say(t, "x")
		peerClosed.Close()
		// The peer closes before the reply: the write fails.
		writeFails := f.dial(t)
		if _, err := io.WriteString(writeFails, "x\n"); err != nil {
			t.Fatal(err)
		}
		writeFails.Close()
		shutdown := f.dial(t)
		shutdown.say(t, "x")
		synctest.Wait()
		if n := f.Open(); n != 1 {
			t.Errorf("Open = %d before the shutdown, want 1", n)
		}
		f.stop(t)
		if !shutdown.closed(t) {
			t.Error("not closed by the shutdown")
		}
		want := map[string]float64{
			`batv_connections_total{listener="t",result="accepted"}`: 5,
			`batv_connections_total{listener="t",result="refused"}`:  1,
			`batv_connections_open{listener="t"}`:                    0,
			`batv_sessions_ended_total{how="quit",listener="t"}`:     1,
			`batv_sessions_ended_total{how="timeout",listener="t"}`:  1,
			`batv_sessions_ended_total{how="closed",listener="t"}`:   1,
			`batv_sessions_ended_total{how="error",listener="t"}`:    1,
			`batv_sessions_ended_total{how="shutdown",listener="t"}`: 1,
		}
		if got := f.metrics(t); !maps.Equal(got, want) {
			t.Errorf("metrics:\n got %v\nwant %v", got, want)
		}
		if n := len(f.log.grep("WARN connection write failed", "conn=4", "err=io: read/write on closed pipe")); n != 1 {
			t.Errorf("%d log lines for the failed write, want 1:\n%s", n, f.log)
		}
	})
}

func TestConnectionLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := start(t, Options{MaxConns: 1}, lineHandler)
		first := f.dial(t)
		first.say(t, "x")
		// Over the limit: closed at once, so that the MTA applies its
		// fallback at once.
		begin := time.Now()
		if over := f.dial(t); !over.closed(t) || time.Since(begin) != 0 {
			t.Fatalf("connection over the limit not closed at once")
		}
		if n := f.Open(); n != 1 {
			t.Fatalf("Open = %d, want 1", n)
		}
		first.Close()
		synctest.Wait()
		if n := f.Open(); n != 0 {
			t.Fatalf("Open = %d after the close, want 0", n)
		}
		// The slot is free again.
		if got := f.dial(t).say(t, "again"); got != "ok again" {
			t.Fatalf("reply %q once a slot was free", got)
		}
	})
}

func TestNoLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := start(t, Options{}, lineHandler)
		for range 200 {
			f.dial(t)
		}
		if n := f.Open(); n != 200 {
			t.Fatalf("Open = %d, want 200 without a limit", n)
		}
		if got := f.metrics(t)[`batv_connections_total{listener="t",result="refused"}`]; got != 0 {
			t.Fatalf("%v refused without a limit", got)
		}
	})
}

// TestRefusalsLoggedOncePerInterval: a flood of refusals makes one log
// line per RefusalLogEvery, with the number refused since the last line;
// the metric counts every one.
func TestRefusalsLoggedOncePerInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := start(t, Options{MaxConns: 1}, lineHandler)
		f.dial(t)
		refuse := func(n int) {
			for range n {
				if !f.dial(t).closed(t) {
					t.Fatal("connection over the limit accepted")
				}
			}
		}
		const line = "WARN connection refused: limit reached listener=t max_connections=1"
		refuse(3)
		if got := f.log.grep(line); len(got) != 1 || !strings.HasSuffix(got[0], " refused=1 per=10s") {
			t.Fatalf("after 3 refusals: %q, want one line for the first", got)
		}
		time.Sleep(RefusalLogEvery - time.Nanosecond)
		refuse(1)
		if got := f.log.grep(line); len(got) != 1 {
			t.Fatalf("a second line before %v: %q", RefusalLogEvery, got)
		}
		time.Sleep(time.Nanosecond)
		refuse(1)
		if got := f.log.grep(line); len(got) != 2 || !strings.HasSuffix(got[1], " refused=4 per=10s") {
			t.Fatalf("after %v: %q, want a second line counting the 4 refused since the first", RefusalLogEvery, got)
		}
		if got := f.metrics(t)[`batv_connections_total{listener="t",result="refused"}`]; got != 5 {
			t.Fatalf("refused counter %v, want 5", got)
		}
	})
}

// TestAcceptErrorsRetried: a failing Accept (out of file descriptors, say)
// is logged and retried with a back-off that doubles from 5ms up to 1s,
// and starts again from 5ms after a success.
func TestAcceptErrorsRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := start(t, Options{}, lineHandler)
		emfile := &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
		begin := time.Now()
		for range 10 {
			f.ln.fail(emfile)
		}
		if got := f.dial(t).say(t, "x"); got != "ok x" {
			t.Fatalf("reply %q after the failures", got)
		}
		backoffs := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000}
		var sum time.Duration
		for _, b := range backoffs {
			sum += b * time.Millisecond
		}
		// The connection is accepted when the 10th back-off ends.
		if d := time.Since(begin); d != sum {
			t.Errorf("accepted after %v, want %v", d, sum)
		}
		f.ln.fail(emfile)
		f.dial(t)
		var got []string
		for _, l := range f.log.grep("ERROR accept failed listener=t err=accept unix: accept4: too many open files") {
			_, retry, _ := strings.Cut(l, "retry_in=")
			got = append(got, retry)
		}
		want := []string{"5ms", "10ms", "20ms", "40ms", "80ms", "160ms", "320ms", "640ms", "1s", "1s", "5ms"}
		if !slices.Equal(got, want) {
			t.Errorf("retries logged %q, want %q:\n%s", got, want, f.log)
		}
	})
}

// TestListenerClosedElsewhere: Serve returns the accept error when the
// listener was closed by someone else than Shutdown.
func TestListenerClosedElsewhere(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ln := newPipeListener()
		l := New(ln, Options{})
		served := make(chan error, 1)
		go func() { served <- l.Serve(lineHandler) }()
		synctest.Wait()
		ln.Close()
		if err := <-served; !errors.Is(err, net.ErrClosed) || errors.Is(err, ErrClosed) {
			t.Fatalf("Serve = %v, want the listener's net.ErrClosed", err)
		}
	})
}

// TestIdleTimeout: a connection on which the peer sends nothing for the
// idle timeout is closed, with a log line; the timeout counts from each
// read, in a unit of work too.
func TestIdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := start(t, Options{}, lineHandler)
		if f.opts.IdleTimeout != DefaultIdleTimeout || DefaultIdleTimeout != 15*time.Minute {
			t.Fatalf("idle timeout %v, want the default of 15m", f.opts.IdleTimeout)
		}
		silent, talking, busy := f.dial(t), f.dial(t), f.dial(t)
		busy.say(t, "begin")
		for range 4 {
			time.Sleep(DefaultIdleTimeout - time.Second)
			talking.say(t, "still here")
		}
		// 4*(15m-1s) have passed: silent and busy timed out at 15m.
		synctest.Wait()
		if !silent.closed(t) || !busy.closed(t) {
			t.Fatal("silent connections open after the idle timeout")
		}
		if talking.closed(t) {
			t.Fatal("a connection that talks within the idle timeout was closed")
		}
		time.Sleep(DefaultIdleTimeout - time.Nanosecond)
		synctest.Wait()
		if talking.closed(t) {
			t.Fatal("closed before the idle timeout")
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if !talking.closed(t) {
			t.Fatal("open after the idle timeout")
		}
		lines := f.log.grep("INFO connection closed: the peer sent nothing for too long listener=t", "idle=15m0s")
		if len(lines) != 3 {
			t.Errorf("%d log lines for 3 idle timeouts:\n%s", len(lines), f.log)
		}
		if got := f.metrics(t)[`batv_sessions_ended_total{how="timeout",listener="t"}`]; got != 3 {
			t.Errorf("%v timeouts counted, want 3", got)
		}
	})
}

// TestWriteTimeout: a peer that does not read its replies ends the session
// when one write has waited for the write timeout.
func TestWriteTimeout(t *testing.T) {
	for _, tt := range []struct {
		set, want time.Duration
	}{{0, DefaultWriteTimeout}, {2 * time.Second, 2 * time.Second}} {
		t.Run(tt.want.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := start(t, Options{WriteTimeout: tt.set}, lineHandler)
				c := f.dial(t)
				// The request is read; the reply is not.
				if _, err := io.WriteString(c, "x\n"); err != nil {
					t.Fatal(err)
				}
				time.Sleep(tt.want - time.Nanosecond)
				synctest.Wait()
				if n := f.Open(); n != 1 {
					t.Fatalf("Open = %d before the write timeout", n)
				}
				time.Sleep(time.Nanosecond)
				synctest.Wait()
				if n := f.Open(); n != 0 {
					t.Fatalf("Open = %d after the write timeout", n)
				}
				if !c.closed(t) {
					t.Fatal("not closed after the write timeout")
				}
				if n := len(f.log.grep("WARN connection write failed listener=t conn=1 err=write pipe: i/o timeout")); n != 1 {
					t.Errorf("%d log lines for the write timeout:\n%s", n, f.log)
				}
				if got := f.metrics(t)[`batv_sessions_ended_total{how="error",listener="t"}`]; got != 1 {
					t.Errorf("%v sessions ended with an error, want 1", got)
				}
			})
		})
	}
}

// TestReadError: a read that fails otherwise than by a close or a timeout
// ends the session as an error, logged.
func TestReadError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := start(t, Options{}, lineHandler)
		server, cl := net.Pipe()
		defer cl.Close()
		if _, err := f.ln.connect(resetConn{server}); err != nil {
			t.Fatal(err)
		}
		if n := f.Open(); n != 0 {
			t.Fatalf("Open = %d after a failed read", n)
		}
		if n := len(f.log.grep("WARN connection read failed listener=t conn=1 err=connection reset by peer")); n != 1 {
			t.Errorf("%d log lines for the failed read:\n%s", n, f.log)
		}
		if got := f.metrics(t)[`batv_sessions_ended_total{how="error",listener="t"}`]; got != 1 {
			t.Errorf("%v sessions ended with an error, want 1", got)
		}
	})
}

// resetConn fails every read with ECONNRESET.
type resetConn struct{ net.Conn }

func (resetConn) Read([]byte) (int, error) { return 0, syscall.ECONNRESET }

// gatedHandler is lineHandler, except that a "work" line is a unit of work
// that lasts until gate is closed.
type gatedHandler struct{ gate chan struct{} }

func (h gatedHandler) handle(c *Conn) {
	defer c.Close()
	buf := make([]byte, 64)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		line := strings.TrimSuffix(string(buf[:n]), "\n")
		switch line {
		case "begin":
			c.Busy(true)
		case "work":
			c.Busy(true)
			<-h.gate
		}
		if _, err := io.WriteString(c, "ok "+line+"\n"); err != nil {
			return
		}
		if line == "end" || line == "work" {
			c.Busy(false)
		}
	}
}

// TestShutdownDrains: Shutdown closes the connections that wait for their
// peer between units of work at once, stops accepting, and lets the units
// in progress finish (in a read or not) before it closes their
// connections at their next read.
func TestShutdownDrains(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := gatedHandler{gate: make(chan struct{})}
		f := start(t, Options{}, h.handle)
		idle, busy, working := f.dial(t), f.dial(t), f.dial(t)
		idle.say(t, "hello")
		busy.say(t, "begin")
		if _, err := io.WriteString(working, "work\n"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the handler has marked its unit busy
		begin := time.Now()
		shut := make(chan error, 1)
		go func() { shut <- f.Shutdown(context.Background()) }()
		synctest.Wait()

		if !idle.closed(t) {
			t.Error("idle connection open during the shutdown")
		}
		select {
		case err := <-f.served:
			if !errors.Is(err, ErrClosed) {
				t.Errorf("Serve returned %v, want ErrClosed", err)
			}
			f.served <- err // for the cleanup
		default:
			t.Error("Serve still accepting during the shutdown")
		}
		if _, err := f.ln.connect(nil); err == nil {
			t.Error("connection accepted during the shutdown")
		}
		// A connection accepted as the shutdown began is closed, and not
		// counted as refused.
		server, late := net.Pipe()
		if c := f.track(server); c != nil {
			t.Error("connection tracked during the shutdown")
		}
		if !newClient(late).closed(t) {
			t.Error("connection accepted during the shutdown left open")
		}
		select {
		case err := <-shut:
			t.Fatalf("Shutdown returned %v with units of work in progress", err)
		default:
		}

		// The busy connections go on until the end of their unit.
		if got := busy.say(t, "more"); got != "ok more" {
			t.Errorf("busy connection: reply %q", got)
		}
		if got := busy.say(t, "end"); got != "ok end" {
			t.Errorf("busy connection: reply %q", got)
		}
		synctest.Wait()
		if !busy.closed(t) {
			t.Error("busy connection open after its unit")
		}
		close(h.gate)
		if got, err := working.br.ReadString('\n'); got != "ok work\n" || err != nil {
			t.Errorf("working connection: reply %q, %v", got, err)
		}
		synctest.Wait()
		if !working.closed(t) {
			t.Error("working connection open after its unit")
		}
		if err := <-shut; err != nil {
			t.Errorf("Shutdown = %v, want nil", err)
		}
		if d := time.Since(begin); d != 0 {
			t.Errorf("shutdown took %v on the fake clock, want no time", d)
		}
		want := map[string]float64{
			`batv_connections_total{listener="t",result="accepted"}`: 3,
			`batv_connections_open{listener="t"}`:                    0,
			`batv_sessions_ended_total{how="shutdown",listener="t"}`: 3,
		}
		if got := f.metrics(t); !maps.Equal(got, want) {
			t.Errorf("metrics:\n got %v\nwant %v", got, want)
		}
		if w := f.log.grep("WARN"); len(w) != 0 {
			t.Errorf("warnings in a graceful shutdown: %q", w)
		}
		// Again, and Serve after Shutdown.
		if err := f.Shutdown(context.Background()); err != nil {
			t.Errorf("second Shutdown = %v", err)
		}
		if err := f.Serve(lineHandler); !errors.Is(err, ErrClosed) {
			t.Errorf("Serve after Shutdown = %v, want ErrClosed", err)
		}
	})
}

// TestShutdownDeadline: when Shutdown's context ends, the connections
// still in a unit of work are closed, whether their handler waits to read
// or to write, and Shutdown returns the context's error.
func TestShutdownDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := start(t, Options{WriteTimeout: time.Hour}, lineHandler)
		reading, writing := f.dial(t), f.dial(t)
		reading.say(t, "begin")
		writing.say(t, "begin")
		if _, err := io.WriteString(writing, "x\n"); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		begin := time.Now()
		if err := f.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
		}
		if d := time.Since(begin); d != time.Minute {
			t.Errorf("Shutdown returned after %v, want the deadline of 1m", d)
		}
		synctest.Wait()
		if !reading.closed(t) || !writing.closed(t) {
			t.Fatal("busy connections open after the deadline")
		}
		if n := len(f.log.grep("WARN shutdown deadline passed: closed connections in the middle of their work listener=t connections=2")); n != 1 {
			t.Errorf("%d log lines for the forced close:\n%s", n, f.log)
		}
		if w := f.log.grep("WARN connection"); len(w) != 0 {
			t.Errorf("the forced close logged as a failure: %q", w)
		}
		if got := f.metrics(t)[`batv_sessions_ended_total{how="shutdown",listener="t"}`]; got != 2 {
			t.Errorf("%v sessions ended by the shutdown, want 2", got)
		}
	})
}

// TestShutdownWaitsForHandlers: a handler that is not in a read or a
// write when the deadline passes is not interrupted; Shutdown returns
// when it does.
func TestShutdownWaitsForHandlers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := gatedHandler{gate: make(chan struct{})}
		f := start(t, Options{}, h.handle)
		working := f.dial(t)
		if _, err := io.WriteString(working, "work\n"); err != nil {
			t.Fatal(err)
		}
		// The handler has the line once the write returns, but marks its
		// unit busy a moment later: the shutdown starts once it waits.
		synctest.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		shut := make(chan error, 1)
		go func() { shut <- f.Shutdown(ctx) }()
		time.Sleep(time.Hour)
		if !working.closed(t) {
			t.Error("connection open after the deadline")
		}
		select {
		case err := <-shut:
			t.Fatalf("Shutdown returned %v before the handler", err)
		default:
		}
		close(h.gate)
		if err := <-shut; !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
		}
		if w := f.log.grep("WARN connection"); len(w) != 0 {
			t.Errorf("the forced close logged as a failure: %q", w)
		}
	})
}

// TestShutdownWithNothingInProgress: with no unit of work in progress,
// Shutdown returns nil even when its context has ended already (the
// second stop signal), and warns of nothing.
func TestShutdownWithNothingInProgress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		for i := range 50 {
			f := start(t, Options{}, lineHandler)
			for range i % 3 {
				f.dial(t).say(t, "x")
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if err := f.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown with %d idle connections = %v, want nil", i%3, err)
			}
			if w := f.log.grep("WARN"); len(w) != 0 {
				t.Fatalf("with %d idle connections: %q", i%3, w)
			}
			f.stop(t)
		}
	})
}

// TestConn: ids, the logger, Close twice, and the first SetEnd wins.
func TestConn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ids := make(chan uint64, 3)
		f := start(t, Options{}, func(c *Conn) {
			ids <- c.ID()
			c.Log().Info("hello")
			if !c.SetEnd("quit") || c.SetEnd("error") {
				t.Error("SetEnd: the first call does not win")
			}
			if err := c.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if err := c.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
		})
		for range 3 {
			f.dial(t)
		}
		close(ids)
		var got []uint64
		for id := range ids {
			got = append(got, id)
		}
		if slices.Sort(got); !slices.Equal(got, []uint64{1, 2, 3}) {
			t.Errorf("ids %v, want 1, 2, 3", got)
		}
		for id := 1; id <= 3; id++ {
			if n := len(f.log.grep(fmt.Sprintf("INFO hello listener=t conn=%d", id))); n != 1 {
				t.Errorf("conn %d: %d log lines:\n%s", id, n, f.log)
			}
		}
		want := map[string]float64{
			`batv_connections_total{listener="t",result="accepted"}`: 3,
			`batv_connections_open{listener="t"}`:                    0,
			`batv_sessions_ended_total{how="quit",listener="t"}`:     3,
		}
		if got := f.metrics(t); !maps.Equal(got, want) {
			t.Errorf("metrics:\n got %v\nwant %v", got, want)
		}
		if f.Addr().String() != "pipe" {
			t.Errorf("Addr = %v", f.Addr())
		}
	})
}

// TestZeroOptions: without a logger or metrics, nothing is recorded and
// nothing fails.
func TestZeroOptions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ln := newPipeListener()
		l := New(ln, Options{MaxConns: 1})
		served := make(chan error, 1)
		go func() { served <- l.Serve(lineHandler) }()
		synctest.Wait()
		first, _ := ln.connect(nil)
		if over, _ := ln.connect(nil); !over.closed(t) {
			t.Error("over the limit and open")
		}
		time.Sleep(DefaultIdleTimeout)
		synctest.Wait()
		if !first.closed(t) {
			t.Error("open after the default idle timeout")
		}
		if err := l.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-served; !errors.Is(err, ErrClosed) {
			t.Errorf("Serve = %v", err)
		}
	})
}
