// Package load drives a milter with many concurrent MTA connections, the
// way Postfix 3.7 drives one, checks every reply and measures throughput,
// latency and the milter's CPU and memory. It is the engine of "batv
// bench" and of "make bench".
//
// Each worker opens a connection with package mta (OPTNEG, CONNECT, HELO,
// with Postfix's offer and stock macros, honouring the milter's
// opt-outs), sends Options.PerConn messages on it with mta's Send (MAIL,
// RCPT, DATA, six headers, end of headers, the body, end of message, and
// the ABORT Postfix sends after each transaction, every stage the milter
// opted out of left out) and says QUIT. Workers share one message
// counter, so the run sends exactly Options.Messages messages whatever
// the concurrency.
//
// The workloads are the three things a BATV milter does:
//
//   - Outbound: an authenticated client submits a message from a sender in
//     the protected domain. Expected: the message goes through and the
//     milter replaces the envelope sender with a tag that the tool
//     verifies itself with the site's key (batv.Verifier), for exactly
//     that sender; the recipients are left alone.
//   - InboundValid: a bounce (null sender) from a remote MX to a validly
//     tagged address, signed with the site's key. Expected: the recipient
//     is accepted and, at end of message, the tagged recipient deleted and
//     the untagged one added.
//   - InboundForged: a bounce to a tag whose MAC is wrong. Expected: the
//     configured refusal (Options.ForgedReply, "550 5.7.1" by default) at
//     RCPT (Options.ForgedStage).
//
// With Options.AnyReply the same messages are sent on the same connection
// pattern, but any well-formed reply counts (the milter client still
// rejects every protocol violation): this is how a milter that does
// something else, a do-nothing reference or a third-party milter without
// the key, is driven for a fair comparison.
//
// Only messages whose every reply was checked count towards the
// throughput and the latency figures; the others are counted as errors
// (a broken connection, a protocol violation, a timeout) or mismatches (a
// well-formed but wrong answer), and a few are kept as samples.
//
// Given the milter's process id, Run reads its CPU time (utime+stime of
// /proc/PID/stat) before and after the measured phase, and its peak
// resident set (VmHWM of /proc/PID/status) at the end.
package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/mta"
)

// Workload is the kind of message a run sends.
type Workload string

// The workloads.
const (
	Outbound      Workload = "outbound"
	InboundValid  Workload = "inbound-valid"
	InboundForged Workload = "inbound-forged"
)

// Workloads lists the workloads in the order reports show them.
var Workloads = []Workload{Outbound, InboundValid, InboundForged}

// ParseWorkload returns the workload named s.
func ParseWorkload(s string) (Workload, error) {
	for _, w := range Workloads {
		if string(w) == s {
			return w, nil
		}
	}
	return "", fmt.Errorf("load: unknown workload %q (want outbound, inbound-valid or inbound-forged)", s)
}

// Stage names for Options.ForgedStage.
const (
	StageMail = "mail"
	StageRcpt = "rcpt"
	StageEOM  = "eom"
	StageAny  = "any"
)

// Defaults.
const (
	DefaultDomain      = "example.com"
	DefaultForgedReply = "550 5.7.1"
	DefaultBodySize    = 2048
	DefaultTimeout     = 10 * time.Second
	// distinct is the number of distinct messages (senders, tags) a run
	// cycles through.
	distinct = 512
)

// ErrOptions is wrapped by every problem with Options.
var ErrOptions = errors.New("load: invalid options")

