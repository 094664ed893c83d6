package mtaclient

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"
)

func TestMain(m *testing.M) {
	// go-milter logs through the global logger ("Error reading milter
	// command" and the like when a test closes a connection on purpose).
	log.SetOutput(io.Discard)
	os.Exit(m.Run())
}

// sockPath returns a unix socket path short enough for sun_path.
func sockPath(t testing.TB) string {
	dir, err := os.MkdirTemp("", "mtac")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "m.sock")
}

// serveGoMilter runs a go-milter v0.5.0 server on a unix socket and returns
// its path. The listener (not the server: Server.Close races with Serve) is
// closed at cleanup.
func serveGoMilter(t testing.TB, srv *milter.Server) string {
	path := sockPath(t)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { ln.Close(); <-done })
	return path
}

func dialUnix(t testing.TB, path string, mod func(*Options)) *Conn {
	t.Helper()
	opts := Options{Network: "unix", Address: path, Timeout: 5 * time.Second}
	if mod != nil {
		mod(&opts)
	}
	c, err := Dial(context.Background(), opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// event is one callback seen by the recording milter.
type event struct {
	Kind   string // connect helo mail rcpt header eoh body eom abort
	Arg    string
	Macros map[string]string
}

// recorder records what every milter object of a go-milter server sees,
// and decides its replies and end-of-message modifications.
type recorder struct {
	mu     sync.Mutex
	events []event

	connectReply func() milter.Response
	mailReply    func(n int, from string) milter.Response // n counts MAIL commands from 0
	rcptReply    func(rcpt string) milter.Response
	eom          func(st *msgState, m *milter.Modifier) (milter.Response, error)
	mails        int
}

// msgState is what one milter object remembers of its current message.
type msgState struct {
	from  string
	rcpts []string
}

func (rec *recorder) add(kind, arg string, m *milter.Modifier) {
	cp := make(map[string]string, len(m.Macros))
	for k, v := range m.Macros {
		cp[k] = v
	}
	rec.mu.Lock()
	rec.events = append(rec.events, event{kind, arg, cp})
	rec.mu.Unlock()
}

func (rec *recorder) snapshot() []event {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]event(nil), rec.events...)
}

func (rec *recorder) kinds() string {
	var b []string
	for _, e := range rec.snapshot() {
		b = append(b, e.Kind)
	}
	return strings.Join(b, " ")
}

func (rec *recorder) setRcptReply(f func(string) milter.Response) {
	rec.mu.Lock()
	rec.rcptReply = f
	rec.mu.Unlock()
}

func listenTCP(t testing.TB) (net.Listener, error) {
	return net.Listen("tcp", "127.0.0.1:0")
}

func (rec *recorder) reset() {
	rec.mu.Lock()
	rec.events = nil
	rec.mu.Unlock()
}

