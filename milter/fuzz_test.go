package milter

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/conntest"

	"github.com/batv/batv/internal/serve"

	"github.com/batv/batv/policy"

	"github.com/batv/batv/batv"
)

// FuzzSession feeds arbitrary packet sequences from a fake MTA to a real
// Server (both roles, or one) over a unix socket pair, and checks what a
// mail operator needs from the milter whatever the MTA sends:
//
//   - no panic (the session recovers panics in callbacks and logs them, so
//     its log is watched too; a panic elsewhere ends the fuzzing process),
//     no hang (the session ends within seconds of the MTA closing its
//     side), no connection left open, memory bounded by the input (the one
//     large allocation is go-milter's, at most the packet limit for one
//     announced packet);
//   - modifications only at end of message, and only those the
//     transaction justifies: CHGFROM to a valid tag of the sender, and
//     only for mail authenticated at MAIL (the only way a message is ours
//     in this policy); DELRCPT only of a tagged recipient of the
//     transaction; ADDRCPT only of the untagged address of such a
//     recipient, and for a bounce only when its tag is valid (or the
//     recipient is exempt); status headers changed and added only as the
//     policy says;
//   - no valid verdict for an invalid tag: a bounce to a protected
//     recipient whose tag does not verify is refused with 550, and one
//     whose tag verifies is accepted and rewritten.
//
// The input is a program for the fake MTA (see fuzzProgram): each
// operation writes one packet, well formed or not, or raw bytes. Seeds are
// in testdata/fuzz/FuzzSession; BATV_WRITE_FUZZ_SEEDS=1 go test -run
// TestFuzzSessionSeeds rewrites them from fuzzSeeds.
func FuzzSession(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		roles := Roles(data[0]%3 + 1)
		prog := fuzzProgram(t, data[1:])
		srv := fuzzServer(t, roles)

		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		panics := sessionPanics.Load()

		replies, err := runFuzzSession(srv, prog)
		if err != nil {
			t.Fatal(err)
		}
		if n := sessionPanics.Load(); n != panics {
			t.Fatalf("a callback panicked (the session recovered it): %s", lastPanic.Load())
		}
		deadline := time.Now().Add(5 * time.Second)
		for srv.l.Open() != 0 {
			if time.Now().After(deadline) {
				t.Fatal("the session did not end after the MTA closed its side")
			}
			time.Sleep(10 * time.Microsecond)
		}
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		// go-milter allocates each packet it reads (at most the header
		// packet limit, once: a short one ends the session) and a few
		// small buffers for each packet it reads and writes.
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > maxHeaderPacket+1<<20+uint64(8<<10*len(prog)+256*len(data)) {
			t.Fatalf("the session allocated %d bytes for %d packets, %d bytes of input", alloc, len(prog), len(data))
		}
		checkFuzzSession(t, roles, prog, replies)
	})
}

// fuzzOp is one thing the fake MTA sends: a packet (cmd, data), or raw
// bytes that break the framing.
type fuzzOp struct {
	cmd  byte
	data []byte
	raw  []byte
}

func (o fuzzOp) String() string {
	if o.raw != nil {
		return fmt.Sprintf("raw %q", o.raw)
	}
	return fmt.Sprintf("%c %q", o.cmd, o.data)
}

// fuzzInput reads the fuzz input.
type fuzzInput struct {
	b []byte
}

func (in *fuzzInput) byte() byte {
	if len(in.b) == 0 {
		return 0
	}
	c := in.b[0]
	in.b = in.b[1:]
	return c
}

// bytes takes a length byte and that many bytes (times scale).
func (in *fuzzInput) bytes(scale int) []byte {
	n := min(int(in.byte())*scale, len(in.b))
	s := in.b[:n]
	in.b = in.b[n:]
	return s
}

// pick returns one of choices, or input bytes for the index past them.
func (in *fuzzInput) pick(choices ...string) string {
	i := int(in.byte()) % (len(choices) + 1)
	if i == len(choices) {
		return string(in.bytes(1))
	}
	return choices[i]
}

var fuzzLocals = []string{"user", "User.Name", "postmaster", "a=b", "x+y", `"quoted"`, "jürgen", strings.Repeat("l", 60)}

