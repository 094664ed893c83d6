package main

// The man pages, batv(8) from the command line itself and batv.toml(5) from
// the configuration reference of package daemon (docs/batv.toml is written
// from the same), and the shell completion scripts.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"

	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/batv/batv/internal/daemon"

	"github.com/urfave/cli/v2"
)

func generateManCommand() *cli.Command {
	return &cli.Command{
		Name:   "generate-man",
		Hidden: true,
		Usage:  "write the man pages batv.8 and batv.toml.5 into a directory",
		UsageText: "batv generate-man DIR\n\n" +
			"Writes DIR/batv.8, generated from the commands and flags of this program, and\n" +
			"DIR/batv.toml.5, generated from its configuration reference (as docs/batv.toml is).\n" +
			"\"make man\" runs it.",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError("generate-man takes one argument, the output directory")
			}
			dir := c.Args().First()
			page8, err := manPage()
			if err != nil {
				return cli.Exit(fmt.Sprintf("batv.8: %v", err), exitFailure)
			}
			page5, err := configManPage(daemon.Reference())
			if err != nil {
				return cli.Exit(fmt.Sprintf("batv.toml.5: %v", err), exitFailure)
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

// generateReferenceCommand writes docs/batv.toml.
func generateReferenceCommand() *cli.Command {
	return &cli.Command{
		Name:      "generate-reference",
		Hidden:    true,
		Usage:     "write the annotated configuration reference (docs/batv.toml)",
		UsageText: "batv generate-reference FILE\n\n\"make docs\" runs it.",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError("generate-reference takes one argument, the file to write")
			}
			if err := os.WriteFile(c.Args().First(), daemon.Reference(), 0o644); err != nil {
				return cli.Exit(err.Error(), exitFailure)
			}
			return nil
		},
	}
}

// manDescription is the DESCRIPTION of batv(8), in roff.
const manDescription = `.SH DESCRIPTION
\fBbatv\fR implements Bounce Address Tag Validation (BATV, prvs tags) for Postfix and
Sendmail. Mail your users send leaves with a signed envelope sender,
prvs=KDDDSSSSSS=user@example.com (key id, expiry day, MAC); a bounce (MAIL FROM:<>)
is accepted only when it is addressed to a validly signed, unexpired tag, and the tag is
removed before delivery. Backscatter to forged senders is refused during the SMTP
transaction.
.PP
\fBbatv milter\fR is the daemon: the signing and verifying milters and the lookup tables
Postfix needs. It reads its configuration from \fBbatv.toml\fR(5) and its keys from the
keyring that \fBbatv keys\fR manages. The other commands check the configuration, explain a
decision, sign and verify addresses by hand, and manage the keyring.
.PP
The Postfix and Sendmail setup, the keyring and its rotation, and the operation of the
daemon are described in postfix.md, sendmail.md, keyring.md and operations.md, in the
docs directory of the source tree and in /usr/share/doc/batv.
.SH OPTIONS
.TP
.BR \-\-help ", " \-h
Show the help of batv or of a command (\fBbatv keys rotate \-\-help\fR).
.TP
.BR \-\-version ", " \-v
Print the version.
`

// manSections are the sections of batv(8) after the commands and the
// exit statuses, in roff.
const manSections = `.SH ENVIRONMENT
.TP
.B BATV_CONFIG
The configuration file of \fBmilter\fR, \fBcheck-config\fR, \fBexplain\fR,
\fBsign\fR and \fBverify\fR, when \fB\-\-config\fR is not given.
.TP
.B BATV_KEYRING
The keyring file, when \fB\-\-keyring\fR is not given. It overrides the
\fBkeyring\fR of the configuration file too, for \fBmilter\fR,
\fBcheck-config\fR, \fBexplain\fR, \fBsign\fR and \fBverify\fR.
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
The keyring of the daemon (mode 0600), and \fIkeyring.json.lock\fR beside it:
the default of the configuration file and of \fBbatv keys\fR.
.TP
.I $XDG_STATE_HOME/batv/keyring.json
The trial keyring (default \fI~/.local/state/batv/keyring.json\fR, for root
too): \fBbatv milter\fR without a configuration file creates and uses it, and
\fBsign\fR, \fBverify\fR, \fBexplain\fR and \fBcheck-config\fR read it
without \fB\-\-config\fR. A trial run never touches the daemon's keyring.
.TP
.I /var/spool/postfix/batv/
The usual place of the milter and lookup sockets, inside Postfix's queue
directory so that a chrooted Postfix reaches them.
.SH SEE ALSO
.BR batv.toml (5),
.BR postconf (5),
.BR systemd.service (5)
`

