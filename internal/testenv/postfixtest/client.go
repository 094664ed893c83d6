package postfixtest

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"net"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Reply is one SMTP server reply.
type Reply struct {
	// Code is the three-digit reply code.
	Code int
	// Enhanced is the enhanced status code ("5.1.1"), "" if none.
	Enhanced string
	// Text is the reply text without code and enhanced code; lines of a
	// multi-line reply are joined with "\n".
	Text string
	// Lines are the reply lines exactly as received, without CRLF.
	Lines []string
}

// String gives "CODE ENHANCED TEXT" (multi-line text joined with "\n"), or
// the raw lines if there are any.
func (r Reply) String() string {
	if len(r.Lines) > 0 {
		return strings.Join(r.Lines, "\n")
	}
	if r.Enhanced != "" {
		return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text)
	}
	return fmt.Sprintf("%d %s", r.Code, r.Text)
}

// Positive reports a 2xx or 3xx reply.
func (r Reply) Positive() bool { return r.Code >= 200 && r.Code < 400 }

// Temporary reports a 4xx reply.
func (r Reply) Temporary() bool { return r.Code >= 400 && r.Code < 500 }

// Permanent reports a 5xx reply.
func (r Reply) Permanent() bool { return r.Code >= 500 && r.Code < 600 }

// RcptReply is the reply to one RCPT TO.
type RcptReply struct {
	Addr string
	Reply
}

// Envelope describes one SMTP transaction for Send.
type Envelope struct {
	// Helo is the EHLO name; default "client.test".
	Helo string
	// Username and Password: when Username is set, AUTH is done after EHLO
	// with AuthMechanism (default "PLAIN"; "LOGIN" also works).
	Username, Password string
	AuthMechanism      string
	// From is the envelope sender ("" sends MAIL FROM:<>).
	From string
	// MailParams are ESMTP parameters appended to MAIL FROM, e.g.
	// "BODY=8BITMIME".
	MailParams []string
	// Rcpts are the envelope recipients.
	Rcpts []string
	// Data is the message (header and body). Bare LF line ends are sent as
	// CRLF; dot-stuffing is done here.
	Data []byte
	// Timeout bounds the whole conversation; default 60s.
	Timeout time.Duration
}

// Result records the server's reply at every step of a transaction. A step
// that was not reached is nil (Auth is also nil when no AUTH was asked for).
//
// Send stops like a real client: after a negative greeting, EHLO, AUTH or
// MAIL reply; when no RCPT was accepted it does not send DATA; it always
// ends with QUIT when the connection is still usable.
type Result struct {
	Greeting Reply
	Ehlo     *Reply
	Auth     *Reply
	Mail     *Reply
	Rcpts    []RcptReply
	// Data is the reply to the DATA command (354 normally).
	Data *Reply
	// Message is the reply after the end of data: the message was
	// accepted (queued) when this is 2xx.
	Message *Reply
	Quit    *Reply
}

// Accepted reports whether the message was accepted for delivery (the reply
// to the end of data was 2xx).
func (r *Result) Accepted() bool {
	return r != nil && r.Message != nil && r.Message.Code/100 == 2
}

// AcceptedRcpts lists the recipients whose RCPT got a 2xx reply.
func (r *Result) AcceptedRcpts() []string {
	var out []string
	for _, rr := range r.Rcpts {
		if rr.Code/100 == 2 {
			out = append(out, rr.Addr)
		}
	}
	return out
}

// Rcpt returns the reply to RCPT TO:<addr> (case-insensitive), or nil.
func (r *Result) Rcpt(addr string) *Reply {
	for i := range r.Rcpts {
		if strings.EqualFold(r.Rcpts[i].Addr, addr) {
			return &r.Rcpts[i].Reply
		}
	}
	return nil
}

// String is a transcript of the replies, one step per line.
func (r *Result) String() string {
	if r == nil {
		return "<nil>"
	}
	var b strings.Builder
	step := func(name string, rep *Reply) {
		if rep != nil {
			fmt.Fprintf(&b, "%s: %s\n", name, strings.ReplaceAll(rep.String(), "\n", " | "))
		}
	}
	step("greeting", &r.Greeting)
	step("EHLO", r.Ehlo)
	step("AUTH", r.Auth)
	step("MAIL", r.Mail)
	for i := range r.Rcpts {
		step("RCPT <"+r.Rcpts[i].Addr+">", &r.Rcpts[i].Reply)
	}
	step("DATA", r.Data)
	step("end of data", r.Message)
	step("QUIT", r.Quit)
	return strings.TrimSuffix(b.String(), "\n")
}