// fuzzProgram decodes the input into packets for the fake MTA. Operation
// codes (one byte each, modulo 16):
//
//	0 any packet: command byte, length byte x 16, data
//	1 CONNECT     2 MACRO        3 MAIL          4 RCPT, untagged or junk
//	5 RCPT with a tag made now: local, domain, age in days, variant
//	  (as signed, forged, uppercased, another key id, sub-address form,
//	  truncated)
//	6 HEADER      7 end of headers  8 BODY        9 end of message
//	10 ABORT      11 DATA        12 HELO         13 OPTNEG
//	14 QUIT       15 raw bytes (up to 16; they break the framing)
func fuzzProgram(t testing.TB, data []byte) []fuzzOp {
	in := &fuzzInput{b: data}
	var prog []fuzzOp
	pk := func(cmd byte, parts ...[]byte) { prog = append(prog, fuzzOp{cmd: cmd, data: bytes.Join(parts, nil)}) }
	signer := batv.Signer{Keys: testKeys}
	for len(in.b) > 0 {
		switch in.byte() % 16 {
		case 0:
			pk(in.byte(), in.bytes(16))
		case 1:
			host := cstr(in.pick("mx.example.org", "localhost", ""))
			fam := in.pick("4", "6", "L", "U")
			var d []byte
			if len(fam) > 0 {
				d = append(d, fam[0])
			}
			d = append(d, in.byte(), in.byte())
			d = append(d, cstr(in.pick("192.0.2.25", "127.0.0.1", "::1", "203.0.113.5", "/var/run/x"))...)
			pk('C', host, d)
		case 2:
			stage := in.pick("C", "H", "M", "R", "T", "E", "N", "L")
			if stage == "" {
				pk('D')
				continue
			}
			d := []byte{stage[0]}
			for range in.byte() % 4 {
				d = append(d, cstr(in.pick("{auth_authen}", "i", "{daemon_name}", "j", "{auth_type}"))...)
				d = append(d, cstr(in.pick("alice", "", "4ABC", "submission", "PLAIN"))...)
			}
			pk('D', d)
		case 3:
			s := in.pick("", "alice@example.com", "Alice@Example.COM", "bob@example.net", "x@foreign.test", "prvs=0000000000=alice@example.com", "<>",
				`""`, "@evil.test:", "MAILER-DAEMON", `@a:""`)
			if in.byte()%2 == 0 {
				s = "<" + s + ">"
			}
			pk('M', cstr(s), in.bytes(1))
		case 4:
			r := in.pick("user@example.com", "postmaster@example.com", "ABUSE@example.net", "x@foreign.test",
				"prvs=0000000000=user@example.com", "user+prvs=4123abcdef@example.com", "prvs=user/4123abcdef@example.com", "",
				"user@example.com.", "user%example.com@[127.0.0.1]", `"user"@example.com`, "@x.test:user@example.com", "example.com!user")
			pk('R', cstr("<"+r+">"))
		case 5:
			local := fuzzLocals[int(in.byte())%len(fuzzLocals)]
			domain := in.pick("example.com", "Example.NET", "foreign.test")
			age := time.Duration(in.byte()%12) * 24 * time.Hour
			variant := in.byte() % 6
			s := signer
			s.Now = func() time.Time { return testNow.Add(-age) }
			if variant == 4 {
				s.SubAddress = '+'
			}
			res, err := s.Sign(local + "@" + domain)
			addr := res.Address
			if err != nil || addr == "" {
				addr = local + "@" + domain
			}
			switch variant {
			case 1:
				if t, err := batv.Parse(addr, '+'); err == nil {
					t.MAC[2] ^= 1
					addr = t.String()
				}
			case 2:
				addr = strings.ToUpper(addr)
			case 3:
				if strings.HasPrefix(addr, "prvs=") {
					addr = addr[:5] + string('0'+(addr[5]-'0'+1)%10) + addr[6:]
				}
			case 5:
				addr = addr[:len(addr)/2]
			}
			pk('R', cstr("<"+addr+">"))
		case 6:
			name := in.pick("X-BATV-Status", "x-batv-status", "Subject")
			pk('L', cstr(name), cstr(string(in.bytes(1))))
		case 7:
			pk('N')
		case 8:
			pk('B', in.bytes(16))
		case 9:
			pk('E')
		case 10:
			pk('A')
		case 11:
			pk('T')
		case 12:
			pk('H', cstr(string(in.bytes(1))))
		case 13:
			pk('O', in.bytes(1))
		case 14:
			pk('Q')
		case 15:
			raw := in.bytes(1)
			prog = append(prog, fuzzOp{raw: append([]byte{}, raw[:min(len(raw), 16)]...)})
		}
	}
	return prog
}