// manPage returns batv(8), generated from the command line definition:
// a synopsis of every command, then for each its usage line, the rest of
// its UsageText and its flags.
func manPage() (string, error) {
	app := newApp(strings.NewReader(""), io.Discard, io.Discard)
	cmds := manCommands(app.Commands, app.Name)
	if len(cmds) == 0 {
		return "", fmt.Errorf("no command to document")
	}
	var b strings.Builder
	b.WriteString(".\\\" Generated by \"batv generate-man\" from the command line; edit cmd/batv instead.\n")
	manTitle(&b, "BATV", 8, "System Manager's Manual")
	fmt.Fprintf(&b, ".SH NAME\nbatv \\- %s\n.SH SYNOPSIS\n", roffEscape(app.Usage))
	b.WriteString(".SY batv\n.RB [ \\-\\-help ]\n.RB [ \\-\\-version ]\n.YS\n")
	for _, c := range cmds {
		writeSynopsis(&b, c)
	}
	b.WriteString(manDescription)
	b.WriteString(".SH COMMANDS\n")
	for _, c := range cmds {
		fmt.Fprintf(&b, ".SS %s\n%s\n", roffQuote(c.path), roffEscape(c.Usage))
		writeSynopsis(&b, c)
		_, rest, _ := strings.Cut(c.UsageText, "\n\n")
		writeRoffText(&b, strings.Split(rest, "\n"), false)
		for _, f := range c.VisibleFlags() {
			writeFlag(&b, f)
		}
	}
	b.WriteString(exitStatusRoff())
	b.WriteString(manSections)
	return b.String(), nil
}

// manTitle writes the .TH line: the page's name, section, date, source
// and manual.
func manTitle(b *strings.Builder, name string, section int, manual string) {
	info, _ := debug.ReadBuildInfo()
	fmt.Fprintf(b, ".TH %s %d %q \"batv %s\" %q\n.nh\n.ad l\n", name, section,
		manDate(os.Getenv("SOURCE_DATE_EPOCH"), info, time.Now()), appVersion(), manual)
}

// manDate is the date of the man pages: $SOURCE_DATE_EPOCH, as
// reproducible builds set it; else the time of the commit the binary was
// built from; else now.
func manDate(epoch string, info *debug.BuildInfo, now time.Time) string {
	if sec, err := strconv.ParseInt(epoch, 10, 64); err == nil {
		return time.Unix(sec, 0).UTC().Format(time.DateOnly)
	}
	if info != nil {
		for _, s := range info.Settings {
			if t, err := time.Parse(time.RFC3339, s.Value); s.Key == "vcs.time" && err == nil {
				return t.UTC().Format(time.DateOnly)
			}
		}
	}
	return now.UTC().Format(time.DateOnly)
}

// manCommand is a command a user sees, with its full command line.
type manCommand struct {
	*cli.Command
	path string // "batv keys rotate"
}

// manCommands lists the visible commands, each followed by its
// subcommands.
func manCommands(cmds []*cli.Command, parent string) []manCommand {
	var out []manCommand
	for _, c := range cmds {
		if c.Hidden {
			continue
		}
		path := parent + " " + c.Name
		out = append(out, manCommand{c, path})
		out = append(out, manCommands(c.Subcommands, path)...)
	}
	return out
}

// writeSynopsis writes the synopsis lines of a command, the first
// paragraph of its UsageText (lines that go on an indented line joined),
// the command in bold.
func writeSynopsis(b *strings.Builder, c manCommand) {
	first, _, _ := strings.Cut(c.UsageText, "\n\n")
	var lines []string
	for _, l := range strings.Split(first, "\n") {
		if strings.HasPrefix(l, " ") && len(lines) > 0 {
			lines[len(lines)-1] += " " + strings.TrimSpace(l)
			continue
		}
		lines = append(lines, strings.TrimSpace(l))
	}
	for _, l := range lines {
		args, ok := strings.CutPrefix(l, c.path)
		if !ok {
			args = l // not the command's own line: shown as it is
			fmt.Fprintf(b, ".PP\n%s\n", roffEscape(args))
			continue
		}
		fmt.Fprintf(b, ".SY %s\n", roffQuote(c.path))
		if args = strings.TrimSpace(args); args != "" {
			b.WriteString(roffEscape(args) + "\n")
		}
		b.WriteString(".YS\n")
	}
}

// writeFlag writes a flag's entry: its names and value in bold and
// italics, its usage, its default and its environment variable.
func writeFlag(b *strings.Builder, f cli.Flag) {
	var names []string
	for _, n := range f.Names() {
		dash := "\\-\\-"
		if len(n) == 1 {
			dash = "\\-"
		}
		names = append(names, `\fB`+dash+roffEscape(n)+`\fR`)
	}
	df, ok := f.(cli.DocGenerationFlag)
	if !ok {
		fmt.Fprintf(b, ".TP\n%s\n", strings.Join(names, ", "))
		return
	}
	placeholder, usage := flagPlaceholder(df.GetUsage())
	head := strings.Join(names, ", ")
	if df.TakesValue() {
		if placeholder == "" {
			placeholder = "VALUE"
		}
		head += ` \fI` + roffEscape(placeholder) + `\fR`
	}
	text := roffEscape(usage)
	if placeholder != "" {
		text = strings.ReplaceAll(text, roffEscape(placeholder), `\fI`+roffEscape(placeholder)+`\fR`)
	}
	if df.TakesValue() && !strings.Contains(usage, "default") {
		v := df.GetDefaultText()
		if v == "" {
			v = df.GetValue()
		}
		if v != "" && v != `""` {
			text += " (default: " + roffEscape(v) + ")"
		}
	}
	if env := df.GetEnvVars(); len(env) > 0 {
		text += " (environment: " + roffEscape(strings.Join(env, ", ")) + ")"
	}
	fmt.Fprintf(b, ".TP\n%s\n%s\n", head, text)
}

