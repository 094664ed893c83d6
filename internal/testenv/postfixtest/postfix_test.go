package postfixtest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const waitTime = 20 * time.Second

func testMessage(from, to, subject string) []byte {
	return []byte(fmt.Sprintf("From: <%s>\nTo: <%s>\nSubject: %s\nMessage-ID: <%d.%s@client.test>\n\nHello.\n.leading dot line\n", from, to, subject, time.Now().UnixNano(), strings.ReplaceAll(subject, " ", "-")))
}

// mustSend(t)(inst.SendMX(...)) fails the test when the conversation broke.
func mustSend(t *testing.T) func(*Result, error) *Result {
	return func(res *Result, err error) *Result {
		t.Helper()
		if err != nil {
			t.Fatalf("SMTP conversation failed: %v\n%s", err, res)
		}
		return res
	}
}

func expectReply(t *testing.T, what string, r *Reply, code int, enhanced, textPart string) {
	t.Helper()
	if r == nil {
		t.Fatalf("%s: no reply (step not reached)", what)
	}
	if r.Code != code || r.Enhanced != enhanced || !strings.Contains(r.Text, textPart) {
		t.Fatalf("%s: got %q, want %d %s ...%s...", what, r.String(), code, enhanced, textPart)
	}
}

func expectQueueEmpty(t *testing.T, inst *Instance) {
	t.Helper()
	q, err := inst.Queue()
	if err != nil {
		t.Fatal(err)
	}
	if len(q) != 0 {
		t.Fatalf("queue not empty: %+v", q)
	}
}

func TestInboundDeliveredToSink(t *testing.T) {
	t.Parallel()
	inst := Start(t, Options{})
	data := testMessage("sender@remote.test", "alice@example.com", "inbound")
	res := mustSend(t)(inst.SendMX("sender@remote.test", []string{"alice@example.com"}, data))
	t.Logf("transcript:\n%s", res)
	expectReply(t, "MAIL", res.Mail, 250, "2.1.0", "Ok")
	expectReply(t, "RCPT", res.Rcpt("alice@example.com"), 250, "2.1.5", "Ok")
	if !res.Accepted() {
		t.Fatalf("message not accepted:\n%s", res)
	}
	m := inst.WaitMessage(t, waitTime, ToRcpt("alice@example.com"))
	if m.From != "sender@remote.test" || len(m.Rcpts) != 1 || m.Rcpts[0] != "alice@example.com" {
		t.Fatalf("wrong envelope: %s", m)
	}
	if got := m.Header().Get("Subject"); got != "inbound" {
		t.Errorf("Subject = %q", got)
	}
	if !strings.Contains(string(m.Body()), "\r\n.leading dot line\r\n") {
		t.Errorf("body not transmitted faithfully: %q", m.Body())
	}
	if m.Helo != DefaultHostname {
		t.Errorf("Postfix said EHLO %q to the sink, want %q", m.Helo, DefaultHostname)
	}
	if err := inst.WaitQueueEmpty(waitTime); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(inst.MailLog(), "postfix/smtpd[") {
		t.Errorf("MX smtpd does not log as postfix/smtpd:\n%s", inst.LogTail(20))
	}
}

func TestUnknownRecipientRefused(t *testing.T) {
	t.Parallel()
	inst := Start(t, Options{Recipients: []string{"alice@example.com"}})
	res := mustSend(t)(inst.SendMX("sender@remote.test", []string{"nobody@example.com", "alice@example.com"},
		testMessage("sender@remote.test", "alice@example.com", "unknown")))
	t.Logf("transcript:\n%s", res)
	expectReply(t, "RCPT nobody", res.Rcpt("nobody@example.com"), 550, "5.1.1", "User unknown")
	expectReply(t, "RCPT alice", res.Rcpt("alice@example.com"), 250, "2.1.5", "Ok")
	if !res.Accepted() {
		t.Fatalf("message for the valid recipient not accepted:\n%s", res)
	}
	m := inst.WaitMessage(t, waitTime, ToRcpt("alice@example.com"))
	if len(m.Rcpts) != 1 {
		t.Fatalf("unexpected recipients %v", m.Rcpts)
	}
	// Bob is valid by default but not in this instance.
	res = mustSend(t)(inst.SendMX("sender@remote.test", []string{"bob@example.com"}, testMessage("a@b", "c@d", "x")))
	expectReply(t, "RCPT bob", res.Rcpt("bob@example.com"), 550, "5.1.1", "User unknown in relay recipient table")
	if res.Data != nil {
		t.Fatalf("DATA sent without valid recipients:\n%s", res)
	}
}

