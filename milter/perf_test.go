package milter

import (
	"io"
	"log/slog"
	"runtime"
	rtmetrics "runtime/metrics"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/internal/logq"
	"github.com/batv/batv/internal/metrics"
	"github.com/batv/batv/internal/mta"
	"github.com/batv/batv/internal/serve"

	"github.com/batv/batv/policy"

	"github.com/prometheus/client_golang/prometheus"
)

// The benchmarks run a milter with its real logger (a text handler that
// formats every line, then discards it) and metrics on a unix socket, and
// drive it with package mta (go-milter's client) over one connection, one
// message at a time: a message's ns/op is the round-trip latency of both
// sides on one machine, and allocs/op and B/op are those of both sides.
// docs/performance.md has the figures.

func benchServer(b *testing.B, roles Roles, mod func(*policy.Config)) string {
	b.Helper()
	_, path := testServer(b, roles, mod, func(s *Server, o *serve.Options) {
		s.Name, o.Name = "bench", "bench"
		s.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		s.Lines = logq.New(1024)
		b.Cleanup(s.Lines.Close)
		o.Logger = s.Logger
		s.Metrics = metrics.New(prometheus.NewRegistry())
	})
	return path
}

func benchDial(b *testing.B, path, addr, daemon string) *mta.Session {
	b.Helper()
	c, err := mta.New("unix", path, 5*time.Second).Session(mta.SMTPClient{Addr: addr, Port: 25000, Daemon: daemon})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// benchHeaders are six headers, as in the load tests.
func benchHeaders(to string) []mta.Header {
	return []mta.Header{
		{Name: "From", Value: " Alice <alice@example.com>"}, {Name: "To", Value: " <" + to + ">"},
		{Name: "Subject", Value: " benchmark"}, {Name: "Date", Value: " Tue, 3 Mar 2026 10:00:00 +0000"},
		{Name: "Message-ID", Value: " <1.bench@example.com>"}, {Name: "MIME-Version", Value: " 1.0"},
	}
}

var benchBody = []byte(strings.Repeat("The quick brown fox jumps over the lazy dog, again and again.\r\n", 32))

// benchMessages are the messages of the benchmarks: one that an
// authenticated user sends (signed), a bounce to a valid tag (rewritten)
// and one to a forged tag (refused).
func benchMessages(t testing.TB) (outbound, bounce, forged *mta.Message) {
	valid := tag(t, "user@example.com", 1)
	outbound = &mta.Message{Sender: "alice@example.com", Recipients: []string{"bob@example.org"},
		AuthUser: "alice", QueueID: "4ABC", Headers: benchHeaders("bob@example.org"), Body: benchBody}
	bounce = &mta.Message{Sender: "", Recipients: []string{valid}, QueueID: "4ABD",
		Headers: benchHeaders(valid), Body: benchBody}
	forged = &mta.Message{Sender: "", Recipients: []string{forge(valid)}, QueueID: "4ABE",
		Headers: benchHeaders(valid), Body: benchBody}
	return outbound, bounce, forged
}

func BenchmarkMessage(b *testing.B) {
	noHeaders := func(c *policy.Config) { c.Verify.RemoveForgedHeaders = false }
	outbound, bounce, forged := benchMessages(b)
	for _, bm := range []struct {
		name  string
		roles Roles
		mod   func(*policy.Config)
		msg   *mta.Message
		check func(*mta.Result) bool
	}{
		{"outbound/listener=outbound", Outbound, nil, outbound, signedOnce},
		{"outbound/listener=both", Outbound | Inbound, nil, outbound, signedOnce},
		{"inbound-valid/listener=inbound", Inbound, nil, bounce, rewritten},
		{"inbound-valid/listener=inbound,no-headers", Inbound, noHeaders, bounce, rewritten},
		{"inbound-valid/listener=both", Outbound | Inbound, nil, bounce, rewritten},
		{"inbound-forged/listener=inbound", Inbound, nil, forged, refused},
	} {
		b.Run(bm.name, func(b *testing.B) {
			path := benchServer(b, bm.roles, bm.mod)
			addr, daemon := "203.0.113.5", "submission"
			if bm.msg.Sender == "" {
				addr, daemon = "198.51.100.25", "mail.example.com"
			}
			c := benchDial(b, path, addr, daemon)
			b.ReportAllocs()
			for b.Loop() {
				res, err := c.Send(bm.msg)
				if err != nil || !bm.check(res) {
					b.Fatalf("%v %v", res, err)
				}
			}
		})
	}
}

func signedOnce(res *mta.Result) bool {
	return delivered(res) && len(res.Changes) == 1 && res.SignedSender() != ""
}

func rewritten(res *mta.Result) bool {
	return delivered(res) && len(res.Changes) == 2
}

func refused(res *mta.Result) bool {
	return len(res.Rcpts) == 1 && mta.Refused(res.Rcpts[0]) && res.End == nil
}

// BenchmarkDecisionLog is the cost of the one log line per decision the
// milter must write, with the handler the daemon uses (text, to a
// discarding writer, so only the formatting is measured).
func BenchmarkDecisionLog(b *testing.B) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil)).With("listener", "milter", "conn", uint64(42))
	b.ReportAllocs()
	for b.Loop() {
		log.Info("signed", "queue_id", "4ABC", "direction", "outbound", "outcome", "signed",
			"reason", policy.Authenticated.String(), "key_id", 1, "sender", "alice@example.com",
			"tagged", "prvs=1234567890=alice@example.com")
	}
}