// Options configures a run.
type Options struct {
	// Network and Address of the milter, as for net.Dial: "unix" and a
	// socket path, or "tcp" and host:port.
	Network, Address string
	// Workload is the kind of message sent.
	Workload Workload
	// AnyReply accepts any well-formed reply instead of checking what the
	// workload expects. Keys are then optional.
	AnyReply bool
	// Messages is the number of messages of the measured phase; Warmup
	// the number sent before it, the same way, and not counted.
	Messages, Warmup int
	// Concurrency is the number of connections open at once (default 1).
	Concurrency int
	// PerConn is the number of messages sent on one connection before it
	// is closed and another opened; 0 keeps each connection for the whole
	// phase.
	PerConn int
	// Timeout bounds the dial and every wait for a reply (default 10s).
	Timeout time.Duration

	// Keys sign the tags of the inbound workloads and verify the tags of
	// the outbound one. Required unless AnyReply is set.
	Keys batv.Keyring
	// Lifetime is the tag lifetime in days the inbound tags are signed
	// with and the expiry window outbound tags are verified with
	// (default batv.DefaultLifetime).
	Lifetime int
	// Now is the clock of signing and verifying (default time.Now).
	Now func() time.Time
	// Domain is the protected mail domain (default "example.com").
	Domain string
	// BodySize is the size of each message body in bytes (default 2048).
	BodySize int
	// ForgedReply is the start of the SMTP reply expected for a forged
	// bounce (default "550 5.7.1"); ForgedStage the command it is
	// expected at: "rcpt" (default), "mail", "eom" or "any".
	ForgedReply, ForgedStage string

	// PID is the milter's process id, to measure its CPU time and peak
	// memory; 0 measures nothing.
	PID int
	// ResetPeakRSS resets the milter's peak resident set (writes 5 to
	// /proc/PID/clear_refs) before the warm-up, so that Report.PeakRSS is
	// the peak of this run rather than of the milter's whole life.
	ResetPeakRSS bool
}

// Report is the outcome of a run.
type Report struct {
	Workload    Workload `json:"workload"`
	AnyReply    bool     `json:"any_reply"`
	Network     string   `json:"network"`
	Address     string   `json:"address"`
	Concurrency int      `json:"concurrency"`
	PerConn     int      `json:"per_connection"`
	Warmup      int      `json:"warmup"`

	// Negotiated is what the milter asked for at OPTNEG (of a probe
	// connection made before the run).
	Negotiated Negotiated `json:"negotiated"`
	// RoundTrips is the number of times one checked message waited for
	// the milter (the stages it did not opt out of or skip, up to the one
	// that ended the transaction); ConnRoundTrips the same for opening a
	// connection (OPTNEG, CONNECT, HELO).
	RoundTrips     int `json:"round_trips_per_message"`
	ConnRoundTrips int `json:"round_trips_per_connection"`

	// Messages were attempted in the measured phase: OK were fully
	// checked, Errors failed on a broken connection or protocol violation
	// (including messages that could not be sent because a connection
	// could not be opened), Mismatches got well-formed but wrong replies.
	Messages    int `json:"messages"`
	OK          int `json:"ok"`
	Errors      int `json:"errors"`
	Mismatches  int `json:"mismatches"`
	Connections int `json:"connections"`
	// Samples are the first few error and mismatch descriptions.
	Samples []string `json:"samples,omitempty"`

	// Elapsed is the wall time of the measured phase; Rate is OK per
	// second of it.
	Elapsed time.Duration `json:"elapsed_ns"`
	Rate    float64       `json:"messages_per_second"`
	// Latency percentiles of the checked messages: from the first packet
	// of MAIL to the end-of-message reply (or the reply that ended the
	// transaction).
	P50 time.Duration `json:"p50_ns"`
	P90 time.Duration `json:"p90_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`

	// MilterCPU is the milter's CPU time (user+system) during the
	// measured phase and CPUPerMessage that over OK; PeakRSS is the
	// milter's VmHWM in bytes at the end: the peak of its life, or of
	// this run with Options.ResetPeakRSS. Zero without Options.PID.
	MilterCPU     time.Duration `json:"milter_cpu_ns"`
	CPUPerMessage time.Duration `json:"milter_cpu_per_message_ns"`
	PeakRSS       int64         `json:"milter_peak_rss_bytes"`
	// ClientCPU is this process's CPU time during the measured phase:
	// the load generator shares the machine with the milter.
	ClientCPU time.Duration `json:"client_cpu_ns"`
}

// Negotiated is what a milter asked for at OPTNEG, within Postfix's
// offer: the actions and the protocol mask (SMFIF_*, SMFIP_*).
type Negotiated struct {
	Actions, Protocol uint32
}

// Failed reports whether the run had errors or mismatches, or checked
// nothing.
func (r *Report) Failed() bool { return r.Errors > 0 || r.Mismatches > 0 || r.OK == 0 }

