package main

// The man pages, batv(8) from the command line itself and batv.toml(5) from
// the annotated configuration reference docs/batv.toml, and the shell
// completion scripts.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/urfave/cli/v2"
)

const flagReference = "reference"

func generateManCommand() *cli.Command {
	return &cli.Command{
		Name:   "generate-man",
		Hidden: true,
		Usage:  "write the man pages batv.8 and batv.toml.5 into a directory",
		UsageText: "batv generate-man [--reference FILE] DIR\n\n" +
			"Writes DIR/batv.8, generated from the commands and flags of this program, and\n" +
			"DIR/batv.toml.5, generated from the annotated configuration reference FILE\n" +
			"(docs/batv.toml in the source tree). \"make man\" runs it.",
		Flags: []cli.Flag{
			&cli.PathFlag{Name: flagReference, Value: filepath.Join("docs", "batv.toml"),
				Usage: "the annotated configuration reference `FILE` that batv.toml(5) is made from"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError("generate-man takes one argument, the output directory")
			}
			dir := c.Args().First()
			ref, err := os.ReadFile(c.Path(flagReference))
			if err != nil {
				return usageError("%v", err)
			}
			page8, err := manPage()
			if err != nil {
				return cli.Exit(fmt.Sprintf("batv.8: %v", err), exitFailure)
			}
			page5, err := configManPage(ref)
			if err != nil {
				return usageError("%s: %v", c.Path(flagReference), err)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return cli.Exit(err.Error(), exitFailure)
			}
			for name, page := range map[string]string{"batv.8": page8, "batv.toml.5": page5} {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(page), 0o644); err != nil {
					return cli.Exit(err.Error(), exitFailure)
				}
			}
			fmt.Fprintf(c.App.Writer, "wrote %s and %s\n", filepath.Join(dir, "batv.8"), filepath.Join(dir, "batv.toml.5"))
			return nil
		},
	}
}

// manDescription is the DESCRIPTION of batv(8), in the markdown that
// urfave/cli renders the page from.
const manDescription = `**batv** implements Bounce Address Tag Validation (BATV, prvs tags) for Postfix and
Sendmail. Mail your users send leaves with a signed envelope sender,
prvs=KDDDSSSSSS=user@example.com (key id, expiry day, MAC); a bounce (MAIL FROM:<>)
is accepted only when it is addressed to a validly signed, unexpired tag, and the tag is
removed before delivery. Backscatter to forged senders is refused during the SMTP
transaction.

**batv milter** is the daemon: the signing and verifying milters and the lookup tables
Postfix needs. It reads its configuration from batv.toml(5) and its keys from the
keyring that **batv keys** manages. The other commands check the configuration, explain a
decision, sign and verify addresses by hand, and manage the keyring.

The source tree's docs/ directory has the Postfix and Sendmail setup (postfix.md,
sendmail.md), the keyring and its rotation (keyring.md) and the operation of the daemon
(operations.md).`

