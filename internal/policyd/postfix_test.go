package policyd

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batv/batv/internal/serve"
	"github.com/batv/batv/internal/testenv/postfixtest"
)

// seen is one request as the e2e handler received it.
type seen struct {
	conn  uint64
	attrs map[string]string
	names []string
}

// e2eHandler refuses carol at RCPT, prepends a header for bob, and defers
// at DATA every transaction that had dave among its recipients, which
// takes the transaction state from RCPT to DATA.
type e2eHandler struct {
	mu   sync.Mutex
	reqs []seen
}

type e2eTx struct{ rcpts []string }

func (h *e2eHandler) Check(c *Conn, req *Request) Reply {
	s := seen{conn: c.ID(), attrs: map[string]string{}}
	for k, v := range req.All() {
		s.attrs[k] = v
		s.names = append(s.names, k)
	}
	h.mu.Lock()
	h.reqs = append(h.reqs, s)
	h.mu.Unlock()

	tx := TxState[e2eTx](c)
	switch req.ProtocolState() {
	case StateRcpt:
		tx.rcpts = append(tx.rcpts, req.Recipient())
		switch req.Recipient() {
		case "carol@example.com":
			return Code(550, "5.7.1", "carol is refused by policy")
		case "bob@example.com":
			return Prepend("X-Policy-Test", "instance="+req.Instance())
		}
	case StateData:
		if slices.Contains(tx.rcpts, "dave@example.com") {
			return Defer("4.7.1 transactions with dave wait")
		}
	}
	return Dunno()
}

func (h *e2eHandler) requests() []seen {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.reqs)
}