// waitKinds waits until the recorded event kinds equal want.
func (rec *recorder) waitKinds(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		got := rec.kinds()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("milter saw events\n  %s\nwant\n  %s", got, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (rec *recorder) find(kind, arg string) (event, bool) {
	for _, e := range rec.snapshot() {
		if e.Kind == kind && (arg == "" || e.Arg == arg) {
			return e, true
		}
	}
	return event{}, false
}

func (rec *recorder) newMilter() milter.Milter { return &recMilter{rec: rec} }

type recMilter struct {
	rec *recorder
	st  msgState
}

func (r *recMilter) Connect(host, family string, port uint16, addr net.IP, m *milter.Modifier) (milter.Response, error) {
	r.rec.add("connect", host+"|"+family+"|"+strconv.Itoa(int(port))+"|"+addr.String(), m)
	if r.rec.connectReply != nil {
		return r.rec.connectReply(), nil
	}
	return milter.RespContinue, nil
}

func (r *recMilter) Helo(name string, m *milter.Modifier) (milter.Response, error) {
	r.rec.add("helo", name, m)
	return milter.RespContinue, nil
}

func (r *recMilter) MailFrom(from string, m *milter.Modifier) (milter.Response, error) {
	r.rec.add("mail", from, m)
	r.rec.mu.Lock()
	n := r.rec.mails
	r.rec.mails++
	r.rec.mu.Unlock()
	r.st = msgState{from: from}
	if r.rec.mailReply != nil {
		return r.rec.mailReply(n, from), nil
	}
	return milter.RespContinue, nil
}

func (r *recMilter) RcptTo(rcpt string, m *milter.Modifier) (milter.Response, error) {
	r.rec.add("rcpt", rcpt, m)
	r.st.rcpts = append(r.st.rcpts, rcpt)
	r.rec.mu.Lock()
	f := r.rec.rcptReply
	r.rec.mu.Unlock()
	if f != nil {
		return f(rcpt), nil
	}
	return milter.RespContinue, nil
}

func (r *recMilter) Header(name, value string, m *milter.Modifier) (milter.Response, error) {
	r.rec.add("header", name+": "+value, m)
	return milter.RespContinue, nil
}

func (r *recMilter) Headers(h textproto.MIMEHeader, m *milter.Modifier) (milter.Response, error) {
	r.rec.add("eoh", "", m)
	return milter.RespContinue, nil
}

func (r *recMilter) BodyChunk(chunk []byte, m *milter.Modifier) (milter.Response, error) {
	r.rec.add("body", string(chunk), m)
	return milter.RespContinue, nil
}

func (r *recMilter) Body(m *milter.Modifier) (milter.Response, error) {
	r.rec.add("eom", "", m)
	if r.rec.eom != nil {
		return r.rec.eom(&r.st, m)
	}
	return milter.RespContinue, nil
}

func (r *recMilter) Abort(m *milter.Modifier) error {
	r.rec.add("abort", "", m)
	r.st = msgState{}
	return nil
}

// ---- fake milter peer, for what go-milter cannot do ----

type pkt struct {
	cmd  byte
	data []byte
}

func (p pkt) String() string { return string(p.cmd) + " " + strconv.Quote(string(p.data)) }

// peer is the milter end of a connection in a fake milter.
type peer struct {
	t    testing.TB
	conn net.Conn
}

func (p *peer) read() (pkt, error) {
	var h [4]byte
	if _, err := io.ReadFull(p.conn, h[:]); err != nil {
		return pkt{}, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n == 0 || n > 1<<20 {
		return pkt{}, errors.New("bad length")
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(p.conn, b); err != nil {
		return pkt{}, err
	}
	return pkt{b[0], b[1:]}, nil
}

func (p *peer) write(cmd byte, data []byte) {
	var h [5]byte
	binary.BigEndian.PutUint32(h[:], uint32(len(data)+1))
	h[4] = cmd
	_, _ = p.conn.Write(append(h[:], data...))
}

func frame(cmd byte, data string) []byte {
	var h [5]byte
	binary.BigEndian.PutUint32(h[:], uint32(len(data)+1))
	h[4] = cmd
	return append(h[:], data...)
}

func optneg(version, actions, protocol uint32, extra string) []byte {
	var d []byte
	d = binary.BigEndian.AppendUint32(d, version)
	d = binary.BigEndian.AppendUint32(d, actions)
	d = binary.BigEndian.AppendUint32(d, protocol)
	return append(d, extra...)
}

// negotiate reads OPTNEG and answers with the given masks.
func (p *peer) negotiate(actions, protocol uint32, extra string) bool {
	q, err := p.read()
	if err != nil || q.cmd != CmdOptNeg {
		p.t.Errorf("fake milter: want OPTNEG, got %v %v", q, err)
		return false
	}
	p.write(RepOptNeg, optneg(6, actions, protocol, extra))
	return true
}

// serveFake runs handler for each accepted connection on a unix socket.
// Handlers end when the test ends.
func serveFake(t testing.TB, handler func(p *peer)) string {
	path := sockPath(t)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handler(&peer{t: t, conn: c})
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return path
}

// replyAll reads packets until EOF, logging them to log (if not nil) and
// answering every event that expects a reply with the reply chosen by
// answer (nil: continue; a nil reply: no answer).
func (p *peer) replyAll(log chan<- pkt, answer func(q pkt) [][]byte) {
	for {
		q, err := p.read()
		if err != nil {
			return
		}
		if log != nil {
			log <- q
		}
		switch q.cmd {
		case CmdMacro, CmdAbort:
			continue
		case CmdQuit:
			return
		}
		var out [][]byte
		if answer != nil {
			out = answer(q)
		} else {
			out = [][]byte{frame(RepContinue, "")}
		}
		var all []byte
		for _, b := range out {
			all = append(all, b...)
		}
		if len(all) > 0 {
			_, _ = p.conn.Write(all)
		}
	}
}
