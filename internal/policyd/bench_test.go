package policyd

import (
	"bufio"
	"io"
	"testing"
)

// BenchmarkRoundTrip: one request as Postfix 3.7 sends it at RCPT (29
// attributes, 560 bytes) and its reply over a unix socket pair, one
// connection, like one smtpd process; the handler refuses the null
// sender, so the time is the protocol's.
func BenchmarkRoundTrip(b *testing.B) {
	req := []byte(postfixRequest(b))
	conn, _ := serveOne(b, &Server{Handler: senderHandler}, nil)
	br := bufio.NewReader(conn)
	want := "action=DUNNO\n\n"
	buf := make([]byte, len(want))
	b.SetBytes(int64(len(req)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := conn.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(br, buf); err != nil || string(buf) != want {
			b.Fatalf("%q, %v", buf, err)
		}
	}
}

// BenchmarkParse: reading and parsing the same request from memory.
func BenchmarkParse(b *testing.B) {
	req := postfixRequest(b)
	r := &reader{maxLine: DefaultMaxLineLen, maxAttrs: DefaultMaxAttributes, maxSize: DefaultMaxRequestSize}
	sr := &repeatReader{s: req}
	r.br = bufio.NewReaderSize(sr, 1024)
	b.SetBytes(int64(len(req)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.readRequest(); err != nil {
			b.Fatal(err)
		}
	}
}

// repeatReader yields s over and over.
type repeatReader struct {
	s   string
	off int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := copy(p, r.s[r.off:])
	r.off = (r.off + n) % len(r.s)
	return n, nil
}