// fuzzServers are the servers of this fuzzing process, one per roles.
var (
	fuzzMu      sync.Mutex
	fuzzServers = map[Roles]*fuzzSrv{}
)

type fuzzSrv struct {
	l     *serve.Listener
	conns chan net.Conn
}

// fuzzPolicy signs only authenticated mail, so that whether a message may
// be signed follows from the macros the MTA sent. It is made once.
func fuzzPolicy(t testing.TB) *policy.Policy {
	fuzzPolicyOnce.Do(func() {
		cfg := policy.DefaultConfig("example.com", "example.net")
		cfg.Verify.GraceUntil = testNow.Add(-365 * 24 * time.Hour)
		cfg.Sign.InternalNetworks = nil
		cfg.Sign.Local = false
		var err error
		if fuzzPolicyValue, err = policy.New(cfg, testKeys); err != nil {
			panic(err)
		}
	})
	return fuzzPolicyValue
}

var (
	fuzzPolicyOnce  sync.Once
	fuzzPolicyValue *policy.Policy
)

func fuzzServer(t testing.TB, roles Roles) *fuzzSrv {
	fuzzMu.Lock()
	defer fuzzMu.Unlock()
	if s := fuzzServers[roles]; s != nil {
		return s
	}
	p := fuzzPolicy(t)
	ln := conntest.NewChanListener()
	log := slog.New(panicWatch{})
	srv := &Server{Name: "fuzz", Roles: roles, Policy: func() *policy.Policy { return p },
		Now: func() time.Time { return testNow }, Logger: log}
	s := &fuzzSrv{l: serve.New(ln, serve.Options{Name: "fuzz", Logger: log, IdleTimeout: 5 * time.Second}), conns: ln.Conns}
	go srv.Serve(s.l)
	fuzzServers[roles] = s
	return s
}

// The panics the sessions recovered, from their log.
var (
	sessionPanics atomic.Int64
	lastPanic     atomic.Value
)

// panicWatch is a slog.Handler that counts the lines about a panic.
type panicWatch struct{}

func (panicWatch) Enabled(context.Context, slog.Level) bool { return true }
func (h panicWatch) WithAttrs([]slog.Attr) slog.Handler     { return h }
func (h panicWatch) WithGroup(string) slog.Handler          { return h }
func (panicWatch) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "panic") {
		lastPanic.Store(r.Message)
		sessionPanics.Add(1)
	}
	return nil
}

// socketPair returns two connected unix stream sockets.
func socketPair() (*net.UnixConn, *net.UnixConn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	var conns [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, nil, err
		}
		conns[i] = c.(*net.UnixConn)
	}
	return conns[0], conns[1], nil
}

// fuzzReply is one packet from the milter.
type fuzzReply struct {
	code byte
	data []byte
}

// runFuzzSession plays prog to srv, then closes the MTA's sending side,
// and returns every packet the milter sent until it closed the connection.
func runFuzzSession(srv *fuzzSrv, prog []fuzzOp) ([]fuzzReply, error) {
	mta, milter, err := socketPair()
	if err != nil {
		return nil, err
	}
	defer mta.Close()
	srv.conns <- milter

	var stream bytes.Buffer
	for _, op := range prog {
		if op.raw != nil {
			stream.Write(op.raw)
			continue
		}
		stream.Write(binary.BigEndian.AppendUint32(nil, uint32(len(op.data)+1)))
		stream.WriteByte(op.cmd)
		stream.Write(op.data)
	}
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		mta.Write(stream.Bytes()) // fails once the milter gives up: fine
		mta.CloseWrite()
	}()
	mta.SetReadDeadline(time.Now().Add(10 * time.Second))
	var replies []fuzzReply
	var in bytes.Buffer
	buf := make([]byte, 64<<10)
	for {
		n, err := mta.Read(buf)
		in.Write(buf[:n])
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return nil, errors.New("the milter neither answered nor closed the connection within 10s (hang)")
			}
			break
		}
	}
	<-wrote
	b := in.Bytes()
	for len(b) >= 5 {
		n := binary.BigEndian.Uint32(b)
		if n == 0 || int(n) > len(b)-4 {
			return nil, fmt.Errorf("the milter sent a malformed packet: % x", b[:min(len(b), 16)])
		}
		replies = append(replies, fuzzReply{code: b[4], data: b[5 : 4+n]})
		b = b[4+n:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("the milter sent %d stray bytes", len(b))
	}
	return replies, nil
}