// manSections are the sections of batv(8) after the commands, in roff.
const manSections = `.SH EXIT STATUS
.TP
.B 0
Success; for \fBverify\fR, the tag is valid; for \fBmilter\fR, a clean stop.
.TP
.B 1
A failure at run time: the daemon could not run (a socket could not be opened),
a keyring change was refused by the state of the keyring (a key id still in
use, a rotation already pending) or could not be written or locked; for
\fBbench\fR, a message failed or got the wrong reply.
.TP
.B 2
Bad usage (an unknown flag, a missing argument), or a file that cannot be used:
an invalid configuration, or a keyring that is missing, damaged or readable by
others; for \fBbench\fR, a milter that cannot be reached. Restarting the daemon
does not help, and the systemd unit does not restart it.
.TP
.B 3
\fBsign\fR: the address was left unsigned (printed unchanged, the reason on
standard error). \fBverify\fR: the address has no tag. Also an unknown command.
.TP
.B 4
\fBverify\fR: the tag is malformed.
.TP
.B 5
\fBverify\fR: the tag's key is not in the keyring.
.TP
.B 6
\fBverify\fR: the tag has expired.
.TP
.B 7
\fBverify\fR: the tag's signature does not match.
.SH ENVIRONMENT
.TP
.B BATV_CONFIG
The configuration file of \fBmilter\fR, \fBcheck-config\fR and \fBexplain\fR,
when \fB\-\-config\fR is not given.
.TP
.B BATV_KEYRING
The keyring file, when \fB\-\-keyring\fR is not given. It overrides the
\fBkeyring\fR of the configuration file too, for \fBmilter\fR,
\fBcheck-config\fR and \fBexplain\fR.
.SH SIGNALS
.TP
.B SIGHUP
\fBbatv milter\fR rereads the configuration file and the keyring and switches to
them together; if either is invalid the running ones stay, and the error is
logged. Listeners, [metrics], [limits], the log format and the keyring path
change only at a restart. The keyring is also reloaded whenever its file
changes.
.TP
.BR SIGTERM ", " SIGINT
\fBbatv milter\fR stops accepting connections, lets messages in flight finish
for [limits] shutdown_timeout, and exits 0. A second signal closes every
connection at once.
.SH FILES
.TP
.I /etc/batv/batv.toml
The configuration file; see \fBbatv.toml\fR(5).
.TP
.I /var/lib/batv/keyring.json
The keyring (mode 0600), and \fIkeyring.json.lock\fR beside it. As a user other
than root, with no configuration file, \fBbatv milter\fR uses
\fI$XDG_STATE_HOME/batv/keyring.json\fR (default
\fI~/.local/state/batv/keyring.json\fR) instead.
.TP
.I /var/spool/postfix/batv/
The usual place of the milter and lookup sockets, inside Postfix's queue
directory so that a chrooted Postfix reaches them.
.SH SEE ALSO
.BR batv.toml (5),
.BR postconf (5),
.BR systemd.service (5)
`

// manPage returns batv(8), generated from the command line definition.
func manPage() (string, error) {
	app := newApp(strings.NewReader(""), io.Discard, io.Discard)
	app.Description = manDescription
	page, err := app.ToMan()
	if err != nil {
		return "", err
	}
	page = strings.Replace(page, ".TH batv 8\n", `.TH BATV 8 "" "batv `+version+`" "System Manager's Manual"`+"\n", 1)
	return commandHeadings(page, app.Commands) + manSections, nil
}

// commandHeadings turns the headings urfave/cli gives each command (".SH
// keys", ".SS rotate") into subsections with the full command line ("batv
// keys rotate"), so the page reads as one list of commands.
func commandHeadings(page string, cmds []*cli.Command) string {
	var full []string
	var walk func([]*cli.Command, string)
	walk = func(cmds []*cli.Command, parent string) {
		for _, c := range cmds {
			if c.Hidden {
				continue
			}
			full = append(full, strings.Join(c.Names(), ", ")+"\x00"+parent+" "+c.Name)
			walk(c.Subcommands, parent+" "+c.Name)
		}
	}
	walk(cmds, "batv")
	lines := strings.Split(page, "\n")
	inCommands := false
	for i, l := range lines {
		if l == ".SH COMMANDS" {
			inCommands = true
			continue
		}
		if !inCommands || len(full) == 0 || !(strings.HasPrefix(l, ".SH ") || strings.HasPrefix(l, ".SS ")) {
			continue
		}
		names, name, _ := strings.Cut(full[0], "\x00")
		if strings.TrimSpace(l[4:]) != names {
			break // not the layout this expects: leave the rest as it is
		}
		lines[i] = `.SS "` + name + `"`
		full = full[1:]
	}
	return strings.Join(lines, "\n")
}

// The reference's structure: a heading between two rule lines, table
// headers, and key lines, set or commented out.
var (
	refRuleRe  = regexp.MustCompile(`^# ?=+$`)
	refTableRe = regexp.MustCompile(`^#? ?\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*$`)
	refKeyRe   = regexp.MustCompile(`^#? ?([A-Za-z0-9_-]+)\s*=`)
)

