package milter

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/internal/metrics"

	"github.com/batv/batv/policy"

	gomilter "github.com/emersion/go-milter"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/mtaclient"
)

// Hostile and broken MTA peers. Each test runs a Server with both roles on
// a unix socket, captures its log and go-milter's (which logs through the
// standard log package), and checks that every bad session ends with a
// logged reason, that a well-behaved session running at the same time
// gets every answer right, and that goroutines and file descriptors return
// to where they were.

// hostile is a Server under test with its captured log.
type hostile struct {
	srv  *Server
	path string
	log  *testLog
	// baseline goroutines and file descriptors, taken once the server
	// serves and before any connection.
	goroutines, fds int
}

func startHostile(t *testing.T, tweak func(*Server)) *hostile {
	t.Helper()
	p := testPolicy(t, nil)
	dir, err := os.MkdirTemp("", "batv-hostile")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	h := &hostile{path: filepath.Join(dir, "milter.sock"), log: &testLog{t: t}}
	logger := slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	prevOut, prevFlags := log.Writer(), log.Flags()
	log.SetFlags(0)
	log.SetOutput(RedirectGoMilterLog(logger))
	t.Cleanup(func() { log.SetOutput(prevOut); log.SetFlags(prevFlags) })

	ln, err := net.Listen("unix", h.path)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = &Server{Name: "hostile", Roles: Outbound | Inbound, Policy: func() *policy.Policy { return p },
		Now: func() time.Time { return testNow }, Logger: logger, IdleTimeout: 500 * time.Millisecond}
	if tweak != nil {
		tweak(h.srv)
	}
	done := make(chan error, 1)
	go func() { done <- h.srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h.srv.Shutdown(ctx)
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", h.log.String())
		}
	})
	// Let the accept loop start before taking the baseline.
	time.Sleep(20 * time.Millisecond)
	h.goroutines, h.fds = runtime.NumGoroutine(), openFDs(t)
	return h
}

