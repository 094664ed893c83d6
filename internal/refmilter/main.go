// Command refmilter is the do-nothing reference milter of the performance
// measurements (docs/performance.md): a plain go-milter v0.5.0 server, as
// a milter author would write it, that answers continue to every callback
// and changes nothing.
//
// By default it takes the callbacks batv-tools' batv-milter takes, the
// ones the measurements count: CONNECT and HELO once per
// connection, then per message MAIL, RCPT, each header and end of message
// (9 round trips for a message with one recipient and six headers). With
// -callbacks all it also takes DATA, end of headers and the body.
//
//	refmilter -listen unix:/tmp/ref.sock
//	refmilter -listen inet:127.0.0.1:9901 -callbacks all
//
// It prints "ready" on stdout once it listens, and exits on SIGTERM or
// SIGINT.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"os/signal"
	"strings"
	"syscall"

	gomilter "github.com/emersion/go-milter"
)

// nop continues at every callback. go-milter's NoOpMilter does the same;
// it is spelled out so the reference does not depend on NoOpMilter's
// choices.
type nop struct{}

func (nop) Connect(string, string, uint16, net.IP, *gomilter.Modifier) (gomilter.Response, error) {
	return gomilter.RespContinue, nil
}
func (nop) Helo(string, *gomilter.Modifier) (gomilter.Response, error) {
	return gomilter.RespContinue, nil
}
func (nop) MailFrom(string, *gomilter.Modifier) (gomilter.Response, error) {
	return gomilter.RespContinue, nil
}
func (nop) RcptTo(string, *gomilter.Modifier) (gomilter.Response, error) {
	return gomilter.RespContinue, nil
}
func (nop) Header(string, string, *gomilter.Modifier) (gomilter.Response, error) {
	return gomilter.RespContinue, nil
}
func (nop) Headers(textproto.MIMEHeader, *gomilter.Modifier) (gomilter.Response, error) {
	return gomilter.RespContinue, nil
}
func (nop) BodyChunk([]byte, *gomilter.Modifier) (gomilter.Response, error) {
	return gomilter.RespContinue, nil
}
func (nop) Body(*gomilter.Modifier) (gomilter.Response, error) {
	return gomilter.RespContinue, nil
}
func (nop) Abort(*gomilter.Modifier) error { return nil }

func main() {
	listen := flag.String("listen", "", "the socket: unix:PATH or inet:HOST:PORT")
	callbacks := flag.String("callbacks", "batv-tools", "batv-tools (MAIL, RCPT, headers, end of message) or all")
	flag.Parse()
	if err := run(*listen, *callbacks); err != nil {
		fmt.Fprintln(os.Stderr, "refmilter:", err)
		os.Exit(1)
	}
}

func run(listen, callbacks string) error {
	proto := gomilter.OptNoUnknown
	switch callbacks {
	case "batv-tools":
		proto |= gomilter.OptNoData | gomilter.OptNoEOH | gomilter.OptNoBody
	case "all":
	default:
		return fmt.Errorf("-callbacks %q: want batv-tools or all", callbacks)
	}
	network, addr, ok := strings.Cut(listen, ":")
	switch {
	case !ok || addr == "":
		return fmt.Errorf("-listen %q: want unix:PATH or inet:HOST:PORT", listen)
	case network == "inet":
		network = "tcp"
	case network == "unix":
		_ = os.Remove(addr)
	default:
		return fmt.Errorf("-listen %q: want unix:PATH or inet:HOST:PORT", listen)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return err
	}
	if network == "unix" {
		// Postfix connects as user postfix.
		_ = os.Chmod(addr, 0o666)
		defer os.Remove(addr)
	}
	srv := &gomilter.Server{
		NewMilter: func() gomilter.Milter { return nop{} },
		// Ask for the actions batv asks for, though none is used.
		Actions: gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptAddRcpt |
			gomilter.OptRemoveRcpt | gomilter.OptChangeFrom | gomilter.OptQuarantine,
		Protocol: proto,
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		ln.Close()
	}()
	fmt.Println("ready")
	if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, gomilter.ErrServerClosed) {
		return err
	}
	return nil
}
