package mtaclient

import (
	"strconv"
	"time"
)

// Commands the MTA sends to the milter (SMFIC_*).
const (
	CmdAbort   byte = 'A' // SMFIC_ABORT: forget the current message
	CmdBody    byte = 'B' // SMFIC_BODY: one body chunk
	CmdConnect byte = 'C' // SMFIC_CONNECT
	CmdMacro   byte = 'D' // SMFIC_MACRO: macros for the next command
	CmdEOM     byte = 'E' // SMFIC_BODYEOB: end of message
	CmdHelo    byte = 'H' // SMFIC_HELO
	CmdQuitNC  byte = 'K' // SMFIC_QUIT_NC: quit, a new connection follows (Postfix never sends it)
	CmdHeader  byte = 'L' // SMFIC_HEADER
	CmdMail    byte = 'M' // SMFIC_MAIL
	CmdEOH     byte = 'N' // SMFIC_EOH
	CmdOptNeg  byte = 'O' // SMFIC_OPTNEG
	CmdQuit    byte = 'Q' // SMFIC_QUIT
	CmdRcpt    byte = 'R' // SMFIC_RCPT
	CmdData    byte = 'T' // SMFIC_DATA
	CmdUnknown byte = 'U' // SMFIC_UNKNOWN
)

// Packets the milter sends to the MTA (SMFIR_*).
const (
	RepAddRcpt    byte = '+' // SMFIR_ADDRCPT (end of message only)
	RepDelRcpt    byte = '-' // SMFIR_DELRCPT (end of message only)
	RepAddRcptPar byte = '2' // SMFIR_ADDRCPT_PAR (end of message only)
	RepShutdown   byte = '4' // SMFIR_SHUTDOWN: 421, close the connection
	RepAccept     byte = 'a' // SMFIR_ACCEPT
	RepReplBody   byte = 'b' // SMFIR_REPLBODY (end of message only)
	RepContinue   byte = 'c' // SMFIR_CONTINUE
	RepDiscard    byte = 'd' // SMFIR_DISCARD
	RepChgFrom    byte = 'e' // SMFIR_CHGFROM (end of message only)
	RepConnFail   byte = 'f' // SMFIR_CONN_FAIL (Postfix treats it as a protocol error)
	RepAddHeader  byte = 'h' // SMFIR_ADDHEADER (end of message only)
	RepInsHeader  byte = 'i' // SMFIR_INSHEADER (end of message only)
	RepSetSymList byte = 'l' // SMFIR_SETSYMLIST (never a packet of its own)
	RepChgHeader  byte = 'm' // SMFIR_CHGHEADER (end of message only)
	RepOptNeg     byte = 'O' // option negotiation reply
	RepProgress   byte = 'p' // SMFIR_PROGRESS: keep waiting
	RepQuarantine byte = 'q' // SMFIR_QUARANTINE
	RepReject     byte = 'r' // SMFIR_REJECT
	RepSkip       byte = 's' // SMFIR_SKIP: send no more events of this kind
	RepTempFail   byte = 't' // SMFIR_TEMPFAIL
	RepReplyCode  byte = 'y' // SMFIR_REPLYCODE: "550 5.7.1 text"
)

// Address families of the CONNECT command (SMFIA_*).
const (
	FamilyUnknown byte = 'U' // no port and no address follow
	FamilyUnix    byte = 'L' // Postfix sends port 0 and the socket path
	FamilyInet    byte = '4'
	FamilyInet6   byte = '6'
)

// Actions a milter may ask for (SMFIF_*), as offered in OPTNEG.
const (
	ActAddHeaders    uint32 = 1 << 0 // SMFIF_ADDHDRS: add (and insert) headers
	ActChangeBody    uint32 = 1 << 1 // SMFIF_CHGBODY
	ActAddRcpt       uint32 = 1 << 2 // SMFIF_ADDRCPT
	ActDelRcpt       uint32 = 1 << 3 // SMFIF_DELRCPT
	ActChangeHeaders uint32 = 1 << 4 // SMFIF_CHGHDRS: change or delete headers
	ActQuarantine    uint32 = 1 << 5 // SMFIF_QUARANTINE
	ActChangeFrom    uint32 = 1 << 6 // SMFIF_CHGFROM
	ActAddRcptPar    uint32 = 1 << 7 // SMFIF_ADDRCPT_PAR
	ActSetSymList    uint32 = 1 << 8 // SMFIF_SETSYMLIST
)

