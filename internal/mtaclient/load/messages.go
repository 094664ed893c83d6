package load

import (
	"fmt"
	"strings"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/mtaclient"
)

// testMessage is one message of a workload and what the milter should do
// with it.
type testMessage struct {
	msg mtaclient.Message
	// tagged and untagged are the recipient of an inbound message, with
	// and without its tag.
	tagged, untagged string
}

// remoteDomain is the domain of the other side: recipients of outbound
// mail, the MX that sends the bounces.
const remoteDomain = "remote.example"

// connInfo is what Postfix's smtpd knows about the client of a workload,
// for the CONNECT macros: an authenticated submission client on the
// documentation network for outbound mail, a remote MX for bounces. The
// addresses are outside batv's default internal networks.
func connInfo(opts Options) mtaclient.PostfixInfo {
	if opts.Workload == Outbound {
		return mtaclient.PostfixInfo{
			Hostname: "mail." + opts.Domain, DaemonName: "ORIGINATING", DaemonAddr: "192.0.2.1",
			ClientName: "client.example.net", ClientAddr: "192.0.2.10",
		}
	}
	return mtaclient.PostfixInfo{
		Hostname: "mail." + opts.Domain, DaemonAddr: "192.0.2.1",
		ClientName: "mx." + remoteDomain, ClientAddr: "198.51.100.25",
	}
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
			m.msg = mtaclient.Message{
				Sender:     addr,
				Recipients: []string{rcpt},
				Headers: []mtaclient.Header{
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
		m.msg = mtaclient.Message{
			Sender:     "",
			Recipients: []string{m.tagged},
			Headers: []mtaclient.Header{
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
