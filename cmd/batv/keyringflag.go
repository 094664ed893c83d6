package main

import (
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
// file's keyring setting.
func daemonKeyringFlag() *cli.StringFlag {
	f := keyringFlag()
	f.Usage = "use the keyring file `PATH`, over the configuration's keyring setting (default: the configuration's)"
	f.Value = ""
	return f
}
