package milter

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/conntest"

	gomilter "github.com/d--j/go-milter"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/mta"
	"github.com/batv/batv/internal/serve"
)

// Hostile and broken MTA peers. Each test runs a milter with both roles
// on a unix socket, captures its log, and checks that every bad session
// ends with a logged reason, that a well-behaved session running at the
// same time gets every answer right, and that goroutines and file
// descriptors return to where they were.

// hostile is a milter under test with its captured log.
type hostile struct {
	l    *serve.Listener
	path string
	log  *testLog
	// baseline goroutines and file descriptors, taken once the server
	// serves and before any connection.
	goroutines, fds int
}

// hostileIdle is the idle timeout of the hostile tests: short, but long
// enough that the good session, between two packets of a message, is not
// taken for an idle peer on a loaded machine.
const hostileIdle = 2 * time.Second

func startHostile(t *testing.T, tweak func(*Server, *serve.Options)) *hostile {
	t.Helper()
	h := &hostile{log: &testLog{t: t}}
	logger := slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.l, h.path = testServer(t, Outbound|Inbound, nil, func(s *Server, o *serve.Options) {
		s.Logger, o.Logger = logger, logger
		o.IdleTimeout = hostileIdle
		if tweak != nil {
			tweak(s, o)
		}
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", h.log.String())
		}
	})
	// A connection that negotiates and quits lets the accept loop start
	// before the baseline is taken.
	c := dial(t, h.path, "192.0.2.1", "smtpd")
	c.Close()
	conntest.Settle(t, "open connections", h.l.Open, 0)
	h.goroutines, h.fds = runtime.NumGoroutine(), conntest.OpenFDs(t)
	return h
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
	conntest.Settle(t, "open connections", h.l.Open, 0)
	conntest.Settle(t, "goroutines", runtime.NumGoroutine, h.goroutines)
	conntest.Settle(t, "file descriptors", func() int { return conntest.OpenFDs(t) }, h.fds)
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

// Postfix 3.7's offer at negotiation, and the part of it that offers to go
// without replies (SMFIP_NR_*).
const (
	postfixVersion  = 6
	postfixActions  = 0x1ff
	postfixProtocol = 0x1fffff
	noReplyOffer    = uint32(gomilter.OptNoReplies)
)

// optnegPacket is an OPTNEG packet with an offer.
func optnegPacket(version, actions, protocol uint32) []byte {
	return packet('O', binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(
		binary.BigEndian.AppendUint32(nil, version), actions), protocol))
}

// optneg is the OPTNEG packet Postfix sends, less the offer to do without
// replies, as from an MTA that predates them: then every packet but a
// macro gets a reply these tests can check.
var optneg = optnegPacket(postfixVersion, postfixActions, postfixProtocol&^noReplyOffer)

// rawPeer is an MTA that writes packets as it likes.
type rawPeer struct {
	t  *testing.T
	nc net.Conn
}

func dialRaw(t *testing.T, path string) *rawPeer {
	t.Helper()
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawPeer{t: t, nc: nc}
}

func (p *rawPeer) write(b ...[]byte) {
	p.t.Helper()
	p.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := p.nc.Write(bytes.Join(b, nil)); err != nil {
		p.t.Fatalf("write: %v", err)
	}
}

// readPacket reads one packet of the milter.
func (p *rawPeer) readPacket() (byte, []byte, error) {
	p.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hdr [5]byte
	if _, err := io.ReadFull(p.nc, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:4])
	if n == 0 || n > 1<<20 {
		return 0, nil, fmt.Errorf("packet length %d", n)
	}
	data := make([]byte, n-1)
	_, err := io.ReadFull(p.nc, data)
	return hdr[4], data, err
}

// isModification reports whether a milter packet code is a message
// change (sent before the end-of-message reply, no answer).
func isModification(code byte) bool {
	return strings.IndexByte("+-2beihmq", code) >= 0
}

