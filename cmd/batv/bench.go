package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/load"
	"github.com/batv/batv/keyring"
)

const (
	benchFlagMilter      = "milter"
	benchFlagWorkload    = "workload"
	benchFlagAnyReply    = "any-reply"
	benchFlagMessages    = "messages"
	benchFlagWarmup      = "warmup"
	benchFlagConcurrency = "concurrency"
	benchFlagPerConn     = "per-connection"
	benchFlagTimeout     = "timeout"
	benchFlagDomain      = "domain"
	benchFlagBodySize    = "body-size"
	benchFlagForgedReply = "forged-reply"
	benchFlagForgedStage = "forged-stage"
	benchFlagPID         = "pid"
	benchFlagResetPeak   = "reset-peak-rss"
	benchFlagJSON        = "json"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "drive a milter as Postfix does, check every reply, measure throughput, latency and CPU",
		UsageText: `batv bench --milter ADDRESS [--workload outbound|inbound-valid|inbound-forged] [--any-reply]
           [--keyring PATH | --secret-file FILE --key-id K] [--messages N] [--warmup N]
           [--concurrency C] [--per-connection M] [--pid PID [--reset-peak-rss]] [--json]

Connects to the milter at ADDRESS (unix:PATH or inet:HOST:PORT) as the MTA side of the
milter protocol, the way Postfix 3.7 talks to it: protocol 6 offered, Postfix's stock
macros at each stage, every stage the milter opted out of left out, headers and the body
sent to milters that ask for them, and an ABORT after each transaction. C connections
are open at once; each sends M messages (one recipient, six headers, a body of
--body-size bytes) and is closed, and another is opened, until N messages have been
sent after --warmup messages that are not counted.

The workload says what is sent and what the milter must answer:

  outbound        an authenticated client submits mail from a sender of --domain; the
                  milter must change the envelope sender to a tag that this command
                  verifies with the key for exactly that sender, and change no recipient.
  inbound-valid   a remote MX sends a bounce (null sender) to a tagged address signed
                  with the key; the milter must accept it and, at the end of the
                  message, delete the tagged recipient and add the untagged one.
  inbound-forged  the same bounce to a tag with a wrong MAC; the milter must refuse it
                  with --forged-reply (default 550 5.7.1) at --forged-stage (rcpt).

The key is the keyring's (--keyring, default ` + keyring.DefaultPath + `), or --secret-file
with --key-id; give the milter's own. With --any-reply the same messages are sent on the
same connection pattern but any well-formed reply counts, and no key is needed: use it to
drive a milter that does something else (a do-nothing reference, another BATV milter
without its key) for a fair comparison. Protocol violations always count as errors.

Only messages whose every reply was checked count towards the throughput and latency.
Latency runs from MAIL to the reply that ended the transaction. With --pid, the milter's
CPU time during the measured phase (utime+stime from /proc/PID/stat) is reported per
checked message, with its peak resident set (VmHWM from /proc/PID/status: the peak of the
milter's life, or of this run with --reset-peak-rss). This command uses CPU too, and on
the milter's machine it competes with it: compare milters on the same machine, the same
way. docs/performance.md has measured figures and the commands behind them.

` + exitStatusHelp("bench"),
		Flags: []cli.Flag{
			&cli.StringFlag{Name: benchFlagMilter, Aliases: []string{"m"}, Required: true,
				Usage: "the milter's socket `ADDRESS`: unix:PATH or inet:HOST:PORT"},
			&cli.StringFlag{Name: benchFlagWorkload, Aliases: []string{"w"}, Value: string(load.Outbound),
				Usage: "what to send: outbound, inbound-valid or inbound-forged"},
			&cli.BoolFlag{Name: benchFlagAnyReply, Usage: "accept any well-formed reply instead of checking the workload's"},
			&cli.IntFlag{Name: benchFlagMessages, Aliases: []string{"n"}, Value: 10000, Usage: "measure `N` messages"},
			&cli.IntFlag{Name: benchFlagWarmup, Value: 1000, Usage: "send `N` messages first, not counted"},
			&cli.IntFlag{Name: benchFlagConcurrency, Aliases: []string{"c"}, Value: 64, Usage: "keep `C` connections open at once"},
			&cli.IntFlag{Name: benchFlagPerConn, Value: 10, Usage: "send `M` messages per connection (0: one connection each for the whole run)"},
			&cli.DurationFlag{Name: benchFlagTimeout, Value: load.DefaultTimeout, Usage: "give up on a reply after `DURATION`"},
			&cli.PathFlag{Name: flagSecretFile, Usage: "use the bytes of `FILE` as the key, as batv sign does, instead of the keyring"},
			&cli.IntFlag{Name: flagKeyID, Usage: "the key id `K` (0-9) of --secret-file"},
			keyringFlag(),
			&cli.IntFlag{Name: flagLifetime, Value: batv.DefaultLifetime, Usage: "sign inbound tags for, and verify outbound tags within, `DAYS` days"},
			&cli.StringFlag{Name: benchFlagDomain, Value: load.DefaultDomain, Usage: "the protected mail `DOMAIN` of the senders and tagged recipients"},
			&cli.IntFlag{Name: benchFlagBodySize, Value: load.DefaultBodySize, Usage: "message body size in `BYTES`"},
			&cli.StringFlag{Name: benchFlagForgedReply, Value: load.DefaultForgedReply, Usage: "the start of the reply expected for a forged bounce: `TEXT`"},
			&cli.StringFlag{Name: benchFlagForgedStage, Value: load.StageRcpt, Usage: "the `STAGE` the forged bounce must be refused at: mail, rcpt, eom or any"},
			&cli.IntFlag{Name: benchFlagPID, DefaultText: "none", Usage: "the milter's process id `PID`, to report its CPU time and peak memory"},
			&cli.BoolFlag{Name: benchFlagResetPeak, Usage: "reset the milter's peak memory figure before the run (Linux: /proc/PID/clear_refs)"},
			&cli.BoolFlag{Name: benchFlagJSON, Usage: "print the report as one JSON object"},
		},
		Action: benchAction,
	}
}

