package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
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
	if !strings.HasPrefix(page, ".nh\n.TH BATV 8 ") {
		t.Errorf("the page does not begin with its title: %.40q", page)
	}
	text := unroff(page)
	app := newApp(strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{})
	cmds := visibleCommands(app.Commands, "batv")
	if len(cmds) < 10 {
		t.Fatalf("found only %d commands", len(cmds))
	}
	for name, c := range cmds {
		if !strings.Contains(page, `.SS "`+name+`"`) {
			t.Errorf("batv(8) has no section for %q", name)
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
			}
		}
	}
	for _, section := range []string{"DESCRIPTION", "COMMANDS", "EXIT STATUS", "ENVIRONMENT", "SIGNALS", "FILES", "SEE ALSO"} {
		if !strings.Contains(page, "\n.SH "+section+"\n") {
			t.Errorf("batv(8) has no %s section", section)
		}
	}
	if strings.Contains(text, "generate-man") {
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
	ref := filepath.Join("..", "..", "docs", "batv.toml")
	if code := run([]string{"batv", "generate-man", "--reference", ref, dir}, strings.NewReader(""), &stdout, &stderr); code != 0 {
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
	if code := run([]string{"batv", "generate-man", "--reference", filepath.Join(dir, "nonexistent"), dir}, strings.NewReader(""), &stdout, &stderr); code != exitUsage {
		t.Errorf("a missing reference: exit %d, want %d", code, exitUsage)
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
