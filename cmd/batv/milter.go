package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
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
			"Serves the outbound and inbound milters, the socketmap lookup service and, with a\n" +
			"[policy_service] table, the Postfix policy service.\n" +
			"Without --config it is a trial run on the embedded default: a milter that verifies\n" +
			"(inbound only) on inet:127.0.0.1:8891, socketmap on inet:127.0.0.1:8892, the --domain\n" +
			"list, and the trial keyring " + trialKeyringName + "\n" +
			"(created with one signing key if missing), never the daemon's " + keyring.DefaultPath + ".\n" +
			"It does not sign through the milter: every local user can reach a TCP socket, and\n" +
			"the milter signs for whoever claims SMTP AUTH; sign by hand with batv sign, or give\n" +
			"a configuration file with a unix socket for the outbound role (docs/postfix.md).\n" +
			"SIGHUP reloads the configuration and keyring (the keyring is also reloaded when\n" +
			"its file changes); SIGTERM or SIGINT finishes messages in flight and exits, a\n" +
			"second one exits at once.\n\n" +
			exitStatusHelp("milter"),
		Flags: []cli.Flag{
			&cli.PathFlag{Name: flagConfig, Aliases: []string{"c"}, EnvVars: []string{envConfig},
				Usage: "read the configuration from `FILE` (see batv.toml(5)); default: the embedded configuration"},
			&cli.StringSliceFlag{Name: flagDomain, Aliases: []string{"d"},
				Usage: "sign and verify mail `DOMAIN` (repeat for several); added to the file's lists"},
			daemonKeyringFlag(),
		},
		Action: func(c *cli.Context) error {
			opts, err := daemonOptions(c)
			if err != nil {
				return err
			}
			if opts.ConfigPath == "" {
				fmt.Fprintf(c.App.ErrWriter, "batv: a trial run on the embedded configuration (no --config): keyring %s "+
					"(created if missing; batv sign, verify and explain without --config use it too), "+
					"milter on %s verifying only (signing through a TCP socket would sign for every local user: use batv sign, "+
					"or --config with a unix socket), lookup tables on %s. A site's daemon runs with --config, as the Debian package's unit does.\n",
					opts.Keyring, daemon.DefaultMilterAddress, daemon.DefaultSocketmapAddress)
			}
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
			err = daemon.Run(opts)
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

// daemonOptions reads the flags milter, check-config and explain share.
// Without a configuration file the keyring is the trial keyring, unless
// --keyring names one.
func daemonOptions(c *cli.Context) (daemon.Options, error) {
	opts := daemon.Options{
		ConfigPath: c.Path(flagConfig),
		Domains:    c.StringSlice(flagDomain),
		Stderr:     c.App.ErrWriter,
		Version:    c.App.Version,
	}
	switch {
	case c.IsSet(flagKeyring):
		opts.Keyring = c.String(flagKeyring)
	case opts.ConfigPath == "":
		path, err := trialKeyringPath()
		if err != nil {
			return opts, usageError("%v", err)
		}
		opts.Keyring = path
	}
	return opts, nil
}
