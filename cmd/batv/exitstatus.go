package main

import (
	"fmt"
	"strings"
)

// Exit statuses, in the table below.
const (
	exitOK      = 0 // success; for verify: the tag is valid
	exitFailure = 1 // a failure at run time, which may pass (a socket in use, a write that failed)
	exitUsage   = 2 // bad usage, or a file that needs a person: an invalid configuration, an unusable keyring
	// Statuses 3 to 7 are verify outcomes other than valid (verifyExitCodes)
	// and sign's "left unsigned" (exitNotSigned).
)

// exitRow is one line of batv's exit-status table: what status code of a
// command means.
type exitRow struct {
	command string // as the help and the docs name it, without "batv "
	code    int
	meaning string
}

// exitTable is the one table of exit statuses: the help of each command,
// batv(8) and docs/operations.md show it, and TestExitStatusTable runs a
// case for every row. 2 is final: the systemd unit does not restart the
// daemon after it (RestartPreventExitStatus=2).
var exitTable = []exitRow{
	{"milter", 0, "stopped cleanly (SIGTERM or SIGINT)"},
	{"milter", 1, "could not run: a socket could not be opened (in use by another process, its directory missing, no permission), or the keyring could not be created; a restart may help"},
	{"milter", 2, "an invalid configuration, or a keyring that is missing, unreadable, damaged, readable by others or of an unknown version; a restart does not help"},
	{"check-config", 0, "the daemon would start with the configuration and keyring"},
	{"check-config", 2, "it would not (every problem is listed)"},
	{"explain", 0, "explained"},
	{"explain", 2, "a configuration or keyring that cannot be used, a bad --at, no address found"},
	{"sign", 0, "signed"},
	{"sign", 2, "a key that cannot be read, no signing key"},
	{"sign", 3, "left unsigned (printed unchanged, the reason on standard error)"},
	{"verify", 0, "valid"},
	{"verify", 2, "a key that cannot be read"},
	{"verify", 3, "missing: the address has no tag"},
	{"verify", 4, "malformed"},
	{"verify", 5, "unknown-key"},
	{"verify", 6, "expired"},
	{"verify", 7, "bad-signature"},
	{"keys", 0, "done"},
	{"keys", 1, "refused by the keyring's state (a key id still in use, a rotation already pending, an existing file), or the file could not be written or locked"},
	{"keys", 2, "a keyring that is missing, damaged or insecure"},
	{"keys check", 0, "the file can be used, even with warnings"},
	{"keys check", 2, "it cannot"},
	{"completion", 0, "the script printed"},
	{"completion", 2, "an unknown shell"},
	{"bench", 0, "every message checked"},
	{"bench", 1, "a message failed or got the wrong reply, or none could be checked"},
	{"bench", 2, "a milter that cannot be reached"},
	{"any command", 2, "bad usage: an unknown command or flag, a bad flag value, a missing argument"},
}

// exitCommands lists the commands of the table in its order, with the
// command line "keys" stands for.
func exitCommands() []string {
	var cmds []string
	for _, r := range exitTable {
		if len(cmds) == 0 || cmds[len(cmds)-1] != r.command {
			cmds = append(cmds, r.command)
		}
	}
	return cmds
}

// exitStatusHelp is the "Exit status:" paragraph of a command's help: its
// rows, with the usage errors of every command under 2.
func exitStatusHelp(command string) string {
	lines := []string{"Exit status:"}
	var usage string
	own2 := false
	for _, r := range exitTable {
		if r.command == "any command" {
			usage = r.meaning
		}
	}
	for _, r := range exitTable {
		if r.command != command {
			continue
		}
		meaning := r.meaning
		if r.code == exitUsage {
			meaning, own2 = meaning+"; or "+usage, true
		}
		lines = append(lines, exitHelpLine(r.code, meaning)...)
	}
	if !own2 {
		lines = append(lines, exitHelpLine(exitUsage, usage)...)
	}
	return strings.Join(lines, "\n")
}

// exitHelpLine is one status of a command's help, wrapped and indented
// by four spaces, which batv(8) shows as a literal block without them.
func exitHelpLine(code int, meaning string) []string {
	ls := strings.Split(wrap(meaning, 76), "\n")
	for i := range ls {
		if i == 0 {
			ls[i] = fmt.Sprintf("    %d  %s", code, ls[i])
		} else {
			ls[i] = "       " + ls[i]
		}
	}
	return ls
}

// exitStatusMarkdown is the table of docs/operations.md.
func exitStatusMarkdown() string {
	var b strings.Builder
	b.WriteString("| command | status | meaning |\n|---|---|---|\n")
	for _, r := range exitTable {
		fmt.Fprintf(&b, "| %s | %d | %s |\n", exitCommandName(r.command), r.code, r.meaning)
	}
	return b.String()
}

// exitStatusRoff is the EXIT STATUS section of batv(8).
func exitStatusRoff() string {
	var b strings.Builder
	b.WriteString(".SH EXIT STATUS\n")
	for _, cmd := range exitCommands() {
		fmt.Fprintf(&b, ".TP\n.B %s\n", roffQuote(strings.ReplaceAll(exitCommandName(cmd), "`", "")))
		first := true
		for _, r := range exitTable {
			if r.command != cmd {
				continue
			}
			if !first {
				b.WriteString(".br\n")
			}
			first = false
			fmt.Fprintf(&b, "%d: %s\n", r.code, roffEscape(r.meaning))
		}
	}
	b.WriteString(".PP\nThe systemd unit does not restart the daemon after status 2 (RestartPreventExitStatus=2).\n")
	return b.String()
}

// exitCommandName is a command of the table as the docs write it.
func exitCommandName(cmd string) string {
	switch cmd {
	case "any command":
		return cmd
	case "keys":
		return "`batv keys init`, `list`, `rotate`, `prune`, `import`, `export`"
	}
	return "`batv " + cmd + "`"
}

// wrap breaks s into lines of at most width bytes, at spaces.
func wrap(s string, width int) string {
	var b strings.Builder
	n := 0
	for i, w := range strings.Fields(s) {
		if i > 0 && n+1+len(w) > width {
			b.WriteByte('\n')
			n = 0
		} else if i > 0 {
			b.WriteByte(' ')
			n++
		}
		b.WriteString(w)
		n += len(w)
	}
	return b.String()
}
