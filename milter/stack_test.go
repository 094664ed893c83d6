//go:build !race

package milter

import (
	"io"
	"log/slog"
	"testing"

	"github.com/batv/batv/internal/logq"
	"github.com/batv/batv/internal/mta"
	"github.com/batv/batv/internal/serve"
)

// TestSessionStacksStaySmall: with its lines written through a log queue,
// as the daemon writes them, a session's goroutine keeps the 4 KiB stack it
// starts with through a signed message, a verified bounce and a forged
// one. go-milter's frames take 1.5 KiB of it, and a callback whose frames
// grow past the rest doubles every session's stack for good: 8 KiB more
// stack memory a connection, 2 MiB at 256 connections (docs/performance.md,
// Memory). (Not with -race, whose instrumentation makes frames larger.)
func TestSessionStacksStaySmall(t *testing.T) {
	_, path := testServer(t, Outbound|Inbound, nil, func(s *Server, o *serve.Options) {
		s.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		s.Lines = logq.New(1024)
		t.Cleanup(s.Lines.Close)
		o.Logger = s.Logger
	})
	outbound, bounce, forged := benchMessages(t)
	const n = 256
	before := stackBytes()
	var sessions []*mta.Session
	for range n {
		c := dial(t, path, "203.0.113.5", "submission")
		for _, m := range []struct {
			msg *mta.Message
			ok  func(*mta.Result) bool
		}{{outbound, signedOnce}, {bounce, rewritten}, {forged, refused}} {
			if res := send(t, c, m.msg); !m.ok(res) {
				t.Fatalf("%+v", res)
			}
		}
		sessions = append(sessions, c)
	}
	// New stacks of 4 KiB, in a process that has no free ones (4,224 bytes
	// a connection, measured); 8 KiB more each if they doubled.
	perConn := (float64(stackBytes()) - float64(before)) / n
	for _, c := range sessions {
		c.Close()
	}
	if perConn >= 6144 {
		t.Errorf("stack memory grew by %.0f bytes a connection, want the 4 KiB stacks the sessions start with to hold", perConn)
	}
}
