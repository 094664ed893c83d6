package main

import (
	"errors"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/batv/batv/internal/daemon"
	"github.com/batv/batv/keyring"
)

const (
	flagConfig = "config"
	envConfig  = "BATV_CONFIG"
	flagDomain = "domain"
)

func milterCommand() *cli.Command {
	return &cli.Command{
		Name:  "milter",
		Usage: "run the milter daemon (signing, verification and the Postfix lookup service)",
		UsageText: "batv milter [--config FILE] [--domain DOMAIN]... [--keyring PATH]\n\n" +
			"Serves the outbound and inbound milters and the socketmap lookup service.\n" +
			"Without --config it runs on the embedded default: milter on inet:127.0.0.1:8891,\n" +
			"socketmap on inet:127.0.0.1:8892, the keyring at " + keyring.DefaultPath + "\n" +
			"(created with one signing key if missing), signing and verifying the --domain list.\n" +
			"SIGHUP reloads the configuration and keyring (the keyring is also reloaded when\n" +
			"its file changes); SIGTERM or SIGINT finishes messages in flight and exits, a\n" +
			"second one exits at once. Exit status: 0 after a clean stop, 2 for an invalid\n" +
			"configuration or keyring, 1 for other failures.",
		Flags: []cli.Flag{
			&cli.PathFlag{Name: flagConfig, Aliases: []string{"c"}, EnvVars: []string{envConfig},
				Usage: "read the configuration from `FILE` (see batv.toml(5)); default: the embedded configuration"},
			&cli.StringSliceFlag{Name: flagDomain, Aliases: []string{"d"},
				Usage: "sign and verify mail `DOMAIN` (repeat for several); added to the file's lists"},
			daemonKeyringFlag(),
		},
		Action: func(c *cli.Context) error {
			opts := daemonOptions(c)
			reload := make(chan struct{}, 1)
			stop := make(chan struct{}, 2)
			sigs := make(chan os.Signal, 4)
			signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
			defer signal.Stop(sigs)
			go func() {
				for s := range sigs {
					if s == syscall.SIGHUP {
						select {
						case reload <- struct{}{}:
						default:
						}
						continue
					}
					select {
					case stop <- struct{}{}:
					default:
					}
				}
			}()
			opts.Reload, opts.Stop = reload, stop
			err := daemon.Run(opts)
			switch {
			case err == nil:
				return nil
			case errors.Is(err, daemon.ErrConfig) || errors.Is(err, daemon.ErrKeyring):
				return cli.Exit(err.Error(), exitUsage)
			}
			return cli.Exit(err.Error(), exitFailure)
		},
	}
}

// daemonOptions reads the flags milter and check-config share.
func daemonOptions(c *cli.Context) daemon.Options {
	opts := daemon.Options{
		ConfigPath: c.Path(flagConfig),
		Domains:    c.StringSlice(flagDomain),
		Stderr:     c.App.ErrWriter,
		Version:    c.App.Version,
	}
	switch {
	case c.IsSet(flagKeyring):
		opts.Keyring = c.String(flagKeyring)
	case opts.ConfigPath == "" && os.Geteuid() != 0:
		opts.Keyring = userKeyringPath()
	}
	return opts
}

// userKeyringPath is where the embedded default keeps the keyring when
// batv does not run as root: $XDG_STATE_HOME/batv/keyring.json, by default
// ~/.local/state/batv/keyring.json.
func userKeyringPath() string {
	dir := os.Getenv("XDG_STATE_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return keyring.DefaultPath
		}
		dir = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(dir, "batv", "keyring.json")
}
