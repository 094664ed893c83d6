package mtaclient

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// postfixSession is what Postfix 3.7.11 sent to a capturing milter (which
// answered version 6, all actions, no protocol flags, continue to
// everything and CHGFROM, ADDRCPT, ADDHEADER at end of message) for:
//
//	swaks --server 127.0.0.1:10587 --from sender@src.example \
//	  --to a@dst.example,b@dst.example --ehlo client.example ...
//
// with stock milter settings, myhostname = mx.test.example and every
// transport set to discard. The second ABORT comes from the end of the
// session (QUIT after HELO).
const postfixSession = `O "\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff"
D "Cj\x00mx.test.example\x00{daemon_name}\x00mx.test.example\x00{daemon_addr}\x00127.0.0.1\x00v\x00Postfix 3.7.11\x00_\x00localhost [127.0.0.1]\x00"
C "localhost\x004\xe8\x80127.0.0.1\x00"
D "H"
H "client.example\x00"
D "M{mail_addr}\x00sender@src.example\x00{mail_host}\x00src.example\x00{mail_mailer}\x00discard\x00"
M "<sender@src.example>\x00"
D "R{rcpt_addr}\x00a@dst.example\x00{rcpt_host}\x00dst.example\x00{rcpt_mailer}\x00discard\x00"
R "<a@dst.example>\x00"
D "Ri\x002B355984D73\x00{rcpt_addr}\x00b@dst.example\x00{rcpt_host}\x00dst.example\x00{rcpt_mailer}\x00discard\x00"
R "<b@dst.example>\x00"
D "Ti\x002B355984D73\x00"
T ""
D "Li\x002B355984D73\x00"
L "Date\x00Sat, 28 Nov 2026 04:02:28 +0000\x00"
D "Li\x002B355984D73\x00"
L "To\x00a@dst.example,b@dst.example\x00"
D "Li\x002B355984D73\x00"
L "From\x00sender@src.example\x00"
D "Li\x002B355984D73\x00"
L "Subject\x00hello\x00"
D "Li\x002B355984D73\x00"
L "Message-Id\x00<20261128040228.013967@vm>\x00"
D "Li\x002B355984D73\x00"
L "X-Mailer\x00swaks v20201014.0 jetmore.org/john/code/swaks/\x00"
D "Li\x002B355984D73\x00"
L "X-Multi\x00line1\n\tline2\x00"
D "Ni\x002B355984D73\x00"
N ""
D "Bi\x002B355984D73\x00"
B "body line 1\r\nbody line 2\r\n\r\n\r\n"
D "Ei\x002B355984D73\x00"
E ""
A ""
A ""
Q ""`

// recordSession runs a fake milter that logs every packet and answers
// with answer (nil: continue), after negotiating with extra appended to
// the OPTNEG reply.
func recordSession(t *testing.T, actions, protocol uint32, extra string, answer func(q pkt) [][]byte) (string, <-chan pkt) {
	log := make(chan pkt, 1000)
	path := serveFake(t, func(p *peer) {
		q, err := p.read()
		if err != nil {
			return
		}
		log <- q
		p.write(RepOptNeg, optneg(6, actions, protocol, extra))
		p.replyAll(log, answer)
	})
	return path, log
}

// collectPkts returns the logged packets up to and including QUIT.
func collectPkts(t *testing.T, log <-chan pkt) []pkt {
	t.Helper()
	var got []pkt
	timeout := time.After(3 * time.Second)
	for {
		select {
		case q := <-log:
			got = append(got, q)
			if q.cmd == CmdQuit {
				return got
			}
		case <-timeout:
			t.Fatalf("no QUIT; got so far: %v", got)
		}
	}
}

// collect returns the logged packets up to and including QUIT, quoted.
func collect(t *testing.T, log <-chan pkt) []string {
	t.Helper()
	var got []string
	for _, q := range collectPkts(t, log) {
		got = append(got, q.String())
	}
	return got
}

