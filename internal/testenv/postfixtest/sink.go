package postfixtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// Message is one message delivered to the Sink: one SMTP transaction.
type Message struct {
	// From is the envelope sender as given in MAIL FROM, "" for the null
	// sender "<>".
	From string
	// Rcpts are the envelope recipients the sink accepted, in order.
	Rcpts []string
	// Data is the raw message as received (CRLF line ends, dot-unstuffed).
	Data []byte
	// Helo is the name the client (Postfix) gave in EHLO/HELO.
	Helo string
	// Time is when the end of data was received.
	Time time.Time
	// Seq numbers messages in order of arrival, from 1.
	Seq int
}

// Header parses the header of Data. It returns an empty header if the data
// cannot be parsed.
func (m Message) Header() mail.Header {
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		return mail.Header{}
	}
	return msg.Header
}

// Body returns the body of Data (everything after the header), or nil.
func (m Message) Body() []byte {
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		return nil
	}
	b, _ := io.ReadAll(msg.Body)
	return b
}

// HasRcpt reports whether addr (compared case-insensitively) is one of the
// envelope recipients.
func (m Message) HasRcpt(addr string) bool {
	for _, r := range m.Rcpts {
		if strings.EqualFold(r, addr) {
			return true
		}
	}
	return false
}

// IsBounce reports whether the message has the null envelope sender.
func (m Message) IsBounce() bool { return m.From == "" }

// String summarises the envelope.
func (m Message) String() string {
	return fmt.Sprintf("#%d from=<%s> to=<%s> size=%d", m.Seq, m.From, strings.Join(m.Rcpts, ">,<"), len(m.Data))
}

// ToRcpt returns a predicate matching messages with the envelope recipient
// addr.
func ToRcpt(addr string) func(Message) bool {
	return func(m Message) bool { return m.HasRcpt(addr) }
}

// FromSender returns a predicate matching messages with envelope sender
// addr (use "" for bounces).
func FromSender(addr string) func(Message) bool {
	return func(m Message) bool { return strings.EqualFold(m.From, addr) }
}

// All combines predicates.
func All(preds ...func(Message) bool) func(Message) bool {
	return func(m Message) bool {
		for _, p := range preds {
			if !p(m) {
				return false
			}
		}
		return true
	}
}

// Sink is an SMTP server on 127.0.0.1 that records every message delivered
// to it. By default it accepts every sender and recipient; Refuse and
// SetRcptReply make it refuse chosen recipients at RCPT.
type Sink struct {
	ln     net.Listener
	srv    *smtp.Server
	done   chan struct{}
	closed sync.Once

	mu       sync.Mutex
	msgs     []Message
	seq      int
	rcptRule map[string]Reply // lower-case address -> reply
	changed  chan struct{}    // closed and replaced on every new message
}

// NewSink starts a sink on a free port of 127.0.0.1 and stops it in
// t.Cleanup. Start creates one for every Instance; use this for a sink of
// your own.
func NewSink(t testing.TB) *Sink {
	t.Helper()
	s, err := newSink()
	if err != nil {
		t.Fatalf("postfixtest: starting SMTP sink: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

func newSink() (*Sink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Sink{
		ln:       ln,
		done:     make(chan struct{}),
		rcptRule: map[string]Reply{},
		changed:  make(chan struct{}),
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &sinkSession{sink: s, conn: c}, nil
	}))
	srv.Domain = "sink.test"
	srv.MaxMessageBytes = 64 << 20
	srv.ReadTimeout = 2 * time.Minute
	srv.WriteTimeout = 2 * time.Minute
	srv.EnableSMTPUTF8 = true
	srv.ErrorLog = discardLogger{}
	s.srv = srv
	go func() {
		defer close(s.done)
		_ = srv.Serve(ln)
	}()
	return s, nil
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...interface{}) {}
func (discardLogger) Println(...interface{})        {}

// Addr is the sink's address, "127.0.0.1:PORT".
func (s *Sink) Addr() string { return s.ln.Addr().String() }

// Port is the sink's TCP port.
func (s *Sink) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// Close stops the sink. It is safe to call more than once.
func (s *Sink) Close() {
	s.closed.Do(func() {
		_ = s.srv.Close()
		<-s.done
	})
}

// Messages returns a copy of the messages received so far, in order.
func (s *Sink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, len(s.msgs))
	copy(out, s.msgs)
	return out
}