// Run performs the warm-up and the measured phase. It returns an error
// for invalid options or when no connection to the milter can be made;
// failures during the run are counted in the Report.
func Run(ctx context.Context, opts Options) (*Report, error) {
	r, err := newRunner(opts)
	if err != nil {
		return nil, err
	}
	rep := &Report{
		Workload: r.opts.Workload, AnyReply: r.opts.AnyReply,
		Network: r.opts.Network, Address: r.opts.Address,
		Concurrency: r.opts.Concurrency, PerConn: r.opts.PerConn, Warmup: r.opts.Warmup,
	}
	// A probe connection: fail early and clearly when the milter is not
	// there, and record what it negotiates.
	r.mta = mta.NewDialer(&dialer{ctx: ctx, Dialer: net.Dialer{Timeout: r.opts.Timeout}},
		r.opts.Network, r.opts.Address, r.opts.Timeout)
	c, err := r.open()
	if err != nil {
		return nil, err
	}
	act, proto := c.Negotiated()
	rep.Negotiated = Negotiated{Actions: uint32(act), Protocol: uint32(proto)}
	rep.ConnRoundTrips = c.RoundTrips()
	_ = c.Close()

	if r.opts.PID > 0 && r.opts.ResetPeakRSS {
		if err := ResetPeakRSS(r.opts.PID); err != nil {
			return nil, err
		}
	}
	if r.opts.Warmup > 0 {
		r.phase(ctx, r.opts.Warmup)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	var cpu0 time.Duration
	if r.opts.PID > 0 {
		if cpu0, err = ProcessCPU(r.opts.PID); err != nil {
			return nil, err
		}
	}
	self0 := selfCPU()
	ph := r.phase(ctx, r.opts.Messages)
	rep.ClientCPU = selfCPU() - self0
	if r.opts.PID > 0 {
		cpu1, err := ProcessCPU(r.opts.PID)
		if err != nil {
			return nil, err
		}
		rep.MilterCPU = cpu1 - cpu0
		if rep.PeakRSS, err = PeakRSS(r.opts.PID); err != nil {
			return nil, err
		}
	}

	rep.Messages = r.opts.Messages
	rep.OK, rep.Errors, rep.Mismatches = ph.ok, ph.errors, ph.mismatches
	rep.Connections, rep.Samples, rep.RoundTrips = ph.conns, ph.samples, ph.roundTrips
	rep.Elapsed = ph.elapsed
	if s := ph.elapsed.Seconds(); s > 0 {
		rep.Rate = float64(ph.ok) / s
	}
	if ph.ok > 0 {
		rep.CPUPerMessage = rep.MilterCPU / time.Duration(ph.ok)
	}
	lat := ph.latencies
	slices.Sort(lat)
	rep.P50, rep.P90, rep.P99 = percentile(lat, 50), percentile(lat, 90), percentile(lat, 99)
	if len(lat) > 0 {
		rep.Max = lat[len(lat)-1]
	}
	return rep, ctx.Err()
}

// percentile returns the nearest-rank p-th percentile of sorted d.
func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	rank := (len(d)*p + 99) / 100 // ceil(n*p/100)
	return d[max(rank, 1)-1]
}

type runner struct {
	opts     Options
	mta      *mta.Client
	client   mta.SMTPClient
	msgs     []testMessage
	verifier batv.Verifier
}