func TestNoRelayFromMX(t *testing.T) {
	t.Parallel()
	inst := Start(t, Options{})
	res := mustSend(t)(inst.SendMX("sender@remote.test", []string{"carol@remote.test"},
		testMessage("sender@remote.test", "carol@remote.test", "relay")))
	t.Logf("transcript:\n%s", res)
	expectReply(t, "RCPT", res.Rcpt("carol@remote.test"), 554, "5.7.1", "Relay access denied")
	if res.Accepted() {
		t.Fatal("relayed without AUTH")
	}
	// A client that pretends to be one of us is still an outsider.
	res = mustSend(t)(inst.SendMX("alice@example.com", []string{"carol@remote.test"}, nil))
	expectReply(t, "RCPT (local sender)", res.Rcpt("carol@remote.test"), 554, "5.7.1", "Relay access denied")
	expectQueueEmpty(t, inst)
	if n := len(inst.Sink().Messages()); n != 0 {
		t.Fatalf("sink got %d messages", n)
	}
}

func TestSubmissionAuthenticated(t *testing.T) {
	t.Parallel()
	inst := Start(t, Options{Users: map[string]string{"alice@example.com": "pw-alice", "bob": "pw bob"}})
	// alice logs in with her full address, bob with a bare name (realm =
	// first domain), over LOGIN.
	res := mustSend(t)(inst.Submit("alice@example.com", "pw-alice", "alice@example.com", []string{"carol@remote.test"},
		testMessage("alice@example.com", "carol@remote.test", "submission")))
	t.Logf("transcript:\n%s", res)
	expectReply(t, "AUTH", res.Auth, 235, "2.7.0", "Authentication successful")
	if !res.Accepted() {
		t.Fatalf("not accepted:\n%s", res)
	}
	m := inst.WaitMessage(t, waitTime, ToRcpt("carol@remote.test"))
	if m.From != "alice@example.com" {
		t.Fatalf("wrong sender: %s", m)
	}
	res = mustSend(t)(Send(inst.SubmissionAddr(), Envelope{Username: "bob", Password: "pw bob", AuthMechanism: "LOGIN",
		From: "bob@example.com", Rcpts: []string{"dave@remote.test", "alice@example.com"},
		Data: testMessage("bob@example.com", "dave@remote.test", "login")}))
	if !res.Accepted() {
		t.Fatalf("bob (LOGIN) not accepted:\n%s", res)
	}
	m = inst.WaitMessage(t, waitTime, All(FromSender("bob@example.com"), ToRcpt("dave@remote.test")))
	inst.WaitMessage(t, waitTime, All(FromSender("bob@example.com"), ToRcpt("alice@example.com")))
	// The raw address works for swaks too.
	if swaks, err := exec.LookPath("swaks"); err != nil {
		t.Log("swaks not installed: swaks part skipped")
	} else {
		out, err := exec.Command(swaks, "--server", inst.SubmissionAddr(), "--helo", "client.test", "--auth", "PLAIN",
			"--auth-user", "alice@example.com", "--auth-password", "pw-alice",
			"--from", "alice@example.com", "--to", "frank@remote.test", "--header", "Subject: via swaks").CombinedOutput()
		if err != nil {
			t.Fatalf("swaks: %v\n%s", err, out)
		}
		m := inst.WaitMessage(t, waitTime, ToRcpt("frank@remote.test"))
		if m.Header().Get("Subject") != "via swaks" {
			t.Errorf("swaks message subject %q", m.Header().Get("Subject"))
		}
	}
	log := inst.MailLog()
	if !strings.Contains(log, "postfix/submission/smtpd[") || !strings.Contains(log, "sasl_username=bob") {
		t.Errorf("submission log lines missing:\n%s", inst.LogTail(30))
	}
}

