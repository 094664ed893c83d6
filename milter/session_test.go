package milter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batv/batv/policy"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/mtaclient"
)

// testServer serves the milter with roles and the test policy on a unix
// socket and returns the server and the socket path.
func testServer(t testing.TB, roles Roles, mod func(*policy.Config), tweak func(*Server)) (*Server, string) {
	t.Helper()
	p := testPolicy(t, mod)
	dir, err := os.MkdirTemp("", "batv-milter")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "milter.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Name: "test", Roles: roles, Policy: func() *policy.Policy { return p },
		Now: func() time.Time { return testNow }, Logger: slog.New(slog.NewTextHandler(&testLog{t: t}, nil))}
	if tweak != nil {
		tweak(srv)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return srv, path
}

// testLog sends the server's log lines to the test log and keeps them.
type testLog struct {
	t  testing.TB
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Write(p)
	return len(p), nil
}

// dial connects like Postfix from client addr with daemon name.
func dial(t *testing.T, path, addr, daemon string) *mtaclient.Conn {
	t.Helper()
	c, err := mtaclient.Dial(context.Background(), mtaclient.Options{Network: "unix", Address: path, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	family := byte('4')
	if addr == "" {
		family = 'L'
	}
	r, err := c.Connect("client.example.org", family, 25000, addr, mtaclient.StockMacros(mtaclient.StageConnect,
		mtaclient.PostfixInfo{DaemonName: daemon, ClientAddr: addr}))
	if err != nil || !r.Continue() {
		t.Fatalf("connect: %v %v", r, err)
	}
	return c
}

func send(t *testing.T, c *mtaclient.Conn, msg *mtaclient.Message) *mtaclient.Result {
	t.Helper()
	res, err := c.Send(msg)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// mods lists the modifications of a result compactly: "DELRCPT <a>;
// ADDRCPT <b>; CHGHEADER 1 Name=value; ADDHEADER Name=value; CHGFROM <c>".
func mods(res *mtaclient.Result) string {
	var s []string
	for _, m := range res.Modifications {
		switch m := m.(type) {
		case *mtaclient.ChangeFrom:
			s = append(s, "CHGFROM "+m.Addr)
		case *mtaclient.AddRcpt:
			s = append(s, "ADDRCPT "+m.Addr)
		case *mtaclient.DelRcpt:
			s = append(s, "DELRCPT "+m.Addr)
		case *mtaclient.ChangeHeader:
			s = append(s, fmt.Sprintf("CHGHEADER %d %s=%s", m.Index, m.Name, m.Value))
		case *mtaclient.AddHeader:
			s = append(s, "ADDHEADER "+m.Name+"="+m.Value)
		default:
			s = append(s, m.String())
		}
	}
	return strings.Join(s, "; ")
}

func TestOutboundSignsAuthenticatedMail(t *testing.T) {
	_, path := testServer(t, Outbound|Inbound, nil, nil)
	c := dial(t, path, "203.0.113.5", "submission")
	res := send(t, c, &mtaclient.Message{Sender: "alice@example.com", Recipients: []string{"bob@example.org"},
		AuthUser: "alice", QueueID: "4ABC"})
	if !res.Delivered() || len(res.Modifications) != 1 {
		t.Fatalf("result %v, modifications %s", res.Reply, mods(res))
	}
	cf, ok := res.Modifications[0].(*mtaclient.ChangeFrom)
	if !ok {
		t.Fatalf("modification %s is not CHGFROM", mods(res))
	}
	v := batv.Verifier{Keys: testKeys, Now: func() time.Time { return testNow }, Strict: true}
	r, _ := v.Verify(strings.Trim(cf.Addr, "<>"))
	if r.Status != batv.Valid || r.Untagged() != "alice@example.com" {
		t.Fatalf("CHGFROM %q verifies as %v", cf.Addr, r.Status)
	}

	// The next message on the same connection from an unauthenticated
	// outsider is not signed: the decision is per message, from MAIL.
	c2 := dial(t, path, "203.0.113.5", "smtpd")
	res = send(t, c2, &mtaclient.Message{Sender: "alice@example.com", Recipients: []string{"bob@example.org"}})
	if !res.Delivered() || len(res.Modifications) != 0 {
		t.Fatalf("outsider: %v %s", res.Reply, mods(res))
	}
}

func TestOutboundLocalSubmissionAndSkips(t *testing.T) {
	_, path := testServer(t, Outbound, func(c *policy.Config) { c.Sign.ExemptRecipients = []string{"lists.example.org"} }, nil)
	c := dial(t, path, "", "pickup")
	for _, tt := range []struct {
		sender string
		rcpts  []string
		signed bool
	}{
		{"alice@example.com", []string{"bob@example.org"}, true},
		{"alice@example.org", []string{"bob@example.org"}, false}, // foreign domain
		{"", []string{"bob@example.org"}, false},                  // null sender
		{"alice@example.com", []string{"bob@example.org", "list@lists.example.org"}, false},
	} {
		res := send(t, c, &mtaclient.Message{Sender: tt.sender, Recipients: tt.rcpts})
		if !res.Delivered() || (len(res.Modifications) == 1) != tt.signed {
			t.Errorf("%q -> %v: %v %s", tt.sender, tt.rcpts, res.Reply, mods(res))
		}
	}
}

func TestInboundMultiRecipientBounce(t *testing.T) {
	_, path := testServer(t, Inbound, nil, nil)
	valid := tag(t, "user@example.com", 1)
	c := dial(t, path, "192.0.2.25", "smtpd")
	res := send(t, c, &mtaclient.Message{
		Sender:     "",
		Recipients: []string{forge(tag(t, "other@example.com", 1)), valid, "someone@example.org"},
		Headers:    []mtaclient.Header{{Name: "From", Value: "MAILER-DAEMON@example.org"}, {Name: "Subject", Value: "Undelivered Mail"}},
		Body:       []byte("bounce\r\n"),
		QueueID:    "5DEF",
	})
	if !res.Rcpts[0].Rejected() || res.Rcpts[0].SMTPCode() != 550 || !strings.Contains(res.Rcpts[0].Text, "5.7.1 Bounce refused") {
		t.Fatalf("forged recipient: %v", res.Rcpts[0])
	}
	if !res.Rcpts[1].Continue() || !res.Rcpts[2].Continue() {
		t.Fatalf("other recipients: %v %v", res.Rcpts[1], res.Rcpts[2])
	}
	want := "DELRCPT <" + valid + ">; ADDRCPT <user@example.com>"
	if !res.Delivered() || mods(res) != want {
		t.Fatalf("modifications %q, want %q", mods(res), want)
	}
}

func TestInboundUntaggedBounceAndAbort(t *testing.T) {
	_, path := testServer(t, Inbound, nil, nil)
	c := dial(t, path, "192.0.2.25", "smtpd")
	res := send(t, c, &mtaclient.Message{Sender: "", Recipients: []string{"user@example.com"}})
	if !res.Rcpts[0].Rejected() || !strings.HasPrefix(res.Rcpts[0].Text, "550 5.7.1") || res.Delivered() {
		t.Fatalf("untagged bounce: %v / %v", res.Rcpts[0], res.Reply)
	}
	// A transaction aborted after its RCPT leaves nothing behind: the
	// next message, not a bounce, gets no rewrite of the earlier tag.
	valid := tag(t, "user@example.com", 1)
	if r, err := c.Mail("", nil, nil); err != nil || !r.Continue() {
		t.Fatal(r, err)
	}
	if r, err := c.Rcpt(valid, nil, nil); err != nil || !r.Continue() {
		t.Fatal(r, err)
	}
	if err := c.Abort(); err != nil {
		t.Fatal(err)
	}
	res = send(t, c, &mtaclient.Message{Sender: "friend@example.org", Recipients: []string{"user@example.com"}})
	if !res.Delivered() || len(res.Modifications) != 0 {
		t.Fatalf("after abort: %v %s", res.Reply, mods(res))
	}
	// postmaster takes untagged bounces.
	res = send(t, c, &mtaclient.Message{Sender: "", Recipients: []string{"postmaster@example.com"}})
	if !res.Delivered() || len(res.Modifications) != 0 {
		t.Fatalf("postmaster: %v %s", res.Reply, mods(res))
	}
}

func TestInboundRemovesForgedStatusHeaders(t *testing.T) {
	_, path := testServer(t, Inbound, nil, nil)
	c := dial(t, path, "192.0.2.25", "smtpd")
	res := send(t, c, &mtaclient.Message{
		Sender:     "someone@example.org",
		Recipients: []string{forge(tag(t, "user@example.com", 1))},
		Headers: []mtaclient.Header{{Name: "X-BATV-Status", Value: "valid"}, {Name: "Subject", Value: "hi"},
			{Name: "x-batv-status", Value: "valid; rcpt=<user@example.com>"}},
		Body: []byte("hello\r\n"),
	})
	got := mods(res)
	want := "CHGHEADER 2 X-BATV-Status=; CHGHEADER 1 X-BATV-Status=; DELRCPT <" + forge(tag(t, "user@example.com", 1)) +
		">; ADDRCPT <user@example.com>; ADDHEADER X-BATV-Status=bad-signature; rcpt=<" + forge(tag(t, "user@example.com", 1)) + ">"
	if got != want {
		t.Errorf("modifications\n%s\nwant\n%s", got, want)
	}
}

func TestNegotiationSkipsUnneededStages(t *testing.T) {
	for _, tt := range []struct {
		roles   Roles
		mod     func(*policy.Config)
		noHdrs  bool
		noRcpt  bool
		chgfrom bool
	}{
		{roles: Outbound, noHdrs: true, noRcpt: true, chgfrom: true},
		{roles: Outbound, mod: func(c *policy.Config) { c.Sign.ExemptRecipients = []string{"x.example"} }, noHdrs: true, chgfrom: true},
		{roles: Inbound},
		{roles: Inbound, mod: func(c *policy.Config) { c.Verify.RemoveForgedHeaders = false }, noHdrs: true},
		{roles: Outbound | Inbound, chgfrom: true},
	} {
		_, path := testServer(t, tt.roles, tt.mod, nil)
		c, err := mtaclient.Dial(context.Background(), mtaclient.Options{Network: "unix", Address: path})
		if err != nil {
			t.Fatal(err)
		}
		n := c.Negotiated()
		c.Close()
		const noHdrs, noRcpt, noBody, chgfrom = 0x20, 0x8, 0x10, 0x40
		if (n.Protocol&noHdrs != 0) != tt.noHdrs || (n.Protocol&noRcpt != 0) != tt.noRcpt ||
			n.Protocol&noBody == 0 || (n.Actions&chgfrom != 0) != tt.chgfrom {
			t.Errorf("%v: protocol %#x actions %#x", tt.roles, n.Protocol, n.Actions)
		}
		// No reply to CONNECT and MAIL, nor to headers when they are
		// taken; every other event is answered.
		wantNR := mtaclient.ProtoNoConnRepl | mtaclient.ProtoNoMailRepl
		if !tt.noHdrs {
			wantNR |= mtaclient.ProtoNoHeaderRepl
		}
		if got := n.Protocol & (0xff000 | mtaclient.ProtoNoHeaderRepl); got != wantNR {
			t.Errorf("%v: no-reply flags %#x, want %#x", tt.roles, got, wantNR)
		}
	}
}

func TestConnectionLimit(t *testing.T) {
	srv, path := testServer(t, Inbound, nil, func(s *Server) { s.MaxConns = 1 })
	c := dial(t, path, "192.0.2.25", "smtpd")
	_ = c
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := nc.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("second connection: read %v, want EOF", err)
	}
	if n := srv.OpenConns(); n != 1 {
		t.Fatalf("open connections %d", n)
	}
}

func TestShutdownFinishesMessageInFlight(t *testing.T) {
	p := testPolicy(t, nil)
	dir := t.TempDir()
	path := filepath.Join(dir, "m.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Name: "test", Roles: Outbound, Policy: func() *policy.Policy { return p }, Now: func() time.Time { return testNow }}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()

	busy := dial(t, path, "", "pickup")
	idle := dial(t, path, "", "pickup")
	if r, err := busy.Mail("alice@example.com", nil, nil); err != nil || !r.Continue() {
		t.Fatal(r, err)
	}
	// MAIL has no reply (SMFIP_NR_MAIL): wait until the server has read it.
	for srv.OpenConns() != 2 || messagesInFlight(srv) != 1 {
		time.Sleep(time.Millisecond)
	}
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- srv.Shutdown(ctx)
	}()
	// The idle connection is closed at once; the busy one finishes its
	// message, signed, and is closed after the reply.
	if err := idle.WaitClosed(2 * time.Second); err != nil {
		t.Fatalf("idle connection after shutdown began: %v", err)
	}
	res, err := busy.EndOfMessage(nil)
	if err != nil || !res.Reply.Continue() || len(res.Modifications) != 1 {
		t.Fatalf("message in flight: %v %v", res, err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-done; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
}

// messagesInFlight counts the server's connections inside a transaction.
func messagesInFlight(srv *Server) int {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	n := 0
	for c := range srv.conns {
		c.mu.Lock()
		if c.inMessage {
			n++
		}
		c.mu.Unlock()
	}
	return n
}

// TestDecisionLogLines: one info line per decision, with what an
// administrator needs to find the message and understand the decision,
// and no key material.
func TestDecisionLogLines(t *testing.T) {
	var buf syncBuf
	_, path := testServer(t, Outbound|Inbound, nil, func(s *Server) {
		s.Logger = slog.New(slog.NewTextHandler(&buf, nil))
	})
	valid := tag(t, "user@example.com", 1)
	mx := dial(t, path, "192.0.2.25", "smtpd")
	send(t, mx, &mtaclient.Message{Recipients: []string{forge(valid), valid}, QueueID: "4QID1"})
	sub := dial(t, path, "203.0.113.5", "submission")
	send(t, sub, &mtaclient.Message{Sender: "alice@example.com", Recipients: []string{"bob@example.org"}, AuthUser: "alice", QueueID: "4QID2"})
	send(t, sub, &mtaclient.Message{Sender: valid, Recipients: []string{"bob@example.org"}, AuthUser: "alice", QueueID: "4QID3"})

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	// Postfix sends the queue id at RCPT only once it has accepted a
	// recipient: both RCPT lines here have none; the end of message has.
	want := [][]string{
		{"msg=recipient", `queue_id=""`, "direction=inbound", "outcome=bad-signature", "action=reject", `reason="signature does not match"`, forge(valid), "key_id=4", "sender=<>", "client=192.0.2.25"},
		{"msg=recipient", "direction=inbound", "outcome=valid", "action=accept", valid, "key_id=4", "untagged=user@example.com", "client=192.0.2.25"},
		{`msg="bounce with several protected recipients"`, "queue_id=4QID1", "recipients=2"},
		{"msg=signed", "queue_id=4QID2", "direction=outbound", "outcome=signed", "reason=authenticated", "key_id=4", "sender=alice@example.com", "tagged=\"prvs="},
		{`msg="not signed"`, "queue_id=4QID3", "direction=outbound", "outcome=skipped", "reason=tagged", valid},
	}
	var got []string
	for _, l := range lines {
		if strings.Contains(l, "level=INFO") {
			got = append(got, l)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d info lines, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i, parts := range want {
		for _, p := range parts {
			if !strings.Contains(got[i], p) {
				t.Errorf("line %d lacks %q:\n%s", i+1, p, got[i])
			}
		}
		if strings.Contains(got[i], string(testKeys.Secret)) {
			t.Errorf("line %d shows the key", i+1)
		}
	}
}

// syncBuf is a bytes.Buffer safe for the server's goroutines.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
