//go:build linux

package socketmap

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/postfixtest"
)

// TestPostfixCanonicalKeyCase runs a private Postfix instance with
// recipient_canonical_maps = socketmap:... and records, for every lookup,
// which Postfix program made it (from the peer credentials of the unix
// socket) and the exact key. It pins down how Postfix treats the case of
// socketmap keys, which matters because BATV tags are case-sensitive:
//
//   - smtpd, validating a recipient (smtpd_reject_unlisted_recipient)
//     against the canonical maps, sends the key LOWERCASED: it looks up the
//     address that trivial-rewrite resolved, which smtpd_resolve.c
//     lowercases (resolve_pagein: lowercase(STR(reply->recipient))).
//   - cleanup, rewriting the recipient (also of the bounces that Postfix
//     generates), sends the key with its ORIGINAL case.
//
// The handler here accepts the tagged address case-insensitively, as a
// real one must for smtpd's lookup to succeed.
func TestPostfixCanonicalKeyCase(t *testing.T) {
	const (
		tagged = "prvs=0123aBcDeF=Alice@Example.COM"
		target = "alice@example.com"
	)
	type lookup struct{ prog, key string }
	var (
		mu      sync.Mutex
		lookups []lookup
	)
	handler := HandlerFunc(func(ctx context.Context, name, key string) Reply {
		prog, _ := ctx.Value(progKey{}).(string)
		mu.Lock()
		lookups = append(lookups, lookup{prog, key})
		mu.Unlock()
		if name == "untag" && strings.EqualFold(key, tagged) {
			return OK(target)
		}
		return NotFound()
	})
	sockDir := postfixtest.TempDir(t)
	path := sockDir + "/map.sock"
	ln := postfixtest.ListenUnix(t, path)
	rec := newLogRecorder()
	srv := &Server{Handler: handler, Logger: slog.New(rec), ConnContext: peerProgram}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		if t.Failed() {
			t.Logf("server log:\n%s", strings.Join(rec.all(), "\n"))
		}
	})

	inst := postfixtest.Start(t, postfixtest.Options{Main: map[string]string{
		"recipient_canonical_maps": "socketmap:unix:" + path + ":untag",
	}})
	seen := func() string {
		mu.Lock()
		defer mu.Unlock()
		return fmt.Sprint(lookups)
	}

	// Inbound: smtpd validates the recipient through the canonical map,
	// cleanup rewrites it.
	msg := fmt.Appendf(nil, "From: <sender@remote.test>\nTo: <%s>\nSubject: case\n\nHello.\n", tagged)
	res, err := inst.SendMX("sender@remote.test", []string{tagged}, msg)
	if err != nil {
		t.Fatalf("SMTP: %v\n%s", err, res)
	}
	t.Logf("transcript:\n%s", res)
	if !res.Accepted() {
		t.Fatalf("tagged recipient refused; lookups: %s\n%s", seen(), res)
	}
	m := inst.WaitMessage(t, 30*time.Second, postfixtest.FromSender("sender@remote.test"))
	if len(m.Rcpts) != 1 || m.Rcpts[0] != target {
		t.Fatalf("recipient not rewritten: %s; lookups: %s", m, seen())
	}
	inbound := len(lookups)

	// A bounce that Postfix generates for a tagged sender goes through
	// cleanup again.
	inst.Sink().Refuse("nobody@remote.test")
	msg = fmt.Appendf(nil, "From: <%s>\nTo: <nobody@remote.test>\nSubject: bounce me\n\nHello.\n", tagged)
	res, err = inst.Submit(postfixtest.DefaultUser, postfixtest.DefaultPassword, tagged, []string{"nobody@remote.test"}, msg)
	if err != nil || !res.Accepted() {
		t.Fatalf("submission: %v\n%s", err, res)
	}
	b := inst.WaitMessage(t, 30*time.Second, postfixtest.FromSender(""))
	if len(b.Rcpts) != 1 || b.Rcpts[0] != target {
		t.Fatalf("bounce recipient %v, want [%s]; lookups: %s", b.Rcpts, target, seen())
	}

	mu.Lock()
	defer mu.Unlock()
	t.Logf("lookups (program, key): %q", lookups)
	var smtpdLower, cleanupExact, cleanupBounce bool
	for i, l := range lookups {
		switch {
		case l.prog == "smtpd" && l.key == strings.ToLower(tagged):
			smtpdLower = true
		case l.prog == "smtpd" && strings.EqualFold(l.key, tagged):
			t.Errorf("smtpd sent %q: not lowercased any more?", l.key)
		case l.prog == "cleanup" && l.key == tagged:
			cleanupExact = true
			cleanupBounce = cleanupBounce || i >= inbound
		case l.prog == "cleanup" && strings.EqualFold(l.key, tagged):
			t.Errorf("cleanup changed the case of the key: %q", l.key)
		}
	}
	if !smtpdLower {
		t.Errorf("no lowercased lookup from smtpd (recipient validation)")
	}
	if !cleanupExact || !cleanupBounce {
		t.Errorf("cleanup lookups with the original case: inbound %v, bounce %v; want both", cleanupExact, cleanupBounce)
	}
}