func TestSubmissionUnauthenticatedRefused(t *testing.T) {
	t.Parallel()
	inst := Start(t, Options{})
	res := mustSend(t)(inst.Submit("", "", "alice@example.com", []string{"carol@remote.test", "alice@example.com"},
		testMessage("alice@example.com", "carol@remote.test", "noauth")))
	t.Logf("transcript:\n%s", res)
	if res.Auth != nil {
		t.Fatal("AUTH sent")
	}
	for _, rc := range []string{"carol@remote.test", "alice@example.com"} {
		expectReply(t, "RCPT "+rc+" without AUTH", res.Rcpt(rc), 554, "5.7.1", "Access denied")
	}
	res = mustSend(t)(inst.Submit(DefaultUser, "wrong", "alice@example.com", []string{"carol@remote.test"}, nil))
	t.Logf("transcript:\n%s", res)
	expectReply(t, "AUTH wrong password", res.Auth, 535, "5.7.8", "authentication failed")
	if res.Mail != nil {
		t.Fatal("client went on after a failed AUTH")
	}
	expectQueueEmpty(t, inst)
	if n := len(inst.Sink().Messages()); n != 0 {
		t.Fatalf("sink got %d messages", n)
	}
}

func TestBounceOfRefusedRecipientReachesSender(t *testing.T) {
	t.Parallel()
	// A dead non_smtpd_milters with tempfail would stop the bounce if
	// locally generated bounces went through it: they do not
	// (internal_mail_filter_classes is empty).
	inst := Start(t, Options{Main: map[string]string{
		"non_smtpd_milters":     "unix:" + TempDir(t) + "/dead.sock",
		"milter_default_action": "tempfail",
	}})
	inst.Sink().Refuse("nobody@remote.test")
	res := mustSend(t)(inst.Submit(DefaultUser, DefaultPassword, "alice@example.com",
		[]string{"nobody@remote.test", "carol@remote.test"},
		testMessage("alice@example.com", "nobody@remote.test", "will bounce")))
	if !res.Accepted() {
		t.Fatalf("not accepted:\n%s", res)
	}
	inst.WaitMessage(t, waitTime, ToRcpt("carol@remote.test"))
	b := inst.WaitMessage(t, waitTime, FromSender(""))
	t.Logf("bounce envelope: %s; From: %s; To: %s", b, b.Header().Get("From"), b.Header().Get("To"))
	if len(b.Rcpts) != 1 || b.Rcpts[0] != "alice@example.com" {
		t.Fatalf("bounce recipients = %v, want [alice@example.com]", b.Rcpts)
	}
	if !strings.Contains(b.Header().Get("From"), "MAILER-DAEMON@"+DefaultHostname) {
		t.Errorf("bounce From: %q", b.Header().Get("From"))
	}
	if !strings.Contains(string(b.Data), "nobody@remote.test") || !strings.Contains(string(b.Data), "Recipient refused by test sink") {
		t.Errorf("bounce does not name the refused recipient and reply:\n%s", b.Data)
	}
	for _, m := range inst.Sink().Messages() {
		if m.HasRcpt("nobody@remote.test") {
			t.Fatalf("refused recipient recorded: %s", m)
		}
	}
	if err := inst.WaitQueueEmpty(waitTime); err != nil {
		t.Fatal(err)
	}
}