func newRunner(opts Options) (*runner, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrOptions}, args...)...)
	}
	switch opts.Network {
	case "unix", "tcp", "tcp4", "tcp6":
	default:
		return nil, bad("network %q: want unix or tcp", opts.Network)
	}
	if opts.Address == "" {
		return nil, bad("no address")
	}
	if _, err := ParseWorkload(string(opts.Workload)); err != nil {
		return nil, bad("%v", err)
	}
	if opts.Messages <= 0 || opts.Warmup < 0 || opts.Concurrency < 0 || opts.PerConn < 0 || opts.BodySize < 0 {
		return nil, bad("messages must be positive; warm-up, concurrency, per-connection and body size not negative")
	}
	opts.Concurrency = max(opts.Concurrency, 1)
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Lifetime == 0 {
		opts.Lifetime = batv.DefaultLifetime
	}
	if opts.Lifetime < batv.MinLifetime || opts.Lifetime > batv.MaxLifetime {
		return nil, bad("lifetime %d: want %d to %d days", opts.Lifetime, batv.MinLifetime, batv.MaxLifetime)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Domain == "" {
		opts.Domain = DefaultDomain
	}
	if opts.BodySize == 0 {
		opts.BodySize = DefaultBodySize
	}
	if opts.ForgedReply == "" {
		opts.ForgedReply = DefaultForgedReply
	}
	switch opts.ForgedStage {
	case "":
		opts.ForgedStage = StageRcpt
	case StageMail, StageRcpt, StageEOM, StageAny:
	default:
		return nil, bad("forged stage %q: want mail, rcpt, eom or any", opts.ForgedStage)
	}
	if opts.Keys == nil {
		if !opts.AnyReply {
			return nil, bad("the %s workload needs the milter's keys to check its replies (or accept any reply)", opts.Workload)
		}
		// Tags nobody can verify: the milter's answers are not checked.
		opts.Keys = batv.SingleKey{ID: 0, Secret: []byte("batv load generator: not a real key")}
	}
	r := &runner{opts: opts}
	r.verifier = batv.Verifier{Keys: opts.Keys, MaxLifetime: opts.Lifetime, Strict: true, Now: opts.Now}
	msgs, err := buildMessages(opts)
	if err != nil {
		return nil, bad("%v", err)
	}
	r.msgs = msgs
	r.client = smtpClient(opts.Workload)
	return r, nil
}

// open opens an SMTP session as Postfix does: OPTNEG, CONNECT and HELO
// with their stock macros.
func (r *runner) open() (*mta.Session, error) {
	c, err := r.mta.Session(r.client)
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	return c, nil
}

// dialer dials within a context: an interrupted run does not wait for a
// connection to a milter that does not accept it.
type dialer struct {
	ctx context.Context
	net.Dialer
}

func (d *dialer) Dial(network, address string) (net.Conn, error) {
	return d.DialContext(d.ctx, network, address)
}

// phaseResult is what the workers of one phase found.
type phaseResult struct {
	ok, errors, mismatches, conns int
	roundTrips                    int
	samples                       []string
	latencies                     []time.Duration
	elapsed                       time.Duration
}

const maxSamples = 5

func (p *phaseResult) sample(s string) {
	if len(p.samples) < maxSamples && !slices.Contains(p.samples, s) {
		p.samples = append(p.samples, s)
	}
}

// phase sends n messages with the configured concurrency.
func (r *runner) phase(ctx context.Context, n int) *phaseResult {
	var next atomic.Int64
	var mu sync.Mutex
	total := &phaseResult{}
	var wg sync.WaitGroup
	start := time.Now()
	for w := range r.opts.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := r.worker(ctx, w, n, &next)
			mu.Lock()
			defer mu.Unlock()
			total.ok += p.ok
			total.errors += p.errors
			total.mismatches += p.mismatches
			total.conns += p.conns
			if total.roundTrips == 0 {
				total.roundTrips = p.roundTrips
			}
			for _, s := range p.samples {
				total.sample(s)
			}
			total.latencies = append(total.latencies, p.latencies...)
		}()
	}
	wg.Wait()
	total.elapsed = time.Since(start)
	return total
}

func (r *runner) worker(ctx context.Context, w, n int, next *atomic.Int64) *phaseResult {
	p := &phaseResult{latencies: make([]time.Duration, 0, n/r.opts.Concurrency+1)}
	var c *mta.Session
	sent := 0
	defer func() {
		if c != nil {
			_ = c.Close()
		}
	}()
	for ctx.Err() == nil {
		i := int(next.Add(1) - 1)
		if i >= n {
			break
		}
		if c == nil {
			var err error
			if c, err = r.open(); err != nil {
				p.errors++
				p.sample(err.Error())
				continue
			}
			p.conns++
			sent = 0
		}
		m := &r.msgs[(i*7919+w)%len(r.msgs)] // spread the messages over the workers
		trips := c.RoundTrips()
		t0 := time.Now()
		res, err := c.Send(&m.msg)
		d := time.Since(t0)
		trips = c.RoundTrips() - trips
		if err != nil {
			p.errors++
			p.sample(describe(err))
			_ = c.Drop()
			c = nil
			continue
		}
		if problem := r.check(m, res); problem != "" {
			p.mismatches++
			p.sample(problem)
		} else {
			p.ok++
			p.latencies = append(p.latencies, d)
			if p.roundTrips == 0 {
				p.roundTrips = trips
			}
		}
		if sent++; r.opts.PerConn > 0 && sent >= r.opts.PerConn {
			if err := c.Close(); err != nil {
				p.sample("QUIT: " + err.Error())
			}
			c = nil
		}
	}
	return p
}