// fuzzModel is the fake MTA's view of the transaction go-milter and the
// session are in, rebuilt from the packets sent, with go-milter's rules
// for macros (kept per stage, a stage and the later ones dropped when an
// earlier stage's command comes) and for aborts (one is made up when the
// commands go backwards).
type fuzzModel struct {
	macros  [8]map[string]string // by go-milter's stage
	mail    bool                 // MAIL seen: the session has a transaction
	sender  string
	authed  bool
	rcpts   []string
	ok      []string // the recipients the milter accepted at RCPT
	deliver int      // accepted recipients that will be delivered
	refused int      // untagged recipients whose refusal waits for DATA
	forged  int
	replies []fuzzReply
	// proto is the protocol agreed at the option negotiation: the events
	// it names SMFIP_NR_* for get no reply.
	proto     uint32
	agreed    bool
	lastOrder int
	lastCmd   byte
}

// go-milter's macro stages, and the stage of each command and of the
// stage code of a MACRO packet.
const (
	stConnect = iota
	stHelo
	stMail
	stRcpt
	stData
	stEOM
	stEOH
	stEnd
)

var macroStage = map[byte]int{'C': stConnect, 'H': stHelo, 'M': stMail, 'R': stRcpt, 'T': stData, 'N': stEOH, 'E': stEOM,
	'U': stEnd, 'L': stEnd, 'A': stEnd, 'B': stEnd}

// delStage drops the macros of stage and of the stages after it, in the
// order of the protocol (end of headers comes before end of message).
func (m *fuzzModel) delStage(stage int) {
	order := []int{stConnect, stHelo, stMail, stRcpt, stData, stEOH, stEOM, stEnd}
	for i, st := range order {
		if st == stage {
			for _, later := range order[i:] {
				m.macros[later] = nil
			}
			return
		}
	}
}

// macro is what go-milter's Get returns: the latest stage's value.
func (m *fuzzModel) macro(name string) string {
	for st := stEnd; st >= stConnect; st-- {
		if v, ok := m.macros[st][name]; ok {
			return v
		}
	}
	return ""
}

// order is go-milter's rank of the commands of a transaction.
var order = map[byte]int{'C': 1, 'H': 2, 'M': 3, 'R': 4, 'T': 5, 'L': 6, 'N': 7, 'B': 8, 'E': 9}

// noReply reports whether the milter sends no reply to cmd.
func (m *fuzzModel) noReply(cmd byte) bool {
	flag := map[byte]uint32{'C': 1 << 12, 'H': 1 << 13, 'M': 1 << 14, 'R': 1 << 15, 'T': 1 << 16, 'U': 1 << 17,
		'L': 1 << 7, 'N': 1 << 18, 'B': 1 << 19}[cmd]
	return m.proto&flag != 0
}

var fuzzVerifier = batv.Verifier{Keys: testKeys, Now: func() time.Time { return testNow }}

// exemptish says whether addr may be an exempt recipient (postmaster or
// abuse, tagged or not): such bounces are never refused.
func exemptish(addr string) bool {
	a := strings.ToLower(addr)
	return strings.Contains(a, "postmaster") || strings.Contains(a, "abuse")
}

// decodeCStrings is go-milter's splitting of NUL-separated strings.
func decodeCStrings(data []byte) []string {
	if len(data) == 0 {
		return nil
	}
	return strings.Split(strings.Trim(string(data), "\x00"), "\x00")
}

func readCString(data []byte) string {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		return string(data[:i])
	}
	return string(data)
}

