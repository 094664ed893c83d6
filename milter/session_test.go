package milter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batv/batv/policy"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/mta"
	"github.com/batv/batv/internal/serve"
	"github.com/batv/batv/internal/testenv/conntest"
	"github.com/batv/batv/internal/testenv/daemontest"
	gomilter "github.com/d--j/go-milter"
)

// testServer serves the milter with roles and the test policy on a unix
// socket and returns the listener and the socket path.
func testServer(t testing.TB, roles Roles, mod func(*policy.Config), tweak func(*Server, *serve.Options)) (*serve.Listener, string) {
	t.Helper()
	p := testPolicy(t, mod)
	ln, path := conntest.ListenUnix(t, "milter.sock")
	tl := &testLog{t: t}
	log := slog.New(slog.NewTextHandler(tl, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", tl.String())
		}
	})
	srv := &Server{Name: "test", Roles: roles, Policy: func() *policy.Policy { return p },
		Now: func() time.Time { return testNow }, Logger: log}
	opts := serve.Options{Name: "test", Logger: log}
	if tweak != nil {
		tweak(srv, &opts)
	}
	l := serve.New(ln, opts)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		l.Shutdown(ctx)
		if err := <-done; !errors.Is(err, serve.ErrClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return l, path
}

// testLog sends the server's log lines to the test log and keeps them.
type testLog struct {
	t     testing.TB
	mu    sync.Mutex
	b     bytes.Buffer
	lines []string // the complete lines written so far
	part  []byte   // the last line, while incomplete
	// counted caches count: for each query, the lines it has looked at
	// and how many matched.
	counted map[string][2]int
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Write(p)
	l.part = append(l.part, p...)
	for {
		i := bytes.IndexByte(l.part, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, string(l.part[:i]))
		l.part = l.part[i+1:]
	}
	return len(p), nil
}

func (l *testLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// count returns the number of log lines that contain every one of subs,
// looking only at the lines written since the last count of the same
// query (a busy server writes many).
func (l *testLog) count(subs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := strings.Join(subs, "\x00")
	c := l.counted[key]
	for _, line := range l.lines[c[0]:] {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			c[1]++
		}
	}
	c[0] = len(l.lines)
	if l.counted == nil {
		l.counted = map[string][2]int{}
	}
	l.counted[key] = c
	return c[1]
}