// TestCanonicalMapsApplyToBounces answers the project's key question: does
// recipient_canonical_maps rewrite the recipient of a bounce that Postfix
// itself generates? (Yes.) It also shows that smtpd accepts a recipient
// known only to recipient_canonical_maps despite recipient validation.
func TestCanonicalMapsApplyToBounces(t *testing.T) {
	t.Parallel()
	inst := Start(t, Options{Main: map[string]string{
		"recipient_canonical_maps": "inline:{ tagged-alice@example.com=alice@example.com }",
	}})

	// 1. Inbound: the mapped address is not in relay_recipient_maps but
	// is accepted, and delivered to the canonical address.
	res := mustSend(t)(inst.SendMX("sender@remote.test", []string{"tagged-alice@example.com"},
		testMessage("sender@remote.test", "tagged-alice@example.com", "canonical inbound")))
	t.Logf("transcript:\n%s", res)
	if !res.Accepted() {
		t.Fatalf("recipient known to recipient_canonical_maps refused:\n%s", res)
	}
	m := inst.WaitMessage(t, waitTime, FromSender("sender@remote.test"))
	if len(m.Rcpts) != 1 || m.Rcpts[0] != "alice@example.com" {
		t.Fatalf("inbound recipient not rewritten: %s", m)
	}

	// 2. A Postfix-generated bounce to the mapped address.
	inst.Sink().Refuse("nobody@remote.test")
	res = mustSend(t)(inst.Submit(DefaultUser, DefaultPassword, "tagged-alice@example.com", []string{"nobody@remote.test"},
		testMessage("tagged-alice@example.com", "nobody@remote.test", "canonical bounce")))
	if !res.Accepted() {
		t.Fatalf("not accepted:\n%s", res)
	}
	b := inst.WaitMessage(t, waitTime, FromSender(""))
	t.Logf("bounce envelope: %s; To: %s", b, b.Header().Get("To"))
	if len(b.Rcpts) != 1 || b.Rcpts[0] != "alice@example.com" {
		t.Fatalf("bounce recipient = %v, want [alice@example.com] (rewritten by recipient_canonical_maps)", b.Rcpts)
	}
	if got := b.Header().Get("To"); !strings.Contains(got, "alice@example.com") {
		t.Errorf("bounce To: header %q not rewritten", got)
	}
	// smtp(8) logs the delivery once the sink has answered, so the line
	// may follow the message.
	if err := inst.WaitLog("orig_to=<tagged-alice@example.com>", waitTime); err != nil {
		t.Errorf("log does not show the original recipient: %v\n%s", err, inst.LogTail(20))
	}
	if err := inst.WaitQueueEmpty(waitTime); err != nil {
		t.Fatal(err)
	}
}

func TestDeadMilterTempfails(t *testing.T) {
	t.Parallel()
	sockDir := TempDir(t)
	inst := Start(t, Options{Main: map[string]string{
		"smtpd_milters":         "unix:" + sockDir + "/nobody-listens.sock",
		"milter_default_action": "tempfail",
	}})
	res := mustSend(t)(inst.SendMX("sender@remote.test", []string{"alice@example.com"},
		testMessage("sender@remote.test", "alice@example.com", "milter down")))
	t.Logf("MX transcript:\n%s", res)
	expectReply(t, "MX MAIL", res.Mail, 451, "4.7.1", "try again later")
	if res.Accepted() {
		t.Fatal("accepted with the milter down")
	}
	res = mustSend(t)(inst.Submit(DefaultUser, DefaultPassword, "alice@example.com", []string{"carol@remote.test"},
		testMessage("alice@example.com", "carol@remote.test", "milter down")))
	t.Logf("submission transcript:\n%s", res)
	expectReply(t, "submission AUTH", res.Auth, 454, "4.3.0", "Try again later")
	if res.Mail != nil {
		t.Fatalf("client went on after AUTH failed:\n%s", res)
	}
	// Without AUTH the submission port also tempfails at MAIL.
	res = mustSend(t)(inst.Submit("", "", "alice@example.com", []string{"carol@remote.test"}, nil))
	t.Logf("submission transcript without AUTH:\n%s", res)
	expectReply(t, "submission MAIL", res.Mail, 451, "4.7.1", "try again later")

	expectQueueEmpty(t, inst)
	if n := len(inst.Sink().Messages()); n != 0 {
		t.Fatalf("sink got %d messages", n)
	}
	if !strings.Contains(inst.MailLog(), "nobody-listens.sock") {
		t.Errorf("log does not mention the milter socket:\n%s", inst.LogTail(20))
	}

	// Postconf + Reload: without the milter, mail flows again.
	if err := inst.Postconf(map[string]string{"smtpd_milters": ""}); err != nil {
		t.Fatal(err)
	}
	if err := inst.Reload(); err != nil {
		t.Fatal(err)
	}
	res = mustSend(t)(inst.SendMX("sender@remote.test", []string{"alice@example.com"},
		testMessage("sender@remote.test", "alice@example.com", "milter removed")))
	if !res.Accepted() {
		t.Fatalf("not accepted after removing the milter:\n%s", res)
	}
	inst.WaitMessage(t, waitTime, ToRcpt("alice@example.com"))
}