// reply reads packets up to the next one that is not a change and
// returns the changes, as "CODE data" strings, and that packet.
func (p *rawPeer) reply() (mods []string, code byte, data string) {
	p.t.Helper()
	for {
		c, d, err := p.readPacket()
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

// expectReply sends packets and checks the reply code and that no change
// came with it.
func (p *rawPeer) expectReply(what string, code byte, b ...[]byte) {
	p.t.Helper()
	p.write(b...)
	mods, c, d := p.reply()
	if c != code || len(mods) != 0 {
		p.t.Fatalf("%s: reply %q %q with changes %q; want %q and none", what, c, d, mods, code)
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
		for i := 0; ; i++ {
			select {
			case <-g.stop:
				g.done <- c.Close()
				return
			default:
			}
			var res *mta.Result
			var err error
			switch i % 3 {
			case 0:
				if res, err = c.Send(&mta.Message{Sender: "alice@example.com", Recipients: []string{"bob@example.org"}, AuthUser: "alice"}); err == nil {
					if r, _ := verifier.Verify(res.SignedSender()); len(res.Changes) != 1 || r.Status != batv.Valid || r.Untagged() != "alice@example.com" {
						err = fmt.Errorf("submission %d: %s, which verifies %v", i, mods(res), r.Status)
					}
				}
			case 1:
				if res, err = c.Send(&mta.Message{Recipients: []string{valid}}); err == nil {
					if want := "DELRCPT <" + valid + ">; ADDRCPT <user@example.com>"; !delivered(res) || mods(res) != want {
						err = fmt.Errorf("valid bounce %d: %v %s", i, res.End, mods(res))
					}
				}
			case 2:
				if res, err = c.Send(&mta.Message{Recipients: []string{forged}}); err == nil {
					if res.Rcpts[0].SMTPCode != 550 || len(res.Changes) != 0 {
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

// TestHostilePeers: every kind of bad peer, one after the other, while a
// good session runs on the same server.
func TestHostilePeers(t *testing.T) {
	h := startHostile(t, nil)
	good := startGoodSession(t, h.path)
	good.progress(t, 10)
	const idle = hostileIdle
	valid := tag(t, "user@example.com", 1)

	for _, tt := range []struct {
		name string
		// act misbehaves on a fresh connection and returns how long the
		// milter may take to close it.
		act func(p *rawPeer) time.Duration
		// How the connection ended, and the line that says why.
		how, why string
	}{
		{
			name: "garbage instead of packets",
			act: func(p *rawPeer) time.Duration {
				p.write([]byte("GET / HTTP/1.1\r\nHost: milter\r\n\r\n"))
				return time.Second
			},
			how: "error", why: "length 1195725856",
		},
		{
			name: "zero-length packet, which makes go-milter panic",
			act: func(p *rawPeer) time.Duration {
				p.write([]byte{0, 0, 0, 0, 'x'})
				return time.Second
			},
			how: "error", why: "length 0,",
		},
		{
			name: "length field 0xFFFFFFFF",
			act: func(p *rawPeer) time.Duration {
				p.write([]byte{0xff, 0xff, 0xff, 0xff, 'O', 1, 2, 3})
				return time.Second
			},
			how: "error", why: "length 4294967295",
		},
		{
			name: "a body packet over 64 KiB",
			act: func(p *rawPeer) time.Duration {
				p.write(optneg, []byte{0, 0x10, 0, 0, 'B', 1, 2, 3, 4})
				p.reply()
				return time.Second
			},
			how: "error", why: "length 1048576",
		},
		{
			name: "a header packet over 256 KiB",
			act: func(p *rawPeer) time.Duration {
				p.write(optneg, []byte{0, 0x04, 0, 2, 'L', 'S'})
				p.reply()
				return time.Second
			},
			how: "error", why: "length 262146",
		},
		{
			name: "a macro packet over 8 KiB",
			act: func(p *rawPeer) time.Duration {
				p.write(optneg)
				p.reply()
				p.write(packet('D', append(worstMacros('C'), 'x')))
				return time.Second
			},
			how: "error", why: "length 8193, limit 8192",
		},
		{
			name: "a macro packet of more than 64 strings",
			act: func(p *rawPeer) time.Duration {
				p.write(optneg)
				p.reply()
				p.write(packet('D', macroData('M', strings.Split(strings.Repeat("k v ", 33), " ")[:66]...)))
				return time.Second
			},
			how: "error", why: "more than 64 strings",
		},
		{
			name: "unknown command",
			act: func(p *rawPeer) time.Duration {
				p.write(optneg)
				p.reply()
				p.write(packet('Z', []byte("zzz")))
				return time.Second
			},
			how: "error", why: "last_command='Z'",
		},
		{
			name: "malformed CONNECT",
			act: func(p *rawPeer) time.Duration {
				p.write(optneg, packet('C', []byte("no-nul-no-family")))
				p.reply()
				return time.Second
			},
			how: "error", why: "no NUL after the host name",
		},
		{
			name: "empty MACRO",
			act: func(p *rawPeer) time.Duration {
				p.write(optneg, packet('D'))
				p.reply()
				return time.Second
			},
			how: "error", why: "last_command='D'",
		},
		{
			name: "connects and never speaks",
			act:  func(p *rawPeer) time.Duration { return idle + time.Second },
			how:  "timeout", why: "the peer sent nothing for too long",
		},
		{
			name: "negotiates and never speaks",
			act: func(p *rawPeer) time.Duration {
				p.expectReply("OPTNEG", 'O', optneg)
				return idle + time.Second
			},
			how: "timeout", why: "the peer sent nothing for too long",
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
			how: "timeout", why: "session ended in the middle of a message",
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
			how: "closed", why: "session ended in the middle of a message",
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
			how: "closed", why: "connection ended",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ends := h.log.count("connection ended", "how="+tt.how)
			whys := h.log.count(tt.why)
			p := dialRaw(t, h.path)
			if d := tt.act(p); d > 0 {
				start := time.Now()
				p.expectClosed(d)
				t.Logf("closed by the milter after %v", time.Since(start).Round(time.Millisecond))
			}
			h.waitLog(t, ends+1, "connection ended", "how="+tt.how)
			h.waitLog(t, whys+1, tt.why)
			// The good session is not held up.
			good.progress(t, 10)
		})
	}
	n := good.finish(t)
	t.Logf("the good session checked %d messages meanwhile", n)
	h.checkBaseline(t)
}

// TestOutOfOrderPackets: packets in an order no MTA sends never produce a
// change that the transaction does not justify, and the session carries
// on.
func TestOutOfOrderPackets(t *testing.T) {
	h := startHostile(t, nil)
	valid := tag(t, "user@example.com", 1)
	mail := func(s string) []byte { return packet('M', cstr("<"+s+">")) }
	rcpt := func(s string) []byte { return packet('R', cstr("<"+s+">")) }
	eom, abort := packet('E'), packet('A')

	p := dialRaw(t, h.path)
	p.expectReply("OPTNEG", 'O', optneg)
	p.expectReply("BODY before CONNECT", 'c', packet('B', []byte("body\r\n")))
	p.expectReply("end of message before CONNECT", 'a', eom)
	p.expectReply("CONNECT", 'c', packet('C', connectData("mx.example.org", "192.0.2.25")))
	p.expectReply("RCPT without MAIL", 'c', rcpt(valid))
	p.expectReply("end of message without MAIL", 'a', eom)
	p.expectReply("header without MAIL", 'c', packet('L', cstr("X-BATV-Status"), cstr("valid")))
	p.expectReply("end of headers out of place", 'c', packet('N'))
	p.expectReply("DATA out of place", 'c', packet('T'))

	// A transaction that was aborted leaves nothing for the next end of
	// message.
	p.expectReply("MAIL", 'c', mail(""))
	p.expectReply("RCPT", 'c', rcpt(valid))
	p.expectReply("end of message after ABORT", 'a', abort, eom)

	// A second MAIL starts over: the valid tag of the first does not
	// carry into a message that is not a bounce.
	p.expectReply("MAIL", 'c', mail(""))
	p.expectReply("RCPT", 'c', rcpt(valid))
	p.expectReply("second MAIL", 'c', mail("someone@example.org"))
	p.expectReply("end of message after a second MAIL", 'a', eom)

	// Authentication announced at MAIL of an aborted message does not sign
	// the next one.
	p.expectReply("MAIL authenticated", 'c', packet('D', macroData('M', "{auth_authen}", "alice")), mail("alice@example.com"))
	p.expectReply("end of message after ABORT", 'a', abort, eom)
	p.expectReply("MAIL", 'c', mail("alice@example.com"))
	p.expectReply("end of message, not authenticated", 'a', eom)

	// A forged tag is refused and not rewritten.
	p.expectReply("MAIL", 'c', mail(""))
	p.write(rcpt(forge(valid)))
	if mods, c, d := p.reply(); c != 'y' || !strings.HasPrefix(d, "550 5.7.1") || len(mods) != 0 {
		t.Fatalf("forged RCPT: %q %q %q", c, d, mods)
	}
	p.expectReply("end of message after a refused RCPT", 'a', eom)

	// The right order still works, once: a second end of message does
	// nothing.
	p.expectReply("MAIL", 'c', mail(""))
	p.expectReply("RCPT", 'c', rcpt(valid))
	p.write(eom)
	if mods, c, _ := p.reply(); c != 'a' || strings.Join(mods, "; ") != "- <"+valid+"> ; + <user@example.com> " {
		t.Fatalf("valid bounce: %q %q", c, mods)
	}
	p.expectReply("a second end of message", 'a', eom)

	// An authenticated submission is signed after all that.
	p.expectReply("MAIL authenticated", 'c', packet('D', macroData('M', "{auth_authen}", "alice")), mail("alice@example.com"))
	p.write(eom)
	if mods, c, _ := p.reply(); c != 'a' || len(mods) != 1 || !strings.HasPrefix(mods[0], "e <prvs=") {
		t.Fatalf("signed submission: %q %q", c, mods)
	}
	p.write(packet('Q'))
	p.expectClosed(time.Second)
	p.nc.Close()
	h.waitLog(t, 1, "connection ended", "how=quit", "level=DEBUG")
	if n := h.log.count("level=WARN"); n != 0 {
		t.Fatalf("%d warnings for a session that only sent packets out of order", n)
	}
	h.checkBaseline(t)
}

// TestPeerThatStopsReading: a peer that sends commands but never reads the
// replies fills the socket buffers; the write deadline ends the session
// instead of leaving it blocked.
func TestPeerThatStopsReading(t *testing.T) {
	h := startHostile(t, func(_ *Server, o *serve.Options) {
		o.IdleTimeout, o.WriteTimeout = 10*time.Second, 300*time.Millisecond
	})
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
	h.waitLog(t, 1, "connection write failed", "level=WARN")
	h.waitLog(t, 1, "connection ended", "how=error")
	good.progress(t, 10)
	p.nc.Close()
	good.finish(t)
	h.checkBaseline(t)
}

// TestPanicInCallbackIsContained: a panic in a callback ends that session
// only (which the MTA answers with its milter_default_action); a message
// in flight on another connection finishes with the right answer.
func TestPanicInCallbackIsContained(t *testing.T) {
	var armed atomic.Bool
	h := startHostile(t, func(s *Server, _ *serve.Options) {
		s.Now = func() time.Time {
			if armed.CompareAndSwap(true, false) {
				panic("injected panic")
			}
			return testNow
		}
	})
	valid := tag(t, "user@example.com", 1)
	other := dial(t, h.path, "192.0.2.25", "smtpd").Raw()
	if r, err := other.Mail("", ""); err != nil || !continued(r) {
		t.Fatal(r, err)
	}
	if r, err := other.Rcpt(valid, ""); err != nil || !continued(r) {
		t.Fatal(r, err)
	}

	victim := dial(t, h.path, "192.0.2.26", "smtpd").Raw()
	if r, err := victim.Mail("", ""); err != nil || !continued(r) {
		t.Fatal(r, err)
	}
	armed.Store(true)
	if _, err := victim.Rcpt(valid, ""); err == nil {
		t.Fatal("RCPT answered although its callback panicked")
	}
	h.waitLog(t, 1, "session ended: a callback panicked", "injected panic")
	h.waitLog(t, 1, "connection ended", "how=error")

	if _, err := other.DataStart(); err != nil {
		t.Fatal(err)
	}
	if _, err := other.HeaderEnd(); err != nil {
		t.Fatal(err)
	}
	changes, end, err := other.BodyReadFrom(strings.NewReader("bounce\r\n"))
	if err != nil || end.Type != gomilter.ActionAccept || len(changes) != 2 {
		t.Fatalf("the message in flight on the other connection: %v %v %v", changes, end, err)
	}
	other.Close()
	h.checkBaseline(t)
}

// TestPacketMemory: a length field over the packet limits costs nothing;
// one at the header limit makes go-milter allocate the whole packet before
// it reads it, so idle peers can hold up to 256 KiB each until the idle
// timeout, and no more; the memory returns when they are reaped.
func TestPacketMemory(t *testing.T) {
	const n = 64
	h := startHostile(t, func(_ *Server, o *serve.Options) { o.IdleTimeout = 2 * time.Second })
	heap := heapInUse
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
	conntest.Settle(t, "open connections", h.l.Open, 0)
	over := heap() - before
	t.Logf("%d peers announcing 0xFFFFFFFF bytes: heap %+d KiB", n, over>>10)
	if over > 4<<20 {
		t.Errorf("heap grew by %d bytes for packets the milter refuses", over)
	}

	before = heap()
	peers = peers[:0]
	hdr := binary.BigEndian.AppendUint32(nil, maxHeaderPacket)
	for range n {
		p := dialRaw(t, h.path)
		p.write(optneg)
		p.reply()
		p.write(hdr, []byte{'L', 'S', 'u', 'b'})
		peers = append(peers, p)
	}
	time.Sleep(200 * time.Millisecond)
	held := heap() - before
	t.Logf("%d peers announcing a %d KiB header and sending 3 bytes: heap %+d KiB (%.0f KiB each)",
		n, maxHeaderPacket>>10, held>>10, float64(held)/n/1024)
	if held > n*(maxHeaderPacket+64<<10) {
		t.Errorf("heap grew by %d bytes for %d peers: more than %d KiB each", held, n, (maxHeaderPacket+64<<10)>>10)
	}
	for _, p := range peers {
		p.expectClosed(5 * time.Second)
		p.nc.Close()
	}
	conntest.Settle(t, "open connections", h.l.Open, 0)
	after := heap() - before
	t.Logf("after the idle timeout reaped them: heap %+d KiB", after>>10)
	if after > 4<<20 {
		t.Errorf("heap still %d bytes above the start after the peers were reaped", after)
	}
	h.checkBaseline(t)
}

// worstMacros is the data of a MACRO packet for stage that go-milter
// keeps at the greatest cost the milter lets through: maxMacroStrings
// strings, the last one long enough to fill maxMacroPacket.
func worstMacros(stage byte) []byte {
	d := []byte{stage}
	for i := range maxMacroStrings/2 - 1 {
		d = append(d, byte('!'+i/94), byte('!'+i%94), 0, 0)
	}
	d = append(d, 'z', 0)
	return append(d, append(bytes.Repeat([]byte{'v'}, maxMacroPacket-2-len(d)), 0)...)
}

// heapInUse is the heap after a collection.
func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// maxConnMemory is the most memory one connection may make the milter
// hold, measured by TestConnectionMemoryBound: a pending header packet at
// its limit, go-milter's 8 macro stages at theirs, a transaction's
// recipients at theirs, and the connection itself. docs/security.md
// quotes it.
const maxConnMemory = maxHeaderPacket + 8*(maxMacroPacket+4<<10) + maxRcptBytes + 64<<10

// TestConnectionMemoryBound: the most a peer can make the milter hold on
// one connection, all limits reached at once: MACRO packets at their
// limit in each of go-milter's 8 stages, a bounce with recipients until
// the milter refuses more (452 4.5.3), and a header packet at its limit
// announced and not sent. It stays under maxConnMemory a connection, and
// is given back when the connections end.
func TestConnectionMemoryBound(t *testing.T) {
	const n = 16
	// The log is not kept here: the test's copy of it would count.
	h := startHostile(t, func(s *Server, o *serve.Options) {
		o.IdleTimeout = time.Minute
		s.Logger, o.Logger = slog.New(slog.DiscardHandler), slog.New(slog.DiscardHandler)
	})
	before := heapInUse()
	var peers []*rawPeer
	rcpts := 0
	for range n {
		p := dialRaw(t, h.path)
		p.write(optneg)
		p.reply()
		p.write(packet('D', worstMacros('C')), packet('D', worstMacros('H')), packet('D', worstMacros('M')))
		p.expectReply("MAIL", 'c', packet('M', cstr("<>")))
		p.write(packet('D', worstMacros('R')))
		for i := 0; ; i++ {
			if i > 10000 {
				t.Fatalf("%d recipients of 2 KiB in one transaction, none refused", i)
			}
			rcpt := fmt.Sprintf("<%s%d@example.com>", strings.Repeat("u", 2000), i)
			p.write(packet('R', cstr(rcpt)))
			if _, code, data := p.reply(); code != 'c' {
				if code != 'y' || !strings.HasPrefix(data, "452 4.5.3") {
					t.Fatalf("RCPT %d: reply %q %q", i, code, data)
				}
				rcpts = i
				break
			}
		}
		// The stages in go-milter's order, or it clears what came before;
		// U (an unknown command's macros) is the stage of header macros.
		for _, st := range []byte("TNEU") {
			p.write(packet('D', worstMacros(st)))
		}
		p.write(binary.BigEndian.AppendUint32(nil, maxHeaderPacket), []byte{'L', 'S', 'u', 'b'})
		peers = append(peers, p)
	}
	time.Sleep(300 * time.Millisecond)
	held := heapInUse() - before
	t.Logf("%d peers, each with 8 macro stages of %d bytes, %d recipients of 2 KiB and a %d KiB header pending: heap %+d KiB, %d KiB each (bound %d KiB)",
		n, maxMacroPacket, rcpts, maxHeaderPacket>>10, held>>10, held/n>>10, maxConnMemory>>10)
	if open := h.l.Open(); open != n {
		t.Fatalf("%d connections open, want %d: a packet was refused", open, n)
	}
	if held > n*maxConnMemory {
		t.Errorf("%d KiB a connection, more than %d KiB", held/n>>10, maxConnMemory>>10)
	}
	for _, p := range peers {
		p.nc.Close()
	}
	h.checkBaseline(t)
	if after := heapInUse() - before; after > 4<<20 {
		t.Errorf("heap still %d KiB above the start after the peers left", after>>10)
	}
}

// TestTooManyRecipients: beyond maxRcptBytes a recipient gets 452 4.5.3,
// which the MTA's client takes as "send it again in another
// transaction"; the recipients before it are decided as ever, and the next
// transaction starts with the whole budget.
func TestTooManyRecipients(t *testing.T) {
	h := startHostile(t, nil)
	p := dialRaw(t, h.path)
	p.expectReply("OPTNEG", 'O', optneg)
	p.expectReply("CONNECT", 'c', packet('C', connectData("mx.example.org", "192.0.2.25")))
	valid := tag(t, "user@example.com", 1)
	for range 2 {
		p.expectReply("MAIL", 'c', packet('M', cstr("<>")))
		p.expectReply("RCPT", 'c', packet('R', cstr("<"+valid+">")))
		accepted := 1
		for ; ; accepted++ {
			if accepted > 10000 {
				t.Fatalf("%d recipients of 1 KiB accepted in one transaction, none refused", accepted)
			}
			p.write(packet('R', cstr(fmt.Sprintf("<%s%d@example.org>", strings.Repeat("x", 1000), accepted))))
			if _, code, data := p.reply(); code != 'c' {
				if code != 'y' || data != "452 4.5.3 Too many recipients" {
					t.Fatalf("recipient %d: %q %q", accepted, code, data)
				}
				break
			}
		}
		if want := maxRcptBytes/rcptCost(strings.Repeat("x", 1020)) - 1; accepted < want {
			t.Errorf("%d recipients accepted before the 452, want about %d", accepted, want)
		}
		// The valid bounce before the limit is still delivered untagged.
		p.write(packet('E'))
		mods, code, _ := p.reply()
		if code != 'a' || len(mods) != 2 || !strings.Contains(mods[1], "user@example.com") {
			t.Fatalf("end of message: %q %q", code, mods)
		}
	}
	h.waitLog(t, 2, "recipients refused: too many in one transaction")
}

// TestNoReplyEvents: the no-reply flags are named for the log.
func TestNoReplyEvents(t *testing.T) {
	for _, tt := range []struct {
		proto gomilter.OptProtocol
		want  string
	}{
		{0, "none"},
		{gomilter.OptNoHelo | gomilter.OptNoHeaders, "none"},
		{gomilter.OptNoConnReply | gomilter.OptNoMailReply | gomilter.OptNoHeaderReply | gomilter.OptNoHeaders, "connect+mail+header"},
		{gomilter.OptNoReplies, "connect+helo+mail+rcpt+data+unknown+header+eoh+body"},
	} {
		if got := noReplyEvents(tt.proto).String(); got != tt.want {
			t.Errorf("protocol %#x: %q, want %q", uint32(tt.proto), got, tt.want)
		}
	}
}

// TestNoReplyWhereTheMTADoesNotWait: offered what Postfix offers, the
// milter agrees to send no reply to CONNECT, MAIL and headers, and keeps
// to it, since a reply the MTA does not read would be taken as the answer
// to its next question. Offered none of that, it replies to each.
func TestNoReplyWhereTheMTADoesNotWait(t *testing.T) {
	h := startHostile(t, nil)
	valid := tag(t, "user@example.com", 1)
	p := dialRaw(t, h.path)
	p.write(optnegPacket(postfixVersion, postfixActions, postfixProtocol))
	want := uint32(gomilter.OptNoConnReply | gomilter.OptNoMailReply | gomilter.OptNoHeaderReply)
	if _, code, data := p.reply(); code != 'O' || len(data) < 12 {
		t.Fatalf("OPTNEG: %q %q", code, data)
	} else if got := binary.BigEndian.Uint32([]byte(data[8:12])) & noReplyOffer; got != want {
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
	p.write(packet('T'))
	if _, code, _ := p.reply(); code != 'c' {
		t.Fatalf("DATA: %q", code)
	}
	p.write(packet('L', cstr("X-BATV-Status"), cstr("valid")), packet('L', cstr("Subject"), cstr("hi")), packet('E'))
	c, d, err := p.readPacket()
	if err != nil || c != 'm' || !bytes.Contains(d, []byte("X-BATV-Status")) {
		t.Fatalf("first packet after the headers: %q %q %v, want the removal of the status header", c, d, err)
	}
	if mods, code, _ := p.reply(); code != 'a' || len(mods) != 2 {
		t.Fatalf("end of message: %q with %q, want the recipient rewrite and accept", code, mods)
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
}

// TestNoReplyEventsInJSONLog: the JSON log names the events too.
func TestNoReplyEventsInJSONLog(t *testing.T) {
	var b bytes.Buffer
	slog.New(slog.NewJSONHandler(&b, nil)).Info("connect", "no_reply", noReplyEvents(gomilter.OptNoConnReply|gomilter.OptNoMailReply))
	if !strings.Contains(b.String(), `"no_reply":"connect+mail"`) {
		t.Errorf("JSON log line %s, want \"no_reply\":\"connect+mail\"", b.String())
	}
}