// dial connects like Postfix from client addr ("" for a local client)
// with daemon name.
func dial(t *testing.T, path, addr, daemon string) *mta.Session {
	t.Helper()
	c, err := mta.New("unix", path, 5*time.Second).Session(mta.SMTPClient{Addr: addr, Port: 25000, Daemon: daemon})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func send(t *testing.T, c *mta.Session, msg *mta.Message) *mta.Result {
	t.Helper()
	res, err := c.Send(msg)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// mods lists the changes of a result compactly: "DELRCPT <a>; ADDRCPT
// <b>; CHGHEADER 1 Name=value; ADDHEADER Name=value; CHGFROM <c>".
func mods(res *mta.Result) string {
	var s []string
	for _, m := range res.Changes {
		switch m.Type {
		case gomilter.ActionChangeFrom:
			s = append(s, "CHGFROM "+m.From)
		case gomilter.ActionAddRcpt:
			s = append(s, "ADDRCPT "+m.Rcpt)
		case gomilter.ActionDelRcpt:
			s = append(s, "DELRCPT "+m.Rcpt)
		case gomilter.ActionChangeHeader:
			s = append(s, fmt.Sprintf("CHGHEADER %d %s=%s", m.HeaderIndex, m.HeaderName, m.HeaderValue))
		case gomilter.ActionAddHeader:
			s = append(s, "ADDHEADER "+m.HeaderName+"="+m.HeaderValue)
		case gomilter.ActionQuarantine:
			s = append(s, "QUARANTINE "+m.Reason)
		default:
			s = append(s, m.String())
		}
	}
	return strings.Join(s, "; ")
}

// delivered reports whether the message reached the end and was accepted.
func delivered(res *mta.Result) bool {
	return res.End != nil && (res.End.Type == gomilter.ActionAccept || res.End.Type == gomilter.ActionContinue)
}

// continued reports whether a recipient was accepted.
func continued(a *gomilter.Action) bool { return a != nil && a.Type == gomilter.ActionContinue }

func TestOutboundSignsAuthenticatedMail(t *testing.T) {
	_, path := testServer(t, Outbound|Inbound, nil, nil)
	c := dial(t, path, "203.0.113.5", "submission")
	res := send(t, c, &mta.Message{Sender: "alice@example.com", Recipients: []string{"bob@example.org"},
		AuthUser: "alice", QueueID: "4ABC"})
	if !delivered(res) || len(res.Changes) != 1 || res.SignedSender() == "" {
		t.Fatalf("result %v, changes %s", res.End, mods(res))
	}
	v := batv.Verifier{Keys: testKeys, Now: func() time.Time { return testNow }, Strict: true}
	r, _ := v.Verify(res.SignedSender())
	if r.Status != batv.Valid || r.Untagged() != "alice@example.com" {
		t.Fatalf("CHGFROM %q verifies as %v", res.SignedSender(), r.Status)
	}

	// The next message on the same connection from an unauthenticated
	// outsider is not signed: the decision is per message, from MAIL.
	c2 := dial(t, path, "203.0.113.5", "smtpd")
	res = send(t, c2, &mta.Message{Sender: "alice@example.com", Recipients: []string{"bob@example.org"}})
	if !delivered(res) || len(res.Changes) != 0 {
		t.Fatalf("outsider: %v %s", res.End, mods(res))
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
		res := send(t, c, &mta.Message{Sender: tt.sender, Recipients: tt.rcpts})
		if !delivered(res) || (len(res.Changes) == 1) != tt.signed {
			t.Errorf("%q -> %v: %v %s", tt.sender, tt.rcpts, res.End, mods(res))
		}
	}
}

func TestInboundMultiRecipientBounce(t *testing.T) {
	_, path := testServer(t, Inbound, nil, nil)
	valid := tag(t, "user@example.com", 1)
	c := dial(t, path, "192.0.2.25", "smtpd")
	res := send(t, c, &mta.Message{
		Sender:     "",
		Recipients: []string{forge(tag(t, "other@example.com", 1)), valid, "someone@example.org"},
		Headers:    []mta.Header{{Name: "From", Value: "MAILER-DAEMON@example.org"}, {Name: "Subject", Value: "Undelivered Mail"}},
		Body:       []byte("bounce\r\n"),
		QueueID:    "5DEF",
	})
	if !mta.Refused(res.Rcpts[0]) || res.Rcpts[0].SMTPCode != 550 || !strings.Contains(res.Rcpts[0].SMTPReply, "5.7.1 Bounce refused") {
		t.Fatalf("forged recipient: %v", res.Rcpts[0])
	}
	if !continued(res.Rcpts[1]) || !continued(res.Rcpts[2]) {
		t.Fatalf("other recipients: %v %v", res.Rcpts[1], res.Rcpts[2])
	}
	want := "DELRCPT <" + valid + ">; ADDRCPT <user@example.com>"
	if !delivered(res) || mods(res) != want {
		t.Fatalf("modifications %q, want %q", mods(res), want)
	}
}

func TestInboundUntaggedBounceAndAbort(t *testing.T) {
	_, path := testServer(t, Inbound, nil, nil)
	c := dial(t, path, "192.0.2.25", "smtpd")
	// Refused at DATA, not at RCPT, so that a callout succeeds.
	res := send(t, c, &mta.Message{Sender: "", Recipients: []string{"user@example.com"}})
	if !continued(res.Rcpts[0]) || !mta.Refused(res.Data) || !strings.HasPrefix(res.Data.SMTPReply, "550 5.7.1 Bounce refused") || res.End != nil {
		t.Fatalf("untagged bounce:\n%s", res)
	}
	// A transaction aborted after its RCPT leaves nothing behind: the
	// next message, not a bounce, gets no rewrite of the earlier tag.
	valid := tag(t, "user@example.com", 1)
	raw := c.Raw()
	if r, err := raw.Mail("", ""); err != nil || !continued(r) {
		t.Fatal(r, err)
	}
	if r, err := raw.Rcpt(valid, ""); err != nil || !continued(r) {
		t.Fatal(r, err)
	}
	if err := raw.Abort(nil); err != nil {
		t.Fatal(err)
	}
	res = send(t, c, &mta.Message{Sender: "friend@example.org", Recipients: []string{"user@example.com"}})
	if !delivered(res) || len(res.Changes) != 0 {
		t.Fatalf("after abort: %v %s", res.End, mods(res))
	}
	// postmaster takes untagged bounces.
	res = send(t, c, &mta.Message{Sender: "", Recipients: []string{"postmaster@example.com"}})
	if !delivered(res) || len(res.Changes) != 0 {
		t.Fatalf("postmaster: %v %s", res.End, mods(res))
	}
}

func TestInboundRemovesForgedStatusHeaders(t *testing.T) {
	_, path := testServer(t, Inbound, func(c *policy.Config) { c.Verify.InvalidTagReply = "deliver-mark" }, nil)
	c := dial(t, path, "192.0.2.25", "smtpd")
	res := send(t, c, &mta.Message{
		Sender:     "someone@example.org",
		Recipients: []string{forge(tag(t, "user@example.com", 1))},
		Headers: []mta.Header{{Name: "X-BATV-Status", Value: "valid"}, {Name: "Subject", Value: "hi"},
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
		c := dial(t, path, "192.0.2.25", "smtpd")
		if c.Protocol(gomilter.OptNoHeaders) != tt.noHdrs || c.Protocol(gomilter.OptNoRcptTo) != tt.noRcpt ||
			!c.Protocol(gomilter.OptNoBody) || c.Raw().ActionOption(gomilter.OptChangeFrom) != tt.chgfrom {
			t.Errorf("%v: negotiated headers %v, rcpt %v, body %v, chgfrom %v", tt.roles,
				!c.Protocol(gomilter.OptNoHeaders), !c.Protocol(gomilter.OptNoRcptTo), !c.Protocol(gomilter.OptNoBody),
				c.Raw().ActionOption(gomilter.OptChangeFrom))
		}
		// No reply to CONNECT and MAIL, nor to headers when they are
		// taken; every other event is answered.
		for _, nr := range []struct {
			flag gomilter.OptProtocol
			want bool
		}{
			{gomilter.OptNoConnReply, true}, {gomilter.OptNoMailReply, true}, {gomilter.OptNoHeaderReply, !tt.noHdrs},
			{gomilter.OptNoRcptReply, false}, {gomilter.OptNoDataReply, false}, {gomilter.OptNoEOHReply, false},
			{gomilter.OptNoBodyReply, false}, {gomilter.OptNoHeloReply, false}, {gomilter.OptNoUnknownReply, false},
		} {
			if c.Protocol(nr.flag) != nr.want {
				t.Errorf("%v: no-reply flag %v is %v, want %v", tt.roles, nr.flag, !nr.want, nr.want)
			}
		}
	}
}

func TestShutdownFinishesMessageInFlight(t *testing.T) {
	// Both roles: the reply to RCPT says the milter has read MAIL.
	l, path := testServer(t, Outbound|Inbound, nil, nil)
	busy := dial(t, path, "", "pickup")
	idle := dial(t, path, "", "pickup")
	raw := busy.Raw()
	if r, err := raw.Mail("alice@example.com", ""); err != nil || !continued(r) {
		t.Fatal(r, err)
	}
	if r, err := raw.Rcpt("bob@example.org", ""); err != nil || !continued(r) {
		t.Fatal(r, err)
	}
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- l.Shutdown(ctx)
	}()
	// The idle connection is closed at once; the busy one finishes its
	// message, signed, and is closed after the reply.
	deadline := time.Now().Add(5 * time.Second)
	for l.Open() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections open after shutdown began, want the busy one", l.Open())
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := idle.Send(&mta.Message{Sender: "alice@example.com", Recipients: []string{"bob@example.org"}}); err == nil {
		t.Fatal("the idle connection still serves a message after shutdown began")
	}
	if r, err := raw.DataStart(); err != nil || !continued(r) {
		t.Fatal(r, err)
	}
	if _, err := raw.HeaderEnd(); err != nil {
		t.Fatal(err)
	}
	changes, end, err := raw.BodyReadFrom(strings.NewReader("hello\r\n"))
	if err != nil || end.Type != gomilter.ActionAccept || len(changes) != 1 || changes[0].Type != gomilter.ActionChangeFrom {
		t.Fatalf("message in flight: %v %v %v", changes, end, err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if l.Open() != 0 {
		t.Fatalf("%d connections open after shutdown", l.Open())
	}
}

// TestDecisionLogLines: one info line per decision, with what an
// administrator needs to find the message and understand the decision,
// and no key material.
func TestDecisionLogLines(t *testing.T) {
	var buf daemontest.Buffer
	_, path := testServer(t, Outbound|Inbound, nil, func(s *Server, o *serve.Options) {
		s.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		o.Logger = s.Logger
	})
	valid := tag(t, "user@example.com", 1)
	mx := dial(t, path, "192.0.2.25", "smtpd")
	send(t, mx, &mta.Message{Recipients: []string{forge(valid), valid}, QueueID: "4QID1"})
	sub := dial(t, path, "203.0.113.5", "submission")
	send(t, sub, &mta.Message{Sender: "alice@example.com", Recipients: []string{"bob@example.org"}, AuthUser: "alice", QueueID: "4QID2"})
	send(t, sub, &mta.Message{Sender: valid, Recipients: []string{"bob@example.org"}, AuthUser: "alice", QueueID: "4QID3"})
	// From the MTA host, whose mail is ours to sign: a bounce is never
	// signed, and says nothing about it at level info; a reply to an
	// expired tag is accepted, and logged as expired.
	local := dial(t, path, "", "pickup")
	send(t, local, &mta.Message{Recipients: []string{valid}, QueueID: "4QID4"})
	expired := tag(t, "user@example.com", 20)
	send(t, local, &mta.Message{Sender: "friend@example.org", Recipients: []string{expired}, QueueID: "4QID5"})

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	// Postfix sends the queue id at RCPT only once it has accepted a
	// recipient: both RCPT lines here have none; the end of message has.
	want := [][]string{
		{"msg=recipient", `queue_id=""`, "direction=inbound", "outcome=bad-signature", "action=reject", `reason="signature does not match"`, forge(valid), "key_id=4", "sender=<>", "client=192.0.2.25"},
		{"msg=recipient", "direction=inbound", "outcome=valid", "action=accept", valid, "key_id=4", "untagged=user@example.com", "client=192.0.2.25"},
		{`msg="bounce with several protected recipients"`, "queue_id=4QID1", "recipients=2"},
		{"msg=signed", "queue_id=4QID2", "direction=outbound", "outcome=signed", "reason=authenticated", "key_id=4", "sender=alice@example.com", "tagged=\"prvs="},
		{`msg="not signed"`, "queue_id=4QID3", "direction=outbound", "outcome=skipped", "reason=tagged", valid},
		{"msg=recipient", "direction=inbound", "outcome=valid", "action=accept", valid, "sender=<>", "bounce=true"},
		{"msg=recipient", "direction=inbound", "outcome=expired", "action=accept", `reason="expired tag on a reply"`, expired, "untagged=user@example.com"},
		{`msg="not signed"`, "queue_id=4QID5", "reason=foreign-domain", "sender=friend@example.org"},
	}
	var got []string
	for _, l := range lines {
		if strings.Contains(l, "level=INFO") {
			got = append(got, l)
		}
		// The null sender has one spelling in every line.
		if strings.Contains(l, `sender=""`) {
			t.Errorf("the null sender as \"\": %s", l)
		}
	}
	if !regexp.MustCompile(`level=DEBUG msg="bounce: never signed" .*queue_id=4QID4 sender=<>`).MatchString(buf.String()) {
		t.Errorf("no debug line for the bounce from the MTA host:\n%s", buf.String())
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
