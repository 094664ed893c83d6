package daemon

// Log levels the systemd journal understands. When standard error is the
// journal, each line starts with the syslog priority of its level in the
// form of sd-daemon(3) ("<4>" for a warning). journald takes it as the
// line's priority and removes it, so "journalctl -p warning" shows warnings
// and errors, and a syslog daemon fed by the journal files each line under
// its level (and, with the unit's SyslogFacility=mail, in the mail log).

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// journalStream reports whether w is the stream systemd connected to the
// journal. systemd sets $JOURNAL_STREAM to that stream's device and inode
// (systemd.exec(5)); a process that inherited the variable but writes
// elsewhere does not match it.
func journalStream(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	devText, inoText, ok := strings.Cut(os.Getenv("JOURNAL_STREAM"), ":")
	if !ok {
		return false
	}
	dev, err1 := strconv.ParseUint(devText, 10, 64)
	ino, err2 := strconv.ParseUint(inoText, 10, 64)
	fi, err3 := f.Stat()
	if err1 != nil || err2 != nil || err3 != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && uint64(st.Dev) == dev && st.Ino == ino
}

// The sd-daemon(3) prefixes batv's levels map to, most severe first, with
// the lowest level of each.
var journalPriorities = [...]struct {
	min    slog.Level
	prefix string
}{
	{slog.LevelError, "<3>"}, // LOG_ERR
	{slog.LevelWarn, "<4>"},  // LOG_WARNING
	{slog.LevelInfo, "<6>"},  // LOG_INFO
	{slog.Level(-1 << 31), "<7>"},
}

// priorityHandler passes each record to the one of its handlers that
// writes the record's priority prefix before each line. The handlers are
// alike otherwise: made by the same function, given the same attributes
// and groups.
type priorityHandler [len(journalPriorities)]slog.Handler

// newPriorityHandler returns a handler that writes to w the lines of the
// handlers newHandler makes, each prefixed with its priority.
func newPriorityHandler(w io.Writer, newHandler func(io.Writer) slog.Handler) slog.Handler {
	var h priorityHandler
	mu := new(sync.Mutex)
	for i, p := range journalPriorities {
		h[i] = newHandler(&prefixWriter{mu: mu, w: w, prefix: []byte(p.prefix)})
	}
	return h
}

func (h priorityHandler) pick(l slog.Level) slog.Handler {
	for i, p := range journalPriorities {
		if l >= p.min {
			return h[i]
		}
	}
	return h[len(h)-1]
}

func (h priorityHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.pick(l).Enabled(ctx, l)
}

func (h priorityHandler) Handle(ctx context.Context, r slog.Record) error {
	return h.pick(r.Level).Handle(ctx, r)
}

func (h priorityHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	for i := range h {
		h[i] = h[i].WithAttrs(attrs)
	}
	return h
}

func (h priorityHandler) WithGroup(name string) slog.Handler {
	for i := range h {
		h[i] = h[i].WithGroup(name)
	}
	return h
}

// prefixWriter writes prefix before each write, which slog's handlers
// make once per line. The writers of one priorityHandler share a mutex, so
// their lines do not interleave.
type prefixWriter struct {
	mu     *sync.Mutex
	w      io.Writer
	prefix []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	line := make([]byte, 0, len(p.prefix)+len(b))
	line = append(append(line, p.prefix...), b...)
	if _, err := p.w.Write(line); err != nil {
		return 0, err
	}
	return len(b), nil
}