// configManPage returns batv.toml(5), made from the annotated reference:
// its first block of comments is the description, each heading between
// rule lines a subsection with the comments that follow it, and each
// option the comment block above its line.
func configManPage(ref []byte) (string, error) {
	var groups [][]string
	var cur []string
	sc := bufio.NewScanner(bytes.NewReader(ref))
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), " \t")
		if line == "" {
			if len(cur) > 0 {
				groups = append(groups, cur)
			}
			cur = nil
			continue
		}
		cur = append(cur, line)
	}
	if len(cur) > 0 {
		groups = append(groups, cur)
	}
	if len(groups) < 2 || !strings.HasPrefix(groups[0][0], "# batv.toml") {
		return "", fmt.Errorf("not the configuration reference: it must begin with a \"# batv.toml\" comment")
	}

	var b strings.Builder
	b.WriteString(".\\\" Generated by \"batv generate-man\" from docs/batv.toml; edit that file instead.\n")
	fmt.Fprintf(&b, ".TH BATV.TOML 5 \"\" \"batv %s\" \"File Formats Manual\"\n", version)
	b.WriteString(".nh\n.ad l\n")
	b.WriteString(".SH NAME\nbatv.toml \\- configuration file of the batv milter daemon\n")
	b.WriteString(".SH SYNOPSIS\n.I /etc/batv/batv.toml\n")
	b.WriteString(".SH DESCRIPTION\n")
	writeRoffText(&b, groups[0][1:], false)
	b.WriteString(".SH OPTIONS\n")
	options := 0
	for _, g := range groups[1:] {
		var comments, keys []string
		heading := ""
		rules := 0
		for _, l := range g {
			switch {
			case refRuleRe.MatchString(l):
				rules++
			case refTableRe.MatchString(l):
				// The table is named in the heading.
			case refKeyRe.MatchString(l):
				keys = append(keys, refKeyRe.FindStringSubmatch(l)[1])
			case strings.HasPrefix(l, "#"):
				if rules == 1 && heading == "" {
					heading = commentText(l)
					continue
				}
				comments = append(comments, l)
			default:
				return "", fmt.Errorf("unexpected line %q", l)
			}
		}
		switch {
		case heading != "":
			fmt.Fprintf(&b, ".SS %s\n", roffQuote(heading))
			writeRoffText(&b, comments, false)
		case len(keys) > 0:
			for i, k := range keys {
				if i == 0 {
					b.WriteString(".TP\n")
				} else {
					b.WriteString(".TQ\n")
				}
				fmt.Fprintf(&b, ".B %s\n", k)
				options++
			}
			writeRoffText(&b, comments, true)
		default:
			writeRoffText(&b, comments, false)
		}
	}
	if options == 0 {
		return "", fmt.Errorf("no option found")
	}
	b.WriteString(".SH FILES\n.TP\n.I /etc/batv/batv.toml\nThe configuration file, read by \\fBbatv milter\\fR at start and on SIGHUP.\n")
	b.WriteString(".SH SEE ALSO\n.BR batv (8)\n")
	return b.String(), nil
}

// commentText strips the comment mark and one space.
func commentText(l string) string {
	l = strings.TrimPrefix(l, "#")
	return strings.TrimPrefix(l, " ")
}