// TestChanges: the changes the milter asks for are what the MTA expects,
// for every kind batv asks for.
func TestChanges(t *testing.T) {
	_, path := testServer(t, Inbound, func(c *policy.Config) { c.Verify.UntaggedBounce = "quarantine" }, nil)
	c := dial(t, path, "192.0.2.25", "smtpd")
	res := send(t, c, &mta.Message{Sender: "", Recipients: []string{"user@example.com"},
		Headers: []mta.Header{{Name: "X-BATV-Status", Value: "valid"}}, Body: []byte("hi\r\n")})
	want := "CHGHEADER 1 X-BATV-Status=; ADDHEADER X-BATV-Status=untagged; rcpt=<user@example.com>; " +
		"QUARANTINE BATV: untagged bounce to <user@example.com>"
	if got := mods(res); got != want {
		t.Errorf("changes\n%s\nwant\n%s", got, want)
	}
}

// BenchmarkConnectionMemory is what an open connection holds on the
// milter's side between messages, with 256 connections open that have each
// passed a bounce: heap-B/conn, the bytes in use allocated under the
// server's frames (the memory profile, every allocation sampled; the MTA
// side's own are left out), and stack-B/conn, the goroutine stacks
// (the MTA side runs none). ns/op is the time to open the 256 connections
// and pass their messages. docs/performance.md has the figures.
func BenchmarkConnectionMemory(b *testing.B) {
	defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
	runtime.MemProfileRate = 1
	path := benchServer(b, Outbound|Inbound, nil)
	_, bounce, _ := benchMessages(b)
	const n = 256
	var heap, stack float64
	for b.Loop() {
		b.StopTimer()
		stacks0, heap0 := stackBytes(), serverHeap(b)
		b.StartTimer()
		var cs []*mta.Session
		for range n {
			c := benchDial(b, path, "198.51.100.25", "mail.example.com")
			if res, err := c.Send(bounce); err != nil || !rewritten(res) {
				b.Fatalf("%v %v", res, err)
			}
			cs = append(cs, c)
		}
		b.StopTimer()
		heap = float64(serverHeap(b)-heap0) / n
		if heap <= 0 {
			b.Fatal("no allocation of the milter side in the memory profile")
		}
		stack = float64(stackBytes()-stacks0) / n
		for _, c := range cs {
			c.Close()
		}
		b.StartTimer()
	}
	b.ReportMetric(heap, "heap-B/conn")
	b.ReportMetric(stack, "stack-B/conn")
}

// stackBytes is the memory of the goroutine stacks.
func stackBytes() uint64 {
	s := []rtmetrics.Sample{{Name: "/memory/classes/heap/stacks:bytes"}}
	runtime.GC()
	rtmetrics.Read(s)
	return s[0].Value.Uint64()
}

// serverHeap is the heap in use allocated under the frames of the milter
// side, as of a fresh garbage collection.
func serverHeap(b *testing.B) int64 {
	runtime.GC()
	runtime.GC() // the profile is that of the last completed cycle
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, false)
	for {
		recs = make([]runtime.MemProfileRecord, n+50)
		var ok bool
		if n, ok = runtime.MemProfile(recs, false); ok {
			recs = recs[:n]
			break
		}
	}
	var total int64
	for _, r := range recs {
		frames := runtime.CallersFrames(r.Stack())
		for {
			f, more := frames.Next()
			if strings.HasPrefix(f.Function, "github.com/d--j/go-milter.(*Server).Serve") ||
				strings.HasPrefix(f.Function, "github.com/batv/batv/milter.(*Server).ServeConn") ||
				strings.HasPrefix(f.Function, "github.com/batv/batv/internal/serve.(*Listener).Serve") {
				total += r.InUseBytes()
				break
			}
			if !more {
				break
			}
		}
	}
	return total
}
