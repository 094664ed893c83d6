package mtaclient

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"
)

var connInfo = PostfixInfo{
	Hostname:   "mx.example",
	DaemonName: "submission",
	DaemonAddr: "192.0.2.25",
	ClientName: "client.example",
	ClientAddr: "192.0.2.1",
}

func connectHelo(t *testing.T, c *Conn) {
	t.Helper()
	r, err := c.Connect("client.example", FamilyInet, 4567, "192.0.2.1", StockMacros(StageConnect, connInfo))
	if err != nil || !r.Continue() {
		t.Fatalf("Connect = %v, %v", r, err)
	}
	r, err = c.Helo("client.example", StockMacros(StageHelo, connInfo))
	if err != nil || !r.Continue() {
		t.Fatalf("Helo = %v, %v", r, err)
	}
}

func batvEOM(st *msgState, m *milter.Modifier) (milter.Response, error) {
	if err := m.ChangeFrom("prvs=1234abcd=" + st.from); err != nil {
		return nil, err
	}
	if err := m.AddRecipient("dave@example.net"); err != nil {
		return nil, err
	}
	if err := m.DeleteRecipient(st.rcpts[0]); err != nil {
		return nil, err
	}
	if err := m.AddHeader("X-Rcpts", strings.Join(st.rcpts, ",")); err != nil {
		return nil, err
	}
	return milter.RespContinue, nil
}