// writeRoffText renders comment lines: paragraphs separated by empty
// comment lines, lines indented further as literal examples, and
// "Default:" and "Example:" lines each on a line of their own. In an
// option's entry (indented) paragraphs continue the entry.
func writeRoffText(b *strings.Builder, lines []string, indented bool) {
	para := ".PP\n"
	if indented {
		para = ".IP\n"
	}
	paragraphs, literal := 0, false
	// begin starts a paragraph; the first paragraph of an option's entry
	// follows its tag directly.
	begin := func() {
		if !indented || paragraphs > 0 {
			b.WriteString(para)
		}
		paragraphs++
	}
	endLiteral := func() {
		if literal {
			b.WriteString(".fi\n")
			if !indented {
				b.WriteString(".RE\n")
			}
			literal = false
		}
	}
	inPara := false
	for _, l := range lines {
		t := commentText(l)
		switch {
		case strings.TrimSpace(t) == "":
			endLiteral()
			inPara = false
		case strings.HasPrefix(t, "  "):
			if !literal {
				begin()
				if !indented {
					b.WriteString(".RS 4\n")
				}
				b.WriteString(".nf\n")
				literal = true
			}
			b.WriteString(roffEscape(strings.TrimPrefix(t, "    ")) + "\n")
		default:
			endLiteral()
			if !inPara {
				begin()
				inPara = true
			}
			if label, rest, ok := strings.Cut(t, ":"); ok && (label == "Default" || label == "Example") {
				fmt.Fprintf(b, ".br\n\\fB%s:\\fR%s\n", label, roffEscape(rest))
				continue
			}
			b.WriteString(roffEscape(t) + "\n")
		}
	}
	endLiteral()
}

// roffEscape makes a line of text safe in roff: backslashes are escaped,
// and a line starting with a control character is protected.
func roffEscape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

func roffQuote(s string) string {
	return `"` + strings.ReplaceAll(roffEscape(s), `"`, `\(dq`) + `"`
}

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:  "completion",
		Usage: "print the shell completion script for bash, zsh or fish",
		UsageText: "batv completion bash|zsh|fish\n\n" +
			"Prints a script that completes batv's commands and flags in the given shell. Install it\n" +
			"once, system-wide:\n\n" +
			"  batv completion bash > /etc/bash_completion.d/batv\n" +
			"  batv completion zsh > /usr/local/share/zsh/site-functions/_batv\n" +
			"  batv completion fish > /etc/fish/completions/batv.fish\n\n" +
			"or for the current shell only: source <(batv completion bash) in bash,\n" +
			"source <(batv completion zsh) in zsh. The scripts ask batv itself for the\n" +
			"completions, so they stay right when batv is upgraded.",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError("completion takes one argument: bash, zsh or fish")
			}
			var script string
			switch shell := c.Args().First(); shell {
			case "bash":
				script = bashCompletion
			case "zsh":
				script = zshCompletion
			case "fish":
				app := newApp(strings.NewReader(""), io.Discard, io.Discard)
				s, err := app.ToFishCompletion()
				if err != nil {
					return cli.Exit(err.Error(), exitFailure)
				}
				script = s
			default:
				return usageError("completion: unknown shell %q: use bash, zsh or fish", shell)
			}
			_, err := io.WriteString(c.App.Writer, script)
			return err
		},
	}
}

// The completion scripts ask batv for the words that may follow (urfave/cli
// answers --generate-bash-completion). They never pass "--": after it
// urfave/cli would run the command instead of completing it.
const bashCompletion = `# bash completion for batv(8); install with
#   batv completion bash > /etc/bash_completion.d/batv
_batv_complete() {
	local cur=${COMP_WORDS[COMP_CWORD]} w
	local -a args=("${COMP_WORDS[@]:0:COMP_CWORD}")
	for w in "${args[@]}"; do
		[[ $w == -- ]] && return 0
	done
	[[ $cur == -* ]] && args+=(-)
	local IFS=$'\n'
	COMPREPLY=($(compgen -W "$("${args[@]}" --generate-bash-completion 2>/dev/null)" -- "$cur"))
}
complete -o bashdefault -o default -F _batv_complete batv
`

const zshCompletion = `#compdef batv
# zsh completion for batv(8); install with
#   batv completion zsh > /usr/local/share/zsh/site-functions/_batv
_batv() {
	local -a args opts
	args=("${(@)words[1,CURRENT-1]}")
	if (( ${args[(I)--]} )); then
		_files
		return
	fi
	[[ ${words[CURRENT]} == -* ]] && args+=(-)
	opts=("${(@f)$(env 0=zsh "${args[@]}" --generate-bash-completion 2>/dev/null)}")
	if [[ -n ${opts[1]} ]]; then
		_describe 'batv' opts
	else
		_files
	fi
}
if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then
	_batv "$@"
else
	compdef _batv batv
fi
`
