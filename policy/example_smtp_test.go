package policy_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/smtp"
	"net/textproto"
	"strings"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/policy"
)

// backend is a go-smtp backend that verifies bounces as batv's milter
// does: a transaction per MAIL, a decision per RCPT, and the refusal of
// untagged bounces at DATA.
type backend struct {
	p *policy.Policy
}

func (b backend) NewSession(c *gosmtp.Conn) (gosmtp.Session, error) {
	client := policy.Client{}
	if a, ok := c.Conn().RemoteAddr().(*net.TCPAddr); ok {
		client.Addr, _ = netip.AddrFromSlice(a.IP)
	}
	return &session{p: b.p, client: client}, nil
}

type session struct {
	p      *policy.Policy
	client policy.Client
	trx    policy.Transaction
	rcpts  []string // where to deliver
}

func (s *session) Mail(from string, _ *gosmtp.MailOptions) error {
	s.trx, s.rcpts = s.p.Begin(s.client, from), nil
	return nil
}

func (s *session) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	d := s.trx.Recipient(to, time.Now())
	if r := d.RcptReply(); r.Refuses() {
		return smtpError(r)
	}
	if d.Rewrite != "" {
		to = d.Rewrite // a valid tag: deliver to the untagged address
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

// Data refuses an untagged bounce. go-smtp calls it after the DATA
// command is accepted, so the message is read (and dropped) first; an MTA
// with a hook at the DATA command itself refuses before the body comes.
func (s *session) Data(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	if reply, refused := s.trx.Data(); refused {
		return smtpError(reply)
	}
	fmt.Println("delivered to", s.rcpts)
	return nil
}

func (s *session) Reset()        { s.trx, s.rcpts = policy.Transaction{}, nil }
func (s *session) Logout() error { return nil }

// smtpError is a policy reply as go-smtp's error.
func smtpError(r policy.Reply) error {
	var class, subject, detail int
	text := r.Text
	if n, _ := fmt.Sscanf(r.Text, "%d.%d.%d", &class, &subject, &detail); n == 3 {
		_, text, _ = strings.Cut(r.Text, " ")
	}
	return &gosmtp.SMTPError{Code: r.Code, EnhancedCode: gosmtp.EnhancedCode{class, subject, detail}, Message: text}
}

// Example_goSMTPBackend runs batv's policy in a go-smtp server: a callout
// to an untagged address is accepted, a bounce to it refused at DATA, a
// bounce to a valid tag delivered to the untagged address.
func Example_goSMTPBackend() {
	keys := batv.SingleKey{ID: 1, Secret: []byte("an example key of 32 bytes, ok!!")}
	cfg := policy.DefaultConfig("example.com")
	cfg.Verify.GraceUntil = time.Unix(0, 0) // signing began long ago
	p, err := policy.New(cfg, keys)
	if err != nil {
		fmt.Println(err)
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	srv := gosmtp.NewServer(backend{p})
	srv.Domain = "mx.example.com"
	go srv.Serve(ln)
	defer srv.Close()

	signer := batv.Signer{Keys: keys, Lifetime: 7}
	tagged, _ := signer.SignAt("alice@example.com", time.Now())

	send := func(rcpt string, data bool) {
		c, err := smtp.Dial(ln.Addr().String())
		if err != nil {
			fmt.Println(err)
			return
		}
		defer c.Close()
		if err := c.Mail(""); err != nil {
			fmt.Println("MAIL:", err)
			return
		}
		if err := c.Rcpt(rcpt); err != nil {
			fmt.Println("RCPT:", err)
			return
		}
		if !data {
			fmt.Println("callout to", rcpt, "accepted")
			return
		}
		w, err := c.Data()
		if err == nil {
			fmt.Fprint(w, "Subject: Undelivered Mail\r\n\r\nbounce\r\n")
			err = w.Close()
		}
		var te *textproto.Error
		if errors.As(err, &te) {
			fmt.Println("DATA:", te.Code, te.Msg)
		}
	}
	send("alice@example.com", false)
	send("alice@example.com", true)
	send(tagged.Address, true)
	// Output:
	// callout to alice@example.com accepted
	// DATA: 550 5.7.1 Bounce refused: this address sends only tagged mail, so it did not send the message you are bouncing (BATV)
	// delivered to [alice@example.com]
}