func TestSendAgainstGoMilter(t *testing.T) {
	rec := &recorder{eom: batvEOM}
	path := serveGoMilter(t, &milter.Server{
		NewMilter: rec.newMilter,
		Actions:   milter.OptAddHeader | milter.OptAddRcpt | milter.OptRemoveRcpt | milter.OptChangeFrom,
		Protocol:  milter.OptNoUnknown,
	})
	c := dialUnix(t, path, nil)

	neg := c.Negotiated()
	if neg.Version != 2 || neg.Actions != ActAddHeaders|ActAddRcpt|ActDelRcpt|ActChangeFrom ||
		neg.Protocol != ProtoNoUnknown || neg.SymList != nil {
		t.Errorf("Negotiated = %+v", neg)
	}
	connectHelo(t, c)

	msg := &Message{
		Sender:     "alice@example.com",
		Recipients: []string{"bob@example.net", "carol@example.org"},
		Headers:    []Header{{"Subject", " hi there"}, {"X-Folded", " one\r\n\ttwo"}},
		Body:       []byte("hello\r\n"),
		QueueID:    "4XYZ1",
		AuthUser:   "alice",
	}
	res, err := c.Send(msg)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if !res.Mail.Continue() || len(res.Rcpts) != 2 || !res.Rcpts[0].Continue() || !res.Rcpts[1].Continue() ||
		!res.Reply.Continue() || res.StoppedAt != CmdEOM || !res.Delivered() {
		t.Errorf("Result = %+v", res)
	}
	want := []Modification{
		&ChangeFrom{Addr: "prvs=1234abcd=alice@example.com"},
		&AddRcpt{Addr: "<dave@example.net>"},
		&DelRcpt{Addr: "<bob@example.net>"},
		&AddHeader{Name: "X-Rcpts", Value: "bob@example.net,carol@example.org"},
	}
	if !reflect.DeepEqual(res.Modifications, want) {
		t.Errorf("Modifications = %v, want %v", res.Modifications, want)
	}

	// Postfix sends an ABORT after every transaction, but leaves it in its
	// buffer until the next event: so does Send. Flush pushes it out.
	rec.waitKinds(t, "connect helo mail rcpt rcpt header header eoh body eom")
	time.Sleep(20 * time.Millisecond)
	rec.waitKinds(t, "connect helo mail rcpt rcpt header header eoh body eom")
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	rec.waitKinds(t, "connect helo mail rcpt rcpt header header eoh body eom abort")

	checkMacros := func(kind, arg string, want map[string]string) {
		t.Helper()
		e, ok := rec.find(kind, arg)
		if !ok {
			t.Errorf("no %s %s event", kind, arg)
			return
		}
		if !reflect.DeepEqual(e.Macros, want) {
			t.Errorf("%s %s macros = %v, want %v", kind, arg, e.Macros, want)
		}
	}
	if e, _ := rec.find("connect", ""); e.Arg != "client.example|tcp4|4567|192.0.2.1" {
		t.Errorf("connect = %q", e.Arg)
	}
	checkMacros("connect", "", map[string]string{
		"j": "mx.example", "{daemon_name}": "submission", "{daemon_addr}": "192.0.2.25",
		"v": PostfixMailVersion, "_": "client.example [192.0.2.1]",
	})
	// An empty macro packet precedes HELO: nothing of CONNECT's lingers.
	checkMacros("helo", "client.example", map[string]string{})
	checkMacros("mail", "alice@example.com", map[string]string{
		"{mail_addr}": "alice@example.com", "{mail_host}": "example.com", "{mail_mailer}": "smtp",
		"{auth_type}": "PLAIN", "{auth_authen}": "alice",
	})
	checkMacros("rcpt", "bob@example.net", map[string]string{
		"{rcpt_addr}": "bob@example.net", "{rcpt_host}": "example.net", "{rcpt_mailer}": "smtp",
	})
	checkMacros("rcpt", "carol@example.org", map[string]string{
		"i": "4XYZ1", "{rcpt_addr}": "carol@example.org", "{rcpt_host}": "example.org", "{rcpt_mailer}": "smtp",
	})
	checkMacros("header", "Subject: hi there", map[string]string{"i": "4XYZ1"})
	checkMacros("header", "X-Folded: one\n\ttwo", map[string]string{"i": "4XYZ1"})
	checkMacros("eoh", "", map[string]string{"i": "4XYZ1"})
	checkMacros("body", "hello\r\n", map[string]string{"i": "4XYZ1"})
	checkMacros("eom", "", map[string]string{"i": "4XYZ1"})

	// The same connection carries the next message, from a clean slate.
	rec.reset()
	msg2 := &Message{Sender: "", Recipients: []string{"x@example.net"}, Body: nil}
	res, err = c.Send(msg2)
	if err != nil {
		t.Fatalf("second Send: %v", err)
	}
	want = []Modification{
		&ChangeFrom{Addr: "prvs=1234abcd="},
		&AddRcpt{Addr: "<dave@example.net>"},
		&DelRcpt{Addr: "<x@example.net>"},
		&AddHeader{Name: "X-Rcpts", Value: "x@example.net"},
	}
	if !reflect.DeepEqual(res.Modifications, want) {
		t.Errorf("second Modifications = %v, want %v", res.Modifications, want)
	}
	// No queue ID given: no i; null sender: {mail_host} is $myhostname; no body packet.
	rec.waitKinds(t, "mail rcpt eoh eom")
	checkMacros("mail", "", map[string]string{"{mail_addr}": "", "{mail_host}": "mx.example", "{mail_mailer}": "smtp"})
	checkMacros("eom", "", map[string]string{})

	if err := c.Quit(); err != nil {
		t.Errorf("Quit: %v", err)
	}
	rec.waitKinds(t, "mail rcpt eoh eom abort abort")
}

func TestOptOuts(t *testing.T) {
	rec := &recorder{eom: batvEOM}
	path := serveGoMilter(t, &milter.Server{
		NewMilter: rec.newMilter,
		Actions:   milter.OptAddHeader | milter.OptAddRcpt | milter.OptRemoveRcpt | milter.OptChangeFrom,
		Protocol: milter.OptNoConnect | milter.OptNoHelo | milter.OptNoHeaders | milter.OptNoBody |
			milter.OptNoUnknown | milter.OptNoData,
	})
	c := dialUnix(t, path, nil)
	connectHelo(t, c)
	if r, err := c.Unknown("FOO", nil); err != nil || !r.Continue() {
		t.Fatalf("Unknown = %v, %v (go-milter closes the connection on UNKNOWN)", r, err)
	}
	res, err := c.Send(&Message{
		Sender:     "a@example.com",
		Recipients: []string{"b@example.net"},
		Headers:    []Header{{"Subject", "x"}, {"From", "a@example.com"}},
		Body:       []byte(strings.Repeat("body\r\n", 30000)),
		QueueID:    "Q1",
	})
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if !res.Delivered() || len(res.Modifications) != 4 {
		t.Errorf("Result = %+v", res)
	}
	// No connect, helo, header or body callbacks: those were never sent.
	c.Flush()
	rec.waitKinds(t, "mail rcpt eoh eom abort")
	if e, _ := rec.find("eom", ""); e.Macros["i"] != "Q1" {
		t.Errorf("eom macros = %v", e.Macros)
	}
}