func checkFuzzSession(t *testing.T, roles Roles, prog []fuzzOp, replies []fuzzReply) {
	m := &fuzzModel{replies: replies}
	fail := func(i int, format string, args ...any) {
		t.Helper()
		var b strings.Builder
		for j, op := range prog[:i+1] {
			fmt.Fprintf(&b, "\n  %d: %v", j, op)
		}
		t.Fatalf("after the packets:%s\n"+format, append([]any{b.String()}, args...)...)
	}
	dropEnd := false // command-level macros go after the command
	for i, op := range prog {
		if dropEnd {
			m.delStage(stEnd)
			dropEnd = false
		}
		if op.raw != nil {
			return // the framing is broken: the model cannot follow
		}
		if i == 0 && (op.cmd != 'O' || len(op.data) < 12) {
			return // no negotiation: go-milter ends the session
		}
		if i > 0 && op.cmd == 'O' {
			return // a second negotiation: go-milter ends the session
		}
		if !m.sessionGoesOn(op) {
			return
		}
		// go-milter makes up an abort when the commands go backwards.
		code := op.cmd
		if code == 'D' {
			code = op.data[0]
		}
		if rank, ok := order[code]; ok {
			if m.lastOrder > rank && m.lastCmd != 'A' {
				m.reset()
				m.delStage(stHelo)
			}
			m.lastOrder = rank
		} else if code == 'A' && m.lastCmd == 'A' {
			continue // a repeated abort is dropped
		}
		m.lastCmd = code
		switch op.cmd {
		case 'D':
			st, ok := macroStage[op.data[0]]
			if !ok {
				continue // a stage go-milter does not know: ignored
			}
			m.delStage(st)
			kv := decodeCStrings(op.data[1:])
			if len(kv)%2 == 1 {
				kv = append(kv, "")
			}
			for j := 0; j < len(kv); j += 2 {
				if m.macros[st] == nil {
					m.macros[st] = map[string]string{}
				}
				m.macros[st][kv[j]] = kv[j+1]
			}
			continue
		case 'A':
			m.reset()
			m.delStage(stHelo)
			continue
		case 'K':
			m.reset()
			m.delStage(stConnect)
			continue
		}
		// Before the reply: what the packet does to the transaction.
		switch op.cmd {
		case 'C':
			m.delStage(stHelo)
		case 'H':
			m.delStage(stMail)
		case 'M':
			m.delStage(stRcpt)
			m.reset()
			m.mail = true
			m.sender = strings.Trim(readCString(op.data), "<>")
			m.authed = m.macro("{auth_authen}") != ""
		case 'R':
			m.delStage(stData)
			if m.mail {
				m.rcpts = append(m.rcpts, strings.Trim(readCString(op.data), "<>"))
			}
		case 'T':
			m.delStage(stEOH)
		case 'N':
			m.delStage(stEOM)
		case 'L':
			if h := decodeCStrings(op.data); m.mail && strings.EqualFold(h[0], "X-BATV-Status") {
				m.forged++
			}
		}
		dropEnd = op.cmd == 'L' || op.cmd == 'B' || op.cmd == 'U'

		if m.noReply(op.cmd) && op.cmd != 'O' && op.cmd != 'E' {
			continue
		}
		if len(m.replies) == 0 {
			return // the session ended here
		}
		var mods []fuzzReply
		for len(m.replies) > 0 && isModification(m.replies[0].code) {
			mods = append(mods, m.replies[0])
			m.replies = m.replies[1:]
		}
		if len(m.replies) == 0 {
			fail(i, "changes %v without a reply", mods)
		}
		r := m.replies[0]
		m.replies = m.replies[1:]
		if len(mods) > 0 && op.cmd != 'E' {
			fail(i, "changes %q in answer to %c", mods, op.cmd)
		}
		switch op.cmd {
		case 'O':
			if r.code != 'O' || len(r.data) < 12 {
				fail(i, "OPTNEG answered %q %q", r.code, r.data)
			}
			m.proto, m.agreed = binary.BigEndian.Uint32(r.data[8:12]), true
			// Nothing asked beyond what the MTA offered.
			if offer := binary.BigEndian.Uint32(op.data[8:12]); m.proto&^offer != 0 {
				fail(i, "protocol %#x agreed to an offer of %#x", m.proto, offer)
			}
		case 'R':
			m.checkRcpt(fail, i, roles, r)
		case 'T':
			m.checkData(fail, i, roles, r)
		case 'E':
			m.checkEOM(fail, i, roles, mods, r)
			m.reset()
			m.delStage(stMail)
		default:
			if r.code != 'c' {
				fail(i, "%c answered %q %q", op.cmd, r.code, r.data)
			}
		}
	}
}

