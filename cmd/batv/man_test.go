package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/batv/batv/internal/testenv/postfixtest"
)

// unroff removes the font and escape sequences of a roff page, enough to
// look for words in it.
var roffEscapes = regexp.MustCompile(`\\f[BIRP]|\\f\[[A-Z]*\]|\\&`)

func unroff(page string) string {
	page = roffEscapes.ReplaceAllString(page, "")
	page = strings.ReplaceAll(page, `\-`, "-")
	return strings.ReplaceAll(page, `\e`, `\`)
}

// visibleCommands returns the commands a user sees, with their full names.
func visibleCommands(cmds []*cli.Command, parent string) map[string]*cli.Command {
	out := map[string]*cli.Command{}
	for _, c := range cmds {
		if c.Hidden {
			continue
		}
		name := strings.TrimSpace(parent + " " + c.Name)
		out[name] = c
		for k, v := range visibleCommands(c.Subcommands, name) {
			out[k] = v
		}
	}
	return out
}

// batv(8) names every command a user sees, with every flag it shows.
func TestManPageHasEveryCommandAndFlag(t *testing.T) {
	page, err := manPage()
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^\.\\" .*\n\.TH BATV 8 "\d{4}-\d\d-\d\d" "batv [^"]+" `).MatchString(page) {
		t.Errorf("the page does not begin with its title and date: %.120q", page)
	}
	synopsis, _, _ := strings.Cut(page, "\n.SH DESCRIPTION\n")
	text := unroff(page)
	app := newApp(strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{})
	cmds := visibleCommands(app.Commands, "batv")
	if len(cmds) < 10 {
		t.Fatalf("found only %d commands", len(cmds))
	}
	for name, c := range cmds {
		if !strings.Contains(page, ".SS "+roffQuote(name)) {
			t.Errorf("batv(8) has no section for %q", name)
		}
		if !strings.Contains(synopsis, ".SY "+roffQuote(name)) {
			t.Errorf("the SYNOPSIS of batv(8) lacks %q", name)
		}
		if c.Usage != "" && !strings.Contains(text, c.Usage) {
			t.Errorf("batv(8) lacks the usage line of %q: %q", name, c.Usage)
		}
		for _, f := range c.Flags {
			if vf, ok := f.(cli.VisibleFlag); ok && !vf.IsVisible() {
				continue
			}
			for _, n := range f.Names() {
				opt := "--" + n
				if len(n) == 1 {
					opt = "-" + n
				}
				if !strings.Contains(text, opt) {
					t.Errorf("batv(8) does not mention %s of %q", opt, name)
				}
				// Each flag is the tag of an entry, its value named in italics.
				if df, ok := f.(cli.DocGenerationFlag); ok && df.TakesValue() && n == f.Names()[0] {
					value, _ := flagPlaceholder(df.GetUsage())
					if !regexp.MustCompile(`\n\.TP\n\\fB\\-\\-` + regexp.QuoteMeta(roffEscape(n)) + `\\fR.* \\fI` + regexp.QuoteMeta(value)).MatchString(page) {
						t.Errorf("batv(8) has no entry for %s %s of %q", opt, value, name)
					}
				}
			}
		}
	}
	for _, section := range []string{"DESCRIPTION", "COMMANDS", "EXIT STATUS", "ENVIRONMENT", "SIGNALS", "FILES", "SEE ALSO"} {
		if !strings.Contains(page, "\n.SH "+section+"\n") {
			t.Errorf("batv(8) has no %s section", section)
		}
	}
	if strings.Contains(page, `=""`) {
		t.Error(`batv(8) shows a flag as --flag=""`)
	}
	if _, body, _ := strings.Cut(text, "\n"); strings.Contains(body, "generate-man") { // after the comment line
		t.Error("batv(8) shows the hidden generate-man command")
	}
}

// App.ToMan leaves out Command.Description: a command's long text must be
// in its UsageText, or the man page loses it.
func TestCommandsKeepLongTextInUsageText(t *testing.T) {
	app := newApp(strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{})
	for name, c := range visibleCommands(app.Commands, "batv") {
		if c.Description != "" {
			t.Errorf("%q has a Description, which batv(8) would not show: move the text to UsageText", name)
		}
		if c.UsageText == "" {
			t.Errorf("%q has no UsageText: batv(8) would show no synopsis for it", name)
		}
	}
}

