package load

import (
	"fmt"
	"strings"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/mta"
)

// testMessage is one message of a workload and what the milter should do
// with it.
type testMessage struct {
	msg mta.Message
	// tagged and untagged are the recipient of an inbound message, with
	// and without its tag.
	tagged, untagged string
}

// remoteDomain is the domain of the other side: recipients of outbound
// mail, the MX that sends the bounces.
const remoteDomain = "remote.example"

// smtpClient is the SMTP client of a workload, as Postfix's smtpd sees
// it: an authenticated submission client on the documentation network,
// on a listener named ORIGINATING, for outbound mail; a remote MX on the
// MX listener for bounces. The addresses are outside batv's default
// internal networks.
func smtpClient(w Workload) mta.SMTPClient {
	if w == Outbound {
		return mta.SMTPClient{Addr: "192.0.2.10", Port: 34567, Daemon: "ORIGINATING"}
	}
	return mta.SMTPClient{Addr: "198.51.100.25", Port: 34567}
}

// buildMessages makes the distinct messages a run cycles through: the
// same shape for every workload (one recipient, six headers, a body of
// opts.BodySize bytes), different senders and tags.
func buildMessages(opts Options) ([]testMessage, error) {
	body := makeBody(opts.BodySize)
	signer := batv.Signer{Keys: opts.Keys, Lifetime: opts.Lifetime, Now: opts.Now}
	msgs := make([]testMessage, distinct)
	for i := range msgs {
		m := &msgs[i]
		user := fmt.Sprintf("user%03d", i)
		addr := user + "@" + opts.Domain
		queueID := fmt.Sprintf("4Q%09X", 0x5A3C0000+i)
		date := fmt.Sprintf("Tue, 3 Mar 2026 10:%02d:%02d +0000", i/60%60, i%60)
		msgID := fmt.Sprintf("<%d.load@%s>", 1000+i, opts.Domain)
		if opts.Workload == Outbound {
			rcpt := fmt.Sprintf("friend%03d@%s", i, remoteDomain)
			m.msg = mta.Message{
				Sender:     addr,
				Recipients: []string{rcpt},
				Headers: []mta.Header{
					{Name: "From", Value: " User " + user + " <" + addr + ">"},
					{Name: "To", Value: " <" + rcpt + ">"},
					{Name: "Subject", Value: fmt.Sprintf(" load test message %d", i)},
					{Name: "Date", Value: " " + date},
					{Name: "Message-ID", Value: " " + msgID},
					{Name: "MIME-Version", Value: " 1.0"},
				},
				Body:     body,
				QueueID:  queueID,
				AuthUser: user,
			}
			continue
		}
		s, err := signer.Sign(addr)
		if err != nil {
			return nil, err
		}
		if s.Skip != batv.NotSkipped {
			return nil, fmt.Errorf("cannot sign %s: %v", addr, s.Skip)
		}
		m.untagged, m.tagged = addr, s.Address
		if opts.Workload == InboundForged {
			m.tagged = forge(s.Address)
		}
		m.msg = mta.Message{
			Sender:     "",
			Recipients: []string{m.tagged},
			Headers: []mta.Header{
				{Name: "From", Value: " MAILER-DAEMON@mx." + remoteDomain + " (Mail Delivery System)"},
				{Name: "To", Value: " <" + m.tagged + ">"},
				{Name: "Subject", Value: " Undelivered Mail Returned to Sender"},
				{Name: "Date", Value: " " + date},
				{Name: "Message-ID", Value: " " + msgID},
				{Name: "MIME-Version", Value: " 1.0"},
			},
			Body:    body,
			QueueID: queueID,
		}
	}
	return msgs, nil
}

// forge changes the first MAC digit of a standard-form tag
// (prvs=KDDDSSSSSS=...), so that the tag is well-formed, in its window,
// of a known key, and wrong.
func forge(tagged string) string {
	const mac = len("prvs=") + 4
	b := []byte(tagged)
	if b[mac] == '0' {
		b[mac] = '1'
	} else {
		b[mac] = '0'
	}
	return string(b)
}

// makeBody returns n bytes of text in CRLF lines, as Postfix sends a body.
func makeBody(n int) []byte {
	const line = "The quick brown fox jumps over the lazy dog, again and again.\r\n"
	b := []byte(strings.Repeat(line, n/len(line)+1))[:n]
	if n >= 2 {
		b[n-2], b[n-1] = '\r', '\n'
	}
	return b
}