// describe describes a failed message: the end of the connection is
// named, the library's "EOF" alone would not say who ended it.
func describe(err error) string {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "the milter closed the connection: " + err.Error()
	}
	return err.Error()
}

// check returns what is wrong with the milter's answer to m, or "".
func (r *runner) check(m *testMessage, res *mta.Result) string {
	if r.opts.AnyReply {
		return ""
	}
	switch r.opts.Workload {
	case Outbound:
		return r.checkOutbound(m, res)
	case InboundValid:
		return checkInboundValid(m, res)
	}
	return r.checkForged(res)
}

func (r *runner) checkOutbound(m *testMessage, res *mta.Result) string {
	if !res.Delivered() || res.Stopped != mta.AtEOM {
		return fmt.Sprintf("outbound: message not delivered: stopped at %s with %v", res.Stopped, res.Reply)
	}
	var from string
	for _, c := range res.Changes {
		switch c.Type {
		case gomilter.ActionChangeFrom:
			if from != "" {
				return "outbound: more than one CHGFROM"
			}
			from = unbracket(c.From)
		case gomilter.ActionAddRcpt, gomilter.ActionDelRcpt:
			return "outbound: unexpected recipient change " + c.String()
		}
	}
	if from == "" {
		return "outbound: sender not signed (no CHGFROM)"
	}
	v, err := r.verifier.Verify(from)
	if err != nil {
		return "outbound: " + err.Error()
	}
	if v.Status != batv.Valid {
		return fmt.Sprintf("outbound: signed sender %q is %v (%s)", from, v.Status, v.Reason)
	}
	if v.Untagged() != m.msg.Sender {
		return fmt.Sprintf("outbound: signed sender %q is a tag of %q, not of %q", from, v.Untagged(), m.msg.Sender)
	}
	return ""
}

func checkInboundValid(m *testMessage, res *mta.Result) string {
	if !res.Delivered() || res.Stopped != mta.AtEOM {
		return fmt.Sprintf("inbound-valid: bounce not accepted: stopped at %s with %v", res.Stopped, res.Reply)
	}
	var del, add int
	for _, c := range res.Changes {
		switch c.Type {
		case gomilter.ActionDelRcpt:
			if unbracket(c.Rcpt) != m.tagged {
				return "inbound-valid: deletes the wrong recipient: " + c.String()
			}
			del++
		case gomilter.ActionAddRcpt:
			if unbracket(c.Rcpt) != m.untagged {
				return "inbound-valid: adds the wrong recipient: " + c.String()
			}
			add++
		case gomilter.ActionChangeFrom:
			return "inbound-valid: unexpected " + c.String()
		}
	}
	if del != 1 || add != 1 {
		return fmt.Sprintf("inbound-valid: want the tagged recipient deleted and the untagged one added once, got %d DELRCPT and %d ADDRCPT", del, add)
	}
	return ""
}

func (r *runner) checkForged(res *mta.Result) string {
	if !mta.Refused(res.Reply) || !strings.HasPrefix(res.Reply.SMTPReply, r.opts.ForgedReply) {
		return fmt.Sprintf("inbound-forged: want %q..., got %v at %s", r.opts.ForgedReply, res.Reply, res.Stopped)
	}
	want := map[string]string{StageMail: mta.AtMail, StageRcpt: mta.AtRcpt, StageEOM: mta.AtEOM}[r.opts.ForgedStage]
	if want != "" && res.Stopped != want {
		return fmt.Sprintf("inbound-forged: refused at %s, want at %s", res.Stopped, r.opts.ForgedStage)
	}
	return ""
}

func unbracket(a string) string {
	if len(a) >= 2 && a[0] == '<' && a[len(a)-1] == '>' {
		return a[1 : len(a)-1]
	}
	return a
}
