// Package serve is the connection handling every batv listener shares: the
// milter, the Postfix lookup tables and the Postfix policy service. It
// accepts connections up to a limit (refusing the others at once, counted
// and logged once per interval), retries failed accepts with a back-off,
// closes connections that stay idle, bounds every write, and shuts down
// gracefully: idle connections close at once, a connection in the middle
// of a unit of work (a message, a lookup) closes when it is done, and
// whatever is left closes when the deadline passes.
//
// A front end marks its units of work with Conn.Busy; what it reads and
// writes goes through the Conn, which applies the timeouts.
package serve

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batv/batv/internal/metrics"
)

// Defaults for the zero values of Options.
const (
	// DefaultIdleTimeout is well above the MTAs' own timeouts (Postfix
	// closes idle lookup connections after 10 s, and waits at most
	// smtpd_timeout, 300 s, between SMTP commands).
	DefaultIdleTimeout = 15 * time.Minute
	// DefaultWriteTimeout bounds each write to a peer that does not read.
	DefaultWriteTimeout = 30 * time.Second
	// RefusalLogEvery bounds the log lines a connection flood causes.
	RefusalLogEvery = 10 * time.Second
)

// Options configure a Listener.
type Options struct {
	// Name labels the listener in logs and metrics.
	Name string
	// MaxConns limits open connections; 0 means no limit. A connection
	// over the limit is closed at once, so that the MTA applies its
	// fallback at once rather than after its own timeout.
	MaxConns int
	// IdleTimeout closes a connection on which the peer sends nothing for
	// this long; 0 means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// WriteTimeout bounds each write; 0 means DefaultWriteTimeout.
	WriteTimeout time.Duration
	// Logger receives refusals, failed accepts and the end of each
	// connection; nil discards them.
	Logger *slog.Logger
	// Metrics counts connections; nil counts nothing.
	Metrics *metrics.Metrics
}

// Listener accepts connections for one front end.
type Listener struct {
	ln   net.Listener
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	conns    map[*Conn]struct{}
	draining bool
	lastID   atomic.Uint64
	wg       sync.WaitGroup
	refusals Summary
}

// New wraps ln.
func New(ln net.Listener, opts Options) *Listener {
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.WriteTimeout == 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Listener{ln: ln, opts: opts, log: log, conns: map[*Conn]struct{}{}, refusals: Summary{Every: RefusalLogEvery}}
}

// ErrClosed is returned by Serve after Shutdown.
var ErrClosed = errors.New("serve: listener closed")

// Serve accepts connections until Shutdown and runs handle for each in a
// goroutine of its own. handle owns the connection and closes it. Serve
// returns ErrClosed after Shutdown, or the error that stopped the
// listener.
func (l *Listener) Serve(handle func(*Conn)) error {
	var backoff time.Duration
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			if l.isDraining() {
				return ErrClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors, say: wait, and try again.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Error("accept failed", "listener", l.opts.Name, "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if c := l.track(nc); c != nil {
			l.opts.Metrics.ConnOpened(l.opts.Name)
			go handle(c)
		}
	}
}

// track makes nc a Conn, or closes it when the listener is draining or at
// its limit.
func (l *Listener) track(nc net.Conn) *Conn {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	l.mu.Lock()
	if l.draining || (l.opts.MaxConns > 0 && len(l.conns) >= l.opts.MaxConns) {
		draining := l.draining
		refused, logNow := 0, false
		if !draining {
			refused, logNow = l.refusals.Add(time.Now())
		}
		l.mu.Unlock()
		// Counted and logged before the close, so that whoever sees the
		// close also finds the refusal in the metrics and the log.
		if !draining {
			l.opts.Metrics.ConnRefused(l.opts.Name)
		}
		if logNow {
			l.log.Warn("connection refused: limit reached", "listener", l.opts.Name,
				"max_connections", l.opts.MaxConns, "refused", refused, "per", RefusalLogEvery)
		}
		nc.Close()
		return nil
	}
	c := &Conn{Conn: nc, l: l, id: l.lastID.Add(1), stop: make(chan struct{})}
	c.log = l.log.With("listener", l.opts.Name, "conn", c.id)
	l.conns[c] = struct{}{}
	l.wg.Add(1)
	l.mu.Unlock()
	return c
}

func (l *Listener) isDraining() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.draining
}