type progKey struct{}

// peerProgram puts the name of the connecting program (from SO_PEERCRED
// and /proc/PID/comm) in the context.
func peerProgram(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *syscall.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if err != nil || cred == nil {
		return ctx
	}
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(int(cred.Pid)) + "/comm")
	if err != nil {
		return ctx
	}
	return context.WithValue(ctx, progKey{}, strings.TrimSpace(string(comm)))
}

// TestPostfixSurvivesServerRestart: Postfix daemons keep socketmap
// connections open between lookups. When the server shuts down (closing
// them) and a new one listens on the same path, Postfix's next lookup hits
// the closed connection, reconnects and retries at once: no mail is
// deferred and nothing is logged.
func TestPostfixSurvivesServerRestart(t *testing.T) {
	const (
		tagged = "prvs=0123abcdef=alice@example.com"
		target = "alice@example.com"
	)
	handler := HandlerFunc(func(_ context.Context, name, key string) Reply {
		if name == "untag" && key == tagged {
			return OK(target)
		}
		return NotFound()
	})
	sockDir := postfixtest.TempDir(t)
	path := sockDir + "/map.sock"
	start := func() *Server {
		ln := postfixtest.ListenUnix(t, path)
		srv := &Server{Handler: handler}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(ctx)
		})
		return srv
	}
	first := start()
	inst := postfixtest.Start(t, postfixtest.Options{Main: map[string]string{
		"recipient_canonical_maps": "socketmap:unix:" + path + ":untag",
	}})
	send := func(subject string) {
		t.Helper()
		msg := fmt.Appendf(nil, "From: <sender@remote.test>\nTo: <%s>\nSubject: %s\n\nHello.\n", tagged, subject)
		res, err := inst.SendMX("sender@remote.test", []string{tagged}, msg)
		if err != nil || !res.Accepted() {
			t.Fatalf("%s: %v\n%s\n%s", subject, err, res, inst.LogTail(20))
		}
		m := inst.WaitMessage(t, 30*time.Second, func(m postfixtest.Message) bool {
			return strings.Contains(m.Header().Get("Subject"), subject)
		})
		if len(m.Rcpts) != 1 || m.Rcpts[0] != target {
			t.Fatalf("%s: recipient not rewritten: %s", subject, m)
		}
	}
	send("before restart")
	if n := first.OpenConns(); n == 0 {
		t.Fatalf("Postfix kept no socketmap connection open")
	} else {
		t.Logf("%d socketmap connections open before the restart", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := first.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	start()
	send("after restart")
	if log := inst.MailLog(); strings.Contains(log, "socketmap") {
		t.Errorf("Postfix logged socketmap problems:\n%s", inst.LogTail(30))
	}
}
