package postfixtest

import (
	"bufio"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"time"
)

// Conn is an SMTP client connection driven one command at a time, for what
// Send cannot do: a sender address verification callout (MAIL, RCPT, then
// RSET or QUIT, never DATA), addresses written exactly as given (MAIL
// FROM:<"">, RCPT TO:<alice%example.com@[127.0.0.1]>), several transactions
// on one connection. It keeps a transcript of the dialogue ("C: " for what
// the client sent, "S: " for each reply line).
type Conn struct {
	client
	transcript []string
}

// Dial connects to addr ("host:port"), reads the greeting and returns it.
// timeout bounds the whole conversation (default 60s). The connection is
// open even when the greeting is negative; Close it.
func Dial(addr string, timeout time.Duration) (*Conn, Reply, error) {
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, Reply{}, err
	}
	_ = nc.SetDeadline(time.Now().Add(timeout))
	c := &Conn{client: client{conn: nc, r: bufio.NewReader(nc), w: textproto.NewWriter(bufio.NewWriter(nc))}}
	greeting, err := c.reply()
	if err != nil {
		nc.Close()
		return nil, greeting, fmt.Errorf("greeting: %w", err)
	}
	return c, greeting, nil
}

// Cmd sends one command line (without CRLF) and returns the reply.
func (c *Conn) Cmd(line string) (Reply, error) {
	c.transcript = append(c.transcript, "C: "+line)
	if err := c.w.PrintfLine("%s", line); err != nil {
		return Reply{}, err
	}
	return c.reply()
}

// Body sends a message after a 354 reply to DATA (bare LF line ends become
// CRLF, lines are dot-stuffed, the final dot is added) and returns the
// reply to the end of data.
func (c *Conn) Body(data []byte) (Reply, error) {
	dw := c.w.DotWriter()
	if _, err := dw.Write(data); err != nil {
		return Reply{}, err
	}
	if err := dw.Close(); err != nil {
		return Reply{}, err
	}
	c.transcript = append(c.transcript, fmt.Sprintf("C: (message, %d bytes, and the final dot)", len(data)))
	return c.reply()
}

// Quit sends QUIT and closes the connection, whatever the reply; it waits
// at most 2 s for the reply (a server reading a message takes QUIT for a
// line of it, and never answers).
func (c *Conn) Quit() {
	_ = c.conn.SetDeadline(time.Now().Add(2 * time.Second))
	_, _ = c.Cmd("QUIT")
	c.Close()
}

// Close closes the connection.
func (c *Conn) Close() error { return c.conn.Close() }

// Transcript is the dialogue so far, one line per command and reply line.
func (c *Conn) Transcript() string { return strings.Join(c.transcript, "\n") }

func (c *Conn) reply() (Reply, error) {
	rep, err := c.readReply()
	for _, l := range rep.Lines {
		c.transcript = append(c.transcript, "S: "+l)
	}
	return rep, err
}
