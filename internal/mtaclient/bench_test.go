package mtaclient

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"
)

// benchMilter is a small BATV-like go-milter: it remembers the sender and
// signs it at end of message.
type benchMilter struct {
	milter.NoOpMilter
	from string
}

func (m *benchMilter) MailFrom(from string, _ *milter.Modifier) (milter.Response, error) {
	m.from = from
	return milter.RespContinue, nil
}

func (m *benchMilter) Body(mod *milter.Modifier) (milter.Response, error) {
	if err := mod.ChangeFrom("prvs=0123456789=" + m.from); err != nil {
		return nil, err
	}
	if err := mod.AddHeader("X-BATV", "signed"); err != nil {
		return nil, err
	}
	return milter.RespContinue, nil
}

func (m *benchMilter) Abort(*milter.Modifier) error { m.from = ""; return nil }

func benchMessage() *Message {
	return &Message{
		Sender:     "alice@example.com",
		Recipients: []string{"bob@example.net", "carol@example.org"},
		Headers: []Header{
			{"From", " Alice <alice@example.com>"},
			{"To", " bob@example.net, carol@example.org"},
			{"Subject", " benchmark"},
			{"Date", " Sat, 28 Nov 2026 04:02:28 +0000"},
			{"Message-Id", " <1@example.com>"},
		},
		Body:     []byte(strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 16)),
		QueueID:  "4ABCDEF0123",
		AuthUser: "alice",
	}
}

func goMilterBenchServer(b *testing.B) string {
	return serveGoMilter(b, &milter.Server{
		NewMilter: func() milter.Milter { return &benchMilter{} },
		Actions:   milter.OptAddHeader | milter.OptChangeFrom,
		Protocol:  milter.OptNoUnknown,
	})
}

func benchConn(b *testing.B, path string) *Conn {
	c, err := Dial(context.Background(), Options{Network: "unix", Address: path, Timeout: 10 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.Connect("client.example", FamilyInet, 4567, "192.0.2.1", StockMacros(StageConnect, connInfo)); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Helo("client.example", nil); err != nil {
		b.Fatal(err)
	}
	return c
}

func checkBench(b *testing.B, res *Result, err error) {
	if err != nil {
		b.Fatal(err)
	}
	if !res.Delivered() || len(res.Modifications) != 2 {
		b.Fatalf("Result = %+v", res)
	}
}

// BenchmarkSendGoMilter: one message per op, one connection, against a
// go-milter v0.5.0 server over a unix socket (client and server share the
// CPU).
func BenchmarkSendGoMilter(b *testing.B) {
	c := benchConn(b, goMilterBenchServer(b))
	defer c.Close()
	msg := benchMessage()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := c.Send(msg)
		checkBench(b, res, err)
	}
}

// BenchmarkSendGoMilterParallel: one connection per goroutine.
func BenchmarkSendGoMilterParallel(b *testing.B) {
	path := goMilterBenchServer(b)
	msg := benchMessage()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := benchConn(b, path)
		defer c.Close()
		for pb.Next() {
			res, err := c.Send(msg)
			checkBench(b, res, err)
		}
	})
}

// BenchmarkSendFastPeer measures the client against a minimal milter that
// answers from a buffer without allocating, to show the client's own cost.
func BenchmarkSendFastPeer(b *testing.B) {
	path := sockPath(b)
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		fastPeer(conn)
	}()
	c := benchConn(b, path)
	defer c.Close()
	msg := benchMessage()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := c.Send(msg)
		checkBench(b, res, err)
	}
}

func fastPeer(conn net.Conn) {
	r := bufio.NewReaderSize(conn, 64<<10)
	w := bufio.NewWriter(conn)
	cont := frame(RepContinue, "")
	eom := append(append(frame(RepChgFrom, "<prvs=0123456789=alice@example.com>\x00"),
		frame(RepAddHeader, "X-BATV\x00signed\x00")...), cont...)
	buf := make([]byte, 1<<20)
	var h [4]byte
	for {
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(h[:])
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return
		}
		switch buf[0] {
		case CmdOptNeg:
			w.Write(frame(RepOptNeg, string(optneg(6, ActAddHeaders|ActChangeFrom, ProtoNoUnknown, ""))))
		case CmdMacro, CmdAbort:
			continue
		case CmdQuit:
			return
		case CmdEOM:
			w.Write(eom)
		default:
			w.Write(cont)
		}
		if err := w.Flush(); err != nil {
			return
		}
	}
}