// batv.toml(5) is made from docs/batv.toml and has every option and every
// heading of it.
func TestConfigManPage(t *testing.T) {
	ref, err := os.ReadFile(filepath.Join("..", "..", "docs", "batv.toml"))
	if err != nil {
		t.Fatal(err)
	}
	page, err := configManPage(ref)
	if err != nil {
		t.Fatal(err)
	}
	keys, headings := 0, 0
	lines := strings.Split(string(ref), "\n")
	for i, l := range lines {
		if m := refKeyRe.FindStringSubmatch(l); m != nil {
			keys++
			if !strings.Contains(page, "\n.B "+m[1]+"\n") {
				t.Errorf("batv.toml(5) has no entry for %s (docs/batv.toml:%d)", m[1], i+1)
			}
		}
		if refRuleRe.MatchString(l) && i+2 < len(lines) && refRuleRe.MatchString(lines[i+2]) {
			headings++
			if h := commentText(lines[i+1]); !strings.Contains(page, ".SS "+roffQuote(h)+"\n") {
				t.Errorf("batv.toml(5) has no subsection %q", h)
			}
		}
	}
	if keys < 40 || headings < 8 {
		t.Errorf("found %d options and %d headings in docs/batv.toml: the reference changed shape", keys, headings)
	}
	if n := strings.Count(page, `\fBDefault:\fR`); n != keys {
		t.Errorf("batv.toml(5) has %d Default: lines for %d options", n, keys)
	}
	for _, bad := range []string{"\n#", "\n.PP\n.PP\n", "\n\n"} {
		if strings.Contains(page, bad) {
			t.Errorf("batv.toml(5) contains %q", bad)
		}
	}
}

func TestConfigManPageRefusesOtherFiles(t *testing.T) {
	if _, err := configManPage([]byte("keyring = \"x\"\n")); err == nil {
		t.Error("a file that is not the reference was accepted")
	}
}

// "batv generate-man DIR" writes both pages.
func TestGenerateManCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "man")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"batv", "generate-man", dir}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	for _, name := range []string{"batv.8", "batv.toml.5"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(data, []byte("\n.TH ")) && !bytes.HasPrefix(data, []byte(".TH ")) {
			t.Errorf("%s has no .TH line", name)
		}
	}
	if code := run([]string{"batv", "generate-man"}, strings.NewReader(""), &stdout, &stderr); code != exitUsage {
		t.Errorf("no directory: exit %d, want %d", code, exitUsage)
	}
}

func TestCompletionCommand(t *testing.T) {
	for shell, want := range map[string]string{
		"bash": "complete -o bashdefault -o default -F _batv_complete batv",
		"zsh":  "#compdef batv",
		"fish": "complete -c batv",
	} {
		var stdout, stderr bytes.Buffer
		if code := run([]string{"batv", "completion", shell}, strings.NewReader(""), &stdout, &stderr); code != 0 {
			t.Fatalf("%s: exit %d: %s", shell, code, stderr.String())
		}
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("%s: the script lacks %q", shell, want)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"batv", "completion", "tcsh"}, strings.NewReader(""), &stdout, &stderr); code != exitUsage {
		t.Errorf("an unknown shell: exit %d, want %d", code, exitUsage)
	}
}

// batv(8) as groff renders it, the way man shows it: a synopsis of the
// commands, the flags with their values, a date, and no warning.
func TestManPageRendered(t *testing.T) {
	groff, err := exec.LookPath("groff")
	if err != nil {
		postfixtest.SkipOrFail(t, "groff is not installed (apt-get install groff-base)")
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1767225600")
	page, err := manPage()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(groff, "-man", "-Tascii", "-ww", "-rLL=200n")
	cmd.Stdin = strings.NewReader(page)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("groff: %v\n%s", err, stderr.String())
	}
	// Remove the overstriking that makes bold and underlined text.
	text := regexp.MustCompile(`.\x08`).ReplaceAllString(string(out), "")
	for _, want := range []string{
		"SYNOPSIS\n       batv [--help] [--version]\n",
		"\n       batv sign [--config FILE] [--keyring PATH | --secret-file FILE --key-id K] [--at DATE] [--lifetime N] [--sub-address C] ADDRESS\n",
		"\n       batv keys rotate [--delay DURATION | --now]\n",
		"\n       --at DATE\n              act as on DATE instead of now: YYYY-MM-DD, which means 12:00 UTC that day, or an RFC 3339 time\n",
		"EXIT STATUS\n       batv milter\n              0: stopped cleanly",
		"\n       --config, -c FILE\n",
		"2026-01-01",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the rendered page lacks %q", want)
		}
	}
	if strings.Contains(text, `=""`) {
		t.Error(`the rendered page shows a flag as --flag=""`)
	}
	if t.Failed() {
		t.Logf("rendered:\n%s", text)
	}
}

