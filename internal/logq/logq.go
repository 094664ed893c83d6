// Package logq writes log lines on a goroutine of its own, in the order
// they were queued, so that the goroutines that log keep small stacks.
//
// A milter session is one goroutine per MTA connection, and go-milter's
// frames leave a session little of its 4 KiB starting stack: log/slog's
// frames (the record, the handler, the formatting, the write) would grow
// every session's stack to 8 KiB for good, 2 MiB at 256 connections
// (docs/performance.md, Stacks). Through a Queue, a session only copies
// its line's arguments and sends them.
package logq

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Queue is a log writer goroutine and the lines waiting for it. The zero
// Queue is not usable; a nil *Queue writes each line at once, on the
// caller's goroutine.
type Queue struct {
	lines chan line
	done  chan struct{}

	mu     sync.RWMutex // held for reading while a line is sent, for writing by Close
	closed bool
}

// line is a log line as queued: the time it was logged at, not written.
type line struct {
	log   *slog.Logger
	t     time.Time
	level slog.Level
	msg   string
	args  []any
}

// New starts a queue of up to size lines. Once size lines wait, Log
// blocks until the writer has taken one: lines are never dropped.
func New(size int) *Queue {
	q := &Queue{lines: make(chan line, size), done: make(chan struct{})}
	go q.write()
	return q
}

// Log queues a line for log at level, with the arguments of
// slog.Logger.Log, stamped with the time now. A line below log's level
// costs only the check.
func (q *Queue) Log(log *slog.Logger, level slog.Level, msg string, args ...any) {
	if !log.Enabled(context.Background(), level) {
		return
	}
	l := line{log: log, t: time.Now(), level: level, msg: msg, args: args}
	if q == nil {
		writeLine(l)
		return
	}
	q.mu.RLock()
	if q.closed {
		q.mu.RUnlock()
		writeLine(l)
		return
	}
	q.lines <- l
	q.mu.RUnlock()
}

// Close writes the lines that wait and stops the writer. Lines logged
// after Close are written at once, on the caller's goroutine.
func (q *Queue) Close() {
	q.mu.Lock()
	if !q.closed {
		q.closed = true
		close(q.lines)
	}
	q.mu.Unlock()
	<-q.done
}

func (q *Queue) write() {
	defer close(q.done)
	for l := range q.lines {
		writeLine(l)
		// Lines gather for a moment before the writer looks again: a
		// line sent to a writer waiting on the channel wakes it, at more
		// cost than the line, and a busy milter logs a line every few
		// microseconds.
		time.Sleep(gather)
		for n := len(q.lines); n > 0; n-- {
			writeLine(<-q.lines)
		}
	}
}

// gather is how long the writer lets lines gather after it wakes.
const gather = time.Millisecond

func writeLine(l line) {
	r := slog.NewRecord(l.t, l.level, l.msg, 0)
	r.Add(l.args...)
	_ = l.log.Handler().Handle(context.Background(), r)
}
