package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/batv/batv/keyring"
)

// The keyring location, shared by every command that reads the keyring.
const (
	flagKeyring = "keyring"
	envKeyring  = "BATV_KEYRING"
)

// keyringFlag returns a new --keyring flag (a flag holds parse state, so
// each command needs its own), read from BATV_KEYRING when not given.
func keyringFlag() *cli.StringFlag {
	return &cli.StringFlag{
		Name:      flagKeyring,
		Usage:     "read the keys from the keyring file `PATH` (see batv keys)",
		EnvVars:   []string{envKeyring},
		Value:     keyring.DefaultPath,
		TakesFile: true,
	}
}

// daemonKeyringFlag is keyringFlag for the commands that read the daemon's
// configuration, where the flag or BATV_KEYRING, when set, wins over the
// file's keyring setting, and the trial keyring is the default without a
// configuration file.
func daemonKeyringFlag() *cli.StringFlag {
	f := keyringFlag()
	f.Usage = "use the keyring file `PATH`, over the configuration's keyring setting " +
		"(default: the configuration's; without --config, the trial keyring " + trialKeyringName + ")"
	f.Value = ""
	return f
}

// trialKeyringName is how help texts name the trial keyring.
const trialKeyringName = "$XDG_STATE_HOME/batv/keyring.json, by default ~/.local/state/batv/keyring.json"

// trialKeyringPath is the keyring of a trial run: the one "batv milter"
// creates without a configuration file, and the one sign, verify, explain
// and check-config read without one. It is in the user's state directory,
// for root too, so that a trial never leaves a keyring where the daemon of
// a site keeps its own (keyring.DefaultPath), whose creation time starts
// the grace period for untagged bounces.
func trialKeyringPath() (string, error) {
	dir := os.Getenv("XDG_STATE_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", errors.New("no configuration file (--config) and no home directory for a trial keyring: give --config or --keyring")
		}
		dir = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(dir, "batv", "keyring.json"), nil
}

// keyringSource says where the keyring of a command came from, in words
// for an error or a failed check: "keyring PATH (the trial keyring: ...)".
func keyringSource(c *cli.Context, path string) string {
	var from string
	switch {
	case c.IsSet(flagKeyring) && os.Getenv(envKeyring) == path:
		from = "from $" + envKeyring
	case c.IsSet(flagKeyring):
		from = "from --" + flagKeyring
	case c.Path(flagConfig) != "":
		from = "the keyring of " + c.Path(flagConfig)
	default:
		from = "the trial keyring, as batv milter makes it without --config; the daemon's keyring is named in its configuration file: give --config FILE"
	}
	return fmt.Sprintf("keyring %s (%s)", path, from)
}
