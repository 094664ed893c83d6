package milter

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
)

// goMilterMaxPacket is the largest packet go-milter v0.5.0 reads; a longer
// one ends the session.
const goMilterMaxPacket = 1 << 20

// framing follows the packet framing of the bytes go-milter read from the
// MTA, so that the end of a session can be logged with its cause: after a
// QUIT, between two packets, or in the middle of one, and which. go-milter
// reads a packet as its 4-byte length and then exactly that many bytes, so
// the bytes it consumed end on a packet boundary unless the session ended
// inside a packet.
type framing struct {
	hdr     [4]byte
	nhdr    int    // bytes of the current length field seen
	left    uint32 // bytes of the current packet still to come
	wantCmd bool   // the next byte is the command of the current packet
	length  uint32 // announced length of the current (or last) packet
	cmd     byte   // command of the current (or last) packet; 0 before the first
	zero    bool   // the last length field was 0, which go-milter refuses
	packets uint64 // complete packets
}

func (f *framing) feed(p []byte) {
	for len(p) > 0 {
		if f.left == 0 {
			f.hdr[f.nhdr] = p[0]
			f.nhdr++
			p = p[1:]
			if f.nhdr == len(f.hdr) {
				f.nhdr = 0
				f.length = binary.BigEndian.Uint32(f.hdr[:])
				f.left, f.wantCmd, f.cmd, f.zero = f.length, f.length > 0, 0, f.length == 0
			}
			continue
		}
		if f.wantCmd {
			f.cmd, f.wantCmd = p[0], false
			f.left--
			p = p[1:]
		} else {
			n := uint32(min(len(p), int(min(f.left, 1<<30))))
			f.left -= n
			p = p[n:]
		}
		if f.left == 0 {
			f.packets++
		}
	}
}

// between reports whether the stream stands between two packets.
func (f *framing) between() bool { return f.nhdr == 0 && f.left == 0 }

// quit reports whether the last packet was a complete QUIT (or QUIT_NC,
// which go-milter treats as an unknown command, so not here).
func (f *framing) quit() bool { return f.between() && f.length == 1 && f.cmd == 'Q' }

// where says where in the stream the session ended, for the log.
func (f *framing) where() string {
	switch {
	case f.nhdr > 0:
		return fmt.Sprintf("inside a length field, after %d packets", f.packets)
	case f.left > 0 && f.length > goMilterMaxPacket:
		return fmt.Sprintf("at a packet that announces %d bytes, over the %d-byte limit", f.length, goMilterMaxPacket)
	case f.left > 0:
		return fmt.Sprintf("inside %s packet of %d bytes, %d still to come", cmdName(f.cmd), f.length, f.left)
	case f.zero:
		return "at a zero-length packet"
	case f.packets == 0:
		return "before the first packet"
	}
	return "after " + cmdName(f.cmd) + " packet"
}

// cmdName names a command byte of the MTA for the log.
func cmdName(c byte) string {
	if name, ok := cmdNames[c]; ok {
		return "a " + name
	}
	return fmt.Sprintf("an unknown (%q)", c)
}

var cmdNames = map[byte]string{
	'A': "ABORT", 'B': "BODY", 'C': "CONNECT", 'D': "MACRO", 'E': "end-of-message",
	'H': "HELO", 'L': "HEADER", 'M': "MAIL", 'N': "end-of-headers", 'O': "OPTNEG",
	'Q': "QUIT", 'R': "RCPT", 'T': "DATA", 'U': "UNKNOWN", 'K': "QUIT_NC",
}

// logEnd logs the end of a session, one line each: at debug level when it
// ended the normal way (QUIT, shutdown, a close between messages) or its
// cause was logged already (idle timeout), at info level when the MTA went
// away in the middle of a message or packet, and as a warning when the
// session failed (go-milter logs the detail just before).
func (c *conn) logEnd(how string) {
	c.mu.Lock()
	inMsg, between, where, packets := c.inMessage, c.fr.between(), c.fr.where(), c.fr.packets
	c.mu.Unlock()
	level, msg := slog.LevelDebug, "session ended"
	switch {
	case how == "error":
		level, msg = slog.LevelWarn, "session ended: a malformed, oversized or unknown packet, a failed callback or a failed write"
	case how == "closed" && (inMsg || !between):
		level, msg = slog.LevelInfo, "session ended: the MTA closed the connection in the middle of a message"
	}
	c.log.Log(context.Background(), level, msg, "how", how, "in_message", inMsg, "where", where, "packets", packets)
}