// Send runs one SMTP transaction against addr ("host:port") and reports the
// reply of each step. SMTP rejections are not errors: they are in the
// Result. An error means the conversation broke (connection, timeout,
// malformed reply); the Result then holds the steps done so far.
func Send(addr string, env Envelope) (*Result, error) {
	timeout := env.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	c := &client{conn: conn, r: bufio.NewReader(conn), w: textproto.NewWriter(bufio.NewWriter(conn))}
	res := &Result{}

	if res.Greeting, err = c.readReply(); err != nil {
		return res, fmt.Errorf("greeting: %w", err)
	}
	if res.Greeting.Code != 220 {
		return res, c.quit(res)
	}
	helo := env.Helo
	if helo == "" {
		helo = "client.test"
	}
	if res.Ehlo, err = c.cmd("EHLO " + helo); err != nil {
		return res, fmt.Errorf("EHLO: %w", err)
	}
	if res.Ehlo.Code != 250 {
		return res, c.quit(res)
	}
	if env.Username != "" {
		if res.Auth, err = c.auth(env); err != nil {
			return res, fmt.Errorf("AUTH: %w", err)
		}
		if res.Auth.Code != 235 {
			return res, c.quit(res)
		}
	}
	mail := "MAIL FROM:<" + env.From + ">"
	for _, p := range env.MailParams {
		mail += " " + p
	}
	if res.Mail, err = c.cmd(mail); err != nil {
		return res, fmt.Errorf("MAIL: %w", err)
	}
	if res.Mail.Code/100 != 2 {
		return res, c.quit(res)
	}
	ok := 0
	for _, rc := range env.Rcpts {
		rep, err := c.cmd("RCPT TO:<" + rc + ">")
		if err != nil {
			return res, fmt.Errorf("RCPT TO:<%s>: %w", rc, err)
		}
		res.Rcpts = append(res.Rcpts, RcptReply{Addr: rc, Reply: *rep})
		if rep.Code/100 == 2 {
			ok++
		}
	}
	if ok == 0 {
		return res, c.quit(res)
	}
	if res.Data, err = c.cmd("DATA"); err != nil {
		return res, fmt.Errorf("DATA: %w", err)
	}
	if res.Data.Code != 354 {
		return res, c.quit(res)
	}
	dw := c.w.DotWriter()
	if _, err := dw.Write(env.Data); err != nil {
		return res, fmt.Errorf("writing data: %w", err)
	}
	if err := dw.Close(); err != nil { // writes "\r\n.\r\n" and flushes
		return res, fmt.Errorf("writing data: %w", err)
	}
	rep, err := c.readReply()
	if err != nil {
		return res, fmt.Errorf("end of data: %w", err)
	}
	res.Message = &rep
	return res, c.quit(res)
}

type client struct {
	conn net.Conn
	r    *bufio.Reader
	w    *textproto.Writer
}

func (c *client) cmd(line string) (*Reply, error) {
	if err := c.w.PrintfLine("%s", line); err != nil {
		return nil, err
	}
	rep, err := c.readReply()
	if err != nil {
		return nil, err
	}
	return &rep, nil
}

func (c *client) quit(res *Result) error {
	// The server may already have closed the connection (after a 421, or
	// after too many errors): a failed QUIT is not an error of the
	// transaction.
	if rep, err := c.cmd("QUIT"); err == nil {
		res.Quit = rep
	}
	return nil
}

func (c *client) auth(env Envelope) (*Reply, error) {
	mech := strings.ToUpper(env.AuthMechanism)
	if mech == "" {
		mech = "PLAIN"
	}
	b64 := base64.StdEncoding.EncodeToString
	switch mech {
	case "PLAIN":
		return c.cmd("AUTH PLAIN " + b64([]byte("\x00"+env.Username+"\x00"+env.Password)))
	case "LOGIN":
		rep, err := c.cmd("AUTH LOGIN")
		if err != nil || rep.Code != 334 {
			return rep, err
		}
		if rep, err = c.cmd(b64([]byte(env.Username))); err != nil || rep.Code != 334 {
			return rep, err
		}
		return c.cmd(b64([]byte(env.Password)))
	default:
		return nil, fmt.Errorf("unsupported AUTH mechanism %q", mech)
	}
}

var enhancedRE = regexp.MustCompile(`^([245]\.[0-9]{1,3}\.[0-9]{1,3})(?: |$)`)

func (c *client) readReply() (Reply, error) {
	var rep Reply
	var texts []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			if line != "" {
				err = fmt.Errorf("%w (partial line %q)", err, line)
			}
			return rep, err
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 3 {
			return rep, fmt.Errorf("malformed reply line %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil || code < 100 || code > 599 {
			return rep, fmt.Errorf("malformed reply line %q", line)
		}
		if rep.Code == 0 {
			rep.Code = code
		} else if code != rep.Code {
			return rep, fmt.Errorf("reply code changed within a multi-line reply: %q", line)
		}
		rep.Lines = append(rep.Lines, line)
		more := false
		text := ""
		if len(line) > 3 {
			switch line[3] {
			case '-':
				more = true
			case ' ':
			default:
				return rep, fmt.Errorf("malformed reply line %q", line)
			}
			text = line[4:]
		}
		if m := enhancedRE.FindStringSubmatch(text); m != nil {
			if rep.Enhanced == "" && len(rep.Lines) == 1 {
				rep.Enhanced = m[1]
			}
			if m[1] == rep.Enhanced {
				text = strings.TrimPrefix(text[len(m[1]):], " ")
			}
		}
		texts = append(texts, text)
		if !more {
			break
		}
	}
	rep.Text = strings.Join(texts, "\n")
	return rep, nil
}
