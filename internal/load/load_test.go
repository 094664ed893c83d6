package load

import (
	"context"
	"errors"
	"io"
	"log"
	"os"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
	emilter "github.com/emersion/go-milter"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/testenv/conntest"
	"github.com/batv/batv/internal/testenv/miltertest"
)

var testKeys = batv.SingleKey{ID: 3, Secret: []byte("load test key, 32 bytes long...")}

// sockPath returns a short unix socket path (sun_path is 108 bytes).
// serveBATV serves batv's own milter with both roles.
func serveBATV(t *testing.T) string {
	t.Helper()
	return miltertest.Serve(t, DefaultDomain, testKeys)
}

// serveNop serves a go-milter v0.5.0 milter that continues at everything,
// as the reference of "make bench" (internal/refmilter) does: a protocol
// version 2 milter without the no-reply flags.
func serveNop(t *testing.T) string {
	t.Helper()
	ln, path := conntest.ListenUnix(t, "m.sock")
	srv := &emilter.Server{
		NewMilter: func() emilter.Milter { return emilter.NoOpMilter{} },
		Actions:   emilter.OptChangeFrom | emilter.OptAddRcpt | emilter.OptRemoveRcpt,
		Protocol:  emilter.OptNoUnknown | emilter.OptNoData | emilter.OptNoEOH | emilter.OptNoBody,
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return path
}

func TestRunChecksBATV(t *testing.T) {
	path := serveBATV(t)
	for _, w := range Workloads {
		t.Run(string(w), func(t *testing.T) {
			rep, err := Run(context.Background(), Options{
				Network: "unix", Address: path, Workload: w, Keys: testKeys,
				Messages: 200, Warmup: 20, Concurrency: 4, PerConn: 7, PID: os.Getpid(),
			})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Failed() || rep.OK != 200 || rep.Messages != 200 {
				t.Fatalf("report %+v", rep)
			}
			// 200 messages, 7 per connection, over 4 workers that share
			// one counter: at least ceil(200/7) connections.
			if rep.Connections < 29 || rep.Connections > 29+4 {
				t.Errorf("%d connections", rep.Connections)
			}
			if rep.Rate <= 0 || rep.P50 <= 0 || rep.P99 < rep.P50 || rep.Max < rep.P99 || rep.PeakRSS <= 0 {
				t.Errorf("figures %+v", rep)
			}
			// Both roles and forged headers removed: batv answers RCPT,
			// DATA (where it refuses untagged bounces) and the end of
			// message, and neither MAIL nor the headers (SMFIP_NR_*); a
			// forged bounce ends at RCPT. A connection waits for the
			// option negotiation, not for CONNECT.
			want := map[Workload]int{Outbound: 3, InboundValid: 3, InboundForged: 1}[w]
			if rep.RoundTrips != want || rep.ConnRoundTrips != 1 {
				t.Errorf("round trips %d per message, %d per connection; want %d, 1", rep.RoundTrips, rep.ConnRoundTrips, want)
			}
			var b strings.Builder
			if err := rep.WriteText(&b); err != nil || !strings.Contains(b.String(), "200 checked, 0 errors, 0 mismatches") {
				t.Errorf("text report:\n%s", b.String())
			}
		})
	}
}

func TestRunFindsMismatches(t *testing.T) {
	path := serveNop(t)
	for _, w := range Workloads {
		t.Run(string(w), func(t *testing.T) {
			opts := Options{Network: "unix", Address: path, Workload: w, Keys: testKeys, Messages: 30, Concurrency: 2, PerConn: 10}
			rep, err := Run(context.Background(), opts)
			if err != nil {
				t.Fatal(err)
			}
			if !rep.Failed() || rep.Mismatches != 30 || rep.OK != 0 || len(rep.Samples) == 0 {
				t.Fatalf("report %+v", rep)
			}
			// The same milter driven with any reply accepted: all checked.
			opts.AnyReply, opts.Keys = true, nil
			if rep, err = Run(context.Background(), opts); err != nil {
				t.Fatal(err)
			}
			if rep.Failed() || rep.OK != 30 || rep.RoundTrips != 9 || rep.ConnRoundTrips != 3 {
				t.Fatalf("any reply: report %+v", rep)
			}
		})
	}
}

// TestRunWrongKey: a milter signing with another key fails the outbound
// check, and refuses the inbound tags.
func TestRunWrongKey(t *testing.T) {
	path := serveBATV(t)
	other := batv.SingleKey{ID: 3, Secret: []byte("another key, 32 bytes long.....")}
	for _, w := range []Workload{Outbound, InboundValid} {
		rep, err := Run(context.Background(), Options{Network: "unix", Address: path, Workload: w, Keys: other, Messages: 10})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Mismatches != 10 {
			t.Errorf("%s: report %+v", w, rep)
		}
	}
}

// TestRunCountsErrors: a milter that drops the connection in the middle
// of each message makes errors, not mismatches, and the run goes on with
// new connections.
func TestRunCountsErrors(t *testing.T) {
	log.SetOutput(io.Discard) // go-milter logs each dropped session
	t.Cleanup(func() { log.SetOutput(os.Stderr) })
	ln, path := conntest.ListenUnix(t, "m.sock")
	t.Cleanup(func() { ln.Close() })
	srv := &emilter.Server{
		NewMilter: func() emilter.Milter { return dropper{} },
		Protocol:  emilter.OptNoUnknown,
	}
	go srv.Serve(ln)
	rep, err := Run(context.Background(), Options{Network: "unix", Address: path, Workload: Outbound, AnyReply: true,
		Messages: 20, Concurrency: 2, PerConn: 5})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Errors != 20 || rep.OK != 0 || rep.Connections != 20 || !rep.Failed() {
		t.Fatalf("report %+v", rep)
	}
	if !strings.Contains(strings.Join(rep.Samples, "\n"), "closed") {
		t.Errorf("samples %q", rep.Samples)
	}
}

// dropper ends the session (go-milter closes the connection) at MAIL.
type dropper struct{ emilter.NoOpMilter }

func (dropper) MailFrom(string, *emilter.Modifier) (emilter.Response, error) {
	return nil, errors.New("drop")
}

func TestRunOptions(t *testing.T) {
	path := serveBATV(t)
	ok := Options{Network: "unix", Address: path, Workload: Outbound, Keys: testKeys, Messages: 1}
	for name, mod := range map[string]func(*Options){
		"network":  func(o *Options) { o.Network = "udp" },
		"address":  func(o *Options) { o.Address = "" },
		"workload": func(o *Options) { o.Workload = "sideways" },
		"messages": func(o *Options) { o.Messages = 0 },
		"lifetime": func(o *Options) { o.Lifetime = 31 },
		"stage":    func(o *Options) { o.ForgedStage = "data" },
		"no keys":  func(o *Options) { o.Keys = nil },
	} {
		o := ok
		mod(&o)
		if _, err := Run(context.Background(), o); !errors.Is(err, ErrOptions) {
			t.Errorf("%s: %v", name, err)
		}
	}
	o := ok
	o.Address = path + ".missing"
	if _, err := Run(context.Background(), o); err == nil || errors.Is(err, ErrOptions) {
		t.Errorf("no milter: %v", err)
	}
}

func TestForgedStageAndReply(t *testing.T) {
	path := serveBATV(t)
	for _, tt := range []struct {
		reply, stage string
		ok           bool
	}{
		{"550 5.7.1", "rcpt", true},
		{"550 5.7.1 Bounce refused", "any", true},
		{"451", "rcpt", false},
		{"550 5.7.1", "eom", false},
	} {
		rep, err := Run(context.Background(), Options{Network: "unix", Address: path, Workload: InboundForged,
			Keys: testKeys, Messages: 5, ForgedReply: tt.reply, ForgedStage: tt.stage})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Failed() == tt.ok {
			t.Errorf("%q at %s: report %+v", tt.reply, tt.stage, rep)
		}
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 200; i++ {
		d = append(d, time.Duration(i))
	}
	if p := percentile(d, 50); p != 100 {
		t.Errorf("p50 = %v", p)
	}
	if p := percentile(d, 99); p != 198 {
		t.Errorf("p99 = %v", p)
	}
	if p := percentile(d[:1], 99); p != 1 {
		t.Errorf("p99 of one = %v", p)
	}
	if p := percentile(nil, 50); p != 0 {
		t.Errorf("p50 of none = %v", p)
	}
}

func TestProc(t *testing.T) {
	// The command name may hold spaces and parentheses.
	line := "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 1 0 100 1000 10 rest"
	if d, err := parseStat([]byte(line)); err != nil || d != 2810*time.Millisecond {
		t.Errorf("parseStat = %v, %v", d, err)
	}
	if _, err := parseStat([]byte("1234 (x) S 1 2")); err == nil {
		t.Error("short stat line accepted")
	}
	status := "Name:\tbatv\nVmPeak:\t  100 kB\nVmHWM:\t   21156 kB\nVmRSS:\t 19896 kB\n"
	if n, err := parseStatusKB([]byte(status), "VmHWM:"); err != nil || n != 21156*1024 {
		t.Errorf("VmHWM = %d, %v", n, err)
	}
	if _, err := parseStatusKB([]byte("Name:\tx\n"), "VmHWM:"); err == nil {
		t.Error("missing VmHWM accepted")
	}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	if _, err := ProcessCPU(os.Getpid()); err != nil {
		t.Error(err)
	}
	if n, err := PeakRSS(os.Getpid()); err != nil || n <= 0 {
		t.Errorf("PeakRSS = %d, %v", n, err)
	}
}

func TestMessages(t *testing.T) {
	opts := Options{Workload: InboundForged, Keys: testKeys, Lifetime: 7, Now: time.Now, Domain: "example.org", BodySize: 100}
	msgs, err := buildMessages(opts)
	if err != nil {
		t.Fatal(err)
	}
	v := batv.Verifier{Keys: testKeys, Strict: true}
	seen := map[string]bool{}
	for _, m := range msgs {
		if m.msg.Sender != "" || len(m.msg.Recipients) != 1 || len(m.msg.Headers) != 6 || len(m.msg.Body) != 100 ||
			!strings.HasSuffix(string(m.msg.Body), "\r\n") {
			t.Fatalf("message %+v", m.msg)
		}
		r, _ := v.Verify(m.tagged)
		if r.Status != batv.BadSignature || r.Untagged() != m.untagged || !strings.HasSuffix(m.untagged, "@example.org") {
			t.Fatalf("forged tag %q: %v", m.tagged, r.Status)
		}
		seen[m.tagged] = true
	}
	if len(seen) != distinct {
		t.Errorf("%d distinct tags", len(seen))
	}
}

func TestStagesString(t *testing.T) {
	proto := gomilter.OptNoConnect | gomilter.OptNoHelo | gomilter.OptNoData | gomilter.OptNoHeaders |
		gomilter.OptNoEOH | gomilter.OptNoBody | gomilter.OptNoUnknown
	if s := StagesString(uint32(proto)); s != "MAIL RCPT EOM" {
		t.Errorf("StagesString = %q", s)
	}
}
