package mta_test

import (
	"net"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/mta"
	"github.com/batv/batv/internal/testenv/miltertest"
)

// TestAgainstBatv sends a message as an authenticated user and a bounce to
// an untagged address through batv's milter, and checks what the driver
// reports: the signed sender, and the refusal.
func TestAgainstBatv(t *testing.T) {
	keys := batv.SingleKey{ID: 1, Secret: []byte("mta driver test key, 32 bytes!!")}
	path := miltertest.Serve(t, "example.com", keys)
	c := mta.New("unix", path, 5*time.Second)
	s, err := c.Session(mta.SMTPClient{Addr: "192.0.2.7", Port: 4711, Daemon: "smtpd"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Protocol(gomilter.OptNoConnReply) || !s.Protocol(gomilter.OptNoMailReply) {
		t.Errorf("the milter did not ask to go without replies to CONNECT and MAIL")
	}
	res, err := s.Send(&mta.Message{Sender: "alice@example.com", AuthUser: "alice", QueueID: "4ABC",
		Recipients: []string{"bob@example.org"}, Headers: []mta.Header{{"Subject", "hi"}}, Body: []byte("hello\r\n")})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.SignedSender(); !strings.HasPrefix(got, "prvs=1") || !strings.HasSuffix(got, "=alice@example.com") {
		t.Fatalf("signed sender %q\n%s", got, res)
	}
	res, err = s.Send(&mta.Message{Recipients: []string{"alice@example.com"}, Body: []byte("bounce\r\n")})
	if err != nil {
		t.Fatal(err)
	}
	// Accepted at RCPT, so that a callout succeeds; refused at DATA.
	if len(res.Rcpts) != 1 || mta.Refused(res.Rcpts[0]) || !mta.Refused(res.Data) || res.Data.SMTPCode != 550 || res.End != nil ||
		res.Stopped != mta.AtData || res.Reply != res.Data || res.Delivered() {
		t.Fatalf("untagged bounce not refused at DATA:\n%s", res)
	}
}

// counter counts the writes on a connection and its round trips: reads
// that follow a write.
type counter struct {
	net.Conn
	wrote         bool
	writes, trips int
}

func (c *counter) Write(p []byte) (int, error) {
	c.writes++
	c.wrote = true
	return c.Conn.Write(p)
}

func (c *counter) Read(p []byte) (int, error) {
	if c.wrote {
		c.wrote = false
		c.trips++
	}
	return c.Conn.Read(p)
}

type countingDialer struct{ conn *counter }

func (d *countingDialer) Dial(network, address string) (net.Conn, error) {
	nc, err := net.Dial(network, address)
	d.conn = &counter{Conn: nc}
	return d.conn, err
}

// TestOneWritePerRoundTrip: like Postfix, the driver writes the packets
// of one round trip at once (macros and event, the events the milter does
// not answer, the ABORT after a transaction), and Session.RoundTrips
// counts them: batv answers neither CONNECT nor MAIL, so the negotiation
// is the only round trip of the connection, and a signed message takes as
// many writes as round trips.
func TestOneWritePerRoundTrip(t *testing.T) {
	keys := batv.SingleKey{ID: 1, Secret: []byte("mta driver test key, 32 bytes!!")}
	d := &countingDialer{}
	s, err := mta.NewDialer(d, "unix", miltertest.Serve(t, "example.com", keys), 5*time.Second).
		Session(mta.SMTPClient{Addr: "192.0.2.7", Port: 4711})
	if err != nil {
		t.Fatal(err)
	}
	if d.conn.writes != 1 || d.conn.trips != 1 || s.RoundTrips() != 1 {
		t.Fatalf("negotiation: %d writes, %d round trips (%d counted)", d.conn.writes, d.conn.trips, s.RoundTrips())
	}
	for i := range 3 {
		writes := d.conn.writes
		res, err := s.Send(&mta.Message{Sender: "alice@example.com", AuthUser: "alice", QueueID: "4ABC",
			Recipients: []string{"bob@example.org"}, Headers: []mta.Header{{"Subject", " hi"}}, Body: []byte("hello\r\n")})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Delivered() || res.Stopped != mta.AtEOM || res.SignedSender() == "" {
			t.Fatalf("message %d:\n%s", i, res)
		}
		if d.conn.writes == writes || d.conn.writes != d.conn.trips || s.RoundTrips() != d.conn.trips {
			t.Fatalf("after message %d: %d writes, %d round trips (%d counted)", i, d.conn.writes, d.conn.trips, s.RoundTrips())
		}
	}
	writes := d.conn.writes
	if err := s.Close(); err != nil || d.conn.writes != writes+1 {
		t.Fatalf("close: %v, %d writes; want the ABORT and QUIT in one", err, d.conn.writes-writes)
	}
}