// Protocol flags (SMFIP_*): stages the milter does not want (NO*), stages
// it will not answer (NR_*), and extensions.
const (
	ProtoNoConnect    uint32 = 1 << 0  // SMFIP_NOCONNECT
	ProtoNoHelo       uint32 = 1 << 1  // SMFIP_NOHELO
	ProtoNoMail       uint32 = 1 << 2  // SMFIP_NOMAIL
	ProtoNoRcpt       uint32 = 1 << 3  // SMFIP_NORCPT
	ProtoNoBody       uint32 = 1 << 4  // SMFIP_NOBODY
	ProtoNoHeaders    uint32 = 1 << 5  // SMFIP_NOHDRS
	ProtoNoEOH        uint32 = 1 << 6  // SMFIP_NOEOH
	ProtoNoHeaderRepl uint32 = 1 << 7  // SMFIP_NR_HDR (alias SMFIP_NOHREPL)
	ProtoNoUnknown    uint32 = 1 << 8  // SMFIP_NOUNKNOWN
	ProtoNoData       uint32 = 1 << 9  // SMFIP_NODATA
	ProtoSkip         uint32 = 1 << 10 // SMFIP_SKIP: MTA understands SMFIR_SKIP
	ProtoRcptRej      uint32 = 1 << 11 // SMFIP_RCPT_REJ: milter wants rejected RCPTs too
	ProtoNoConnRepl   uint32 = 1 << 12 // SMFIP_NR_CONN
	ProtoNoHeloRepl   uint32 = 1 << 13 // SMFIP_NR_HELO
	ProtoNoMailRepl   uint32 = 1 << 14 // SMFIP_NR_MAIL
	ProtoNoRcptRepl   uint32 = 1 << 15 // SMFIP_NR_RCPT
	ProtoNoDataRepl   uint32 = 1 << 16 // SMFIP_NR_DATA
	ProtoNoUnknRepl   uint32 = 1 << 17 // SMFIP_NR_UNKN
	ProtoNoEOHRepl    uint32 = 1 << 18 // SMFIP_NR_EOH
	ProtoNoBodyRepl   uint32 = 1 << 19 // SMFIP_NR_BODY
	ProtoHdrLeadSpace uint32 = 1 << 20 // SMFIP_HDR_LEADSPC: header values keep their leading space
)

// What Postfix 3.7 offers in OPTNEG with stock settings (milter_protocol = 6).
// Captured from Postfix 3.7.11: version 6, actions 0x1ff, protocol 0x1fffff.
const (
	PostfixVersion  uint32 = 6
	PostfixActions  uint32 = 0x1ff    // every SMFIF_* flag
	PostfixProtocol uint32 = 0x1fffff // MILTER8_V6_PROTO_MASK: every SMFIP_* flag up to HDR_LEADSPC
)

// noSendMask is Postfix's SMFIP_NOSEND_MASK: the events a milter can opt out of.
const noSendMask = ProtoNoConnect | ProtoNoHelo | ProtoNoMail | ProtoNoRcpt |
	ProtoNoBody | ProtoNoHeaders | ProtoNoEOH | ProtoNoUnknown | ProtoNoData

// Stage identifies a protocol stage for macros, as numbered in a SETSYMLIST
// reply (SMFIM_*).
type Stage uint32

// Stages in SETSYMLIST numbering. Note that EOM comes before EOH.
const (
	StageConnect Stage = 0 // SMFIM_CONNECT
	StageHelo    Stage = 1 // SMFIM_HELO
	StageMail    Stage = 2 // SMFIM_ENVFROM
	StageRcpt    Stage = 3 // SMFIM_ENVRCPT
	StageData    Stage = 4 // SMFIM_DATA
	StageEOM     Stage = 5 // SMFIM_EOM (also used for body chunks)
	StageEOH     Stage = 6 // SMFIM_EOH (also used for each header)

	numStages = 7
	stageNone = Stage(255) // events without a SETSYMLIST slot (unknown command)
)

var stageNames = [numStages]string{"connect", "helo", "mail", "rcpt", "data", "eom", "eoh"}

func (s Stage) String() string {
	if s < numStages {
		return stageNames[s]
	}
	return "stage(" + strconv.Itoa(int(s)) + ")"
}

// Limits.
const (
	// DefaultTimeout bounds every write and every wait for a reply packet
	// when Options.Timeout is zero.
	DefaultTimeout = 10 * time.Second
	// DefaultMaxPacket is the largest packet (command byte plus data)
	// accepted from the milter when Options.MaxPacket is zero: 1 MiB plus a
	// little room for framing. Larger packets are a protocol error.
	DefaultMaxPacket = 1<<20 + 64
	// MaxBodyChunk is the largest body chunk Postfix sends in one packet.
	MaxBodyChunk = 65535
	// PostfixMailVersion is the stock value of the v macro.
	PostfixMailVersion = "Postfix 3.7.11"
)