func (l *testLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// count returns the number of log lines that contain every one of subs.
func (l *testLog) count(subs ...string) int {
	n := 0
	for _, line := range strings.Split(l.String(), "\n") {
		all := line != ""
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

// waitLog waits until at least n log lines contain every one of subs.
func (h *hostile) waitLog(t *testing.T, n int, subs ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for h.log.count(subs...) < n {
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q (want %d)\n%s", subs, n, h.log.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkBaseline waits for the connections, goroutines and file descriptors
// to return to the baseline taken at start.
func (h *hostile) checkBaseline(t *testing.T) {
	t.Helper()
	settle(t, "open connections", func() int { return h.srv.OpenConns() }, 0)
	settle(t, "goroutines", runtime.NumGoroutine, h.goroutines)
	settle(t, "file descriptors", func() int { return openFDs(t) }, h.fds)
}

// settle waits up to 10 seconds for cur() to come down to at most want.
func settle(t testing.TB, what string, cur func() int, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := cur()
		if n <= want {
			return
		}
		if time.Now().After(deadline) {
			if what == "goroutines" {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Logf("goroutines:\n%s", buf)
			}
			t.Fatalf("%s: %d, want at most the baseline %d", what, n, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// openFDs counts this process's open file descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count file descriptors: %v", err)
	}
	return len(entries)
}

// packet encodes one milter packet.
func packet(cmd byte, data ...[]byte) []byte {
	body := bytes.Join(data, nil)
	p := binary.BigEndian.AppendUint32(nil, uint32(len(body)+1))
	return append(append(p, cmd), body...)
}

// cstr is s followed by NUL.
func cstr(s string) []byte { return append([]byte(s), 0) }

// connectData is a CONNECT packet's data for an IPv4 client.
func connectData(host, addr string) []byte {
	d := append(cstr(host), '4', 0x61, 0xa8)
	return append(d, cstr(addr)...)
}

// macroData is a MACRO packet's data: the stage command and name/value
// pairs.
func macroData(stage byte, kv ...string) []byte {
	d := []byte{stage}
	for _, s := range kv {
		d = append(d, cstr(s)...)
	}
	return d
}

// optneg is the OPTNEG packet Postfix sends, less the offer to do without
// replies (SMFIP_NR_*), as from an MTA that predates them: then every
// packet but a macro gets a reply these tests can check.
var optneg = packet('O', binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(
	binary.BigEndian.AppendUint32(nil, mtaclient.PostfixVersion), mtaclient.PostfixActions), mtaclient.PostfixProtocol&^noReplyOffer))

// noReplyOffer is the SMFIP_NR_* part of Postfix's offer.
const noReplyOffer = mtaclient.ProtoNoHeaderRepl | mtaclient.ProtoNoConnRepl | mtaclient.ProtoNoHeloRepl |
	mtaclient.ProtoNoMailRepl | mtaclient.ProtoNoRcptRepl | mtaclient.ProtoNoDataRepl | mtaclient.ProtoNoUnknRepl |
	mtaclient.ProtoNoEOHRepl | mtaclient.ProtoNoBodyRepl

// rawPeer is an MTA that writes packets as it likes.
type rawPeer struct {
	t  *testing.T
	nc net.Conn
	r  *mtaclient.Conn // only to read and decode the milter's packets
}

func dialRaw(t *testing.T, path string) *rawPeer {
	t.Helper()
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawPeer{t: t, nc: nc, r: mtaclient.NewConn(nc, mtaclient.Options{Timeout: 5 * time.Second})}
}

func (p *rawPeer) write(b ...[]byte) {
	p.t.Helper()
	p.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := p.nc.Write(bytes.Join(b, nil)); err != nil {
		p.t.Fatalf("write: %v", err)
	}
}

// reply reads packets up to the next one that is not a modification and
// returns the modifications, as "CODE data" strings, and that packet.
func (p *rawPeer) reply() (mods []string, code byte, data string) {
	p.t.Helper()
	for {
		c, d, err := p.r.ReadPacket()
		if err != nil {
			p.t.Fatalf("reading the reply: %v", err)
		}
		if isModification(c) {
			mods = append(mods, fmt.Sprintf("%c %s", c, bytes.ReplaceAll(d, []byte{0}, []byte{' '})))
			continue
		}
		return mods, c, string(bytes.TrimRight(d, "\x00"))
	}
}

// expectReply sends packets and checks the reply code and that no
// modification came with it.
func (p *rawPeer) expectReply(what string, code byte, b ...[]byte) {
	p.t.Helper()
	p.write(b...)
	mods, c, d := p.reply()
	if c != code || len(mods) != 0 {
		p.t.Fatalf("%s: reply %q %q with modifications %q; want %q and none", what, c, d, mods, code)
	}
}

// expectClosed waits for the milter to close the connection within d.
func (p *rawPeer) expectClosed(d time.Duration) {
	p.t.Helper()
	p.nc.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 4096)
	for {
		_, err := p.nc.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			p.t.Fatalf("the milter did not close the connection within %v", d)
		}
		return // EOF or reset: closed
	}
}

// goodSession is a well-behaved MTA connection that sends a signed
// submission, a valid bounce and a forged bounce in turn until stopped,
// checking every answer.
type goodSession struct {
	count atomic.Int64
	stop  chan struct{}
	done  chan error
}

func startGoodSession(t *testing.T, path string) *goodSession {
	t.Helper()
	g := &goodSession{stop: make(chan struct{}), done: make(chan error, 1)}
	c := dial(t, path, "203.0.113.5", "smtpd")
	valid := tag(t, "user@example.com", 1)
	forged := forge(valid)
	verifier := batv.Verifier{Keys: testKeys, Now: func() time.Time { return testNow }, Strict: true}
	go func() {
		defer c.Close()
		for i := 0; ; i++ {
			select {
			case <-g.stop:
				g.done <- c.Quit()
				return
			default:
			}
			var err error
			switch i % 3 {
			case 0:
				var res *mtaclient.Result
				if res, err = c.Send(&mtaclient.Message{Sender: "alice@example.com", Recipients: []string{"bob@example.org"}, AuthUser: "alice"}); err == nil {
					if len(res.Modifications) != 1 {
						err = fmt.Errorf("submission %d: modifications %s", i, mods(res))
					} else if cf, ok := res.Modifications[0].(*mtaclient.ChangeFrom); !ok {
						err = fmt.Errorf("submission %d: %s", i, mods(res))
					} else if r, _ := verifier.Verify(strings.Trim(cf.Addr, "<>")); r.Status != batv.Valid || r.Untagged() != "alice@example.com" {
						err = fmt.Errorf("submission %d: signed as %s, which verifies %v", i, cf.Addr, r.Status)
					}
				}
			case 1:
				var res *mtaclient.Result
				if res, err = c.Send(&mtaclient.Message{Recipients: []string{valid}}); err == nil {
					if want := "DELRCPT <" + valid + ">; ADDRCPT <user@example.com>"; !res.Delivered() || mods(res) != want {
						err = fmt.Errorf("valid bounce %d: %v %s", i, res.Reply, mods(res))
					}
				}
			case 2:
				var res *mtaclient.Result
				if res, err = c.Send(&mtaclient.Message{Recipients: []string{forged}}); err == nil {
					if res.Rcpts[0].SMTPCode() != 550 || len(res.Modifications) != 0 {
						err = fmt.Errorf("forged bounce %d: %v %s", i, res.Rcpts[0], mods(res))
					}
				}
			}
			if err != nil {
				g.done <- err
				return
			}
			g.count.Add(1)
		}
	}()
	return g
}

// progress fails the test unless the session checked at least n more
// messages within a few seconds from now: it is not held up.
func (g *goodSession) progress(t *testing.T, n int64) {
	t.Helper()
	start := g.count.Load()
	deadline := time.Now().Add(5 * time.Second)
	for g.count.Load() < start+n {
		select {
		case err := <-g.done:
			t.Fatalf("the good session failed: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the good session checked only %d messages in 5s", g.count.Load()-start)
		}
		time.Sleep(time.Millisecond)
	}
}

func (g *goodSession) finish(t *testing.T) int64 {
	t.Helper()
	close(g.stop)
	if err := <-g.done; err != nil {
		t.Fatalf("the good session: %v", err)
	}
	return g.count.Load()
}

// TestHostilePeers: every kind of bad peer the issue lists, one after the
// other, while a good session runs on the same server.
func TestHostilePeers(t *testing.T) {
	h := startHostile(t, nil)
	good := startGoodSession(t, h.path)
	good.progress(t, 10)
	idle := h.srv.IdleTimeout
	valid := tag(t, "user@example.com", 1)

	for _, tt := range []struct {
		name string
		// act misbehaves on a fresh connection and returns how long the
		// milter may take to close it.
		act func(p *rawPeer) time.Duration
		// The end-of-session log line: its level and what it says.
		how, where, level string
		// A line go-milter logs about it, if any.
		goMilter string
	}{
		{
			name: "garbage instead of packets",
			act: func(p *rawPeer) time.Duration {
				p.write([]byte("GET / HTTP/1.1\r\nHost: milter\r\n\r\n"))
				return time.Second
			},
			how: "error", level: "WARN", where: "announces 1195725856 bytes", goMilter: "packet length 1195725856 exceeds",
		},
		{
			name: "zero-length packet",
			act: func(p *rawPeer) time.Duration {
				p.write([]byte{0, 0, 0, 0})
				return time.Second
			},
			how: "error", level: "WARN", where: "at a zero-length packet", goMilter: "invalid zero-length packet",
		},
		{
			name: "length field 0xFFFFFFFF",
			act: func(p *rawPeer) time.Duration {
				p.write([]byte{0xff, 0xff, 0xff, 0xff, 'O', 1, 2, 3})
				return time.Second
			},
			how: "error", level: "WARN", where: "announces 4294967295 bytes", goMilter: "packet length 4294967295 exceeds",
		},
		{
			name: "unknown command",
			act: func(p *rawPeer) time.Duration {
				p.write(optneg)
				p.reply()
				p.write(packet('Z', []byte("zzz")))
				return time.Second
			},
			how: "error", level: "WARN", where: `after an unknown ('Z') packet`, goMilter: "Unrecognized command code: Z",
		},
		{
			name: "malformed CONNECT",
			act: func(p *rawPeer) time.Duration {
				p.write(optneg, packet('C', []byte("no-nul-no-family")))
				p.reply()
				return time.Second
			},
			how: "error", level: "WARN", where: "after a CONNECT packet", goMilter: "malformed connect command",
		},
		{
			name: "empty MACRO",
			act: func(p *rawPeer) time.Duration {
				p.write(optneg, packet('D'))
				p.reply()
				return time.Second
			},
			how: "error", level: "WARN", where: "after a MACRO packet", goMilter: "malformed macro command",
		},
		{
			name: "connects and never speaks",
			act:  func(p *rawPeer) time.Duration { return idle + time.Second },
			how:  "timeout", level: "DEBUG", where: "before the first packet", goMilter: "",
		},
		{
			name: "negotiates and never speaks",
			act: func(p *rawPeer) time.Duration {
				p.expectReply("OPTNEG", 'O', optneg)
				return idle + time.Second
			},
			how: "timeout", level: "DEBUG", where: "after a OPTNEG packet",
		},
		{
			name: "stops in the middle of a message",
			act: func(p *rawPeer) time.Duration {
				p.expectReply("OPTNEG", 'O', optneg)
				p.expectReply("CONNECT", 'c', packet('C', connectData("mx.example.org", "192.0.2.25")))
				p.expectReply("MAIL", 'c', packet('M', cstr("<>")))
				p.expectReply("RCPT", 'c', packet('R', cstr("<"+valid+">")))
				return idle + time.Second
			},
			how: "timeout", level: "DEBUG", where: "after a RCPT packet",
		},
		{
			name: "closes in the middle of a message",
			act: func(p *rawPeer) time.Duration {
				p.expectReply("OPTNEG", 'O', optneg)
				p.expectReply("CONNECT", 'c', packet('C', connectData("mx.example.org", "192.0.2.25")))
				p.expectReply("MAIL", 'c', packet('M', cstr("<>")))
				p.expectReply("RCPT", 'c', packet('R', cstr("<"+valid+">")))
				p.nc.Close()
				return 0
			},
			how: "closed", level: "INFO", where: "after a RCPT packet",
		},
		{
			name: "closes in the middle of a packet",
			act: func(p *rawPeer) time.Duration {
				p.expectReply("OPTNEG", 'O', optneg)
				full := packet('L', cstr("Subject"), cstr(strings.Repeat("x", 100)))
				p.write(full[:20])
				time.Sleep(50 * time.Millisecond)
				p.nc.Close()
				return 0
			},
			how: "closed", level: "INFO", where: "inside a HEADER packet of 110 bytes, 94 still to come",
		},
		{
			name: "announces a 1 MiB packet and sends 5 bytes of it",
			act: func(p *rawPeer) time.Duration {
				p.write([]byte{0, 0x10, 0, 0, 'B', 1, 2, 3, 4})
				return idle + time.Second
			},
			how: "timeout", level: "DEBUG", where: "inside a BODY packet of 1048576 bytes, 1048571 still to come",
		},
		{
			name: "QUIT_NC, which Postfix never sends",
			act: func(p *rawPeer) time.Duration {
				p.write(optneg, packet('K'))
				p.reply()
				return time.Second
			},
			how: "error", level: "WARN", where: "after a QUIT_NC packet", goMilter: "Unrecognized command code: K",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ends := h.log.count("session ended", "how="+tt.how, tt.where)
			goLines := h.log.count("go-milter: ", tt.goMilter)
			p := dialRaw(t, h.path)
			if d := tt.act(p); d > 0 {
				start := time.Now()
				p.expectClosed(d)
				t.Logf("closed by the milter after %v", time.Since(start).Round(time.Millisecond))
			}
			// One line says how and where the session ended, at the
			// expected level.
			h.waitLog(t, ends+1, "session ended", "how="+tt.how, tt.where, "level="+tt.level)
			if tt.goMilter != "" {
				h.waitLog(t, goLines+1, "go-milter: ", tt.goMilter)
			}
			if tt.how == "timeout" {
				h.waitLog(t, 1, "the MTA sent nothing for too long")
			}
			// The good session is not held up.
			good.progress(t, 10)
		})
	}
	n := good.finish(t)
	t.Logf("the good session checked %d messages meanwhile", n)
	h.checkBaseline(t)
}

// TestOutOfOrderPackets: packets in an order no MTA sends never produce a
// modification that the transaction does not justify, and the session
// carries on.
func TestOutOfOrderPackets(t *testing.T) {
	h := startHostile(t, nil)
	valid := tag(t, "user@example.com", 1)
	mail := func(s string) []byte { return packet('M', cstr("<"+s+">")) }
	rcpt := func(s string) []byte { return packet('R', cstr("<"+s+">")) }
	eom, abort := packet('E'), packet('A')

	p := dialRaw(t, h.path)
	p.expectReply("OPTNEG", 'O', optneg)
	p.expectReply("BODY before CONNECT", 'c', packet('B', []byte("body\r\n")))
	p.expectReply("end of message before CONNECT", 'c', eom)
	p.expectReply("CONNECT", 'c', packet('C', connectData("mx.example.org", "192.0.2.25")))
	p.expectReply("RCPT without MAIL", 'c', rcpt(valid))
	p.expectReply("end of message without MAIL", 'c', eom)
	p.expectReply("header without MAIL", 'c', packet('L', cstr("X-BATV-Status"), cstr("valid")))
	p.expectReply("end of headers out of place", 'c', packet('N'))
	p.expectReply("DATA out of place", 'c', packet('T'))

	// A transaction that was aborted leaves nothing for the next end of
	// message.
	p.expectReply("MAIL", 'c', mail(""))
	p.expectReply("RCPT", 'c', rcpt(valid))
	p.expectReply("end of message after ABORT", 'c', abort, eom)

	// A second MAIL starts over: the valid tag of the first does not
	// carry into a message that is not a bounce.
	p.expectReply("MAIL", 'c', mail(""))
	p.expectReply("RCPT", 'c', rcpt(valid))
	p.expectReply("second MAIL", 'c', mail("someone@example.org"))
	p.expectReply("end of message after a second MAIL", 'c', eom)

	// Authentication announced at MAIL of an aborted message does not sign
	// the next one.
	p.expectReply("MAIL authenticated", 'c', packet('D', macroData('M', "{auth_authen}", "alice")), mail("alice@example.com"))
	p.expectReply("end of message after ABORT", 'c', abort, eom)
	p.expectReply("MAIL", 'c', mail("alice@example.com"))
	p.expectReply("end of message, not authenticated", 'c', eom)

	// A forged tag is refused and not rewritten.
	p.expectReply("MAIL", 'c', mail(""))
	p.write(rcpt(forge(valid)))
	if mods, c, d := p.reply(); c != 'y' || !strings.HasPrefix(d, "550 5.7.1") || len(mods) != 0 {
		t.Fatalf("forged RCPT: %q %q %q", c, d, mods)
	}
	p.expectReply("end of message after a refused RCPT", 'c', eom)

	// The right order still works, once: a second end of message does
	// nothing.
	p.expectReply("MAIL", 'c', mail(""))
	p.expectReply("RCPT", 'c', rcpt(valid))
	p.write(eom)
	if mods, c, _ := p.reply(); c != 'c' || strings.Join(mods, "; ") != "- <"+valid+"> ; + <user@example.com> " {
		t.Fatalf("valid bounce: %q %q", c, mods)
	}
	p.expectReply("a second end of message", 'c', eom)

	// A new OPTNEG in the middle of the session is answered, and the
	// session goes on.
	p.expectReply("OPTNEG again", 'O', optneg)
	p.expectReply("MAIL authenticated", 'c', packet('D', macroData('M', "{auth_authen}", "alice")), mail("alice@example.com"))
	p.write(eom)
	if mods, c, _ := p.reply(); c != 'c' || len(mods) != 1 || !strings.HasPrefix(mods[0], "e <prvs=") {
		t.Fatalf("signed submission: %q %q", c, mods)
	}
	p.write(packet('Q'))
	p.expectClosed(time.Second)
	p.nc.Close()
	h.waitLog(t, 1, "session ended", "how=quit", "level=DEBUG")
	if n := h.log.count("level=WARN"); n != 0 {
		t.Fatalf("%d warnings for a session that only sent packets out of order", n)
	}
	h.checkBaseline(t)
}

// TestPeerThatStopsReading: a peer that sends commands but never reads the
// replies fills the socket buffers; the write deadline ends the session
// instead of leaving it blocked.
func TestPeerThatStopsReading(t *testing.T) {
	old := writeTimeout
	writeTimeout = 300 * time.Millisecond
	t.Cleanup(func() { writeTimeout = old })
	h := startHostile(t, func(s *Server) { s.IdleTimeout = 10 * time.Second })
	good := startGoodSession(t, h.path)

	p := dialRaw(t, h.path)
	// Each HELO is answered with 5 bytes: 400,000 of them make 2 MB of
	// replies, far more than the socket buffers hold.
	helo := packet('H', cstr("hostile.example"))
	batch := bytes.Repeat(helo, 1000)
	go func() {
		p.nc.SetWriteDeadline(time.Now().Add(20 * time.Second))
		p.nc.Write(optneg)
		for range 400 {
			if _, err := p.nc.Write(batch); err != nil {
				return
			}
		}
	}()
	h.waitLog(t, 1, "session ended", "how=error", "level=WARN")
	h.waitLog(t, 1, "go-milter: Error writing packet")
	good.progress(t, 10)
	p.nc.Close()
	good.finish(t)
	h.checkBaseline(t)
}

// TestPanicInCallbackIsContained: a panic in a callback ends that session
// only (go-milter recovers it, logs it and closes the connection, which
// the MTA answers with its milter_default_action); a message in flight on
// another connection finishes with the right answer.
func TestPanicInCallbackIsContained(t *testing.T) {
	var armed atomic.Bool
	h := startHostile(t, func(s *Server) {
		s.Now = func() time.Time {
			if armed.CompareAndSwap(true, false) {
				panic("injected panic")
			}
			return testNow
		}
	})
	valid := tag(t, "user@example.com", 1)
	other := dial(t, h.path, "192.0.2.25", "smtpd")
	if r, err := other.Mail("", nil, nil); err != nil || !r.Continue() {
		t.Fatal(r, err)
	}
	if r, err := other.Rcpt(valid, nil, nil); err != nil || !r.Continue() {
		t.Fatal(r, err)
	}

	victim := dial(t, h.path, "192.0.2.26", "smtpd")
	if r, err := victim.Mail("", nil, nil); err != nil || !r.Continue() {
		t.Fatal(r, err)
	}
	armed.Store(true)
	if _, err := victim.Rcpt(valid, nil, nil); err == nil {
		t.Fatal("RCPT answered although its callback panicked")
	}
	h.waitLog(t, 1, "go-milter: panic handling command: injected panic")
	h.waitLog(t, 1, "session ended", "how=error", "after a RCPT packet", "in_message=true")

	res, err := other.EndOfMessage(nil)
	if err != nil || !res.Reply.Continue() || len(res.Modifications) != 2 {
		t.Fatalf("the message in flight on the other connection: %v %v", res, err)
	}
	other.Abort()
	again := send(t, other, &mtaclient.Message{Recipients: []string{valid}})
	if !again.Delivered() || len(again.Modifications) != 2 {
		t.Fatalf("the next message: %v %s", again.Reply, mods(again))
	}
	other.Quit()
	victim.Close()
	h.checkBaseline(t)
}

// TestOversizedLengthMemory: a length field over go-milter's 1 MiB limit
// costs nothing; one at the limit makes go-milter allocate the whole
// packet before it reads it, so idle peers can hold up to 1 MiB each until
// the idle timeout, and no more: memory is bounded by max_connections x
// 1 MiB, and returns when they are reaped.
func TestOversizedLengthMemory(t *testing.T) {
	const n = 64
	h := startHostile(t, func(s *Server) { s.IdleTimeout = 2 * time.Second })
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	var peers []*rawPeer
	for range n {
		p := dialRaw(t, h.path)
		p.write([]byte{0xff, 0xff, 0xff, 0xff, 'B', 1, 2, 3, 4})
		peers = append(peers, p)
	}
	for _, p := range peers {
		p.expectClosed(time.Second)
		p.nc.Close()
	}
	settle(t, "open connections", func() int { return h.srv.OpenConns() }, 0)
	over := int64(heap()) - int64(before)
	t.Logf("%d peers announcing 0xFFFFFFFF bytes: heap %+d KiB", n, over>>10)
	if over > 4<<20 {
		t.Errorf("heap grew by %d bytes for packets go-milter refuses", over)
	}

	before = heap()
	peers = peers[:0]
	for range n {
		p := dialRaw(t, h.path)
		p.write([]byte{0, 0x10, 0, 0, 'B', 1, 2, 3, 4})
		peers = append(peers, p)
	}
	settle(t, "connections not yet reading their packet", func() int { return n - h.srv.OpenConns() }, 0)
	time.Sleep(200 * time.Millisecond)
	held := int64(heap()) - int64(before)
	t.Logf("%d peers announcing 1 MiB and sending 4 bytes: heap %+d KiB (%.2f MiB each)", n, held>>10, float64(held)/n/(1<<20))
	if held > n*(1<<20+64<<10) {
		t.Errorf("heap grew by %d bytes for %d peers: more than 1 MiB each", held, n)
	}
	for _, p := range peers {
		p.expectClosed(5 * time.Second)
		p.nc.Close()
	}
	settle(t, "open connections", func() int { return h.srv.OpenConns() }, 0)
	after := int64(heap()) - int64(before)
	t.Logf("after the idle timeout reaped them: heap %+d KiB", after>>10)
	if after > 4<<20 {
		t.Errorf("heap still %d bytes above the start after the peers were reaped", after)
	}
	h.checkBaseline(t)
}

// TestThousandsOfIdleConnections: the connection limit holds against a
// flood of connections that never speak, the ones over the limit are
// closed at once, the rest are reaped at the idle timeout, and a good
// session is served again afterwards.
func TestThousandsOfIdleConnections(t *testing.T) {
	const limit = 500
	n := 2000
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < rl.Max {
		old := rl
		rl.Cur = rl.Max
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl) == nil {
			t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
		}
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	if room := int(rl.Cur) - limit - 200; room < n {
		n = room
		t.Logf("file descriptor limit %d: %d connections", rl.Cur, n)
	}
	if n < 2*limit {
		t.Skipf("file descriptor limit %d is too low for this test", rl.Cur)
	}
	reg := prometheus.NewRegistry()
	h := startHostile(t, func(s *Server) {
		s.MaxConns, s.IdleTimeout = limit, time.Second
		s.Metrics = metrics.New(reg)
	})

	// Watch the number of open connections while the flood lasts.
	var peak atomic.Int64
	stopWatch := make(chan struct{})
	var watching sync.WaitGroup
	watching.Go(func() {
		for {
			if c := int64(h.srv.OpenConns()); c > peak.Load() {
				peak.Store(c)
			}
			select {
			case <-stopWatch:
				return
			case <-time.After(time.Millisecond):
			}
		}
	})

	start := time.Now()
	conns := make([]net.Conn, 0, n)
	for len(conns) < n {
		nc, err := net.Dial("unix", h.path)
		if errors.Is(err, syscall.EAGAIN) {
			time.Sleep(time.Millisecond) // the listen backlog is full
			continue
		}
		if err != nil {
			t.Fatalf("connection %d: %v", len(conns), err)
		}
		conns = append(conns, nc)
	}
	dialled := time.Since(start)
	// Every connection is closed by the milter: over the limit at once,
	// the others at the idle timeout.
	var wg sync.WaitGroup
	var closedFast atomic.Int64
	for _, nc := range conns {
		wg.Go(func() {
			nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			t0 := time.Now()
			_, err := nc.Read(make([]byte, 1))
			if err == nil {
				t.Error("the milter spoke first")
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
	refused := int(counterValue(t, reg, "batv_connections_total", "listener", h.srv.Name, "result", "refused"))
	// The log says so once per refusalLogEvery, with the count.
	if lines := h.log.count("connection refused: limit reached", "refused="); lines < 1 || lines > 2 {
		t.Errorf("%d log lines for %d refusals, want 1 or 2", lines, refused)
	}
	t.Logf("%d connections in %v: peak %d open (limit %d), %d refused at once, %d closed within 0.5s, all closed after %v",
		n, dialled.Round(time.Millisecond), peak.Load(), limit, refused, closedFast.Load(), time.Since(start).Round(time.Millisecond))
	if peak.Load() > limit {
		t.Errorf("%d connections open at once, over the limit of %d", peak.Load(), limit)
	}
	if refused < n-2*limit {
		t.Errorf("only %d connections refused out of %d", refused, n)
	}
	h.checkBaseline(t)
	// Each accepted connection ended with its idle timeout, logged.
	h.waitLog(t, n-refused, "session ended", "how=timeout")

	// Served again.
	c := dial(t, h.path, "203.0.113.5", "smtpd")
	res := send(t, c, &mtaclient.Message{Sender: "alice@example.com", Recipients: []string{"bob@example.org"}, AuthUser: "alice"})
	if len(res.Modifications) != 1 {
		t.Fatalf("after the flood: %v %s", res.Reply, mods(res))
	}
}

// TestNoReplyWhereTheMTADoesNotWait: offered what Postfix offers, the
// milter agrees to send no reply to CONNECT, MAIL and headers, and keeps
// to it, since a reply the MTA does not read would be taken as the answer
// to its next question. Offered none of that, it replies to each.
func TestNoReplyEvents(t *testing.T) {
	for _, tt := range []struct {
		proto gomilter.OptProtocol
		want  string
	}{
		{0, "none"},
		{gomilter.OptNoHelo | gomilter.OptNoHeaders, "none"},
		{gomilter.OptNoConnReply | gomilter.OptNoMailReply | gomilter.OptNoHeaderReply | gomilter.OptNoHeaders, "connect+mail+header"},
		{noReplyFlags, "connect+helo+mail+rcpt+data+unknown+header+eoh+body"},
	} {
		if got := noReplyEvents(tt.proto).String(); got != tt.want {
			t.Errorf("protocol %#x: %q, want %q", uint32(tt.proto), got, tt.want)
		}
	}
}

func TestNoReplyWhereTheMTADoesNotWait(t *testing.T) {
	h := startHostile(t, nil)
	valid := tag(t, "user@example.com", 1)
	p := dialRaw(t, h.path)
	postfix := packet('O', binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(
		binary.BigEndian.AppendUint32(nil, mtaclient.PostfixVersion), mtaclient.PostfixActions), mtaclient.PostfixProtocol))
	p.write(postfix)
	if _, code, data := p.reply(); code != 'O' || len(data) < 12 {
		t.Fatalf("OPTNEG: %q %q", code, data)
	} else if got, want := binary.BigEndian.Uint32([]byte(data[8:12]))&noReplyOffer, mtaclient.ProtoNoConnRepl|mtaclient.ProtoNoMailRepl|mtaclient.ProtoNoHeaderRepl; got != want {
		t.Fatalf("no-reply flags agreed: %#x, want %#x", got, want)
	}
	// The first reply is the RCPT's refusal, not an answer to CONNECT or
	// MAIL.
	p.write(packet('C', connectData("mx.example.org", "192.0.2.25")), packet('M', cstr("<>")), packet('R', cstr("<"+forge(valid)+">")))
	if _, code, data := p.reply(); code != 'y' || !strings.HasPrefix(data, "550") {
		t.Fatalf("first reply after CONNECT, MAIL, RCPT: %q %q, want the 550 for RCPT", code, data)
	}
	// The first packet after the headers and the end of message is the
	// removal of the forged status header, not an answer to a header.
	p.write(packet('A'), packet('M', cstr("<>")), packet('R', cstr("<"+valid+">")))
	if _, code, _ := p.reply(); code != 'c' {
		t.Fatalf("RCPT of a valid tag: %q", code)
	}
	p.write(packet('L', cstr("X-BATV-Status"), cstr("valid")), packet('L', cstr("Subject"), cstr("hi")), packet('E'))
	c, d, err := p.r.ReadPacket()
	if err != nil || c != 'm' || !bytes.Contains(d, []byte("X-BATV-Status")) {
		t.Fatalf("first packet after the headers: %q %q %v, want the removal of the status header", c, d, err)
	}
	if mods, code, _ := p.reply(); code != 'c' || len(mods) != 2 {
		t.Fatalf("end of message: %q with %q, want the recipient rewrite and continue", code, mods)
	}
	// A header with a NUL inside, which go-milter cannot split into name
	// and value and answers by itself: no reply goes out, so the answer
	// to the next RCPT is that RCPT's, not a stale "continue".
	p.write(packet('A'), packet('M', cstr("<>")), packet('R', cstr("<"+valid+">")))
	if _, code, _ := p.reply(); code != 'c' {
		t.Fatalf("RCPT of a valid tag: %q", code)
	}
	p.write(packet('L', cstr("Subject"), cstr("a"), cstr("b")), packet('E'))
	if mods, code, _ := p.reply(); code != 'c' || len(mods) != 2 {
		t.Fatalf("end of message after a header with a NUL: %q with %q, want the recipient rewrite and continue", code, mods)
	}
	p.write(packet('A'), packet('M', cstr("<>")), packet('R', cstr("<"+forge(valid)+">")))
	if _, code, data := p.reply(); code != 'y' || !strings.HasPrefix(data, "550") {
		t.Fatalf("forged RCPT after a header with a NUL: %q %q, want its 550", code, data)
	}

	// An MTA that offers no such thing gets a reply to each, and a
	// negotiation within its offer.
	q := dialRaw(t, h.path)
	q.write(optneg)
	if _, code, data := q.reply(); code != 'O' || binary.BigEndian.Uint32([]byte(data[8:12]))&noReplyOffer != 0 {
		t.Fatalf("OPTNEG without the offer: %q %q", code, data)
	}
	q.expectReply("CONNECT", 'c', packet('C', connectData("mx.example.org", "192.0.2.25")))
	q.expectReply("MAIL", 'c', packet('M', cstr("<>")))
	q.expectReply("RCPT", 'c', packet('R', cstr("<"+valid+">")))
	q.expectReply("header", 'c', packet('L', cstr("Subject"), cstr("hi")))

	// An MTA that does not open with the negotiation: its offer is not
	// known, so nothing is left unanswered.
	u := dialRaw(t, h.path)
	u.write(packet('D', []byte{'C'}, cstr("j"), cstr("mx")), postfix)
	if _, code, data := u.reply(); code != 'O' || binary.BigEndian.Uint32([]byte(data[8:12]))&noReplyOffer != 0 {
		t.Fatalf("OPTNEG after a macro packet: %q %q", code, data)
	}
	u.expectReply("CONNECT", 'c', packet('C', connectData("mx.example.org", "192.0.2.25")))
}

// TestNoReplyEventsInJSONLog: the JSON log names the events too.
func TestNoReplyEventsInJSONLog(t *testing.T) {
	var b bytes.Buffer
	slog.New(slog.NewJSONHandler(&b, nil)).Info("connect", "no_reply", noReplyEvents(gomilter.OptNoConnReply|gomilter.OptNoMailReply))
	if !strings.Contains(b.String(), `"no_reply":"connect+mail"`) {
		t.Errorf("JSON log line %s, want \"no_reply\":\"connect+mail\"", b.String())
	}
}

// counterValue reads a counter from reg, the series with the given label
// pairs; 0 if there is none.
func counterValue(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue series
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}