// Open returns the number of open connections.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// Addr is the listener's address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Shutdown stops accepting, closes the connections that wait for their
// peer between units of work, lets the busy ones finish their unit, and
// when ctx ends closes whatever is left. It returns ctx's error if it had
// to close busy connections.
func (l *Listener) Shutdown(ctx context.Context) error {
	l.mu.Lock()
	l.draining = true
	l.ln.Close()
	for c := range l.conns {
		c.drain()
	}
	l.mu.Unlock()

	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		// Only the busy connections are cut short: the others were closed
		// by the drain or their peer, or close at their next read.
		l.mu.Lock()
		n := 0
		for c := range l.conns {
			c.mu.Lock()
			busy := c.busy && c.end == ""
			c.mu.Unlock()
			if busy {
				n++
			}
			c.setEnd("shutdown")
			_ = c.Conn.Close()
		}
		l.mu.Unlock()
		<-done
		if n == 0 {
			return nil
		}
		l.log.Warn("shutdown deadline passed: closed connections in the middle of their work",
			"listener", l.opts.Name, "connections", n)
		return ctx.Err()
	}
}

// Conn is one accepted connection. Its Read waits at most the idle
// timeout and ends the connection when the listener drains and the
// connection is not busy; its Write is bounded by the write timeout.
type Conn struct {
	net.Conn
	l   *Listener
	id  uint64
	log *slog.Logger

	mu       sync.Mutex
	busy     bool // inside a unit of work
	reading  bool // blocked in Read for the peer
	draining bool
	stop     chan struct{} // closed when the listener drains
	end      string
	closed   bool
}

// ID numbers the connections of a listener from 1.
func (c *Conn) ID() uint64 { return c.id }

// Log is the listener's logger with the listener's name and the
// connection's id.
func (c *Conn) Log() *slog.Logger { return c.log }

// Busy marks the start (true) or the end (false) of a unit of work: a
// draining listener closes the connection only between units.
func (c *Conn) Busy(busy bool) {
	c.mu.Lock()
	c.busy = busy
	c.mu.Unlock()
}

// Pause waits d, or less if the listener shuts down meanwhile, and
// reports whether it waited the whole time: a front end slows a peer down
// with it without holding up a shutdown.
func (c *Conn) Pause(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.stop:
		return false
	}
}

// Read reads from the peer, waiting at most the idle timeout.
func (c *Conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if c.draining && !c.busy {
		c.mu.Unlock()
		c.setEnd("shutdown")
		_ = c.Conn.Close()
		return 0, io.EOF
	}
	c.reading = true
	c.mu.Unlock()
	_ = c.Conn.SetReadDeadline(time.Now().Add(c.l.opts.IdleTimeout))
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.reading = false
	c.mu.Unlock()
	if err != nil {
		var ne net.Error
		switch {
		case err == io.EOF:
			c.setEnd("closed")
		case errors.As(err, &ne) && ne.Timeout():
			if c.setEnd("timeout") {
				c.log.Info("connection closed: the peer sent nothing for too long", "idle", c.l.opts.IdleTimeout)
			}
		case errors.Is(err, net.ErrClosed):
			c.setEnd("closed") // by Shutdown, which said why first
		default:
			if c.setEnd("error") {
				c.log.Warn("connection read failed", "err", err)
			}
		}
	}
	return n, err
}

// Write writes to the peer, waiting at most the write timeout.
func (c *Conn) Write(p []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.l.opts.WriteTimeout))
	n, err := c.Conn.Write(p)
	if err != nil && c.setEnd("error") {
		c.log.Warn("connection write failed", "err", err)
	}
	return n, err
}

// SetEnd records how the connection ended ("quit", "error", ...) unless
// something else was recorded first, for the log and the metrics. It
// reports whether it recorded how.
func (c *Conn) SetEnd(how string) bool { return c.setEnd(how) }

func (c *Conn) setEnd(how string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.end != "" {
		return false
	}
	c.end = how
	return true
}

// drain marks the connection and closes it now if it waits for its peer
// between units of work. The listener's lock is held.
func (c *Conn) drain() {
	c.mu.Lock()
	if !c.draining {
		close(c.stop)
	}
	c.draining = true
	idle := c.reading && !c.busy
	c.mu.Unlock()
	if idle {
		c.setEnd("shutdown")
		_ = c.Conn.Close()
	}
}

// Close counts and logs how the connection ended, closes it (so the peer
// that sees the close finds it counted) and then forgets it (Open no
// longer counts it); closing again does nothing.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	if c.end == "" {
		c.end = "closed"
	}
	how := c.end
	c.mu.Unlock()
	l := c.l
	l.opts.Metrics.ConnClosed(l.opts.Name, how)
	c.log.Debug("connection ended", "how", how)
	err := c.Conn.Close()
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	l.wg.Done()
	return err
}
