package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/daemon"
	"github.com/batv/batv/keyring"
	"github.com/batv/batv/policy"
)

// Flag names shared by sign and verify.
const (
	flagSecretFile = "secret-file"
	flagKeyID      = "key-id"
	flagAt         = "at"
	flagLifetime   = "lifetime"
	flagSubAddress = "sub-address"
	flagStrict     = "strict"
	flagDelimiter  = "delimiter"
)

// exitNotSigned is sign's status when the address was left unsigned.
const exitNotSigned = 3

// verifyExitCodes maps each verify outcome to its exit status.
var verifyExitCodes = map[batv.Status]int{
	batv.Valid:        exitOK,
	batv.Missing:      3,
	batv.Malformed:    4,
	batv.UnknownKey:   5,
	batv.Expired:      6,
	batv.BadSignature: 7,
}

func keySourceFlags() []cli.Flag {
	return []cli.Flag{
		configFlag("use the daemon's configuration `FILE`: its keyring and its settings"),
		&cli.PathFlag{
			Name: flagSecretFile,
			Usage: "use the bytes of `FILE` exactly as they are as the key, as batv-tools does " +
				"(a trailing newline is part of the key), instead of the keyring",
		},
		&cli.IntFlag{Name: flagKeyID, Value: 0, Usage: "the key id `K` (0-9) of --secret-file"},
		daemonKeyringFlag(),
		atFlag("act as on `DATE` instead of now"),
	}
}

// configFlag returns a new --config flag with usage.
func configFlag(usage string) *cli.PathFlag {
	return &cli.PathFlag{Name: flagConfig, Aliases: []string{"c"}, EnvVars: []string{envConfig}, Usage: usage}
}

// atFlag returns a new --at flag; usage names the `DATE`.
func atFlag(usage string) *cli.StringFlag {
	return &cli.StringFlag{Name: flagAt, Usage: usage + ": YYYY-MM-DD, which means 12:00 UTC that day, or an RFC 3339 time"}
}

func signCommand() *cli.Command {
	return &cli.Command{
		Name:  "sign",
		Usage: "tag an envelope sender address",
		UsageText: "batv sign [--config FILE] [--keyring PATH | --secret-file FILE --key-id K] [--at DATE]\n" +
			"          [--lifetime N] [--sub-address C] ADDRESS\n\n" +
			"Prints ADDRESS signed as prvs=KDDDSSSSSS=ADDRESS (or in the sub-address form with\n" +
			"--sub-address). The key is the signing key of the keyring: with --config, the\n" +
			"daemon's keyring, lifetime and sub-address form; without, the trial keyring of\n" +
			"batv milter (" + trialKeyringName + ");\n" +
			"or --secret-file with --key-id. Flags given win over the configuration.\n" +
			"An address that must not be signed (null sender, already tagged, SRS, quoted, local\n" +
			"part too long once tagged) is printed unchanged and the reason goes to stderr.\n\n" +
			exitStatusHelp("sign"),
		Flags: append(keySourceFlags(),
			&cli.IntFlag{Name: flagLifetime, Value: batv.DefaultLifetime, DefaultText: "sign.lifetime of --config, else 7",
				Usage: "days the tag stays valid (1-30)"},
			&cli.StringFlag{Name: flagSubAddress, Usage: "sign in the sub-address form ADDR`C`prvs=... with delimiter C"},
		),
		Action: func(c *cli.Context) error {
			addr, err := oneAddress(c)
			if err != nil {
				return err
			}
			ks, err := keySource(c)
			if err != nil {
				return err
			}
			s := batv.Signer{Keys: ks.keys, Lifetime: batv.DefaultLifetime}
			if ks.policy != nil {
				s = ks.policy.Signer()
			}
			s.Now = ks.now
			if c.IsSet(flagLifetime) {
				s.Lifetime = c.Int(flagLifetime)
			}
			if d := c.String(flagSubAddress); d != "" {
				if len(d) != 1 {
					return usageError("--%s takes one character, not %q", flagSubAddress, d)
				}
				s.SubAddress = d[0]
			}
			r, err := s.Sign(addr)
			if errors.Is(err, batv.ErrNoSigningKey) {
				return usageError("%v; %s", err, ks.origin)
			}
			if err != nil {
				return usageError("%v", err)
			}
			fmt.Fprintln(c.App.Writer, r.Address)
			if r.Skip != batv.NotSkipped {
				return cli.Exit("not signed: "+r.Skip.String(), exitNotSigned)
			}
			return nil
		},
	}
}

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:  "verify",
		Usage: "check a tagged address",
		UsageText: "batv verify [--config FILE] [--keyring PATH | --secret-file FILE --key-id K] [--at DATE]\n" +
			"            [--lifetime N] [--strict] [--delimiter C] ADDRESS\n\n" +
			"Prints the outcome word (valid, missing, malformed, unknown-key, expired,\n" +
			"bad-signature) and, when valid, the untagged address. The keys are the keyring's:\n" +
			"with --config, the daemon's keyring, checked as the daemon checks a bounce; without,\n" +
			"the trial keyring of batv milter; or --secret-file with --key-id. When the outcome\n" +
			"is unknown-key or bad-signature, standard error names the keyring used.\n\n" +
			exitStatusHelp("verify"),
		Flags: append(keySourceFlags(),
			&cli.IntFlag{Name: flagLifetime, Value: batv.DefaultLifetime, DefaultText: "as the daemon of --config, else 7",
				Usage: "the longest lifetime in days this site signs with: the expiry window"},
			&cli.BoolFlag{Name: flagStrict, DefaultText: "verify.strict of --config, else false",
				Usage: "do not accept a MAC over the lowercased address"},
			&cli.StringFlag{Name: flagDelimiter, Value: "+", DefaultText: "verify.delimiter of --config, else +",
				Usage: "recognise the sub-address form with delimiter `C`"},
		),
		Action: func(c *cli.Context) error {
			addr, err := oneAddress(c)
			if err != nil {
				return err
			}
			ks, err := keySource(c)
			if err != nil {
				return err
			}
			v := batv.Verifier{Keys: ks.keys, MaxLifetime: batv.DefaultLifetime, Delimiter: '+'}
			if ks.policy != nil {
				v = ks.policy.Verifier()
			}
			v.Now = ks.now
			if c.IsSet(flagLifetime) {
				v.MaxLifetime = c.Int(flagLifetime)
			}
			if c.IsSet(flagStrict) {
				v.Strict = c.Bool(flagStrict)
			}
			if c.IsSet(flagDelimiter) {
				d := c.String(flagDelimiter)
				if len(d) != 1 {
					return usageError("--%s takes one character, not %q", flagDelimiter, d)
				}
				v.Delimiter = d[0]
			}
			r, err := v.Verify(addr)
			if err != nil {
				return usageError("%v", err)
			}
			if r.Status == batv.Valid {
				fmt.Fprintln(c.App.Writer, r.Status, r.Untagged())
				return nil
			}
			fmt.Fprintln(c.App.Writer, r.Status)
			msg := ""
			if r.Status == batv.UnknownKey || r.Status == batv.BadSignature {
				msg = fmt.Sprintf("%s: checked with %s", r.Status, ks.origin)
			}
			return cli.Exit(msg, verifyExitCodes[r.Status])
		},
	}
}

