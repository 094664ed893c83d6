// Package daemontest is what the harnesses that run batv's daemon share:
// the batv.toml they write and a log buffer they read while it runs.
package daemontest

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
)

// Config describes a batv.toml. The file it renders signs for
// example.com (or Domains) and ends the grace period for untagged bounces at once
// (grace_until in 2000): the harnesses' keyrings are new, and their
// untagged bounces must be refused from the start.
type Config struct {
	Keyring     string // the keyring's path
	KeyringPoll string // keyring_poll, a duration; "" leaves it out
	LogLevel    string // [log] level; "" leaves [log] out
	Metrics     string // [metrics] listen, HOST:PORT; "" leaves [metrics] out
	// [limits]; zero values are left out.
	MaxConnections  int
	ShutdownTimeout string
	Listeners       []Listener
	// The addresses of [socketmap] and [policy_service], each served to
	// Postfix as a listener with Postfix set is; "" leaves the table out.
	Socketmap, PolicyService string
	// Domains are the [sign] domains; nil is example.com.
	Domains []string
	// Sign and Verify are lines added to [sign] and [verify] as they are.
	// [verify] comes last, so lines appended to the file are in it.
	Sign, Verify string
}

// Listener is a [[listener]] table.
type Listener struct {
	Name    string
	Address string   // "unix:PATH" or "inet:HOST:PORT"
	Roles   []string // "outbound", "inbound"
	// Postfix gives a unix socket to group postfix with mode 0660.
	Postfix bool
}

// TOML renders c.
func (c Config) TOML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "keyring = %q\n", c.Keyring)
	if c.KeyringPoll != "" {
		fmt.Fprintf(&b, "keyring_poll = %q\n", c.KeyringPoll)
	}
	if c.LogLevel != "" {
		fmt.Fprintf(&b, "\n[log]\nlevel = %q\n", c.LogLevel)
	}
	if c.MaxConnections != 0 || c.ShutdownTimeout != "" {
		b.WriteString("\n[limits]\n")
		if c.MaxConnections != 0 {
			fmt.Fprintf(&b, "max_connections = %d\n", c.MaxConnections)
		}
		if c.ShutdownTimeout != "" {
			fmt.Fprintf(&b, "shutdown_timeout = %q\n", c.ShutdownTimeout)
		}
	}
	if c.Metrics != "" {
		fmt.Fprintf(&b, "\n[metrics]\nlisten = %q\n", c.Metrics)
	}
	for _, l := range c.Listeners {
		fmt.Fprintf(&b, "\n[[listener]]\nname = %q\naddress = %q\nroles = %s\n", l.Name, l.Address, list(l.Roles))
		if l.Postfix {
			b.WriteString(postfixOwned)
		}
	}
	for _, t := range []struct{ table, address string }{{"socketmap", c.Socketmap}, {"policy_service", c.PolicyService}} {
		if t.address != "" {
			fmt.Fprintf(&b, "\n[%s]\naddress = %q\n%s", t.table, t.address, postfixOwned)
		}
	}
	domains := c.Domains
	if domains == nil {
		domains = []string{"example.com"}
	}
	for _, t := range []struct{ head, lines string }{
		{"[sign]\ndomains = " + list(domains), c.Sign},
		{"[verify]\ngrace_until = 2000-01-01T00:00:00Z", c.Verify},
	} {
		fmt.Fprintf(&b, "\n%s\n", t.head)
		if t.lines != "" {
			b.WriteString(t.lines + "\n")
		}
	}
	return b.String()
}

// list is a TOML array of strings.
func list(items []string) string {
	quoted := make([]string, len(items))
	for i, s := range items {
		quoted[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}

// postfixOwned gives a unix socket to Postfix's group.
const postfixOwned = "socket_group = \"postfix\"\nsocket_mode = \"0660\"\n"

// Buffer is a bytes.Buffer safe for a writer and a reader in two
// goroutines, such as a daemon's log and the test that waits for a line.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