// sessionGoesOn reports whether go-milter carries on after op, or ends the
// session: a QUIT, an unknown command, or a packet it cannot parse.
func (m *fuzzModel) sessionGoesOn(op fuzzOp) bool {
	switch op.cmd {
	case 'O', 'A', 'K', 'N', 'T', 'E', 'B', 'H', 'U':
		return !(op.cmd == 'H' && len(op.data) == 0)
	case 'D', 'M', 'R':
		return len(op.data) > 0
	case 'L':
		return len(op.data) >= 2 && len(decodeCStrings(op.data)) == 2
	case 'C':
		host := readCString(op.data)
		if len(op.data) < len(host)+2 {
			return false
		}
		rest := op.data[len(host)+1:]
		switch rest[0] {
		case 'U':
			return true
		case 'L', '4', '6':
			if len(rest) < 3 {
				return false
			}
			addr := readCString(rest[3:])
			if rest[0] == 'L' {
				return true
			}
			addr = strings.TrimPrefix(addr, "IPv6:")
			if rest[0] == '6' && len(addr) > 2 && addr[0] == '[' && addr[len(addr)-1] == ']' {
				addr = addr[1 : len(addr)-1]
			}
			ip := net.ParseIP(addr)
			return ip != nil && (rest[0] == '6' || ip.To4() != nil)
		}
		return false
	}
	return false // QUIT, or a command go-milter does not know
}

func (m *fuzzModel) reset() {
	m.mail, m.sender, m.authed, m.rcpts, m.forged = false, "", false, nil, 0
	m.ok, m.deliver, m.refused = nil, 0, 0
}

type failFunc func(i int, format string, args ...any)

// checkRcpt: for a bounce to a protected recipient, a tag that does not
// verify is refused at once, an untagged recipient waits for DATA unless
// the transaction already has a recipient that will be delivered, and a
// recipient that will be delivered is deferred (452) when an untagged one
// waits for DATA; mail with a sender is refused only for a tag that does
// not verify.
func (m *fuzzModel) checkRcpt(fail failFunc, i int, roles Roles, r fuzzReply) {
	if !m.mail {
		if r.code != 'c' {
			fail(i, "RCPT outside a transaction answered %q %q", r.code, r.data)
		}
		return
	}
	addr := m.rcpts[len(m.rcpts)-1]
	reply := func(code byte, smtp string) {
		if r.code != code || smtp != "" && !bytes.HasPrefix(r.data, []byte(smtp)) {
			fail(i, "RCPT %q (sender %q, roles %v): %q %q, want %q %s", addr, m.sender, roles, r.code, r.data, code, smtp)
		}
		if code == 'c' {
			m.ok = append(m.ok, addr)
		}
	}
	if roles&Inbound == 0 {
		reply('c', "")
		return
	}
	mbox, protected := fuzzPolicy(nil).Mailbox(addr)
	bounce := policy.NullSender(m.sender)
	res, _ := fuzzVerifier.Verify(mbox)
	if !bounce {
		res, _ = fuzzVerifier.VerifyIgnoringExpiry(mbox)
	}
	local := mbox[:max(strings.LastIndexByte(mbox, '@'), 0)]
	if res.Status != batv.Missing && res.Status != batv.Malformed {
		local = res.Tag.Local()
	}
	exempt := strings.EqualFold(local, "postmaster") || strings.EqualFold(local, "abuse")
	switch {
	case !protected || res.Status == batv.Valid || exempt || !bounce && res.Status == batv.Missing:
		// Will be delivered.
		if bounce && m.refused > 0 {
			reply('y', "452 4.5.3")
			return
		}
		reply('c', "")
		m.deliver++
	case !bounce:
		reply('y', "550 5.7.1 The recipient address tag is")
	case res.Status != batv.Missing:
		reply('y', "550 5.7.1 Bounce refused: the recipient address tag")
	case m.deliver > 0:
		reply('y', "550 5.7.1 Bounce refused: this address sends only tagged mail")
	default:
		reply('c', "")
		m.refused++
	}
}