// TestDeferredAndFlush: a 4xx from the sink keeps the message queued
// (visible in Queue) until the sink accepts it.
func TestDeferredAndFlush(t *testing.T) {
	t.Parallel()
	inst := Start(t, Options{})
	inst.Sink().SetRcptReply("carol@remote.test", Reply{Code: 451, Enhanced: "4.2.0", Text: "try later"})
	res := mustSend(t)(inst.Submit(DefaultUser, DefaultPassword, "alice@example.com", []string{"carol@remote.test"},
		testMessage("alice@example.com", "carol@remote.test", "deferred")))
	if !res.Accepted() {
		t.Fatalf("not accepted:\n%s", res)
	}
	var q []QueuedMessage
	deadline := time.Now().Add(waitTime)
	for {
		var err error
		if q, err = inst.Queue(); err != nil {
			t.Fatal(err)
		}
		if len(q) == 1 && len(q[0].Recipients) == 1 && strings.Contains(q[0].Recipients[0].DelayReason, "try later") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("message not deferred: %+v\n%s", q, inst.LogTail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("queued: %+v", q[0])
	// Between delivery attempts the entry moves through the queues; it
	// has been seen in incoming with its delay reason too.
	if q[0].Sender != "alice@example.com" || !slices.Contains([]string{"deferred", "active", "incoming"}, q[0].QueueName) {
		t.Errorf("queue entry %+v", q[0])
	}
	inst.Sink().SetRcptReply("carol@remote.test", Reply{})
	if err := inst.Flush(); err != nil {
		t.Fatal(err)
	}
	inst.WaitMessage(t, waitTime, ToRcpt("carol@remote.test"))
	if err := inst.WaitQueueEmpty(waitTime); err != nil {
		t.Fatal(err)
	}
}

func TestParallelInstances(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	pids := map[int]bool{}
	for n := 0; n < 2; n++ {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			t.Parallel()
			inst := Start(t, Options{Domains: []string{fmt.Sprintf("d%d.test", n)}})
			mu.Lock()
			if pids[inst.MasterPID()] {
				t.Errorf("master pid %d shared", inst.MasterPID())
			}
			pids[inst.MasterPID()] = true
			mu.Unlock()
			rcpt := fmt.Sprintf("alice@d%d.test", n)
			res := mustSend(t)(inst.SendMX("sender@remote.test", []string{rcpt}, testMessage("sender@remote.test", rcpt, "parallel")))
			if !res.Accepted() {
				t.Fatalf("not accepted:\n%s", res)
			}
			inst.WaitMessage(t, waitTime, ToRcpt(rcpt))
			if msgs := inst.Sink().Messages(); len(msgs) != 1 {
				t.Fatalf("sink has %d messages, want 1 (instances mixed up?)", len(msgs))
			}
		})
	}
}

// TestStopRemovesEverything checks the cleanup of an instance by stopping
// it explicitly.
func TestStopRemovesEverything(t *testing.T) {
	t.Parallel()
	inst := Start(t, Options{})
	pid := inst.MasterPID()
	if !alive(pid) {
		t.Fatalf("master %d not running", pid)
	}
	if err := inst.Stop(); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Fatalf("master %d still running after Stop", pid)
	}
	if err := inst.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if _, err := os.Stat(inst.ConfigDir()); err != nil {
		t.Fatalf("config dir removed before cleanup: %v", err)
	}
}

func TestReplyParsing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in             string
		code           int
		enhanced, text string
	}{
		{"250 2.1.5 Ok\r\n", 250, "2.1.5", "Ok"},
		{"220 mx ESMTP\r\n", 220, "", "mx ESMTP"},
		{"354 End data with <CR><LF>.<CR><LF>\r\n", 354, "", "End data with <CR><LF>.<CR><LF>"},
		{"550-5.1.1 first\r\n550 5.1.1 second\r\n", 550, "5.1.1", "first\nsecond"},
		{"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n", 250, "", "mx\nPIPELINING\n8BITMIME"},
		{"421\r\n", 421, "", ""},
	} {
		c := &client{r: bufio.NewReader(strings.NewReader(tc.in))}
		rep, err := c.readReply()
		if err != nil || rep.Code != tc.code || rep.Enhanced != tc.enhanced || rep.Text != tc.text {
			t.Errorf("%q: got %+v, %v", tc.in, rep, err)
		}
	}
}

