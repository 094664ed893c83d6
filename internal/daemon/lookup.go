package daemon

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/metrics"
	"github.com/batv/batv/internal/serve"
	"github.com/batv/batv/internal/socketmap"
	"github.com/batv/batv/policy"
)

// A lookup that finds no valid tag for a well-formed tagged address in a
// protected domain is what a brute force of the MAC through the untag
// table looks like: without a limit, a local client learns about 100,000
// guesses a second whether they verify. Such failed lookups are delayed:
// each connection gets a burst and then a steady rate, and all
// connections together get another, which bounds the guesses however many
// connections a client opens. Lookups that find a tag, and lookups of
// untagged addresses, never wait. The numbers are far above what Postfix
// asks when nobody attacks: it looks up a tag that does not verify only
// for a forged bounce or reply.
const (
	guessRate      = 20  // failed lookups a second, all connections together
	guessBurst     = 100 // failed lookups all connections may make at once
	connGuessRate  = 2   // failed lookups a second, on one connection
	connGuessBurst = 10  // failed lookups one connection may make at once
	// lookupLogEvery bounds the log lines a client can cause through the
	// lookup service (failed lookups, unknown table names).
	lookupLogEvery = time.Minute
	// maxLoggedName bounds how much of a client's table name reaches the
	// log and the reply.
	maxLoggedName = 64
)

// lookupGuard is the lookup service's protection against guessing, shared
// by its connections.
type lookupGuard struct {
	log     *slog.Logger
	mm      *metrics.Metrics
	global  *rate.Limiter
	unknown serve.Summary
	failed  serve.Summary

	mu      sync.Mutex
	conns   map[uint64]bool // connections with failed lookups since the last line
	longest time.Duration   // the longest delay since the last line
}

func newLookupGuard(log *slog.Logger, mm *metrics.Metrics) *lookupGuard {
	return &lookupGuard{log: log, mm: mm, global: rate.NewLimiter(guessRate, guessBurst),
		unknown: serve.Summary{Every: lookupLogEvery}, failed: serve.Summary{Every: lookupLogEvery}, conns: map[uint64]bool{}}
}

// lookup is the handler of one connection of the lookup service: it
// answers Postfix's socketmap queries with the current policy.
func (d *Daemon) lookup(g *lookupGuard, c *serve.Conn) socketmap.HandlerFunc {
	conn := rate.NewLimiter(connGuessRate, connGuessBurst)
	return func(name, key string) socketmap.Reply {
		table, known := policy.ParseTable(name)
		if !known {
			// The map name comes from the client: count an unknown one
			// under one label, so bogus names cannot grow the metrics,
			// and log it clipped, once a minute.
			g.mm.Lookup("unknown", "error")
			if n, due := g.unknown.Add(time.Now()); due {
				c.Log().Warn("socketmap lookup refused: unknown table", "map", clip(name), "refused", n, "per", lookupLogEvery)
			}
			return socketmap.Perm(fmt.Sprintf("unknown lookup table %q (want untag or strip)", clip(name)))
		}
		p := d.state.Load().policy
		v, ok := p.Lookup(table, key, d.now())
		if ok {
			g.mm.Lookup(name, "found")
			c.Log().Debug("socketmap lookup", "map", name, "key", key, "value", v)
			return socketmap.OK(v)
		}
		if !guessable(p, key) {
			g.mm.Lookup(name, "notfound")
			return socketmap.NotFound()
		}
		g.mm.Lookup(name, "bad-tag")
		if !c.Pause(g.delay(conn, c)) {
			return socketmap.Temp("shutting down")
		}
		return socketmap.NotFound()
	}
}

// guessable reports whether key is a well-formed tagged address (or
// local part) in a protected domain: one whose failed lookup tells a
// guesser something.
func guessable(p *policy.Policy, key string) bool {
	delim := p.Verifier().Delimiter
	if delim == 0 {
		delim = '+'
	}
	if !strings.Contains(key, "@") {
		_, err := batv.Parse(key+"@local.invalid", delim)
		return err == nil
	}
	t, err := batv.Parse(key, delim)
	return err == nil && p.Protected(t.Domain())
}

// delay reserves a failed lookup on connection c (whose limiter is conn)
// and in the global budget, and returns how long to wait before
// answering. It logs a summary at most once a minute.
func (g *lookupGuard) delay(conn *rate.Limiter, c *serve.Conn) time.Duration {
	now := time.Now()
	wait := max(conn.ReserveN(now, 1).DelayFrom(now), g.global.ReserveN(now, 1).DelayFrom(now))
	g.mu.Lock()
	g.conns[c.ID()] = true
	g.longest = max(g.longest, wait)
	n, due := g.failed.Add(now)
	conns, longest := len(g.conns), g.longest
	if due {
		clear(g.conns)
		g.longest = 0
	}
	g.mu.Unlock()
	if due {
		c.Log().Warn("socketmap: lookups of tagged addresses that do not verify (guessing?): delayed", "failed", n,
			"connections", conns, "longest_delay", longest.Round(time.Millisecond), "per", lookupLogEvery)
	}
	return wait
}

// clip bounds a string a client sent for the log and for a reply.
func clip(s string) string {
	if len(s) <= maxLoggedName {
		return s
	}
	return s[:maxLoggedName] + "..."
}