// TestPostfix runs the server behind a real Postfix (a private instance on
// loopback, postfixtest) with check_policy_service at RCPT and DATA, and
// one smtpd process, so that every SMTP session goes over one policy
// connection.
func TestPostfix(t *testing.T) {
	dir := postfixtest.TempDir(t)
	sock := filepath.Join(dir, "policy.sock")
	ln := postfixtest.ListenUnix(t, sock)
	h := &e2eHandler{}
	var lb logBuf
	l := serve.New(ln, serve.Options{Name: "policy", Logger: lb.logger()})
	go func() { _ = l.Serve((&Server{Handler: h}).ServeConn) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = l.Shutdown(ctx)
	})

	policy := "check_policy_service unix:" + sock
	pf := postfixtest.Start(t, postfixtest.Options{
		Recipients: []string{"alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com"},
		Main: map[string]string{
			"smtpd_recipient_restrictions": "reject_unlisted_recipient, " + policy,
			"smtpd_data_restrictions":      policy,
			"default_process_limit":        "1",
		},
	})
	msg := func(subject string) []byte {
		return []byte("From: someone@remote.test\r\nSubject: " + subject + "\r\n\r\nHello.\r\n")
	}
	send := func(from string, rcpts []string, subject string) *postfixtest.Result {
		t.Helper()
		res, err := pf.SendMX(from, rcpts, msg(subject))
		if err != nil {
			t.Fatalf("%v\n%s\n%s", err, res, pf.LogTail(20))
		}
		return res
	}
	since := func(n int) []seen { return h.requests()[n:] }

	t.Run("reject at RCPT", func(t *testing.T) {
		res := send("someone@remote.test", []string{"alice@example.com", "carol@example.com"}, "reject")
		r := res.Rcpt("carol@example.com")
		if r == nil || r.Code != 550 || r.Enhanced != "5.7.1" || !strings.Contains(r.Text, "carol is refused by policy") {
			t.Fatalf("carol: %v\n%s", r, res)
		}
		if r := res.Rcpt("alice@example.com"); r == nil || r.Code != 250 || !res.Accepted() {
			t.Fatalf("alice not accepted:\n%s", res)
		}
		m := pf.WaitMessage(t, 20*time.Second, func(m postfixtest.Message) bool {
			return m.Header().Get("Subject") == "reject"
		})
		if !slices.Equal(m.Rcpts, []string{"alice@example.com"}) {
			t.Fatalf("delivered to %v", m.Rcpts)
		}
	})

	t.Run("defer at DATA for the whole transaction", func(t *testing.T) {
		n := len(h.requests())
		res := send("someone@remote.test", []string{"alice@example.com", "dave@example.com"}, "defer")
		if got := res.AcceptedRcpts(); len(got) != 2 {
			t.Fatalf("recipients accepted at RCPT: %v\n%s", got, res)
		}
		if res.Data == nil || res.Data.Code != 450 || res.Data.Enhanced != "4.7.1" ||
			!strings.Contains(res.Data.Text, "transactions with dave wait") || res.Accepted() {
			t.Fatalf("DATA not deferred:\n%s", res)
		}
		// The DATA request: two recipients, so no recipient attribute.
		var data *seen
		for _, r := range since(n) {
			if r.attrs[AttrProtocolState] == string(StateData) {
				data = &r
			}
		}
		if data == nil || data.attrs[AttrRecipientCount] != "2" || data.attrs[AttrRecipient] != "" {
			t.Fatalf("DATA request %+v", data)
		}
		if q, err := pf.Queue(); err != nil || len(q) != 0 {
			t.Fatalf("queue after a deferred DATA: %+v %v", q, err)
		}
	})

	t.Run("PREPEND", func(t *testing.T) {
		n := len(h.requests())
		res := send("someone@remote.test", []string{"bob@example.com"}, "prepend")
		if !res.Accepted() {
			t.Fatalf("not accepted (the previous transaction's state leaked?):\n%s", res)
		}
		m := pf.WaitMessage(t, 20*time.Second, func(m postfixtest.Message) bool {
			return m.Header().Get("Subject") == "prepend"
		})
		inst := since(n)[0].attrs[AttrInstance]
		if got := m.Header().Get("X-Policy-Test"); inst == "" || got != "instance="+inst {
			t.Fatalf("X-Policy-Test: %q, instance %q\n%s", got, inst, m.Data)
		}
	})

	t.Run("null sender spellings", func(t *testing.T) {
		for _, from := range []string{"", `""`, "@a.test,@b.test:"} {
			n := len(h.requests())
			res := send(from, []string{"alice@example.com"}, "null "+from)
			reqs := since(n)
			if len(reqs) == 0 || !res.Accepted() {
				t.Fatalf("MAIL FROM:<%s>: %d requests\n%s", from, len(reqs), res)
			}
			if v, ok := reqs[0].attrs[AttrSender]; !ok || v != "" {
				t.Errorf("MAIL FROM:<%s>: sender=%q (present %v), want empty", from, v, ok)
			}
		}
	})

	t.Run("one connection across sessions", func(t *testing.T) {
		reqs := h.requests()
		instances := map[string]bool{}
		for _, r := range reqs {
			if r.conn != reqs[0].conn {
				t.Fatalf("requests on connections %d and %d", reqs[0].conn, r.conn)
			}
			instances[r.attrs[AttrInstance]] = true
		}
		// Six SMTP sessions, one transaction each.
		if got := len(instances); got != 6 {
			t.Errorf("%d instances, want 6: %v", got, slices.Collect(maps.Keys(instances)))
		}
	})

	t.Run("request attributes", func(t *testing.T) {
		var rcpt *seen
		for _, r := range h.requests() {
			if r.attrs[AttrProtocolState] == string(StateRcpt) {
				rcpt = &r
				break
			}
		}
		if rcpt == nil {
			t.Fatal("no RCPT request")
		}
		var b strings.Builder
		for _, k := range rcpt.names {
			fmt.Fprintf(&b, "%s=%s\n", k, rcpt.attrs[k])
		}
		b.WriteString("\n")
		const file = "testdata/postfix-3.7-rcpt.txt"
		if os.Getenv("BATV_UPDATE_TESTDATA") == "1" {
			if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := (&reader{br: newReader(postfixRequest(t)), maxLine: DefaultMaxLineLen,
			maxAttrs: DefaultMaxAttributes, maxSize: DefaultMaxRequestSize}).readRequest()
		if err != nil {
			t.Fatal(err)
		}
		var wantNames []string
		for k := range want.All() {
			wantNames = append(wantNames, k)
		}
		if !slices.Equal(rcpt.names, wantNames) {
			t.Errorf("Postfix %s sends %v,\n%s has %v (BATV_UPDATE_TESTDATA=1 rewrites it)",
				rcpt.attrs["mail_version"], rcpt.names, file, wantNames)
		}
	})

	if out := lb.String(); strings.Contains(out, "level=WARN") || strings.Contains(out, "level=ERROR") {
		t.Errorf("server log:\n%s", out)
	}
}