// checkData: a bounce with untagged recipients is refused at DATA.
func (m *fuzzModel) checkData(fail failFunc, i int, roles Roles, r fuzzReply) {
	if m.mail && roles&Inbound != 0 && m.refused > 0 {
		if r.code != 'y' || !bytes.HasPrefix(r.data, []byte("550 5.7.1 Bounce refused: this address sends only tagged mail")) {
			fail(i, "DATA of a bounce with %d untagged recipients answered %q %q", m.refused, r.code, r.data)
		}
		m.delStage(stMail)
		return
	}
	if r.code != 'c' {
		fail(i, "DATA answered %q %q", r.code, r.data)
	}
}

// checkEOM: every modification is one the transaction justifies, and the
// ones it requires are there.
func (m *fuzzModel) checkEOM(fail failFunc, i int, roles Roles, mods []fuzzReply, r fuzzReply) {
	if r.code != 'a' {
		fail(i, "end of message answered %q %q", r.code, r.data)
	}
	if !m.mail && len(mods) > 0 {
		fail(i, "modifications %q at an end of message without MAIL", mods)
	}
	inbound := roles&Inbound != 0
	var deleted []string
	chgfrom := 0
	for _, mod := range mods {
		fields := decodeCStrings(mod.data)
		arg := strings.Trim(readCString(mod.data), "<>")
		switch mod.code {
		case 'e':
			chgfrom++
			res, _ := (&batv.Verifier{Keys: testKeys, Now: fuzzVerifier.Now, Strict: true}).Verify(arg)
			if roles&Outbound == 0 || !m.authed || res.Status != batv.Valid || res.Untagged() != m.sender || chgfrom > 1 {
				fail(i, "CHGFROM %q for sender %q (authenticated %v, roles %v): %v", mod.data, m.sender, m.authed, roles, res.Status)
			}
		case '-':
			if !inbound || !slices.Contains(m.ok, arg) {
				fail(i, "DELRCPT %q: not a recipient accepted in the transaction %q", arg, m.ok)
			}
			deleted = append(deleted, arg)
		case '+':
			ok := false
			for _, rc := range m.ok {
				mbox, _ := fuzzPolicy(nil).Mailbox(rc)
				t, err := batv.Parse(mbox, '+')
				if err != nil || t.Original != arg {
					continue
				}
				res, _ := fuzzVerifier.Verify(mbox)
				if !policy.NullSender(m.sender) || res.Status == batv.Valid || exemptish(rc) {
					ok = true
				}
			}
			if !inbound || !ok {
				fail(i, "ADDRCPT %q: not the untagged address of a recipient that may be rewritten (sender %q, recipients %q)", arg, m.sender, m.ok)
			}
		case 'm':
			if len(mod.data) < 4 {
				fail(i, "short CHGHEADER %q", mod.data)
			}
			idx := binary.BigEndian.Uint32(mod.data)
			h := decodeCStrings(mod.data[4:])
			if !inbound || idx < 1 || int(idx) > m.forged || len(h) < 1 || !strings.EqualFold(h[0], "X-BATV-Status") || len(h) == 2 && h[1] != "" {
				fail(i, "CHGHEADER %d %q with %d forged status headers", idx, h, m.forged)
			}
		case 'h':
			ok := inbound && len(fields) == 2 && fields[0] == "X-BATV-Status" && !strings.HasPrefix(fields[1], "valid")
			if ok {
				ok = false
				for _, rc := range m.rcpts {
					ok = ok || strings.HasSuffix(fields[1], "; rcpt=<"+rc+">")
				}
			}
			if !ok {
				fail(i, "ADDHEADER %q (recipients %q)", fields, m.rcpts)
			}
		default:
			fail(i, "modification %q %q that this policy never makes", mod.code, mod.data)
		}
	}
	if !m.mail {
		return
	}
	// What must happen: authenticated mail from our plain address is
	// signed; a bounce to a valid tag is rewritten.
	if roles&Outbound != 0 && m.authed && m.sender == "alice@example.com" && chgfrom != 1 {
		fail(i, "authenticated mail from %q not signed: %q", m.sender, mods)
	}
	if inbound && policy.NullSender(m.sender) {
		for _, rc := range m.ok {
			mbox, protected := fuzzPolicy(nil).Mailbox(rc)
			if res, _ := fuzzVerifier.Verify(mbox); res.Status == batv.Valid && protected && !slices.Contains(deleted, rc) {
				fail(i, "bounce to the valid tag %q not rewritten: %q", rc, mods)
			}
		}
	}
}

