package daemon

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// lookupConfig is testConfig's daemon on milter socket sock, with the
// lookup service on mapSock and limits added to [limits].
func lookupConfig(kr, sock, mapSock, limits string) string {
	c := testConfig(kr, sock, "", "")
	c = strings.Replace(c, "[limits]\n", "[limits]\n"+limits+"\n", 1)
	return strings.Replace(c, "\n[sign]\n", fmt.Sprintf("\n[socketmap]\naddress = \"unix:%s\"\n\n[sign]\n", mapSock), 1)
}

// startLookupDaemon runs a test daemon with the lookup service and
// returns it with the lookup socket's path.
func startLookupDaemon(t *testing.T, limits string) (*testDaemon, string) {
	var mapSock string
	td := startTestDaemonWith(t, func(td *testDaemon) string {
		mapSock = filepath.Join(td.dir, "map.sock")
		return lookupConfig(td.keyring, td.sock, mapSock, limits)
	})
	return td, mapSock
}

// mapClient is a socketmap client that keeps its connection, as Postfix
// does.
type mapClient struct {
	c net.Conn
	r *bufio.Reader
}

func dialMap(t testing.TB, path string) *mapClient {
	t.Helper()
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &mapClient{c: c, r: bufio.NewReader(c)}
}

// lookup sends one request and returns the reply's payload.
func (m *mapClient) lookup(name, key string) (string, error) {
	q := name + " " + key
	if _, err := fmt.Fprintf(m.c, "%d:%s,", len(q), q); err != nil {
		return "", err
	}
	lenStr, err := m.r.ReadString(':')
	if err != nil {
		return "", err
	}
	n, err := strconv.Atoi(strings.TrimSuffix(lenStr, ":"))
	if err != nil {
		return "", err
	}
	buf := make([]byte, n+1)
	if _, err := io.ReadFull(m.r, buf); err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// TestGuessingThroughTheLookupService: many connections asking untag for
// made-up tags of one address learn at most the global budget of answers
// (guessBurst, then guessRate a second), however many connections they
// open; meanwhile the lookups Postfix makes for a valid tag and for an
// untagged address answer at once. The failures are counted as bad-tag,
// summarised in one log line, and a shutdown does not wait for the
// delayed answers.
func TestGuessingThroughTheLookupService(t *testing.T) {
	td, mapSock := startLookupDaemon(t, "")
	valid := td.sign("alice@example.com", 0)
	const attackers, attack = 32, 3 * time.Second
	var answered atomic.Int64
	var wg sync.WaitGroup
	begin := time.Now()
	for a := range attackers {
		m := dialMap(t, mapSock)
		wg.Go(func() {
			for i := 0; time.Since(begin) < attack; i++ {
				// A made-up MAC for the address, different every time.
				guess := fmt.Sprintf("%s%06x%s", valid[:9], (a<<18|i)&0xffffff, valid[15:])
				if guess == valid {
					continue
				}
				m.c.SetDeadline(begin.Add(attack))
				r, err := m.lookup("untag", guess)
				if err != nil {
					return
				}
				if r != "NOTFOUND " {
					t.Errorf("untag %s: %q", guess, r)
					return
				}
				answered.Add(1)
			}
		})
	}
	// Postfix's own lookups while the attack runs.
	postfix := dialMap(t, mapSock)
	var slowest time.Duration
	lookups := 0
	for time.Since(begin) < attack {
		for key, want := range map[string]string{valid: "OK alice@example.com", "bob@example.com": "NOTFOUND ",
			strings.ToLower(valid): "OK alice@example.com"} {
			table := "untag"
			if key != valid {
				table = "strip"
			}
			start := time.Now()
			r, err := postfix.lookup(table, key)
			slowest = max(slowest, time.Since(start))
			lookups++
			if err != nil || r != want {
				t.Fatalf("%s %s: %q %v, want %q", table, key, r, err, want)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	wg.Wait()
	elapsed := time.Since(begin)
	rate := float64(answered.Load()) / elapsed.Seconds()
	limit := guessBurst + guessRate*elapsed.Seconds() + attackers
	t.Logf("%d connections, %v: %d made-up tags answered, %.0f a second (bound %.0f in all); Postfix's %d lookups took at most %v",
		attackers, elapsed.Round(time.Millisecond), answered.Load(), rate, limit, lookups, slowest)
	if float64(answered.Load()) > limit {
		t.Errorf("%d guesses answered in %v, more than %.0f", answered.Load(), elapsed, limit)
	}
	if slowest > time.Second {
		t.Errorf("a lookup Postfix makes waited %v during the attack", slowest)
	}
	if bad := td.metric(`batv_socketmap_lookups_total{map="untag",result="bad-tag"}`); bad < float64(answered.Load()) {
		t.Errorf("bad-tag counted %v, answered %d", bad, answered.Load())
	}
	if n := strings.Count(td.log.String(), "lookups of tagged addresses that do not verify (guessing?): delayed"); n != 1 {
		t.Errorf("%d summary lines in %v, want 1", n, elapsed)
	}
	if !strings.Contains(td.log.String(), "failed=1 connections=1") {
		t.Errorf("the summary does not count the first failure and its connection")
	}
	// Delayed answers are still pending: the shutdown ends them.
	start := time.Now()
	td.stop <- struct{}{}
	if err := <-td.done; err != nil {
		t.Fatal(err)
	}
	td.done <- nil
	if took := time.Since(start); took > time.Second {
		t.Errorf("shutdown took %v with delayed lookups pending", took)
	}
}

// TestUnknownTableLoggedOncePerInterval: lookups in a table batv does not
// serve, with a long name from the client, write one log line a minute,
// with the name clipped, and get a clipped PERM reply; the metric counts
// each under map="unknown".
func TestUnknownTableLoggedOncePerInterval(t *testing.T) {
	td, mapSock := startLookupDaemon(t, "")
	m := dialMap(t, mapSock)
	long := strings.Repeat("x", 9000)
	for range 100 {
		r, err := m.lookup(long, "alice@example.com")
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("PERM unknown lookup table %q (want untag or strip)", strings.Repeat("x", maxLoggedName)+"..."); r != want {
			t.Fatalf("reply %q, want %q", r, want)
		}
	}
	log := td.log.String()
	if n := strings.Count(log, "socketmap lookup refused: unknown table"); n != 1 {
		t.Errorf("%d log lines for 100 lookups in an unknown table", n)
	}
	if strings.Contains(log, strings.Repeat("x", maxLoggedName+1)) {
		t.Error("the log holds more of the client's table name than maxLoggedName")
	}
	if got := td.metric(`batv_socketmap_lookups_total{map="unknown",result="error"}`); got != 100 {
		t.Errorf("counted %v", got)
	}
}
