package mtaclient

import (
	"sort"
	"strings"
)

// stockNames are Postfix 3.7's default milter_*_macros, in its order
// (postconf -d; the order is what goes on the wire).
var stockNames = [numStages][]string{
	StageConnect: {"j", "{daemon_name}", "{daemon_addr}", "v", "_"},
	StageHelo:    {"{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"},
	StageMail:    {"i", "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}", "{mail_host}", "{mail_mailer}"},
	StageRcpt:    {"i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"},
	StageData:    {"i"},
	StageEOM:     {"i"},
	StageEOH:     {"i"},
}

// StockMacroNames returns the macro names Postfix 3.7 sends at a stage with
// stock settings (milter_connect_macros and friends), in wire order. Only
// the names with a value are sent: "i" is unknown at MAIL and at the first
// RCPT, the TLS names need TLS, the auth names need SASL.
func StockMacroNames(s Stage) []string {
	if s >= numStages {
		return nil
	}
	return append([]string(nil), stockNames[s]...)
}

// PostfixInfo holds what Postfix's smtpd knows when it evaluates its
// macros. StockMacros turns it into the values Postfix would send.
type PostfixInfo struct {
	// Hostname is $myhostname, the j macro. Default "localhost".
	Hostname string
	// DaemonName is {daemon_name}: milter_macro_daemon_name, which is
	// $myhostname unless master.cf overrides it (submission services
	// usually set "-o milter_macro_daemon_name=ORIGINATING").
	DaemonName string
	// DaemonAddr is {daemon_addr}, the server address the client reached.
	DaemonAddr string
	// MailVersion is the v macro. Default PostfixMailVersion.
	MailVersion string
	// ClientName is the verified client hostname ("unknown" if none),
	// ClientPTR its reverse name (default ClientName), ClientAddr its IP
	// address: together they make the _ macro, "ptr [addr]".
	ClientName, ClientPTR, ClientAddr string
	// QueueID is i. Postfix knows it only once a recipient was accepted:
	// from the second RCPT on (if the first was accepted), at DATA, at
	// each header, EOH, each body chunk and end of message.
	QueueID string
	// AuthType and AuthUser are {auth_type} and {auth_authen}, sent at
	// MAIL when the client authenticated. AuthType defaults to "PLAIN".
	AuthType, AuthUser string
	// Sender and Recipient give {mail_addr} and {rcpt_addr}; {mail_host}
	// and {rcpt_host} are their domains (Hostname for the null sender or
	// an address without a domain).
	Sender, Recipient string
	// Mailer is {mail_mailer} and {rcpt_mailer}, the transport the address
	// resolves to. Default "smtp".
	Mailer string
}

// StockMacros returns the macro values Postfix 3.7 sends at stage s with
// stock settings. For StageRcpt, set QueueID only for recipients after the
// first accepted one. StageHelo yields an empty map (no TLS).
func StockMacros(s Stage, p PostfixInfo) map[string]string {
	m := make(map[string]string)
	if s >= numStages {
		return m
	}
	for _, name := range stockNames[s] {
		if v, ok := p.lookup(s, name); ok {
			m[name] = v
		}
	}
	return m
}

func (p *PostfixInfo) hostname() string {
	if p.Hostname == "" {
		return "localhost"
	}
	return p.Hostname
}

func (p *PostfixInfo) mailer() string {
	if p.Mailer == "" {
		return "smtp"
	}
	return p.Mailer
}

func (p *PostfixInfo) lookup(s Stage, name string) (string, bool) {
	switch name {
	case "j":
		return p.hostname(), true
	case "{daemon_name}":
		if p.DaemonName == "" {
			return p.hostname(), true
		}
		return p.DaemonName, true
	case "{daemon_addr}":
		return p.DaemonAddr, p.DaemonAddr != ""
	case "v":
		if p.MailVersion == "" {
			return PostfixMailVersion, true
		}
		return p.MailVersion, true
	case "_":
		name := p.ClientName
		if name == "" {
			name = "unknown"
		}
		ptr := p.ClientPTR
		if ptr == "" {
			ptr = name
		}
		v := ptr + " [" + p.ClientAddr + "]"
		if !strings.EqualFold(name, ptr) {
			v += " (may be forged)"
		}
		return v, true
	case "i":
		return p.QueueID, p.QueueID != "" && s != StageMail
	case "{auth_type}":
		if p.AuthUser == "" {
			return "", false
		}
		if p.AuthType == "" {
			return "PLAIN", true
		}
		return p.AuthType, true
	case "{auth_authen}":
		return p.AuthUser, p.AuthUser != ""
	case "{mail_addr}":
		return p.Sender, true
	case "{mail_host}":
		return domainOr(p.Sender, p.hostname()), true
	case "{mail_mailer}", "{rcpt_mailer}":
		return p.mailer(), true
	case "{rcpt_addr}":
		return p.Recipient, true
	case "{rcpt_host}":
		return domainOr(p.Recipient, p.hostname()), true
	}
	return "", false
}

func domainOr(addr, def string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 && i+1 < len(addr) {
		return addr[i+1:]
	}
	return def
}

// macrosFromMap fills c.kv with the macros to send at stage s from a
// caller's map: the names the milter asked for with SETSYMLIST (those that
// have a value), else every entry, Postfix's stock names first in stock
// order, then the rest sorted.
func (c *Conn) macrosFromMap(s Stage, m map[string]string) {
	c.kv = c.kv[:0]
	if len(m) == 0 {
		return
	}
	if s < numStages && c.symlist[s] != nil {
		for _, name := range c.symlist[s] {
			if v, ok := m[name]; ok {
				c.kv = append(c.kv, kv{name, v})
			}
		}
		return
	}
	var stock []string
	if s < numStages {
		stock = stockNames[s]
	}
	for _, name := range stock {
		if v, ok := m[name]; ok {
			c.kv = append(c.kv, kv{name, v})
		}
	}
	if len(c.kv) == len(m) {
		return
	}
	n := len(c.kv)
	for k, v := range m {
		if !contains(stock, k) {
			c.kv = append(c.kv, kv{k, v})
		}
	}
	extra := c.kv[n:]
	sort.Slice(extra, func(i, j int) bool { return extra[i].k < extra[j].k })
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// rememberConn keeps connection-level macro values (from CONNECT and HELO)
// so that Send can answer a SETSYMLIST request for them at later stages,
// as Postfix evaluates any macro at any stage.
func (c *Conn) rememberConn(m map[string]string) {
	if len(m) == 0 {
		return
	}
	if c.connMacro == nil {
		c.connMacro = make(map[string]string, len(m))
	}
	for k, v := range m {
		c.connMacro[k] = v
	}
}
