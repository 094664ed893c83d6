// Command batv signs and verifies BATV (prvs) bounce address tags, manages
// the keyring, and runs the milter daemon. Run "batv help" for the commands.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// version is stamped by the Makefile with -ldflags "-X main.version=...";
// without it, appVersion takes the version Go recorded in the binary.
var version string

// appVersion is the stamped version, else the one in the binary's build
// information.
func appVersion() string {
	info, _ := debug.ReadBuildInfo()
	return buildVersion(version, info)
}

// buildVersion returns stamped if set; else the main module's version
// ("go install ...@v1.2.0", or the pseudo-version Go 1.24 and later give
// a build in a git checkout); else the commit it was built from, with
// "-dirty" for uncommitted changes; else "dev".
func buildVersion(stamped string, info *debug.BuildInfo) string {
	if stamped != "" {
		return stamped
	}
	if info == nil {
		return "dev"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var revision, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if revision == "" {
		return "dev"
	}
	revision = revision[:min(len(revision), 12)]
	if modified == "true" {
		revision += "-dirty"
	}
	return revision
}

func main() {
	os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr))
}

// run builds the application, runs it on args and returns the exit status.
// Every error reaches the user as one line on stderr.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return runApp(newApp(stdin, stdout, stderr), args, stderr)
}

// runApp is run with an application already built.
func runApp(app *cli.App, args []string, stderr io.Writer) int {
	if completingFlagValue(app, args) {
		return exitOK
	}
	err := app.Run(args)
	if err == nil {
		return exitOK
	}
	var coder cli.ExitCoder
	if errors.As(err, &coder) {
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(stderr, errorLine(msg))
		}
		return coder.ExitCode()
	}
	// Anything urfave/cli reports itself (unknown flag, bad flag value,
	// missing argument) is a usage error.
	fmt.Fprintln(stderr, errorLine(err.Error()))
	return exitUsage
}

// errorLine is msg as the program reports it: after "batv: ", once, even
// when msg is an error of package batv, which starts with it too.
func errorLine(msg string) string {
	return "batv: " + strings.TrimPrefix(msg, "batv: ")
}

// newApp builds the command-line application. It registers nothing
// globally, so tests can build and run as many as they like.
func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:                 "batv",
		Usage:                "Bounce Address Tag Validation (prvs) for mail servers",
		Version:              appVersion(),
		Reader:               stdin,
		Writer:               stdout,
		ErrWriter:            stderr,
		HideHelpCommand:      false,
		EnableBashCompletion: true,
		// Errors are printed once, by run, with their exit status.
		ExitErrHandler: func(*cli.Context, error) {},
		Commands: []*cli.Command{
			signCommand(),
			verifyCommand(),
			keysCommand(),
			milterCommand(),
			checkConfigCommand(),
			explainCommand(),
			generateManCommand(), generateReferenceCommand(), completionCommand(),
			benchCommand(),
		},
		OnUsageError: onUsageError,
	}
	app.Action = unknownCommand
	setUsageErrorHandler(app.Commands)
	return app
}

// unknownCommand is the action of the application and of each command that
// only has subcommands: help without arguments, a usage error (exit 2)
// for a command that does not exist, as for any other usage error, and not
// urfave/cli's exit 3, which is batv verify's "no tag".
func unknownCommand(c *cli.Context) error {
	if !c.Args().Present() {
		return cli.ShowSubcommandHelp(c)
	}
	name := commandName(c)
	return usageError("unknown command %q (see %s --help)", c.Args().First(), name)
}

// onUsageError turns a flag parsing error into one line on stderr and exit
// status 2, instead of urfave/cli's full help text on stdout.
func onUsageError(c *cli.Context, err error, _ bool) error {
	return usageError("%v (see %s --help)", err, commandName(c))
}

// commandName is the command line that names c's command: "batv keys".
func commandName(c *cli.Context) string {
	var names []string
	for _, l := range c.Lineage() {
		if l.Command != nil && l.Command.Name != "" && l.Command.Name != c.App.Name {
			names = append(names, l.Command.Name)
		}
	}
	slices.Reverse(names)
	return strings.Join(append([]string{c.App.Name}, names...), " ")
}

func setUsageErrorHandler(cmds []*cli.Command) {
	for _, c := range cmds {
		if c.OnUsageError == nil {
			c.OnUsageError = onUsageError
		}
		if c.Action == nil && len(c.Subcommands) > 0 {
			c.Action = unknownCommand
		}
		setUsageErrorHandler(c.Subcommands)
	}
}

// usageError returns an error that run prints and turns into exit status 2.
func usageError(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), exitUsage)
}