func TestRcptReplyCode(t *testing.T) {
	rec := &recorder{
		eom: batvEOM,
		rcptReply: func(rcpt string) milter.Response {
			if rcpt == "refused@example.net" {
				return milter.NewResponseStr(byte(milter.ActReplyCode), "550 5.7.1 no")
			}
			return milter.RespContinue
		},
	}
	path := serveGoMilter(t, &milter.Server{
		NewMilter: rec.newMilter,
		Actions:   milter.OptAddHeader | milter.OptAddRcpt | milter.OptRemoveRcpt | milter.OptChangeFrom,
		Protocol:  milter.OptNoUnknown,
	})
	c := dialUnix(t, path, nil)
	connectHelo(t, c)
	res, err := c.Send(&Message{
		Sender:     "a@example.com",
		Recipients: []string{"refused@example.net", "ok1@example.net", "ok2@example.net"},
		Body:       []byte("x\r\n"),
		QueueID:    "Q2",
	})
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	r0 := res.Rcpts[0]
	if !r0.Rejected() || !r0.Refused() || r0.TempFailed() || r0.SMTPCode() != 550 || r0.SMTPText() != "550 5.7.1 no" {
		t.Errorf("first rcpt reply = %v (code %d, text %q)", r0, r0.SMTPCode(), r0.SMTPText())
	}
	if !res.Rcpts[1].Continue() || !res.Rcpts[2].Continue() || !res.Delivered() {
		t.Errorf("Result = %+v", res)
	}
	// The milter object kept its state: every recipient reached the
	// end-of-message rewrite.
	var hdr string
	for _, m := range res.Modifications {
		if h, ok := m.(*AddHeader); ok {
			hdr = h.Value
		}
	}
	if hdr != "refused@example.net,ok1@example.net,ok2@example.net" {
		t.Errorf("X-Rcpts = %q", hdr)
	}
	// Postfix knows the queue ID only after the first accepted recipient.
	c.Flush()
	rec.waitKinds(t, "connect helo mail rcpt rcpt rcpt eoh body eom abort")
	if e, _ := rec.find("rcpt", "ok1@example.net"); e.Macros["i"] != "" {
		t.Errorf("i sent at the first accepted RCPT: %v", e.Macros)
	}
	if e, _ := rec.find("rcpt", "ok2@example.net"); e.Macros["i"] != "Q2" {
		t.Errorf("i missing at the RCPT after an accepted one: %v", e.Macros)
	}
}

