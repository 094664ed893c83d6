package logq

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/daemontest"
)

// lines are the lines written to buf.
func lines(buf *daemontest.Buffer) []string {
	return strings.Split(strings.TrimSpace(buf.String()), "\n")
}

func newLogger(w *daemontest.Buffer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})).With("conn", 7)
}

// TestQueueWritesInOrder: every line queued is written once Close
// returns, in the order of the queue, with its logger's attributes and
// its own, and those below the level are not.
func TestQueueWritesInOrder(t *testing.T) {
	var buf daemontest.Buffer
	log := newLogger(&buf, slog.LevelInfo)
	q := New(4) // fewer than the lines: Log waits for the writer
	const n = 100
	for i := range n {
		q.Log(log, slog.LevelInfo, "recipient", "i", i, "rcpt", "alice@example.com")
		q.Log(log, slog.LevelDebug, "hidden", "i", i)
	}
	q.Close()
	lines := lines(&buf)
	if len(lines) != n {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), n, strings.Join(lines, "\n"))
	}
	for i, l := range lines {
		want := fmt.Sprintf("level=INFO msg=recipient conn=7 i=%d rcpt=alice@example.com", i)
		if !strings.HasSuffix(l, want) {
			t.Errorf("line %d: %q, want it to end with %q", i, l, want)
		}
	}
}

// gatedWriter holds its first write until gate is closed.
type gatedWriter struct {
	gate <-chan struct{}
	once sync.Once
	buf  *daemontest.Buffer
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	g.once.Do(func() { <-g.gate })
	return g.buf.Write(p)
}

// TestQueueStampsLoggingTime: a line carries the time it was logged at,
// not the time the writer got to it (here 50 ms later, held up by the line
// before it).
func TestQueueStampsLoggingTime(t *testing.T) {
	var buf daemontest.Buffer
	gate := make(chan struct{})
	log := slog.New(slog.NewTextHandler(&gatedWriter{gate: gate, buf: &buf}, nil))
	q := New(4)
	q.Log(log, slog.LevelInfo, "first")
	time.Sleep(10 * time.Millisecond) // the writer is in the first line's write
	before := time.Now()
	q.Log(log, slog.LevelInfo, "second")
	time.Sleep(50 * time.Millisecond)
	close(gate)
	q.Close()
	lines := lines(&buf)
	if len(lines) != 2 {
		t.Fatalf("lines %q", lines)
	}
	var stamp string
	if _, err := fmt.Sscanf(lines[1], "time=%s", &stamp); err != nil {
		t.Fatalf("%q: %v", lines[1], err)
	}
	at, err := time.Parse(time.RFC3339Nano, stamp)
	if err != nil {
		t.Fatal(err)
	}
	// The text handler writes milliseconds.
	if d := at.Sub(before); d < -time.Millisecond || d > 20*time.Millisecond {
		t.Errorf("stamped %v after the call, want the time of the call", d)
	}
}

// TestAfterCloseAndNil: after Close, and on a nil queue, a line is
// written at once; Close may be called twice.
func TestAfterCloseAndNil(t *testing.T) {
	var buf daemontest.Buffer
	log := newLogger(&buf, slog.LevelInfo)
	q := New(8)
	q.Close()
	q.Close()
	q.Log(log, slog.LevelInfo, "after close")
	var nilq *Queue
	nilq.Log(log, slog.LevelInfo, "no queue")
	nilq.Log(log, slog.LevelDebug, "no queue, below the level")
	lines := lines(&buf)
	if len(lines) != 2 || !strings.Contains(lines[0], "msg=\"after close\"") || !strings.Contains(lines[1], "msg=\"no queue\"") {
		t.Errorf("lines %q", lines)
	}
}

// TestConcurrentLogAndClose: lines logged while the queue closes are all
// written, once, and nothing panics (go test -race).
func TestConcurrentLogAndClose(t *testing.T) {
	var buf daemontest.Buffer
	log := newLogger(&buf, slog.LevelInfo)
	q := New(16)
	var wg sync.WaitGroup
	const goroutines, each = 8, 200
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				q.Log(log, slog.LevelInfo, "line", "g", g, "i", i)
			}
		})
	}
	time.Sleep(time.Millisecond)
	q.Close()
	wg.Wait()
	if got := len(lines(&buf)); got != goroutines*each {
		t.Errorf("%d lines, want %d", got, goroutines*each)
	}
}
