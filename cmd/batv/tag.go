package main

import (
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/keyring"
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
		&cli.PathFlag{
			Name: flagSecretFile,
			Usage: "use the bytes of `FILE` exactly as they are as the key, as batv-tools does " +
				"(a trailing newline is part of the key), instead of the keyring",
		},
		&cli.IntFlag{Name: flagKeyID, Value: 0, Usage: "the key id `K` (0-9) of --secret-file"},
		keyringFlag(),
		&cli.StringFlag{
			Name:  flagAt,
			Usage: "act as on `DATE` (UTC, YYYY-MM-DD, or an RFC 3339 time) instead of now",
		},
	}
}

func signCommand() *cli.Command {
	return &cli.Command{
		Name:  "sign",
		Usage: "tag an envelope sender address",
		UsageText: "batv sign [--keyring PATH | --secret-file FILE --key-id K] [--at DATE] [--lifetime N]\n" +
			"          [--sub-address C] ADDRESS\n\n" +
			"Prints ADDRESS signed as prvs=KDDDSSSSSS=ADDRESS (or in the sub-address form with\n" +
			"--sub-address). The key is the keyring's signing key, or --secret-file with --key-id.\n" +
			"An address that must not be signed (null sender, already tagged, SRS, quoted, local\n" +
			"part too long once tagged) is printed unchanged, the reason goes to stderr and the\n" +
			"exit status is 3. Exit status 2: usage error or unreadable key.",
		Flags: append(keySourceFlags(),
			&cli.IntFlag{Name: flagLifetime, Value: batv.DefaultLifetime, Usage: "days the tag stays valid (1-30)"},
			&cli.StringFlag{Name: flagSubAddress, Usage: "sign in the sub-address form ADDR`C`prvs=... with delimiter C"},
		),
		Action: func(c *cli.Context) error {
			addr, err := oneAddress(c)
			if err != nil {
				return err
			}
			keys, now, err := keySource(c)
			if err != nil {
				return err
			}
			s := batv.Signer{Keys: keys, Lifetime: c.Int(flagLifetime), Now: now}
			if d := c.String(flagSubAddress); d != "" {
				if len(d) != 1 {
					return usageError("--%s takes one character, not %q", flagSubAddress, d)
				}
				s.SubAddress = d[0]
			}
			r, err := s.Sign(addr)
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
		UsageText: "batv verify [--keyring PATH | --secret-file FILE --key-id K] [--at DATE] [--lifetime N]\n" +
			"            [--strict] [--delimiter C] ADDRESS\n\n" +
			"Prints the outcome word (valid, missing, malformed, unknown-key, expired,\n" +
			"bad-signature) and, when valid, the untagged address. Exit status: 0 valid,\n" +
			"3 missing, 4 malformed, 5 unknown-key, 6 expired, 7 bad-signature, 2 usage error\n" +
			"or unreadable key.",
		Flags: append(keySourceFlags(),
			&cli.IntFlag{Name: flagLifetime, Value: batv.DefaultLifetime,
				Usage: "the longest lifetime in days this site signs with: the expiry window"},
			&cli.BoolFlag{Name: flagStrict, Usage: "do not accept a MAC over the lowercased address"},
			&cli.StringFlag{Name: flagDelimiter, Value: "+", Usage: "recognise the sub-address form with delimiter `C`"},
		),
		Action: func(c *cli.Context) error {
			addr, err := oneAddress(c)
			if err != nil {
				return err
			}
			keys, now, err := keySource(c)
			if err != nil {
				return err
			}
			d := c.String(flagDelimiter)
			if len(d) != 1 {
				return usageError("--%s takes one character, not %q", flagDelimiter, d)
			}
			v := batv.Verifier{Keys: keys, MaxLifetime: c.Int(flagLifetime), Strict: c.Bool(flagStrict),
				Delimiter: d[0], Now: now}
			r, err := v.Verify(addr)
			if err != nil {
				return usageError("%v", err)
			}
			if r.Status == batv.Valid {
				fmt.Fprintln(c.App.Writer, r.Status, r.Untagged())
				return nil
			}
			fmt.Fprintln(c.App.Writer, r.Status)
			return cli.Exit("", verifyExitCodes[r.Status])
		},
	}
}

func oneAddress(c *cli.Context) (string, error) {
	if c.NArg() != 1 {
		return "", usageError("%s takes one ADDRESS argument, got %d", c.Command.Name, c.NArg())
	}
	return c.Args().First(), nil
}

// keySource returns the keys and clock of sign and verify: --secret-file
// with --key-id, or else the keyring.
func keySource(c *cli.Context) (batv.Keyring, func() time.Time, error) {
	now, err := atTime(c)
	if err != nil {
		return nil, nil, err
	}
	if path := c.Path(flagSecretFile); path != "" {
		if c.IsSet(flagKeyring) {
			return nil, nil, usageError("--%s and --%s exclude each other", flagSecretFile, flagKeyring)
		}
		id := c.Int(flagKeyID)
		if id < batv.MinKeyID || id > batv.MaxKeyID {
			return nil, nil, usageError("--%s %d: a key id is a digit 0-9", flagKeyID, id)
		}
		secret, err := os.ReadFile(path)
		if err != nil {
			return nil, nil, usageError("%v", err)
		}
		if len(secret) == 0 {
			return nil, nil, usageError("%s: empty key file", path)
		}
		return batv.SingleKey{ID: id, Secret: secret}, now, nil
	}
	kr, err := keyring.File{Path: c.String(flagKeyring)}.Load()
	if err != nil {
		return nil, nil, usageError("%v", err)
	}
	return kr, now, nil
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
