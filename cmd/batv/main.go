// Command batv signs and verifies BATV (prvs) bounce address tags, manages
// the keyring, and runs the milter daemon. Run "batv help" for the commands.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"
)

// Exit statuses, documented in batv(8) and docs/cli.md.
const (
	exitOK      = 0 // success; for verify: the tag is valid
	exitFailure = 1 // a runtime failure (the daemon could not run, a write failed)
	exitUsage   = 2 // bad usage, an unreadable or invalid file, an invalid configuration
	// Statuses 3 to 7 are verify outcomes other than valid; see verifyExitCodes.
)

// version is stamped by the Makefile with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr))
}

// run builds the application, runs it on args and returns the exit status.
// Every error reaches the user as one line on stderr.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	app := newApp(stdin, stdout, stderr)
	err := app.Run(args)
	if err == nil {
		return exitOK
	}
	var coder cli.ExitCoder
	if errors.As(err, &coder) {
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(stderr, "batv:", msg)
		}
		return coder.ExitCode()
	}
	// Anything urfave/cli reports itself (unknown flag, bad flag value,
	// missing argument) is a usage error.
	fmt.Fprintln(stderr, "batv:", err)
	return exitUsage
}

// newApp builds the command-line application. It registers nothing
// globally, so tests can build and run as many as they like.
func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:                 "batv",
		Usage:                "Bounce Address Tag Validation (prvs) for mail servers",
		Version:              version,
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
			generateManCommand(), completionCommand(),
			benchCommand(),
		},
		OnUsageError: onUsageError,
	}
	setUsageErrorHandler(app.Commands)
	return app
}

// onUsageError turns a flag parsing error into one line on stderr and exit
// status 2, instead of urfave/cli's full help text on stdout.
func onUsageError(c *cli.Context, err error, _ bool) error {
	name := "batv"
	if c.Command != nil && c.Command.Name != "" {
		name = "batv " + c.Command.FullName()
	}
	return usageError("%v (see %s --help)", err, name)
}

func setUsageErrorHandler(cmds []*cli.Command) {
	for _, c := range cmds {
		if c.OnUsageError == nil {
			c.OnUsageError = onUsageError
		}
		setUsageErrorHandler(c.Subcommands)
	}
}

// usageError returns an error that run prints and turns into exit status 2.
func usageError(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), exitUsage)
}