func TestPostfixSequence(t *testing.T) {
	path, log := recordSession(t, PostfixActions, 0, "", func(q pkt) [][]byte {
		if q.cmd == CmdEOM {
			return [][]byte{
				frame(RepChgFrom, "<new@example.org>\x00"),
				frame(RepAddRcpt, "<added@example.net>\x00"),
				frame(RepAddHeader, "X-Cap\x00 yes\x00"),
				frame(RepContinue, ""),
			}
		}
		return [][]byte{frame(RepContinue, "")}
	})
	c := dialUnix(t, path, nil)
	info := PostfixInfo{Hostname: "mx.test.example", DaemonAddr: "127.0.0.1", ClientName: "localhost", ClientAddr: "127.0.0.1"}
	if r, err := c.Connect("localhost", FamilyInet, 59520, "127.0.0.1", StockMacros(StageConnect, info)); err != nil || !r.Continue() {
		t.Fatalf("Connect = %v, %v", r, err)
	}
	if r, err := c.Helo("client.example", StockMacros(StageHelo, info)); err != nil || !r.Continue() {
		t.Fatalf("Helo = %v, %v", r, err)
	}
	res, err := c.Send(&Message{
		Sender:     "sender@src.example",
		Recipients: []string{"a@dst.example", "b@dst.example"},
		Headers: []Header{
			{"Date", " Sat, 28 Nov 2026 04:02:28 +0000"},
			{"To", " a@dst.example,b@dst.example"},
			{"From", " sender@src.example"},
			{"Subject", " hello"},
			{"Message-Id", " <20261128040228.013967@vm>"},
			{"X-Mailer", " swaks v20201014.0 jetmore.org/john/code/swaks/"},
			{"X-Multi", " line1\r\n\tline2"},
		},
		Body:    []byte("body line 1\r\nbody line 2\r\n\r\n\r\n"),
		QueueID: "2B355984D73",
		Mailer:  "discard",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []Modification{
		&ChangeFrom{Addr: "<new@example.org>"},
		&AddRcpt{Addr: "<added@example.net>"},
		&AddHeader{Name: "X-Cap", Value: " yes"},
	}
	if !reflect.DeepEqual(res.Modifications, want) || !res.Delivered() {
		t.Errorf("Result = %+v", res)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(collect(t, log), "\n")
	if got != postfixSession {
		t.Errorf("packet sequence differs from Postfix 3.7.11's\ngot:\n%s\nwant:\n%s", got, postfixSession)
	}
}

// TestPostfixSymListSequence checks macro packets against a second Postfix
// capture: a SETSYMLIST for RCPT ("{rcpt_addr} i {client_addr} {nonexist}"),
// a null sender with SIZE, a first recipient refused with a reply code, the
// unknown command "FOO bar".
func TestPostfixSymListSequence(t *testing.T) {
	sym := "\x00\x00\x00\x03{rcpt_addr} i {client_addr} {nonexist}\x00" +
		"\x00\x00\x00\x06i,\t{mail_addr}\x00" + // Postfix splits on ", \t\r\n"
		"\x00\x00\x00\x09{ignored}\x00" // unknown stage: ignored
	path, log := recordSession(t, PostfixActions, 0, sym, func(q pkt) [][]byte {
		if q.cmd == CmdRcpt && string(q.data) == "<x@dst.example>\x00" {
			return [][]byte{frame(RepReplyCode, "550 5.7.1 no\x00")}
		}
		return [][]byte{frame(RepContinue, "")}
	})
	c := dialUnix(t, path, nil)
	if got := c.Negotiated().SymList; !reflect.DeepEqual(got, map[Stage][]string{
		StageRcpt: {"{rcpt_addr}", "i", "{client_addr}", "{nonexist}"},
		StageEOH:  {"i", "{mail_addr}"},
	}) {
		t.Fatalf("SymList = %v", c.Negotiated().SymList)
	}
	info := PostfixInfo{Hostname: "mx.test.example", DaemonAddr: "127.0.0.1", ClientName: "localhost", ClientAddr: "127.0.0.1"}
	if _, err := c.Connect("localhost", FamilyInet, 38282, "127.0.0.1", StockMacros(StageConnect, info)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Helo("client.example", nil); err != nil {
		t.Fatal(err)
	}
	// A caller's map: only the names asked for, in the milter's order.
	if _, err := c.Rcpt("early@dst.example", nil, map[string]string{"{rcpt_host}": "h", "{client_addr}": "127.0.0.1", "{rcpt_addr}": "early@dst.example"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Abort(); err != nil {
		t.Fatal(err)
	}
	extra := map[Stage]map[string]string{StageRcpt: {"{client_addr}": "127.0.0.1"}}
	res, err := c.Send(&Message{Sender: "", SenderArgs: []string{"SIZE=100"},
		Recipients: []string{"x@dst.example", "y@dst.example"}, Mailer: "discard", QueueID: "5E359984114", Macros: extra})
	if err != nil || !res.Rcpts[0].Rejected() || res.Rcpts[0].SMTPText() != "550 5.7.1 no" || !res.Rcpts[1].Continue() {
		t.Fatalf("Send = %+v, %v", res, err)
	}
	if r, err := c.Unknown("FOO", nil); err != nil || !r.Continue() {
		t.Fatalf("Unknown = %v, %v", r, err)
	}
	if _, err := c.Send(&Message{Sender: "Mixed@Src.Example", SenderArgs: []string{"BODY=8BITMIME"},
		Recipients: []string{"a@dst.example", "b@dst.example"}, Mailer: "discard", QueueID: "5E359984114", Macros: extra}); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	got := collect(t, log)
	// Lines Postfix sent, in this order (Postfix lowercases {mail_addr};
	// that is the caller's business here).
	want := []string{
		`D "R{rcpt_addr}\x00early@dst.example\x00{client_addr}\x00127.0.0.1\x00"`,
		`R "<early@dst.example>\x00"`,
		`A ""`,
		`D "M{mail_addr}\x00\x00{mail_host}\x00mx.test.example\x00{mail_mailer}\x00discard\x00"`,
		`M "<>\x00SIZE=100\x00"`,
		`D "R{rcpt_addr}\x00x@dst.example\x00{client_addr}\x00127.0.0.1\x00"`,
		`R "<x@dst.example>\x00"`,
		`D "R{rcpt_addr}\x00y@dst.example\x00{client_addr}\x00127.0.0.1\x00"`,
		`A ""`,
		`D "U"`,
		`U "FOO\x00"`,
		`M "<Mixed@Src.Example>\x00BODY=8BITMIME\x00"`,
		`D "R{rcpt_addr}\x00a@dst.example\x00{client_addr}\x00127.0.0.1\x00"`,
		`R "<a@dst.example>\x00"`,
		`D "R{rcpt_addr}\x00b@dst.example\x00i\x005E359984114\x00{client_addr}\x00127.0.0.1\x00"`,
		`R "<b@dst.example>\x00"`,
		`D "Ti\x005E359984114\x00"`,
		`E ""`,
		`A ""`,
		`A ""`,
		`Q ""`,
	}
	i := 0
	for _, line := range got {
		if i < len(want) && line == want[i] {
			i++
		}
	}
	if i < len(want) {
		t.Errorf("missing (in order) %s\ngot:\n%s", want[i], strings.Join(got, "\n"))
	}
}

func TestSkipBody(t *testing.T) {
	path, log := recordSession(t, PostfixActions, ProtoSkip, "", func(q pkt) [][]byte {
		if q.cmd == CmdBody {
			return [][]byte{frame(RepSkip, "")}
		}
		return [][]byte{frame(RepContinue, "")}
	})
	c := dialUnix(t, path, nil)
	connectHelo(t, c)
	body := make([]byte, 2*MaxBodyChunk+100)
	res, err := c.Send(&Message{Sender: "a@x", Recipients: []string{"b@y"}, Body: body})
	if err != nil || !res.Delivered() || res.StoppedAt != CmdEOM {
		t.Fatalf("Send = %+v, %v", res, err)
	}
	c.Quit()
	var seq []string
	for _, q := range collectPkts(t, log) {
		switch q.cmd {
		case CmdMacro:
		case CmdBody:
			seq = append(seq, "B"+strconv.Itoa(len(q.data)))
		default:
			seq = append(seq, string(q.cmd))
		}
	}
	// One body chunk, then straight to end of message.
	if got := strings.Join(seq, " "); got != "O C H M R T N B65535 E A A Q" {
		t.Errorf("sequence = %s", got)
	}

	// The same with single Body calls: after the skip, Body sends nothing
	// until another kind of event goes out.
	c = dialUnix(t, path, nil)
	connectHelo(t, c)
	if r, err := c.Body([]byte("one"), nil); err != nil || !r.Skipped() {
		t.Fatalf("Body = %v, %v", r, err)
	}
	if r, err := c.Body([]byte("two"), nil); err != nil || !r.Continue() {
		t.Fatalf("Body after skip = %v, %v", r, err)
	}
	if eom, err := c.EndOfMessage(nil); err != nil || !eom.Reply.Continue() {
		t.Fatalf("EndOfMessage = %+v, %v", eom, err)
	}
	if r, err := c.Body([]byte("three"), nil); err != nil || !r.Skipped() {
		t.Fatalf("Body after EOM = %v, %v", r, err)
	}
	c.Quit()
	seq = nil
	for _, q := range collectPkts(t, log) {
		if q.cmd != CmdMacro {
			seq = append(seq, q.String())
		}
	}
	if got := strings.Join(seq, " "); got != `O "\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff" C "client.example\x004\x11\xd7192.0.2.1\x00" H "client.example\x00" B "one" E "" B "three" A "" Q ""` {
		t.Errorf("sequence = %s", got)
	}
}

func TestNoReplyFlags(t *testing.T) {
	nr := ProtoNoConnRepl | ProtoNoHeloRepl | ProtoNoRcptRepl | ProtoNoDataRepl |
		ProtoNoHeaderRepl | ProtoNoEOHRepl | ProtoNoBodyRepl
	path, log := recordSession(t, PostfixActions, nr, "", func(q pkt) [][]byte {
		switch q.cmd {
		case CmdMail, CmdEOM:
			return [][]byte{frame(RepContinue, "")}
		}
		return nil // no reply: a client waiting for one times out
	})
	c := dialUnix(t, path, func(o *Options) { o.Timeout = 2 * time.Second })
	start := time.Now()
	connectHelo(t, c)
	res, err := c.Send(&Message{Sender: "a@x", Recipients: []string{"b@y", "c@y"},
		Headers: []Header{{"A", "b"}}, Body: []byte("x")})
	if err != nil || !res.Delivered() {
		t.Fatalf("Send = %+v, %v", res, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v: waited for replies that were not coming", d)
	}
	c.Quit()
	var cmds []byte
	for _, line := range collect(t, log) {
		if line[0] != CmdMacro {
			cmds = append(cmds, line[0])
		}
	}
	if string(cmds) != "OCHMRRTLNBEAAQ" {
		t.Errorf("commands = %s", cmds)
	}
}

func TestQuarantineAndReplaceBody(t *testing.T) {
	path, _ := recordSession(t, PostfixActions, 0, "", func(q pkt) [][]byte {
		switch q.cmd {
		case CmdRcpt:
			return [][]byte{frame(RepQuarantine, "early\x00"), frame(RepContinue, "")}
		case CmdEOM:
			return [][]byte{
				frame(RepProgress, ""),
				frame(RepReplBody, "new "),
				frame(RepReplBody, "body"),
				frame(RepInsHeader, "\x00\x00\x00\x00X-Top\x00v\x00"),
				frame(RepChgHeader, "\x00\x00\x00\x02Subject\x00\x00"),
				frame(RepAddRcptPar, "<p@x>\x00NOTIFY=NEVER\x00"),
				frame(RepChgFrom, "<f@x>\x00"),
				frame(RepQuarantine, "held\x00"),
				frame(RepReplyCode, "451 4.7.1 later %%\x00"),
			}
		}
		return [][]byte{frame(RepContinue, "")}
	})
	c := dialUnix(t, path, nil)
	connectHelo(t, c)
	res, err := c.Send(&Message{Sender: "a@x", Recipients: []string{"b@y"}, Body: []byte("old")})
	if err != nil {
		t.Fatal(err)
	}
	want := []Modification{
		&Quarantine{Reason: "early"},
		&ReplaceBody{Body: []byte("new body")},
		&InsertHeader{Index: 0, Name: "X-Top", Value: "v"},
		&ChangeHeader{Index: 2, Name: "Subject", Value: ""},
		&AddRcpt{Addr: "<p@x>", Args: "NOTIFY=NEVER", WithArgs: true},
		&ChangeFrom{Addr: "<f@x>"},
		&Quarantine{Reason: "held"},
	}
	if !reflect.DeepEqual(res.Modifications, want) {
		t.Errorf("Modifications = %v\nwant %v", res.Modifications, want)
	}
	if !res.Reply.TempFailed() || res.Reply.SMTPCode() != 451 || res.Reply.SMTPText() != "451 4.7.1 later %" || res.Delivered() {
		t.Errorf("Reply = %v %q", res.Reply, res.Reply.SMTPText())
	}
	for _, m := range want {
		if m.Code() == 0 || m.String() == "" {
			t.Errorf("%T: empty Code or String", m)
		}
	}
}

// expectErr dials a fake milter running script after OPTNEG handling of
// its own, runs drive on the connection, and checks the error.
func TestMalformedReplies(t *testing.T) {
	okNeg := func(p *peer) bool { return p.negotiate(PostfixActions, 0, "") }
	tests := []struct {
		name   string
		opts   func(*Options)
		script func(p *peer)
		drive  func(c *Conn) error // nil: the error must come from Dial
		want   error
		detail string
	}{
		{name: "garbage instead of OPTNEG", want: ErrProtocol, detail: "exceeds limit",
			script: func(p *peer) { p.read(); p.conn.Write([]byte("HTTP/1.0 400 Bad Request\r\n\r\n")) }},
		{name: "zero-length packet", want: ErrProtocol, detail: "zero-length",
			script: func(p *peer) { p.read(); p.conn.Write([]byte{0, 0, 0, 0}) }},
		{name: "continue instead of OPTNEG", want: ErrProtocol, detail: "initial handshake",
			script: func(p *peer) { p.read(); p.write(RepContinue, nil) }},
		{name: "short OPTNEG", want: ErrProtocol, detail: "too short",
			script: func(p *peer) { p.read(); p.write(RepOptNeg, make([]byte, 8)) }},
		{name: "version too high", want: ErrProtocol, detail: "version 7",
			script: func(p *peer) { p.read(); p.write(RepOptNeg, optneg(7, 0, 0, "")) }},
		{name: "action not offered", want: ErrProtocol, detail: "request mask",
			opts:   func(o *Options) { o.Actions = ActAddHeaders },
			script: func(p *peer) { p.read(); p.write(RepOptNeg, optneg(6, ActChangeFrom, 0, "")) }},
		{name: "macro list without NUL", want: ErrProtocol, detail: "null terminator",
			script: func(p *peer) { p.read(); p.write(RepOptNeg, optneg(6, 0, 0, "\x00\x00\x00\x02{mail_addr}")) }},
		{name: "macro list truncated stage", want: ErrProtocol, detail: "network long",
			script: func(p *peer) { p.read(); p.write(RepOptNeg, optneg(6, 0, 0, "\x00\x00")) }},
		{name: "closed during handshake", want: ErrClosed,
			script: func(p *peer) { p.read() }},
		{name: "modification at CONNECT", want: ErrProtocol, detail: "unexpected reply ADDHEADER after CONNECT",
			script: func(p *peer) { okNeg(p); p.read(); p.read(); p.write(RepAddHeader, []byte("a\x00b\x00")) },
			drive:  func(c *Conn) error { _, err := c.Connect("h", FamilyInet, 1, "192.0.2.1", nil); return err }},
		{name: "continue with data", want: ErrProtocol, detail: "followed by 1 data bytes",
			script: func(p *peer) { okNeg(p); p.read(); p.read(); p.write(RepContinue, []byte("x")) },
			drive:  func(c *Conn) error { _, err := c.Connect("h", FamilyInet, 1, "192.0.2.1", nil); return err }},
		{name: "reply code without enhanced status", want: ErrProtocol, detail: "malformed reply code",
			script: func(p *peer) { okNeg(p); p.read(); p.read(); p.write(RepReplyCode, []byte("550 no\x00")) },
			drive:  func(c *Conn) error { _, err := c.Connect("h", FamilyInet, 1, "192.0.2.1", nil); return err }},
		{name: "reply code 2xx", want: ErrProtocol, detail: "malformed reply code",
			script: func(p *peer) { okNeg(p); p.read(); p.read(); p.write(RepReplyCode, []byte("250 2.0.0 ok\x00")) },
			drive:  func(c *Conn) error { _, err := c.Connect("h", FamilyInet, 1, "192.0.2.1", nil); return err }},
		{name: "connection failure reply", want: ErrProtocol, detail: "CONN_FAIL",
			script: func(p *peer) { okNeg(p); p.read(); p.read(); p.write(RepConnFail, nil) },
			drive:  func(c *Conn) error { _, err := c.Connect("h", FamilyInet, 1, "192.0.2.1", nil); return err }},
		{name: "truncated packet", want: ErrClosed,
			script: func(p *peer) {
				okNeg(p)
				p.read()
				p.read()
				p.conn.Write([]byte{0, 0, 0, 100, 'c', 1, 2})
			},
			drive: func(c *Conn) error { _, err := c.Connect("h", FamilyInet, 1, "192.0.2.1", nil); return err }},
		{name: "unsolicited packet", want: ErrProtocol, detail: "nobody asked for",
			script: func(p *peer) {
				okNeg(p)
				p.read()
				p.read()
				p.conn.Write(append(frame(RepContinue, ""), frame(RepContinue, "")...))
				io.Copy(io.Discard, p.conn)
			},
			drive: func(c *Conn) error {
				if _, err := c.Connect("h", FamilyInet, 1, "192.0.2.1", nil); err != nil {
					return err
				}
				time.Sleep(50 * time.Millisecond)
				_, err := c.Helo("h", nil)
				return err
			}},
		{name: "CHGHEADER without NUL", want: ErrProtocol, detail: "CHGHEADER: missing string null terminator",
			script: func(p *peer) {
				okNeg(p)
				p.replyAll(nil, func(q pkt) [][]byte {
					if q.cmd == CmdEOM {
						return [][]byte{frame(RepChgHeader, "\x00\x00\x00\x01Subject")}
					}
					return [][]byte{frame(RepContinue, "")}
				})
			},
			drive: sendOne},
		{name: "ADDHEADER with left-over data", want: ErrProtocol, detail: "left-over",
			script: func(p *peer) {
				okNeg(p)
				p.replyAll(nil, func(q pkt) [][]byte {
					if q.cmd == CmdEOM {
						return [][]byte{frame(RepAddHeader, "A\x00b\x00c")}
					}
					return [][]byte{frame(RepContinue, "")}
				})
			},
			drive: sendOne},
		{name: "body replacement interrupted", want: ErrProtocol, detail: "can't be mixed",
			script: func(p *peer) {
				okNeg(p)
				p.replyAll(nil, func(q pkt) [][]byte {
					if q.cmd == CmdEOM {
						return [][]byte{frame(RepReplBody, "a"), frame(RepAddHeader, "A\x00b\x00"), frame(RepReplBody, "b")}
					}
					return [][]byte{frame(RepContinue, "")}
				})
			},
			drive: sendOne},
		{name: "OPTNEG again at end of message", want: ErrProtocol, detail: "unexpected reply OPTNEG after EOM",
			script: func(p *peer) {
				okNeg(p)
				p.replyAll(nil, func(q pkt) [][]byte {
					if q.cmd == CmdEOM {
						return [][]byte{frame(RepOptNeg, string(optneg(6, 0, 0, "")))}
					}
					return [][]byte{frame(RepContinue, "")}
				})
			},
			drive: sendOne},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := serveFake(t, tc.script)
			opts := Options{Network: "unix", Address: path, Timeout: 2 * time.Second}
			if tc.opts != nil {
				tc.opts(&opts)
			}
			start := time.Now()
			c, err := Dial(context.Background(), opts)
			if tc.drive != nil {
				if err != nil {
					t.Fatalf("Dial: %v", err)
				}
				defer c.Close()
				err = tc.drive(c)
			} else if err == nil {
				c.Close()
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.detail) || !strings.HasPrefix(err.Error(), "mtaclient: ") {
				t.Fatalf("err = %v, want %v containing %q", err, tc.want, tc.detail)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("took %v", d)
			}
			if c != nil && tc.drive != nil {
				if _, err2 := c.Mail("a@x", nil, nil); err2 != err {
					t.Errorf("after the error Mail = %v, want the same error", err2)
				}
			}
		})
	}
}

func sendOne(c *Conn) error {
	if _, err := c.Connect("h", FamilyInet, 1, "192.0.2.1", nil); err != nil {
		return err
	}
	_, err := c.Send(&Message{Sender: "a@x", Recipients: []string{"b@y"}, Body: []byte("x")})
	return err
}

func TestOversizedPacketNoAllocation(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		defer server.Close()
		var b [17]byte
		io.ReadFull(server, b[:])
		var h [5]byte
		binary.BigEndian.PutUint32(h[:], 64<<20)
		h[4] = RepOptNeg
		server.Write(h[:])
		io.Copy(io.Discard, server)
	}()
	c := NewConn(client, Options{Timeout: 2 * time.Second})
	err := c.Negotiate()
	if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "67108864") {
		t.Fatalf("err = %v", err)
	}
	if cap(c.rbuf) > DefaultMaxPacket {
		t.Errorf("read buffer grew to %d", cap(c.rbuf))
	}
}

func TestTimeouts(t *testing.T) {
	silent := serveFake(t, func(p *peer) { io.Copy(io.Discard, p.conn) })
	hangAtConnect := serveFake(t, func(p *peer) {
		p.negotiate(PostfixActions, 0, "")
		io.Copy(io.Discard, p.conn)
	})
	// A milter that keeps saying "progress" is waited for; one that goes
	// quiet after it is not.
	progress := serveFake(t, func(p *peer) {
		p.negotiate(PostfixActions, 0, "")
		p.read()
		p.read()
		for i := 0; i < 5; i++ {
			time.Sleep(60 * time.Millisecond)
			p.write(RepProgress, nil)
		}
		p.write(RepContinue, nil)
		p.read()
		p.read()
		p.write(RepProgress, nil)
		io.Copy(io.Discard, p.conn)
	})

	// A client that ignores its deadlines would hang here: fail fast instead.
	watchdog := time.AfterFunc(20*time.Second, func() { panic("TestTimeouts: a call did not time out") })
	defer watchdog.Stop()
	check := func(t *testing.T, err error, start time.Time) {
		t.Helper()
		if !errors.Is(err, ErrTimeout) || !strings.HasPrefix(err.Error(), "mtaclient: ") {
			t.Fatalf("err = %v, want ErrTimeout", err)
		}
		if d := time.Since(start); d < 150*time.Millisecond || d > 2*time.Second {
			t.Errorf("gave up after %v", d)
		}
	}
	t.Run("negotiation", func(t *testing.T) {
		start := time.Now()
		_, err := Dial(context.Background(), Options{Network: "unix", Address: silent, Timeout: 200 * time.Millisecond})
		check(t, err, start)
	})
	t.Run("context deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := Dial(ctx, Options{Network: "unix", Address: silent, Timeout: time.Minute})
		check(t, err, start)
	})
	t.Run("connect", func(t *testing.T) {
		c := dialUnix(t, hangAtConnect, func(o *Options) { o.Timeout = 200 * time.Millisecond })
		start := time.Now()
		_, err := c.Connect("h", FamilyUnix, 0, "/run/x", nil)
		check(t, err, start)
		if _, err2 := c.Helo("h", nil); err2 != err {
			t.Errorf("after timeout Helo = %v", err2)
		}
	})
	t.Run("progress", func(t *testing.T) {
		c := dialUnix(t, progress, func(o *Options) { o.Timeout = 200 * time.Millisecond })
		if r, err := c.Connect("h", FamilyUnknown, 0, "", nil); err != nil || !r.Continue() {
			t.Fatalf("Connect after 300ms of progress = %v, %v", r, err)
		}
		start := time.Now()
		_, err := c.Helo("h", nil)
		check(t, err, start)
	})
	t.Run("close from another goroutine", func(t *testing.T) {
		c := dialUnix(t, hangAtConnect, func(o *Options) { o.Timeout = time.Minute })
		time.AfterFunc(100*time.Millisecond, func() { c.Close() })
		start := time.Now()
		_, err := c.Connect("h", FamilyInet, 1, "192.0.2.1", nil)
		if !errors.Is(err, ErrClosed) || time.Since(start) > 2*time.Second {
			t.Fatalf("err = %v after %v", err, time.Since(start))
		}
	})
}

func TestConnectEncoding(t *testing.T) {
	path, log := recordSession(t, PostfixActions, 0, "", nil)
	for _, tc := range []struct {
		family byte
		port   uint16
		addr   string
		want   string
	}{
		{FamilyInet, 25, "192.0.2.1", `C "h\x004\x00\x19192.0.2.1\x00"`},
		{FamilyInet6, 587, "2001:db8::1", `C "h\x006\x02K2001:db8::1\x00"`},
		{FamilyUnix, 0, "/run/sock", `C "h\x00L\x00\x00/run/sock\x00"`}, // Postfix sends port 0
		{FamilyUnknown, 0, "", `C "h\x00U"`},
	} {
		c := dialUnix(t, path, nil)
		if _, err := c.Connect("h", tc.family, tc.port, tc.addr, nil); err != nil {
			t.Fatal(err)
		}
		c.Quit()
		got := collect(t, log)
		if len(got) != 4 || got[1] != `D "C"` || got[2] != tc.want || got[3] != `Q ""` {
			t.Errorf("family %c: %q", tc.family, got)
		}
	}
}

// Postfix ignores DISCARD at CONNECT (it logs a warning): the connection
// goes on.
func TestDiscardAtConnect(t *testing.T) {
	path, log := recordSession(t, PostfixActions, 0, "", func(q pkt) [][]byte {
		if q.cmd == CmdConnect {
			return [][]byte{frame(RepDiscard, "")}
		}
		return [][]byte{frame(RepContinue, "")}
	})
	c := dialUnix(t, path, nil)
	if r, err := c.Connect("h", FamilyUnknown, 0, "", nil); err != nil || !r.Discarded() {
		t.Fatalf("Connect = %v, %v", r, err)
	}
	if r, err := c.Helo("h", nil); err != nil || !r.Continue() {
		t.Fatalf("Helo = %v, %v", r, err)
	}
	if r, err := c.Rcpt("r@y", nil, nil); err != nil || !r.Continue() {
		t.Fatalf("Rcpt = %v, %v", r, err)
	}
	if err := c.Abort(); err != nil {
		t.Fatal(err)
	}
	res, err := c.Send(&Message{Sender: "a@x", Recipients: []string{"b@y"}})
	if err != nil || !res.Delivered() {
		t.Fatalf("Send = %+v, %v", res, err)
	}
	c.Quit()
	var cmds []byte
	for _, q := range collectPkts(t, log) {
		if q.cmd != CmdMacro {
			cmds = append(cmds, q.cmd)
		}
	}
	if string(cmds) != "OCHRAMRTNEAAQ" {
		t.Errorf("commands = %s", cmds)
	}
}

func TestReplyHelpers(t *testing.T) {
	for _, tc := range []struct {
		r                          Reply
		str                        string
		code                       int
		text                       string
		rej, temp, cont, acc, disc bool
	}{
		{Reply{}, "none", 0, "", false, false, false, false, false},
		{Reply{Code: RepContinue}, "continue", 0, "", false, false, true, false, false},
		{Reply{Code: RepAccept}, "accept", 0, "", false, false, false, true, false},
		{Reply{Code: RepDiscard}, "discard", 0, "", false, false, false, false, true},
		{Reply{Code: RepReject}, "reject", 550, "550 5.7.1 Command rejected", true, false, false, false, false},
		{Reply{Code: RepTempFail}, "tempfail", 451, "451 4.7.1 Service unavailable - try again later", false, true, false, false, false},
		{Reply{Code: RepShutdown}, "shutdown", 421, "421 4.7.0 Server closing connection", false, true, false, false, false},
		{Reply{Code: RepReplyCode, Text: "554 5.7.1 100%% bad %x"}, `reply "554 5.7.1 100%% bad %x"`, 554, "554 5.7.1 100% bad x", true, false, false, false, false},
		{Reply{Code: RepReplyCode, Text: "421 4.3.2 bye"}, `reply "421 4.3.2 bye"`, 421, "421 4.3.2 bye", false, true, false, false, false},
		{Reply{Code: RepSkip}, "skip", 0, "", false, false, false, false, false},
	} {
		r := tc.r
		if r.String() != tc.str || r.SMTPCode() != tc.code || r.SMTPText() != tc.text ||
			r.Rejected() != tc.rej || r.TempFailed() != tc.temp || r.Refused() != (tc.rej || tc.temp) ||
			r.Continue() != tc.cont || r.Accepted() != tc.acc || r.Discarded() != tc.disc {
			t.Errorf("%+v: String %q SMTPCode %d SMTPText %q Rejected %v TempFailed %v",
				r, r.String(), r.SMTPCode(), r.SMTPText(), r.Rejected(), r.TempFailed())
		}
	}
	if !(Reply{Code: RepSkip}).Skipped() {
		t.Error("Skipped")
	}
}

func TestStockMacros(t *testing.T) {
	p := PostfixInfo{ClientName: "unknown", ClientPTR: "ptr.example", ClientAddr: "192.0.2.9",
		QueueID: "Q", AuthUser: "u", AuthType: "LOGIN", Sender: "s@a.example", Recipient: "r", Mailer: "relay"}
	got := map[Stage]map[string]string{}
	for s := Stage(0); s < numStages; s++ {
		got[s] = StockMacros(s, p)
	}
	want := map[Stage]map[string]string{
		StageConnect: {"j": "localhost", "{daemon_name}": "localhost", "v": PostfixMailVersion,
			"_": "ptr.example [192.0.2.9] (may be forged)"},
		StageHelo: {},
		StageMail: {"{auth_type}": "LOGIN", "{auth_authen}": "u", "{mail_addr}": "s@a.example",
			"{mail_host}": "a.example", "{mail_mailer}": "relay"},
		StageRcpt: {"i": "Q", "{rcpt_addr}": "r", "{rcpt_host}": "localhost", "{rcpt_mailer}": "relay"},
		StageData: {"i": "Q"}, StageEOM: {"i": "Q"}, StageEOH: {"i": "Q"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("StockMacros =\n%v\nwant\n%v", got, want)
	}
	if n := StockMacroNames(StageConnect); strings.Join(n, " ") != "j {daemon_name} {daemon_addr} v _" {
		t.Errorf("StockMacroNames = %v", n)
	}
}

// TestMacroOrderFromMap: a caller's map goes out in Postfix's stock order,
// extra names sorted after it.
func TestMacroOrderFromMap(t *testing.T) {
	path, log := recordSession(t, PostfixActions, 0, "", nil)
	c := dialUnix(t, path, nil)
	m := map[string]string{"{z}": "1", "_": "u", "j": "h", "{a}": "2", "v": "x"}
	if _, err := c.Connect("h", FamilyUnknown, 0, "", m); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	got := collect(t, log)
	if got[1] != `D "Cj\x00h\x00v\x00x\x00_\x00u\x00{a}\x002\x00{z}\x001\x00"` {
		t.Errorf("macro packet = %s", got[1])
	}
}
