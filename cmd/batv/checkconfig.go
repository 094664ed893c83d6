package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/batv/batv/internal/daemon"
)

func checkConfigCommand() *cli.Command {
	return &cli.Command{
		Name:  "check-config",
		Usage: "check the configuration file and the keyring the daemon would use",
		UsageText: "batv check-config [--config FILE] [--domain DOMAIN]... [--keyring PATH]\n\n" +
			"Reads the configuration (the embedded default without --config), reports every\n" +
			"problem at once with its file and line, then loads the keyring and builds the\n" +
			"policy exactly as \"batv milter\" would at start or on reload.\n\n" +
			exitStatusHelp("check-config"),
		Flags: []cli.Flag{
			configFlag("the configuration `FILE`; default: the embedded configuration"),
			&cli.StringSliceFlag{Name: flagDomain, Aliases: []string{"d"}, Usage: "a mail `DOMAIN`, as for batv milter"},
			daemonKeyringFlag(),
		},
		Action: func(c *cli.Context) error {
			opts, err := daemonOptions(c)
			if err != nil {
				return err
			}
			checked, err := daemon.Check(opts)
			if err != nil {
				return cli.Exit(err.Error(), exitUsage)
			}
			name := nameOr(opts.ConfigPath, "(embedded default)")
			for _, w := range checked.Warnings {
				fmt.Fprintf(c.App.ErrWriter, "batv: warning: %s\n", w)
			}
			if checked.KeyringMissing {
				fmt.Fprintf(c.App.Writer, "configuration %s is valid; keyring %s does not exist yet and batv milter will create it at start\n",
					name, checked.Config.Keyring)
				return nil
			}
			fmt.Fprintf(c.App.Writer, "configuration %s and keyring %s are valid\n", name, checked.Config.Keyring)
			return nil
		},
	}
}

func nameOr(s, dflt string) string {
	if s == "" {
		return dflt
	}
	return s
}