// flagPlaceholder returns the name of a flag's value, the word between
// backquotes in its usage, and the usage without the backquotes.
func flagPlaceholder(usage string) (string, string) {
	before, rest, ok := strings.Cut(usage, "`")
	if !ok {
		return "", usage
	}
	name, after, ok := strings.Cut(rest, "`")
	if !ok {
		return "", usage
	}
	return name, before + name + after
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
	manTitle(&b, "BATV.TOML", 5, "File Formats Manual")
	b.WriteString(".SH NAME\nbatv.toml \\- configuration file of the batv milter daemon\n")
	b.WriteString(".SH SYNOPSIS\n.I /etc/batv/batv.toml\n")
	b.WriteString(".SH DESCRIPTION\n")
	var description []string
	for _, l := range groups[0][1:] {
		description = append(description, commentText(l))
	}
	writeRoffText(&b, description, false)
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
				comments = append(comments, commentText(l))
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

// writeRoffText renders lines of text: paragraphs separated by empty
// lines, lines indented further as literal examples, and
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
		switch {
		case strings.TrimSpace(l) == "":
			endLiteral()
			inPara = false
		case strings.HasPrefix(l, "  "):
			if !literal {
				begin()
				if !indented {
					b.WriteString(".RS 4\n")
				}
				b.WriteString(".nf\n")
				literal = true
			}
			b.WriteString(roffEscape(strings.TrimPrefix(l, "    ")) + "\n")
		default:
			endLiteral()
			if !inPara {
				begin()
				inPara = true
			}
			if label, rest, ok := strings.Cut(l, ":"); ok && (label == "Default" || label == "Example") {
				fmt.Fprintf(b, ".br\n\\fB%s:\\fR%s\n", label, roffEscape(rest))
				continue
			}
			b.WriteString(roffEscape(l) + "\n")
		}
	}
	endLiteral()
}

// roffEscape makes a line of text safe in roff: backslashes are escaped,
// hyphens are minus signs (so that options copied from the page work), and
// a line starting with a control character is protected.
func roffEscape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
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
			"completions, so they stay right when batv is upgraded.\n\n" +
			exitStatusHelp("completion"),
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
				markFileFlags(app.Commands)
				s, err := app.ToFishCompletion()
				if err != nil {
					return cli.Exit(err.Error(), exitFailure)
				}
				// The descriptions are the usage lines, whose backquotes
				// name the value in batv's help.
				script = strings.ReplaceAll(s, "`", "")
			default:
				return usageError("completion: unknown shell %q: use bash, zsh or fish", shell)
			}
			_, err := io.WriteString(c.App.Writer, script)
			return err
		},
	}
}

// markFileFlags marks the flags whose value is a file for urfave/cli's
// fish completion, which otherwise offers no file names for them: path
// flags, and the others whose value is named FILE, PATH or DIR.
func markFileFlags(cmds []*cli.Command) {
	for _, c := range cmds {
		for _, f := range c.Flags {
			switch f := f.(type) {
			case *cli.PathFlag:
				f.TakesFile = true
			case *cli.StringFlag:
				name, _ := flagPlaceholder(f.Usage)
				f.TakesFile = name == "FILE" || name == "PATH" || name == "DIR"
			}
		}
		markFileFlags(c.Subcommands)
	}
}

// completingFlagValue reports whether args ask for the completion of a
// flag's value: the last argument is urfave/cli's
// --generate-bash-completion and the one before it a flag of the command
// that takes a value. urfave/cli would answer with flag names; batv
// answers nothing, and the bash and zsh scripts then complete file names.
func completingFlagValue(app *cli.App, args []string) bool {
	n := len(args)
	if n < 3 || args[n-1] != "--generate-bash-completion" {
		return false
	}
	prev := args[n-2]
	name, ok := strings.CutPrefix(prev, "-")
	name = strings.TrimPrefix(name, "-")
	if !ok || name == "" || strings.Contains(name, "=") {
		return false
	}
	flags, cmds := app.Flags, app.Commands
	for _, a := range args[1 : n-2] {
		for _, c := range cmds {
			if c.HasName(a) {
				flags, cmds = c.Flags, c.Subcommands
				break
			}
		}
	}
	for _, f := range flags {
		if slices.Contains(f.Names(), name) {
			df, ok := f.(cli.DocGenerationFlag)
			return ok && df.TakesValue()
		}
	}
	return false
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