func oneAddress(c *cli.Context) (string, error) {
	if c.NArg() != 1 {
		return "", usageError("%s takes one ADDRESS argument, got %d", c.Command.Name, c.NArg())
	}
	return c.Args().First(), nil
}

// tagKeys is what sign and verify work with.
type tagKeys struct {
	keys   batv.Keyring
	origin string // the keyring or key file, in words
	now    func() time.Time
	// policy is the daemon's, with --config; nil otherwise.
	policy *policy.Policy
}

// keySource returns the keys and clock of sign and verify: --secret-file
// with --key-id; or else the keyring, the daemon's with its policy when
// --config names its configuration.
func keySource(c *cli.Context) (*tagKeys, error) {
	now, err := atTime(c)
	if err != nil {
		return nil, err
	}
	if path := c.Path(flagSecretFile); path != "" {
		for _, other := range []string{flagKeyring, flagConfig} {
			if c.IsSet(other) {
				return nil, usageError("--%s and --%s exclude each other", flagSecretFile, other)
			}
		}
		id := c.Int(flagKeyID)
		if id < batv.MinKeyID || id > batv.MaxKeyID {
			return nil, usageError("--%s %d: a key id is a digit 0-9", flagKeyID, id)
		}
		secret, err := os.ReadFile(path)
		if err != nil {
			return nil, usageError("%v", err)
		}
		if len(secret) == 0 {
			return nil, usageError("%s: empty key file", path)
		}
		return &tagKeys{keys: batv.SingleKey{ID: id, Secret: secret}, now: now,
			origin: fmt.Sprintf("key id %d of --%s %s", id, flagSecretFile, path)}, nil
	}
	opts, err := daemonOptions(c)
	if err != nil {
		return nil, err
	}
	if opts.ConfigPath != "" {
		ch, err := checkDaemon(opts)
		if err != nil {
			return nil, err
		}
		return &tagKeys{keys: ch.Keyring, origin: keyringSource(c, ch.Config.Keyring), now: now, policy: ch.Policy}, nil
	}
	kr, err := keyring.File{Path: opts.Keyring}.Load()
	if err != nil {
		return nil, usageError("%v; %s", err, keyringSource(c, opts.Keyring))
	}
	return &tagKeys{keys: kr, origin: keyringSource(c, opts.Keyring), now: now}, nil
}

// checkDaemon is daemon.Check for the commands that use the daemon's
// configuration and keyring without running it: a keyring the daemon
// would create at start is an error for them.
func checkDaemon(opts daemon.Options) (*daemon.Checked, error) {
	ch, err := daemon.Check(opts)
	if err != nil {
		return nil, usageError("%v", err)
	}
	if ch.KeyringMissing {
		return nil, usageError("keyring %s does not exist yet: batv milter creates it at start, or run batv keys init", ch.Config.Keyring)
	}
	return ch, nil
}

// atTime returns the clock set by --at, or time.Now.
func atTime(c *cli.Context) (func() time.Time, error) {
	s := c.String(flagAt)
	if s == "" {
		return time.Now, nil
	}
	t, err := time.Parse(time.DateOnly, s)
	if err == nil {
		t = t.Add(12 * time.Hour) // the middle of the UTC day
	} else if t, err = time.Parse(time.RFC3339, s); err != nil {
		return nil, usageError("--%s %q: want YYYY-MM-DD or an RFC 3339 time", flagAt, s)
	}
	return func() time.Time { return t }, nil
}
