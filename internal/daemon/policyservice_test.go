package daemon

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// policyConfig is testConfig with at most two connections per listener,
// the policy service on unix socket sock, and verify in [verify].
func policyConfig(td *testDaemon, sock, verify string) string {
	cfg := testConfig(td.keyring, td.sock, "", verify+"\n[policy_service]\naddress = \"unix:"+sock+"\"")
	return strings.Replace(cfg, "[limits]\n", "[limits]\nmax_connections = 2\n", 1)
}

// policyConn is a policy connection as smtpd has one.
type policyConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialPolicy(t *testing.T, sock string) *policyConn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &policyConn{t: t, c: c, br: bufio.NewReader(c)}
}

// ask sends a request with attrs and returns the action, or "" if the
// connection closed without a reply.
func (p *policyConn) ask(attrs ...string) string {
	p.t.Helper()
	_ = p.c.SetDeadline(time.Now().Add(5 * time.Second))
	req := "request=smtpd_access_policy\n" + strings.Join(attrs, "\n") + "\n\n"
	if _, err := p.c.Write([]byte(req)); err != nil {
		return ""
	}
	line, err := p.br.ReadString('\n')
	if err != nil {
		return ""
	}
	if end, err := p.br.ReadString('\n'); err != nil || end != "\n" {
		p.t.Fatalf("malformed reply %q %q %v", line, end, err)
	}
	return strings.TrimSuffix(strings.TrimPrefix(line, "action="), "\n")
}

// bounce asks about an untagged bounce to rcpt in transaction instance,
// at RCPT and at DATA, and returns both actions.
func (p *policyConn) bounce(instance, rcpt string) (string, string) {
	p.t.Helper()
	common := []string{"client_address=192.0.2.1", "sender=", "instance=" + instance}
	r := p.ask(append(common, "protocol_state=RCPT", "recipient="+rcpt, "recipient_count=0")...)
	d := p.ask(append(common, "protocol_state=DATA", "recipient="+rcpt, "recipient_count=1")...)
	return r, d
}

// TestPolicyService: the daemon serves the policy service of its
// configuration with the policy in force, reloads it, counts and logs its
// decisions and connections, and limits its connections.
func TestPolicyService(t *testing.T) {
	var sock string
	td := startTestDaemonWith(t, func(td *testDaemon) string {
		sock = filepath.Join(td.dir, "p.sock")
		return policyConfig(td, sock, "")
	})
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("policy socket: %v %v, want mode 0660", fi, err)
	}

	p := dialPolicy(t, sock)
	valid := td.sign("alice@example.com", 1)
	forged := valid[:14] + string("01"[(valid[14]-'0'+1)%2]) + valid[15:]
	const refused = "550 5.7.1 Bounce refused: this address sends only tagged mail, so it did not send the message you are bouncing (BATV)"
	if r, d := p.bounce("a.1", "alice@example.com"); r != "DUNNO" || d != refused {
		t.Fatalf("untagged bounce: %q at RCPT, %q at DATA", r, d)
	}
	if r, d := p.bounce("a.2", valid); r != "DUNNO" || d != "DUNNO" {
		t.Fatalf("bounce to a valid tag: %q at RCPT, %q at DATA", r, d)
	}
	if r := p.ask("protocol_state=RCPT", "sender=", "recipient="+forged, "instance=a.3"); !strings.HasPrefix(r, "550 5.7.1 Bounce refused: the recipient address tag is not valid") {
		t.Fatalf("bounce to a forged tag: %q", r)
	}

	t.Run("reload", func(t *testing.T) {
		td.writeConfig(policyConfig(td, sock, `untagged_bounce = "tempfail"`))
		td.sendReload("msg=reloaded")
		if _, d := p.bounce("b.1", "alice@example.com"); !strings.HasPrefix(d, "451 4.7.1 ") {
			t.Fatalf("untagged bounce after the reload to tempfail: %q at DATA", d)
		}
		td.writeConfig(policyConfig(td, filepath.Join(td.dir, "q.sock"), ""))
		td.sendReload("msg=reloaded")
		if !strings.Contains(td.log.String(), `msg="reload: listener changes take effect at the next restart" changed=policy_service`) {
			t.Errorf("no warning that the policy service's address waits for a restart")
		}
	})

	t.Run("connection limit", func(t *testing.T) {
		p2 := dialPolicy(t, sock)
		if r := p2.ask("protocol_state=CONNECT"); r != "DUNNO" {
			t.Fatalf("second connection: %q", r)
		}
		p3 := dialPolicy(t, sock)
		if r := p3.ask("protocol_state=CONNECT"); r != "" {
			t.Fatalf("third connection over max_connections = 2: %q, want it closed", r)
		}
	})

	log := td.log.String()
	for _, want := range []string{
		`msg=listening listener=policy_service address=unix:` + sock,
		`policy_service=true`,
		`msg=recipient listener=policy_service conn=1 queue_id="" direction=inbound outcome=missing action=reject reason="untagged bounce" rcpt=alice@example.com stage=data sender=<> bounce=true client=192.0.2.1`,
		`msg="bounce refused at DATA" listener=policy_service conn=1`,
		`msg="connection refused: limit reached" listener=policy_service max_connections=2`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("the log has no %q", want)
		}
	}
	for series, want := range map[string]float64{
		`batv_inbound_recipients_total{action="reject",outcome="missing"}`:       1,
		`batv_inbound_recipients_total{action="tempfail",outcome="missing"}`:     1,
		`batv_inbound_recipients_total{action="accept",outcome="valid"}`:         1,
		`batv_inbound_recipients_total{action="reject",outcome="bad-signature"}`: 1,
		`batv_bounces_refused_at_data_total`:                                     2,
		`batv_decision_seconds_count{direction="inbound"}`:                       4,
		`batv_connections_total{listener="policy_service",result="accepted"}`:    2,
		`batv_connections_total{listener="policy_service",result="refused"}`:     1,
	} {
		if got := td.metric(series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
}
