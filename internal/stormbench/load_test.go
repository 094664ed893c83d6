package stormbench

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/postfixtest"
)

// TestLoad runs a small load against an SMTP sink that refuses one
// recipient and defers another, and checks the counts and the latencies.
func TestLoad(t *testing.T) {
	sink := postfixtest.NewSink(t)
	sink.Refuse("refused@example.com")
	sink.SetRcptReply("deferred@example.com", postfixtest.Reply{Code: 451, Enhanced: "4.7.1", Text: "later"})
	data := message("Subject: test\n")
	envs := []Envelope{
		{Kind: Legit, From: "someone@remote.test", To: "bob@example.com", Data: data},
		{Kind: Untagged, To: "refused@example.com", Data: data},
		{Kind: Forged, To: "deferred@example.com", Data: data},
		{Kind: Untagged, To: "alice@example.com", Data: data},
	}
	res := Load{Addr: sink.Addr(), Sessions: 40, Concurrency: 3, Envelope: func(i int) Envelope { return envs[i%4] }}.Run(context.Background())
	want := map[[2]int]int{
		{int(Legit), int(Accepted)}:    10,
		{int(Untagged), int(Refused)}:  10,
		{int(Forged), int(Deferred)}:   10,
		{int(Untagged), int(Accepted)}: 10,
	}
	for k := range numKinds {
		for o := range numOutcomes {
			if got := res.Count[k][o]; got != want[[2]int{int(k), int(o)}] {
				t.Errorf("%s %s: %d sessions", k, o, got)
			}
		}
	}
	if got := res.Total(Accepted); got != 20 || len(sink.Messages()) != 20 {
		t.Errorf("%d accepted, %d messages in the sink", got, len(sink.Messages()))
	}
	// Seven replies per accepted session (greeting, EHLO, MAIL, RCPT,
	// DATA, end of data, QUIT), five per refused or deferred one.
	if got := len(res.Latencies); got != 20*7+20*5 {
		t.Errorf("%d latencies", got)
	}
	if s := res.Sample[Untagged][Refused]; !strings.Contains(s, "RCPT TO:<refused@example.com>: 550 5.1.1") {
		t.Errorf("sample %q", s)
	}
	if p := res.Percentile(99); p <= 0 || p > res.Elapsed {
		t.Errorf("p99 %v, elapsed %v", p, res.Elapsed)
	}
	m := sink.Messages()[0]
	if !strings.HasSuffix(string(m.Data), "again and again.\r\n") || !strings.HasPrefix(string(m.Data), "Subject: test\r\n\r\n") {
		t.Errorf("message as delivered: %q", m.Data)
	}
}

func TestLoadFailed(t *testing.T) {
	// A port nobody listens on: every session fails.
	ports, err := postfixtest.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	res := Load{Addr: "127.0.0.1:" + strconv.Itoa(ports[0]), Sessions: 3, Concurrency: 2, Timeout: 5 * time.Second,
		Envelope: func(int) Envelope { return Envelope{Kind: Forged} }}.Run(context.Background())
	if res.Count[Forged][Failed] != 3 || !strings.Contains(res.Sample[Forged][Failed], "refused") {
		t.Errorf("counts %v, sample %q", res.Count, res.Sample[Forged][Failed])
	}
}

func TestPercentile(t *testing.T) {
	r := &Result{}
	for i := 100; i >= 1; i-- {
		r.Latencies = append(r.Latencies, time.Duration(i)*time.Millisecond)
	}
	for p, want := range map[float64]time.Duration{99: 99 * time.Millisecond, 50: 50 * time.Millisecond, 100: 100 * time.Millisecond, 0.1: time.Millisecond} {
		if got := r.Percentile(p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if got := (&Result{}).Percentile(99); got != 0 {
		t.Errorf("no latencies: %v", got)
	}
}

func TestTreeCPU(t *testing.T) {
	before, err := TreeCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// A child that burns CPU, reaped by this process: counted in its
	// children time.
	cmd := exec.Command("sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	child := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	after, err := TreeCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if child < 50*time.Millisecond {
		t.Fatalf("the child used only %v", child)
	}
	if d := after - before; d < child-20*time.Millisecond {
		t.Errorf("tree CPU grew by %v, the reaped child used %v", d, child)
	}
	if _, err := TreeCPU(1 << 30); err == nil {
		t.Error("no error for a process that does not exist")
	}
}

func TestParseStat(t *testing.T) {
	st, err := parseStat([]byte("4242 (a (b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 30 7 3 20 0 1 0 100 0 0"))
	if err != nil {
		t.Fatal(err)
	}
	if st.pid != 4242 || st.ppid != 17 || st.self != 2800*time.Millisecond || st.children != 100*time.Millisecond {
		t.Errorf("%+v", st)
	}
	for _, bad := range []string{"", "4242 (x", "4242 (x) S 17 1 2", "x (y) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 30 7 3"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