// fuzzSeeds are programs for FuzzSession: the transactions Postfix sends,
// and a few that no MTA sends.
func fuzzSeeds(t testing.TB) [][]byte {
	both, inbound, outbound := byte(2), byte(1), byte(0) // Roles-1
	conn := []byte{1, 0, 0, 0x61, 0xa8, 0}               // CONNECT mx.example.org 4 port 192.0.2.25
	optneg := []byte{13, 12, 0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff}
	authMacro := []byte{2, 2, 1, 0, 0}                 // MACRO M {auth_authen}=alice
	mailAlice := []byte{3, 1, 1, 0}                    // MAIL <alice@example.com>
	mailNull := []byte{3, 0, 1, 0}                     // MAIL <>
	rcptValid := []byte{5, 0, 0, 1, 0}                 // RCPT tag of user@example.com, 1 day old
	rcptForged := []byte{5, 0, 0, 1, 1}                // forged
	rcptExpired := []byte{5, 0, 0, 9, 0}               // 9 days old
	rcptUpper := []byte{5, 1, 1, 2, 2}                 // User.Name@Example.NET uppercased
	rcptSub := []byte{5, 0, 0, 2, 4}                   // sub-address form
	rcptPostmaster := []byte{5, 2, 0, 1, 1}            // forged tag of postmaster
	header := []byte{6, 0, 5, 'v', 'a', 'l', 'i', 'd'} // X-BATV-Status: valid
	eom, abort, quit := []byte{9}, []byte{10}, []byte{14}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	return [][]byte{
		cat([]byte{both}, optneg, conn, authMacro, mailAlice, []byte{4, 3}, eom, abort, quit),
		cat([]byte{both}, optneg, conn, mailNull, rcptValid, rcptForged, rcptExpired, []byte{11, 7}, header, header, []byte{7}, eom, abort),
		cat([]byte{inbound}, optneg, conn, mailNull, rcptUpper, rcptSub, rcptPostmaster, eom, abort, quit),
		cat([]byte{outbound}, optneg, conn, authMacro, mailAlice, eom, mailAlice, eom, abort),
		cat([]byte{both}, optneg, rcptValid, eom, mailNull, rcptValid, abort, eom, mailNull, rcptValid, mailAlice, eom),
		cat([]byte{both}, optneg, conn, []byte{0, 'Z', 0}, mailNull),
		cat([]byte{both}, []byte{15, 4, 0xff, 0xff, 0xff, 0xff}),
		cat([]byte{both}, optneg, conn, mailNull, rcptValid, []byte{15, 3, 0, 0x10, 0}),
		// A header with a NUL in its value, which go-milter answers by
		// itself although the MTA does not wait for header replies.
		cat([]byte{both}, optneg, conn, mailNull, rcptValid, []byte{6, 2, 3, 'a', 0, 'b'}, eom, abort, mailNull, rcptForged, eom, abort),
		// Untagged bounces: refused at DATA, or at RCPT after a recipient
		// that will be delivered; a valid tag after an untagged one is
		// deferred. Then the null sender and the recipient spelled
		// otherwise.
		cat([]byte{inbound}, optneg, conn, mailNull, []byte{4, 0}, rcptValid, []byte{11}, eom, abort,
			mailNull, rcptValid, []byte{4, 0}, []byte{11}, eom, abort),
		cat([]byte{both}, optneg, conn, []byte{3, 7, 1, 0}, []byte{4, 8}, []byte{11}, abort,
			[]byte{3, 8, 1, 0}, []byte{4, 9}, []byte{4, 10}, []byte{4, 11}, []byte{11}, eom, abort),
	}
}

// TestFuzzSessionSeeds runs the seeds as ordinary tests (go test does that
// for FuzzSession too) and, with BATV_WRITE_FUZZ_SEEDS=1, writes them to
// testdata/fuzz/FuzzSession.
func TestFuzzSessionSeeds(t *testing.T) {
	if os.Getenv("BATV_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set BATV_WRITE_FUZZ_SEEDS=1 to rewrite testdata/fuzz/FuzzSession")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzSession")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range fuzzSeeds(t) {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