// TestQueueLayoutMatchesPostfix starts an instance with Postfix's own
// start-up checks (which create the queue directories) and compares the
// result with the layout the harness creates for quick starts.
func TestQueueLayoutMatchesPostfix(t *testing.T) {
	t.Parallel()
	inst := Start(t, Options{FullStartupChecks: true})
	if strings.Contains(inst.MailLog(), "warning") {
		t.Errorf("postfix start warned:\n%s", inst.MailLog())
	}
	for _, d := range queueLayout {
		fi, err := os.Stat(filepath.Join(inst.QueueDir(), d.name))
		if err != nil {
			t.Errorf("%s: %v", d.name, err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		wantUID := 0
		if d.postfix {
			wantUID = inst.PostfixUID()
		}
		if fi.Mode().Perm() != d.mode || int(st.Uid) != wantUID {
			t.Errorf("%s: Postfix made mode %v uid %d; harness makes %v uid %d", d.name, fi.Mode().Perm(), st.Uid, d.mode, wantUID)
		}
		if !d.postdrop && st.Gid != 0 {
			t.Errorf("%s: Postfix made gid %d, harness makes 0", d.name, st.Gid)
		}
	}
	entries, err := os.ReadDir(inst.QueueDir())
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, d := range queueLayout {
		known[d.name] = true
	}
	for _, e := range entries {
		if e.IsDir() && !known[e.Name()] {
			t.Errorf("Postfix created queue directory %s that the harness does not", e.Name())
		}
	}
	res := mustSend(t)(inst.SendMX("sender@remote.test", []string{"alice@example.com"}, testMessage("sender@remote.test", "alice@example.com", "full")))
	if !res.Accepted() {
		t.Fatalf("not accepted:\n%s", res)
	}
	inst.WaitMessage(t, waitTime, ToRcpt("alice@example.com"))
}

func TestServiceOptionsAndSendmail(t *testing.T) {
	t.Parallel()
	dead := "unix:" + TempDir(t) + "/dead.sock"
	inst := Start(t, Options{
		MXOptions: map[string]string{"smtpd_banner": "$myhostname ESMTP custom MX banner"},
		SubmissionOptions: map[string]string{
			"smtpd_milters":         dead,
			"milter_default_action": "tempfail",
		},
		Users: map[string]string{"carol@other.test": "pw"},
	})
	res := mustSend(t)(inst.SendMX("sender@remote.test", []string{"bob@example.com"}, testMessage("sender@remote.test", "bob@example.com", "mx")))
	t.Logf("MX transcript:\n%s", res)
	if res.Greeting.Text != DefaultHostname+" ESMTP custom MX banner" {
		t.Errorf("MX banner %q", res.Greeting.Text)
	}
	if !res.Accepted() {
		t.Fatalf("MX (no milter) did not accept:\n%s", res)
	}
	inst.WaitMessage(t, waitTime, ToRcpt("bob@example.com"))
	res = mustSend(t)(inst.Submit("carol@other.test", "pw", "carol@other.test", []string{"dave@remote.test"}, nil))
	expectReply(t, "submission AUTH with the milter down", res.Auth, 454, "4.3.0", "")

	if err := inst.SetServiceOption(Submission, "smtpd_milters", ""); err != nil {
		t.Fatal(err)
	}
	if err := inst.Reload(); err != nil {
		t.Fatal(err)
	}
	// A user of a realm other than the first domain logs in as user@realm.
	res = mustSend(t)(inst.Submit("carol@other.test", "pw", "carol@other.test", []string{"dave@remote.test"},
		testMessage("carol@other.test", "dave@remote.test", "after reload")))
	if !res.Accepted() {
		t.Fatalf("submission after removing its milter:\n%s", res)
	}
	inst.WaitMessage(t, waitTime, ToRcpt("dave@remote.test"))

	if err := inst.Sendmail("alice@example.com", []string{"erin@remote.test"}, testMessage("alice@example.com", "erin@remote.test", "sendmail")); err != nil {
		t.Fatal(err)
	}
	m := inst.WaitMessage(t, waitTime, ToRcpt("erin@remote.test"))
	if m.From != "alice@example.com" {
		t.Errorf("sendmail sender %q", m.From)
	}
	if v, err := inst.PostconfValue("smtpd_milters", false); err != nil || v != "" {
		t.Errorf("main.cf smtpd_milters = %q, %v", v, err)
	}
}

// TestPortCollisionRetry: when a chosen port is taken before Postfix binds
// it, Start retries with other ports.
func TestPortCollisionRetry(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	calls := 0
	inst := Start(t, Options{pickPorts: func(n int) ([]int, error) {
		calls++
		ports, err := FreePorts(n)
		if calls == 1 && err == nil {
			ports[1] = busy.Addr().(*net.TCPAddr).Port
		}
		return ports, err
	}})
	if calls != 2 {
		t.Fatalf("ports picked %d times, want 2", calls)
	}
	if !strings.Contains(inst.MailLog(), "Address already in use") {
		t.Errorf("no bind failure in the log:\n%s", inst.MailLog())
	}
	res := mustSend(t)(Send(inst.SubmissionAddr(), Envelope{Username: DefaultUser, Password: DefaultPassword, From: "alice@example.com", Rcpts: []string{"x@remote.test"}, Data: []byte("Subject: x\n\nx\n")}))
	if !res.Accepted() {
		t.Fatalf("not accepted:\n%s", res)
	}
}

type fakeTB struct {
	testing.TB
	skipped, fatal string
}

func (f *fakeTB) Helper()                           {}
func (f *fakeTB) Skipf(format string, args ...any)  { f.skipped = fmt.Sprintf(format, args...) }
func (f *fakeTB) Fatalf(format string, args ...any) { f.fatal = fmt.Sprintf(format, args...) }

func TestSkipOrFail(t *testing.T) {
	report := filepath.Join(t.TempDir(), "skipped")
	t.Setenv(EnvSkipReport, report)
	t.Setenv(EnvE2E, "")
	f := &fakeTB{TB: t}
	SkipOrFail(f, "postfix not installed;\n install postfix")
	if f.fatal != "" || !strings.Contains(f.skipped, "postfix not installed") || !strings.Contains(f.skipped, "BATV_E2E=1") {
		t.Errorf("without %s: skipped %q, fatal %q", EnvE2E, f.skipped, f.fatal)
	}
	// The skip is in the report, on one line: where, which test, why.
	dir, _ := os.Getwd()
	want := dir + "\t" + t.Name() + "\tpostfix not installed; install postfix\n"
	if b, err := os.ReadFile(report); err != nil || string(b) != want {
		t.Errorf("report %q %v, want %q", b, err, want)
	}
	t.Setenv(EnvE2E, "1")
	f = &fakeTB{TB: t}
	SkipOrFail(f, "postfix not installed; install postfix")
	if f.skipped != "" || !strings.Contains(f.fatal, "postfix not installed") {
		t.Errorf("with %s=1: skipped %q, fatal %q", EnvE2E, f.skipped, f.fatal)
	}
	if b, _ := os.ReadFile(report); string(b) != want {
		t.Errorf("a failure was reported as a skip: %q", b)
	}
}

// TestStartFailureReport: a start failure reports Postfix's complaint.
func TestStartFailureReport(t *testing.T) {
	t.Parallel()
	bins, reason := requirements()
	if reason != "" {
		SkipOrFail(t, reason)
	}
	uid, gid, err := PostfixIDs()
	if err != nil {
		t.Fatal(err)
	}
	_, err = start(t, Options{Main: map[string]string{"mail_owner": "no-such-user-postfixtest"}}, bins, uid, gid)
	if err == nil {
		t.Fatal("start succeeded with a bad mail_owner")
	}
	t.Logf("error:\n%v", err)
	if !strings.Contains(err.Error(), "no-such-user-postfixtest") || !strings.Contains(err.Error(), " check ---") {
		t.Errorf("error does not show Postfix's complaint and the check output")
	}
}

// TestReapStale: an instance whose test binary died is stopped and removed
// by the next Start.
func TestReapStale(t *testing.T) {
	t.Parallel()
	inst := Start(t, Options{})
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(inst.BaseDir(), ownerFile), []byte(fmt.Sprintf("%d\n", dead.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	pid := inst.MasterPID()
	reapStale()
	if alive(pid) {
		t.Fatalf("stale master %d still running", pid)
	}
	if _, err := os.Stat(inst.BaseDir()); !os.IsNotExist(err) {
		t.Fatalf("stale instance directory not removed: %v", err)
	}
}

// TestSocketPermissions: Postfix connects to milter sockets as user
// postfix; a socket created by root with the default mode is refused,
// one made with ListenUnix is reached.
func TestSocketPermissions(t *testing.T) {
	t.Parallel()
	dir := TempDir(t)
	plain, err := net.Listen("unix", filepath.Join(dir, "plain.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if err := os.Chmod(filepath.Join(dir, "plain.sock"), 0o755); err != nil {
		t.Fatal(err)
	}
	open := ListenUnix(t, filepath.Join(dir, "open.sock"))
	accepted := make(chan struct{}, 10)
	for _, l := range []net.Listener{plain, open} {
		go func(l net.Listener) {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close() // not a milter: Postfix applies milter_default_action
				accepted <- struct{}{}
			}
		}(l)
	}
	inst := Start(t, Options{
		Main:              map[string]string{"milter_default_action": "tempfail"},
		MXOptions:         map[string]string{"smtpd_milters": "unix:" + filepath.Join(dir, "plain.sock")},
		SubmissionOptions: map[string]string{"smtpd_milters": "unix:" + filepath.Join(dir, "open.sock")},
	})
	res := mustSend(t)(inst.SendMX("sender@remote.test", []string{"alice@example.com"}, nil))
	expectReply(t, "MX MAIL", res.Mail, 451, "4.7.1", "")
	select {
	case <-accepted:
		t.Fatal("Postfix reached the root-only socket")
	default:
	}
	if err := inst.WaitLog("plain.sock", 5*time.Second); err != nil || !strings.Contains(inst.MailLog(), "Permission denied") {
		t.Errorf("no permission error in the log (%v):\n%s", err, inst.LogTail(10))
	}
	res = mustSend(t)(inst.Submit(DefaultUser, DefaultPassword, "alice@example.com", []string{"x@remote.test"}, nil))
	select {
	case <-accepted:
	case <-time.After(waitTime):
		t.Fatalf("Postfix did not connect to the ListenUnix socket:\n%s\n%s", res, inst.LogTail(10))
	}
}

func TestConnDialogue(t *testing.T) {
	sink := NewSink(t)
	c, greeting, err := Dial(sink.Addr(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if greeting.Code != 220 {
		t.Fatalf("greeting %v", greeting)
	}
	step := func(cmd string, code int) {
		t.Helper()
		r, err := c.Cmd(cmd)
		if err != nil || r.Code != code {
			t.Fatalf("%s: %v %v, want %d\n%s", cmd, r, err, code, c.Transcript())
		}
	}
	step("EHLO client.test", 250)
	step("MAIL FROM:<>", 250)
	step("RCPT TO:<callout@example.com>", 250)
	step("RSET", 250)
	step("MAIL FROM:<carol@remote.test>", 250)
	step("RCPT TO:<alice@example.com>", 250)
	step("DATA", 354)
	if r, err := c.Body([]byte("Subject: conn\n\n.dot\n")); err != nil || r.Code != 250 {
		t.Fatalf("end of data: %v %v", r, err)
	}
	c.Quit()
	msgs := sink.Messages()
	if len(msgs) != 1 || msgs[0].From != "carol@remote.test" || !msgs[0].HasRcpt("alice@example.com") || !strings.Contains(string(msgs[0].Data), "\r\n.dot\r\n") {
		t.Fatalf("sink got %v", msgs)
	}
	tr := c.Transcript()
	for _, want := range []string{"C: RCPT TO:<callout@example.com>\nS: 250 ", "C: RSET\nS: 250 ", "C: (message, 20 bytes, and the final dot)\nS: 250 ", "C: QUIT\nS: 221 "} {
		if !strings.Contains(tr, want) {
			t.Errorf("transcript has no %q:\n%s", want, tr)
		}
	}
}
