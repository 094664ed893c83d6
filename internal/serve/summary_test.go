package serve

import (
	"context"
	"io"
	"testing"
	"testing/synctest"
	"time"
)

// TestSummary: the first event is logged at once; the events within Every
// of the last line are counted into the next line, which comes with the
// first event after Every.
func TestSummary(t *testing.T) {
	s := Summary{Every: time.Minute}
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		after time.Duration
		n     int
		due   bool
	}{
		{0, 1, true},
		{time.Second, 0, false},
		{59 * time.Second, 0, false},
		{time.Minute, 3, true},
		{time.Minute + time.Second, 0, false},
		{time.Hour, 2, true},
	} {
		n, due := s.Add(t0.Add(tt.after))
		if n != tt.n || due != tt.due {
			t.Fatalf("at +%v: %d, %v; want %d, %v", tt.after, n, due, tt.n, tt.due)
		}
	}
}

// TestPauseEndsAtShutdown: a connection paused in the middle of a unit of
// work waits the whole pause, unless the listener shuts down, which ends
// the pause at once instead of waiting for it.
func TestPauseEndsAtShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		paused := make(chan bool, 2)
		f := start(t, Options{}, func(c *Conn) {
			defer c.Close()
			var b [1]byte
			for {
				if _, err := c.Read(b[:]); err != nil {
					return
				}
				c.Busy(true)
				paused <- c.Pause(time.Hour)
				_, _ = c.Write(b[:])
				c.Busy(false)
			}
		})
		cl := f.dial(t)
		if _, err := cl.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if _, err := io.ReadFull(cl, make([]byte, 1)); err != nil || !<-paused || time.Since(start) != time.Hour {
			t.Fatalf("pause: %v after %v", err, time.Since(start))
		}
		if _, err := cl.Write([]byte("y")); err != nil {
			t.Fatal(err)
		}
		go io.Copy(io.Discard, cl)
		synctest.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		start = time.Now()
		if err := f.Shutdown(ctx); err != nil || <-paused || time.Since(start) != 0 {
			t.Fatalf("shutdown: %v after %v", err, time.Since(start))
		}
	})
}
