// Package stormbench measures an MX under a backscatter storm: a flood of
// bounces (MAIL FROM:<>) to untagged and to forged-tag addresses, one
// message per SMTP session from many concurrent clients, mixed with
// legitimate mail, against several configurations of one private Postfix
// (Postfix alone, Postfix's blanket refusal of the null sender, batv's
// milter front end, batv's policy front end). It reports refusals and
// legitimate messages accepted per second, CPU per refused bounce (the
// whole Postfix process tree and batv) and the 99th percentile of SMTP
// reply latency, each set against the blanket refusal in the same run.
//
// The load client and the measurements are here; TestStorm (storm_test.go)
// builds the Postfix instance and runs the scenarios:
//
//	make bench-storm STORMFLAGS='-runs 3 -sessions 3000'
//
// See issue 15 and docs/performance.md.
package stormbench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Kind is the kind of message a session sends.
type Kind int

// The kinds of a storm: bounces to an untagged address and to an address
// with a forged tag, and legitimate mail (a sender, a valid recipient).
const (
	Untagged Kind = iota
	Forged
	Legit
	numKinds
)

func (k Kind) String() string {
	return [...]string{"untagged bounce", "forged-tag bounce", "legitimate"}[k]
}

// Outcome is what became of a session's message.
type Outcome int

// The outcomes of a session: the message was accepted (2xx at the end of
// data), refused (a 5xx reply at any step) or deferred (a 4xx reply), or
// the session failed (connection error, timeout, malformed reply).
const (
	Accepted Outcome = iota
	Refused
	Deferred
	Failed
	numOutcomes
)

func (o Outcome) String() string {
	return [...]string{"accepted", "refused", "deferred", "failed"}[o]
}

// Envelope is the message of one session.
type Envelope struct {
	Kind     Kind
	From, To string
	// Data is the message as sent after DATA: CRLF line ends, dot-stuffed,
	// ending with "\r\n.\r\n".
	Data []byte
}

// Load is one measurement: Sessions SMTP sessions, Concurrency at a time,
// each sending one message.
type Load struct {
	// Addr is the SMTP server, host:port.
	Addr string
	// Sessions and Concurrency: how many sessions, how many at once.
	Sessions, Concurrency int
	// Envelope returns the message of session i (0 ≤ i < Sessions); it
	// is called from several goroutines.
	Envelope func(i int) Envelope
	// Timeout bounds each session; zero means 60 s.
	Timeout time.Duration
}

// Result is what a Load measured.
type Result struct {
	// Elapsed is the time from the first connection to the end of the
	// last session.
	Elapsed time.Duration
	// Count is the number of sessions by kind and outcome.
	Count [numKinds][numOutcomes]int
	// Latencies are the times of every SMTP reply: from the connection
	// for the greeting, from the end of the command otherwise.
	Latencies []time.Duration
	// Sample describes, by kind and outcome, the first session that was
	// not accepted: the reply or the error.
	Sample [numKinds][numOutcomes]string
}

// Total is the number of sessions with outcome o, over all kinds or for
// the kinds given.
func (r *Result) Total(o Outcome, kinds ...Kind) int {
	if len(kinds) == 0 {
		kinds = []Kind{Untagged, Forged, Legit}
	}
	n := 0
	for _, k := range kinds {
		n += r.Count[k][o]
	}
	return n
}

// Percentile returns the p-th percentile (0 < p ≤ 100) of the reply
// latencies, nearest rank.
func (r *Result) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	l := slices.Clone(r.Latencies)
	slices.Sort(l)
	i := int(float64(len(l))*p/100+0.5) - 1
	return l[min(max(i, 0), len(l)-1)]
}

// Run runs the load and waits for every session to end.
func (l Load) Run(ctx context.Context) *Result {
	timeout := l.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	var (
		next atomic.Int64
		mu   sync.Mutex
		res  = &Result{Latencies: make([]time.Duration, 0, 7*l.Sessions)}
		wg   sync.WaitGroup
	)
	start := time.Now()
	for range max(l.Concurrency, 1) {
		wg.Go(func() {
			var lat []time.Duration
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= l.Sessions {
					break
				}
				env := l.Envelope(i)
				var out Outcome
				var err error
				lat, out, err = session(l.Addr, env, timeout, lat)
				mu.Lock()
				res.Count[env.Kind][out]++
				if err != nil && res.Sample[env.Kind][out] == "" {
					res.Sample[env.Kind][out] = fmt.Sprintf("<%s> to <%s>: %v", env.From, env.To, err)
				}
				mu.Unlock()
			}
			mu.Lock()
			res.Latencies = append(res.Latencies, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	return res
}

// session sends env in one SMTP session, as a plain client would: no
// pipelining, QUIT after a refusal. It appends the reply latencies to
// lat. err is the first negative reply, or why the session failed.
func session(addr string, env Envelope, timeout time.Duration, lat []time.Duration) ([]time.Duration, Outcome, error) {
	t0 := time.Now()
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return lat, Failed, err
	}
	defer c.Close()
	_ = c.SetDeadline(t0.Add(timeout))
	br, bw := bufio.NewReader(c), bufio.NewWriter(c)
	// step sends cmd (a command line, or "" for none) and data, and reads
	// the reply.
	step := func(cmd string, data []byte, want int) error {
		t := time.Now()
		if cmd != "" {
			bw.WriteString(cmd + "\r\n")
		}
		bw.Write(data)
		if err := bw.Flush(); err != nil {
			return err
		}
		if cmd == "" && data == nil {
			t = t0 // the greeting: from the connection
		}
		code, text, err := readReply(br)
		lat = append(lat, time.Since(t))
		if err == nil && code != want {
			return &replyError{cmd, code, text}
		}
		return err
	}
	err = step("", nil, 220)
	for _, s := range []struct {
		cmd  string
		data []byte
		want int
	}{
		{"EHLO storm.test", nil, 250},
		{"MAIL FROM:<" + env.From + ">", nil, 250},
		{"RCPT TO:<" + env.To + ">", nil, 250},
		{"DATA", nil, 354},
		{"", env.Data, 250},
	} {
		if err != nil {
			break
		}
		err = step(s.cmd, s.data, s.want)
	}
	out := Accepted
	if err != nil {
		out = Failed
		if re, ok := err.(*replyError); ok && re.code >= 400 {
			out = Refused
			if re.code < 500 {
				out = Deferred
			}
		}
	}
	if out == Failed {
		return lat, out, err
	}
	if qerr := step("QUIT", nil, 221); qerr != nil && out == Accepted {
		return lat, Failed, fmt.Errorf("QUIT: %w", qerr)
	}
	return lat, out, err
}

// replyError is an unexpected reply to cmd.
type replyError struct {
	cmd  string
	code int
	text string
}

func (e *replyError) Error() string {
	cmd := e.cmd
	if cmd == "" {
		cmd = "greeting or end of data"
	}
	return fmt.Sprintf("%s: %d %s", cmd, e.code, e.text)
}

// readReply reads a reply, one line or several, and returns its code and
// the text of its last line.
func readReply(br *bufio.Reader) (int, string, error) {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return 0, "", err
		}
		if len(line) < 5 || line[len(line)-2] != '\r' {
			return 0, "", fmt.Errorf("malformed reply line %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil || code < 200 || code > 599 {
			return 0, "", fmt.Errorf("malformed reply line %q", line)
		}
		switch line[3] {
		case ' ':
			return code, line[4 : len(line)-2], nil
		case '-':
			continue
		}
		return 0, "", fmt.Errorf("malformed reply line %q", line)
	}
}