func benchAction(c *cli.Context) error {
	if c.NArg() != 0 {
		return usageError("bench takes no arguments, got %q", c.Args().First())
	}
	network, address, err := parseMilterAddress(c.String(benchFlagMilter))
	if err != nil {
		return err
	}
	w, err := load.ParseWorkload(c.String(benchFlagWorkload))
	if err != nil {
		return usageError("--%s %q: want outbound, inbound-valid or inbound-forged", benchFlagWorkload, c.String(benchFlagWorkload))
	}
	opts := load.Options{
		Network: network, Address: address, Workload: w,
		AnyReply:     c.Bool(benchFlagAnyReply),
		Messages:     c.Int(benchFlagMessages),
		Warmup:       c.Int(benchFlagWarmup),
		Concurrency:  c.Int(benchFlagConcurrency),
		PerConn:      c.Int(benchFlagPerConn),
		Timeout:      c.Duration(benchFlagTimeout),
		Lifetime:     c.Int(flagLifetime),
		Domain:       c.String(benchFlagDomain),
		BodySize:     c.Int(benchFlagBodySize),
		ForgedReply:  c.String(benchFlagForgedReply),
		ForgedStage:  c.String(benchFlagForgedStage),
		PID:          c.Int(benchFlagPID),
		ResetPeakRSS: c.Bool(benchFlagResetPeak),
	}
	switch {
	case opts.Messages <= 0:
		return usageError("--%s %d: want at least 1", benchFlagMessages, opts.Messages)
	case opts.Warmup < 0 || opts.Concurrency < 1 || opts.PerConn < 0 || opts.BodySize < 0:
		return usageError("--%s, --%s and --%s must not be negative, --%s at least 1",
			benchFlagWarmup, benchFlagPerConn, benchFlagBodySize, benchFlagConcurrency)
	case opts.Lifetime < batv.MinLifetime || opts.Lifetime > batv.MaxLifetime:
		return usageError("--%s %d: want %d to %d", flagLifetime, opts.Lifetime, batv.MinLifetime, batv.MaxLifetime)
	}
	if opts.ResetPeakRSS && opts.PID == 0 {
		return usageError("--%s needs --%s", benchFlagResetPeak, benchFlagPID)
	}
	if opts.PID != 0 {
		if _, err := load.ProcessCPU(opts.PID); err != nil {
			return usageError("--%s %d: %v", benchFlagPID, opts.PID, err)
		}
	}
	if opts.Keys, err = benchKeys(c, opts.AnyReply); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := load.Run(ctx, opts)
	switch {
	case errors.Is(err, load.ErrOptions):
		return usageError("%v", err)
	case err != nil && rep == nil:
		return cli.Exit(fmt.Sprintf("cannot drive the milter at %s: %v", c.String(benchFlagMilter), err), exitUsage)
	case err != nil:
		return cli.Exit(fmt.Sprintf("interrupted: %v", err), exitFailure)
	}
	if c.Bool(benchFlagJSON) {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = rep.WriteText(c.App.Writer)
	}
	if err != nil {
		return cli.Exit(err.Error(), exitFailure)
	}
	if rep.Failed() {
		return cli.Exit(fmt.Sprintf("%d of %d messages failed (%d errors, %d mismatches)",
			rep.Messages-rep.OK, rep.Messages, rep.Errors, rep.Mismatches), exitFailure)
	}
	return nil
}

// parseMilterAddress reads a milter address as Postfix writes it.
func parseMilterAddress(s string) (network, address string, err error) {
	kind, rest, _ := strings.Cut(s, ":")
	switch {
	case kind == "unix" && rest != "":
		return "unix", rest, nil
	case (kind == "inet" || kind == "inet6") && rest != "":
		return "tcp", rest, nil
	}
	return "", "", usageError("--%s %q: want unix:PATH or inet:HOST:PORT", benchFlagMilter, s)
}

// benchKeys returns the key bench signs and verifies with: --secret-file
// with --key-id, else the keyring; none with --any-reply and neither
// given.
func benchKeys(c *cli.Context, anyReply bool) (batv.Keyring, error) {
	if path := c.Path(flagSecretFile); path != "" {
		if c.IsSet(flagKeyring) {
			return nil, usageError("--%s and --%s exclude each other", flagSecretFile, flagKeyring)
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
		return batv.SingleKey{ID: id, Secret: secret}, nil
	}
	if anyReply && !c.IsSet(flagKeyring) {
		return nil, nil
	}
	kr, err := keyring.File{Path: c.String(flagKeyring)}.Load()
	if err != nil {
		return nil, usageError("%v (give the milter's keys with --keyring or --secret-file, or use --any-reply)", err)
	}
	return kr, nil
}