func TestAllRcptsRefusedNoData(t *testing.T) {
	rec := &recorder{rcptReply: func(string) milter.Response {
		return milter.NewResponseStr(byte(milter.ActReplyCode), "450 4.7.1 later")
	}}
	path := serveGoMilter(t, &milter.Server{NewMilter: rec.newMilter, Protocol: milter.OptNoUnknown})
	c := dialUnix(t, path, nil)
	connectHelo(t, c)
	res, err := c.Send(&Message{Sender: "a@example.com", Recipients: []string{"b@x", "c@x"}, Body: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if res.StoppedAt != CmdRcpt || !res.Reply.TempFailed() || res.Reply.SMTPCode() != 450 || res.Delivered() {
		t.Errorf("Result = %+v", res)
	}
	c.Flush()
	rec.waitKinds(t, "connect helo mail rcpt rcpt abort")
}

func TestMailRejectedThenNextMessage(t *testing.T) {
	rec := &recorder{
		eom: batvEOM,
		mailReply: func(n int, from string) milter.Response {
			if n == 0 {
				return milter.RespReject
			}
			return milter.RespContinue
		},
	}
	path := serveGoMilter(t, &milter.Server{
		NewMilter: rec.newMilter,
		Actions:   milter.OptAddHeader | milter.OptAddRcpt | milter.OptRemoveRcpt | milter.OptChangeFrom,
		Protocol:  milter.OptNoUnknown,
	})
	c := dialUnix(t, path, nil)
	connectHelo(t, c)
	msg := &Message{Sender: "a@example.com", Recipients: []string{"b@example.net"}, Body: []byte("x")}
	res, err := c.Send(msg)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Mail.Rejected() || res.StoppedAt != CmdMail || res.Rcpts[0] != (Reply{}) ||
		res.Reply.SMTPText() != "550 5.7.1 Command rejected" || res.Delivered() {
		t.Errorf("Result = %+v", res)
	}
	// Postfix 3.7 sends ABORT right after a refused MAIL.
	c.Flush()
	rec.waitKinds(t, "connect helo mail abort")
	res, err = c.Send(msg)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Delivered() || len(res.Modifications) != 4 {
		t.Errorf("second Result = %+v", res)
	}
	c.Flush()
	rec.waitKinds(t, "connect helo mail abort mail rcpt eoh body eom abort")
}

func TestAcceptAtRcpt(t *testing.T) {
	rec := &recorder{rcptReply: func(string) milter.Response { return milter.RespAccept }}
	path := serveGoMilter(t, &milter.Server{NewMilter: rec.newMilter, Protocol: milter.OptNoUnknown})
	c := dialUnix(t, path, nil)
	connectHelo(t, c)
	res, err := c.Send(&Message{Sender: "a@x", Recipients: []string{"b@x", "c@x"}, Headers: []Header{{"A", "b"}}, Body: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if res.StoppedAt != CmdRcpt || !res.Reply.Accepted() || !res.Rcpts[0].Accepted() || res.Rcpts[1] != (Reply{}) || !res.Delivered() {
		t.Errorf("Result = %+v", res)
	}
	// Nothing more for this message; then ABORT, then the next message is sent again.
	c.Flush()
	rec.waitKinds(t, "connect helo mail rcpt abort")
	rec.setRcptReply(nil)
	rec.reset()
	if res, err = c.Send(&Message{Sender: "a@x", Recipients: []string{"b@x"}}); err != nil || !res.Delivered() {
		t.Fatalf("Send after accept = %+v, %v", res, err)
	}
	c.Flush()
	rec.waitKinds(t, "mail rcpt eoh eom abort")
}

func TestAbortMidTransaction(t *testing.T) {
	rec := &recorder{eom: batvEOM}
	path := serveGoMilter(t, &milter.Server{
		NewMilter: rec.newMilter,
		Actions:   milter.OptAddHeader | milter.OptAddRcpt | milter.OptRemoveRcpt | milter.OptChangeFrom,
		Protocol:  milter.OptNoUnknown,
	})
	c := dialUnix(t, path, nil)
	connectHelo(t, c)
	step := func(r Reply, err error) {
		t.Helper()
		if err != nil || !r.Continue() {
			t.Fatalf("got %v, %v", r, err)
		}
	}
	step(c.Mail("old@example.com", nil, nil))
	step(c.Rcpt("old-rcpt@example.net", nil, nil))
	if err := c.Abort(); err != nil {
		t.Fatal(err)
	}
	step(c.Mail("new@example.com", []string{"SIZE=10"}, nil))
	step(c.Rcpt("new-rcpt@example.net", nil, nil))
	step(c.Data(nil))
	step(c.Header("Subject", "x", nil))
	step(c.EOH(nil))
	step(c.Body([]byte("body\r\n"), nil))
	eom, err := c.EndOfMessage(map[string]string{"i": "Q3"})
	if err != nil || !eom.Reply.Continue() {
		t.Fatalf("EndOfMessage = %+v, %v", eom, err)
	}
	want := []Modification{
		&ChangeFrom{Addr: "prvs=1234abcd=new@example.com"},
		&AddRcpt{Addr: "<dave@example.net>"},
		&DelRcpt{Addr: "<new-rcpt@example.net>"},
		&AddHeader{Name: "X-Rcpts", Value: "new-rcpt@example.net"},
	}
	if !reflect.DeepEqual(eom.Modifications, want) {
		t.Errorf("Modifications = %v, want %v", eom.Modifications, want)
	}
	rec.waitKinds(t, "connect helo mail rcpt abort mail rcpt header eoh body eom")
	if e, _ := rec.find("eom", ""); e.Macros["i"] != "Q3" {
		t.Errorf("eom macros = %v", e.Macros)
	}
}

func TestConnectRejected(t *testing.T) {
	rec := &recorder{connectReply: func() milter.Response { return milter.RespTempFail }}
	path := serveGoMilter(t, &milter.Server{NewMilter: rec.newMilter, Protocol: milter.OptNoUnknown})
	c := dialUnix(t, path, nil)
	r, err := c.Connect("h", FamilyInet6, 25, "2001:db8::1", nil)
	if err != nil || !r.TempFailed() || r.SMTPCode() != 451 {
		t.Fatalf("Connect = %v, %v", r, err)
	}
	if e, _ := rec.find("connect", ""); e.Arg != "h|tcp6|25|2001:db8::1" {
		t.Errorf("connect = %q", e.Arg)
	}
	// The connection is settled: nothing more is sent, every event gets the verdict.
	if r, err := c.Helo("h", nil); err != nil || !r.TempFailed() {
		t.Errorf("Helo after refused connect = %v, %v", r, err)
	}
	res, err := c.Send(&Message{Sender: "a@x", Recipients: []string{"b@x"}})
	if err != nil || !res.Reply.TempFailed() || res.StoppedAt != 0 || res.Delivered() {
		t.Errorf("Send after refused connect = %+v, %v", res, err)
	}
	if err := c.Quit(); err != nil {
		t.Errorf("Quit = %v", err)
	}
	time.Sleep(20 * time.Millisecond)
	if k := rec.kinds(); k != "connect" {
		t.Errorf("milter saw %q", k)
	}
}

func TestSymListFromGoMilter(t *testing.T) {
	rec := &recorder{}
	path := serveGoMilter(t, &milter.Server{
		NewMilter: rec.newMilter,
		Actions:   milter.OptSetSymList,
		Protocol:  milter.OptNoUnknown,
		SymList: map[milter.Stage][]string{
			milter.StageMailFrom: {"{mail_addr}", "{auth_authen}"},
			milter.StageRcptTo:   {"i", "{rcpt_addr}", "j"},
		},
	})
	c := dialUnix(t, path, nil)
	want := map[Stage][]string{
		StageMail: {"{mail_addr}", "{auth_authen}"},
		StageRcpt: {"i", "{rcpt_addr}", "j"},
	}
	if got := c.Negotiated().SymList; !reflect.DeepEqual(got, want) {
		t.Fatalf("SymList = %v, want %v", got, want)
	}
	connectHelo(t, c)
	if _, err := c.Send(&Message{Sender: "a@x", Recipients: []string{"b@y", "c@y"}, QueueID: "Q4"}); err != nil {
		t.Fatal(err)
	}
	c.Flush()
	rec.waitKinds(t, "connect helo mail rcpt rcpt eoh eom abort")
	e, _ := rec.find("mail", "")
	if !reflect.DeepEqual(e.Macros, map[string]string{"{mail_addr}": "a@x"}) {
		t.Errorf("mail macros = %v", e.Macros)
	}
	// j comes from what was given at CONNECT, as Postfix evaluates any
	// macro at any stage.
	e, _ = rec.find("rcpt", "c@y")
	if !reflect.DeepEqual(e.Macros, map[string]string{"i": "Q4", "{rcpt_addr}": "c@y", "j": "mx.example"}) {
		t.Errorf("rcpt macros = %v", e.Macros)
	}
	// Stages without a list keep Postfix's defaults.
	e, _ = rec.find("eoh", "")
	if !reflect.DeepEqual(e.Macros, map[string]string{"i": "Q4"}) {
		t.Errorf("eoh macros = %v", e.Macros)
	}
}

func TestStrictActions(t *testing.T) {
	for _, strict := range []bool{false, true} {
		rec := &recorder{eom: batvEOM}
		path := serveGoMilter(t, &milter.Server{
			NewMilter: rec.newMilter,
			Actions:   milter.OptAddHeader, // but the milter also calls ChangeFrom & co.
			Protocol:  milter.OptNoUnknown,
		})
		c := dialUnix(t, path, func(o *Options) { o.StrictActions = strict })
		connectHelo(t, c)
		res, err := c.Send(&Message{Sender: "a@x", Recipients: []string{"b@y"}})
		if strict {
			if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "CHGFROM") {
				t.Errorf("strict: err = %v", err)
			}
			if _, err2 := c.Send(&Message{Sender: "a@x"}); err2 != err {
				t.Errorf("after a protocol error, Send = %v, want the same error", err2)
			}
		} else if err != nil || len(res.Modifications) != 4 {
			t.Errorf("lenient: %+v, %v", res, err)
		}
	}
}

func TestRawPacketsAgainstGoMilter(t *testing.T) {
	rec := &recorder{}
	path := serveGoMilter(t, &milter.Server{NewMilter: rec.newMilter, Protocol: milter.OptNoUnknown})
	c := dialUnix(t, path, func(o *Options) { o.SkipNegotiation = true })
	if n := c.Negotiated(); n.Version != PostfixVersion || n.Actions != PostfixActions || n.Protocol != 0 {
		t.Errorf("Negotiated before negotiation = %+v", n)
	}
	if err := c.WritePacket(CmdOptNeg, optneg(6, 0x1ff, 0x1fffff, "")); err != nil {
		t.Fatal(err)
	}
	cmd, data, err := c.ReadPacket()
	if err != nil || cmd != RepOptNeg || !reflect.DeepEqual(data, optneg(2, 0, uint32(milter.OptNoUnknown), "")) {
		t.Fatalf("ReadPacket = %q %q %v", cmd, data, err)
	}
	// go-milter answers OPTNEG at any time; Negotiate works after raw traffic.
	if err := c.Negotiate(); err != nil || c.Negotiated().Version != 2 {
		t.Fatalf("Negotiate = %v, %+v", err, c.Negotiated())
	}
	// A HELO before CONNECT, raw.
	if err := c.WritePacket(CmdHelo, []byte("early\x00")); err != nil {
		t.Fatal(err)
	}
	if cmd, data, err = c.ReadPacket(); err != nil || cmd != RepContinue || len(data) != 0 {
		t.Fatalf("ReadPacket = %q %q %v", cmd, data, err)
	}
	rec.waitKinds(t, "helo")
}

func TestTCP(t *testing.T) {
	rec := &recorder{eom: batvEOM}
	ln, err := listenTCP(t)
	if err != nil {
		t.Skip("no loopback TCP:", err)
	}
	srv := &milter.Server{
		NewMilter: rec.newMilter,
		Actions:   milter.OptAddHeader | milter.OptAddRcpt | milter.OptRemoveRcpt | milter.OptChangeFrom,
		Protocol:  milter.OptNoUnknown,
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { ln.Close(); <-done })

	c, err := Dial(context.Background(), Options{Network: "tcp", Address: ln.Addr().String(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.NetConn().(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	nodelay := -1
	_ = raw.Control(func(fd uintptr) {
		nodelay, _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY)
	})
	if nodelay == 0 {
		t.Errorf("TCP_NODELAY is off")
	}
	connectHelo(t, c)
	res, err := c.Send(&Message{Sender: "a@x", Recipients: []string{"b@y"}, Body: []byte("x\r\n")})
	if err != nil || !res.Delivered() || len(res.Modifications) != 4 {
		t.Fatalf("Send = %+v, %v", res, err)
	}
}
