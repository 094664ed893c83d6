package socketmap

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/internal/serve"
	"github.com/batv/batv/internal/testenv/conntest"
)

// benchHandler answers every lookup with a fixed result, allocating
// nothing, so that the benchmarks measure the server.
var benchHandler = HandlerFunc(func(_, key string) Reply {
	if len(key) == 0 {
		return NotFound()
	}
	return OK("alice@example.com")
})

var (
	benchRequest = netstring("untag prvs=0123abcdef=alice@example.com")
	benchReply   = "20:OK alice@example.com,"
)

func startBenchServer(b *testing.B) string {
	b.Helper()
	ln, path := conntest.ListenUnix(b, "s")
	l := serve.New(ln, serve.Options{})
	go func() { _ = l.Serve(func(c *serve.Conn) { ServeConn(c, benchHandler) }) }()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = l.Shutdown(ctx)
	})
	return path
}

// BenchmarkRoundTrip: one request and its reply over a unix socket, one
// client connection, like one Postfix process.
func BenchmarkRoundTrip(b *testing.B) {
	path := startBenchServer(b)
	c, err := net.Dial("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := []byte(benchRequest)
	reply := make([]byte, len(benchReply))
	b.ReportAllocs()
	b.SetBytes(int64(len(benchRequest) + len(benchReply)))
	for b.Loop() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, reply); err != nil {
			b.Fatal(err)
		}
	}
	if string(reply) != benchReply {
		b.Fatalf("reply %q", reply)
	}
}

// BenchmarkRoundTripParallel: many client connections at once, like many
// Postfix processes.
func BenchmarkRoundTripParallel(b *testing.B) {
	path := startBenchServer(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("unix", path)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		req := []byte(benchRequest)
		reply := make([]byte, len(benchReply))
		for pb.Next() {
			if _, err := c.Write(req); err != nil {
				b.Error(err)
				return
			}
			if _, err := io.ReadFull(c, reply); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkServeInMemory measures the server alone: b.N pipelined
// requests on one in-memory connection. allocs/op is the server's
// allocations per request (the key string given to the handler, plus the
// listener's and the connection's setup spread over b.N).
func BenchmarkServeInMemory(b *testing.B) {
	input := []byte(strings.Repeat(benchRequest, b.N))
	conn := newMemConn(input, 64<<10)
	conn.out.Grow(b.N * len(benchReply))
	b.ReportAllocs()
	b.ResetTimer()
	if err := serveMem(benchHandler, nil, conn, time.Minute); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	out, _ := conn.output()
	if len(out) != b.N*len(benchReply) || !bytes.HasPrefix(out, []byte(benchReply)) {
		b.Fatalf("output of %d bytes for %d requests", len(out), b.N)
	}
}

// TestAllocsPerRequest pins the server's allocations per request to one:
// the key string handed to the handler.
func TestAllocsPerRequest(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	const n = 2000
	input := []byte(strings.Repeat(benchRequest, n))
	allocs := testing.AllocsPerRun(5, func() {
		conn := newMemConn(input, 64<<10)
		conn.out.Grow(n * len(benchReply))
		if err := serveMem(benchHandler, nil, conn, time.Minute); err != nil {
			t.Fatal(err)
		}
	})
	perRequest := allocs / n
	t.Logf("%.0f allocations for %d requests (%.3f per request)", allocs, n, perRequest)
	if perRequest > 1.1 {
		t.Errorf("%.3f allocations per request, want at most 1 (the key string)", perRequest)
	}
	r := bufio.NewReader(strings.NewReader(benchRequest))
	if p, err := readRequest(r); err != nil || string(p) != "untag prvs=0123abcdef=alice@example.com" {
		t.Fatalf("readRequest: %q, %v", p, err)
	}
}