func TestManDate(t *testing.T) {
	commit := &debug.BuildInfo{Settings: []debug.BuildSetting{{Key: "vcs.time", Value: "2025-03-04T23:30:00Z"}}}
	now := time.Date(2027, 5, 6, 7, 8, 9, 0, time.UTC)
	for _, tt := range []struct {
		epoch string
		info  *debug.BuildInfo
		want  string
	}{
		{"1767225600", commit, "2026-01-01"},
		{"", commit, "2025-03-04"},
		{"not a number", commit, "2025-03-04"},
		{"", &debug.BuildInfo{}, "2027-05-06"},
		{"", nil, "2027-05-06"},
	} {
		if got := manDate(tt.epoch, tt.info, now); got != tt.want {
			t.Errorf("manDate(%q, %v): %s, want %s", tt.epoch, tt.info, got, tt.want)
		}
	}
}

func TestBuildVersion(t *testing.T) {
	vcs := func(modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs.revision", Value: "3ca84a74d55249e3bab7a8b2ae0fa9ebc2142d57"}, {Key: "vcs.modified", Value: modified}}
	}
	for _, tt := range []struct {
		stamped string
		info    *debug.BuildInfo
		want    string
	}{
		{"v1.2.0-3-gabcdef", &debug.BuildInfo{Main: debug.Module{Version: "v1.1.0"}}, "v1.2.0-3-gabcdef"},
		{"", &debug.BuildInfo{Main: debug.Module{Version: "v1.1.0"}}, "v1.1.0"},
		{"", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261202191529-3ca84a74d552+dirty"}}, "v0.0.0-20261202191529-3ca84a74d552+dirty"},
		{"", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("false")}, "3ca84a74d552"},
		{"", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("true")}, "3ca84a74d552-dirty"},
		{"", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "dev"},
		{"", nil, "dev"},
	} {
		if got := buildVersion(tt.stamped, tt.info); got != tt.want {
			t.Errorf("buildVersion(%q, %+v): %s, want %s", tt.stamped, tt.info, got, tt.want)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"batv", "--version"}, strings.NewReader(""), &stdout, &stderr); code != 0 || stdout.String() != "batv version "+appVersion()+"\n" {
		t.Errorf("batv --version: exit %d, %q", code, stdout.String())
	}
}

// After a flag that takes a value, the completion offers no flag names:
// the shell scripts then complete file names. Elsewhere it offers what
// urfave/cli does: flags after "-", else the subcommands.
func TestCompletionOfFlagValues(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string // a line of the answer, or "" for none
	}{
		{[]string{"milter", "-c"}, ""},
		{[]string{"milter", "--config"}, ""},
		{[]string{"check-config", "--keyring"}, ""},
		{[]string{"keys", "--keyring", "/tmp/k", "rotate", "--delay"}, ""},
		{[]string{"keys", "rotate", "--delay"}, ""},
		{[]string{"milter", "-"}, "--config"},
		{[]string{"milter", "-c", "/etc/batv/batv.toml", "-"}, "--domain"},
		{[]string{"keys"}, "rotate"},
		{[]string{"keys", "--keyring", "/tmp/k"}, "rotate"},
	} {
		args := append(append([]string{"batv"}, tt.args...), "--generate-bash-completion")
		// urfave/cli looks at os.Args for the word before the cursor.
		saved := os.Args
		os.Args = args
		var stdout, stderr bytes.Buffer
		code := run(args, strings.NewReader(""), &stdout, &stderr)
		os.Args = saved
		lines := strings.Fields(stdout.String())
		switch {
		case code != 0:
			t.Errorf("%q: exit %d: %s", tt.args, code, stderr.String())
		case tt.want == "" && len(lines) > 0:
			t.Errorf("%q: offers %q, want nothing (file names)", tt.args, lines)
		case tt.want != "" && !slices.Contains(lines, tt.want):
			t.Errorf("%q: offers %q, want %q among them", tt.args, lines, tt.want)
		}
	}
}

// The fish script completes file names for the flags that take a file,
// and names each value without the backquotes of the help.
func TestFishCompletionFileFlags(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"batv", "completion", "fish"}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	script := stdout.String()
	for _, want := range []string{
		"-n '__fish_seen_subcommand_from milter' -l config -s c -r -d",
		"-n '__fish_seen_subcommand_from sign' -l secret-file -r -d",
		"-n '__fish_seen_subcommand_from milter' -l keyring -r -d",
	} {
		if !strings.Contains(script, "complete -c batv "+want) {
			t.Errorf("the fish script lacks %q (with no -f, which would refuse file names)", want)
		}
	}
	if !strings.Contains(script, "-n '__fish_seen_subcommand_from milter' -f -l domain -s d -r") {
		t.Error("the fish script offers file names for --domain")
	}
	if strings.Contains(script, "`") {
		t.Error("the fish script has backquotes")
	}
}