// Reset forgets the messages received so far (recipient rules stay).
func (s *Sink) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = nil
}

// Refuse makes the sink answer RCPT TO for each of addrs (case-insensitive)
// with "550 5.1.1 <addr>: Recipient refused by test sink", so that Postfix
// bounces the message for that recipient.
func (s *Sink) Refuse(addrs ...string) {
	for _, a := range addrs {
		s.SetRcptReply(a, Reply{Code: 550, Enhanced: "5.1.1", Text: "<" + a + ">: Recipient refused by test sink"})
	}
}

// SetRcptReply makes the sink answer RCPT TO:<addr> with r (code 4xx or 5xx;
// Enhanced like "4.2.0", may be empty). A zero Reply (Code 0) removes the
// rule again, so the recipient is accepted.
func (s *Sink) SetRcptReply(addr string, r Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := strings.ToLower(addr)
	if r.Code == 0 {
		delete(s.rcptRule, key)
		return
	}
	s.rcptRule[key] = r
}

// Wait returns the first message, already received or arriving before ctx
// ends, for which match returns true (match nil matches any message).
func (s *Sink) Wait(ctx context.Context, match func(Message) bool) (Message, error) {
	seen := 0
	for {
		s.mu.Lock()
		// Reset may have shortened the list.
		if seen > len(s.msgs) {
			seen = 0
		}
		for _, m := range s.msgs[seen:] {
			if match == nil || match(m) {
				s.mu.Unlock()
				return m, nil
			}
		}
		seen = len(s.msgs)
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return Message{}, fmt.Errorf("postfixtest: no matching message in the sink (%d received): %w", seen, ctx.Err())
		}
	}
}

// WaitTimeout is Wait with a timeout instead of a context.
func (s *Sink) WaitTimeout(d time.Duration, match func(Message) bool) (Message, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return s.Wait(ctx, match)
}

func (s *Sink) rcptReply(addr string) (Reply, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rcptRule[strings.ToLower(addr)]
	return r, ok
}

func (s *Sink) add(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	m.Seq = s.seq
	s.msgs = append(s.msgs, m)
	close(s.changed)
	s.changed = make(chan struct{})
}

type sinkSession struct {
	sink    *Sink
	conn    *smtp.Conn
	from    string
	hasFrom bool
	rcpts   []string
}

func (ss *sinkSession) Reset() {
	ss.from, ss.hasFrom, ss.rcpts = "", false, nil
}

func (ss *sinkSession) Logout() error { return nil }

func (ss *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.from, ss.hasFrom, ss.rcpts = from, true, nil
	return nil
}

func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if r, ok := ss.sink.rcptReply(to); ok {
		return r.smtpError()
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if !ss.hasFrom || len(ss.rcpts) == 0 {
		return errors.New("no valid recipients")
	}
	ss.sink.add(Message{
		From:  ss.from,
		Rcpts: append([]string(nil), ss.rcpts...),
		Data:  data,
		Helo:  ss.conn.Hostname(),
		Time:  time.Now(),
	})
	return nil
}

func (r Reply) smtpError() *smtp.SMTPError {
	e := &smtp.SMTPError{Code: r.Code, Message: r.Text, EnhancedCode: smtp.NoEnhancedCode}
	var a, b, c int
	if _, err := fmt.Sscanf(r.Enhanced, "%d.%d.%d", &a, &b, &c); err == nil {
		e.EnhancedCode = smtp.EnhancedCode{a, b, c}
	}
	return e
}
