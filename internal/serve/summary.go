package serve

import (
	"sync"
	"time"
)

// Summary bounds the log lines of an event that a peer can repeat at
// will (a refused connection, a failed lookup): it counts every event and
// says when to write a line, at most once per Every, with the number of
// events since the last line. Its zero value is not usable: set Every.
type Summary struct {
	Every time.Duration

	mu     sync.Mutex
	n      int
	last   time.Time
	logged bool
}

// Add counts one event at now. If a line is due (none was written in the
// last Every), it returns the number of events since the last line, this
// one included, and true; the caller writes the line.
func (s *Summary) Add(now time.Time) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	if s.logged && now.Sub(s.last) < s.Every {
		return 0, false
	}
	n := s.n
	s.n, s.last, s.logged = 0, now, true
	return n, true
}
