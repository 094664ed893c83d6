package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/batv/batv/keyring"
)

// keysCmd builds the keys commands. rand is where new keys come from:
// crypto/rand, or a fixed reader in tests. (The library never reads the
// clock or the random source itself; these commands pass them in.)
type keysCmd struct {
	rand io.Reader
}

// Flags of the keys commands.
const (
	keysFlagAt          = "at"
	keysFlagPerDomain   = "per-domain"
	keysFlagMaxLifetime = "max-lifetime"
	keysFlagGrace       = "grace"
	keysFlagID          = "id"
	keysFlagJSON        = "json"
	keysFlagDelay       = "delay"
	keysFlagNow         = "now"
	keysFlagFormat      = "format"
	keysFlagUntil       = "until"
	keysFlagSign        = "sign"
	keysFlagDomain      = "domain"
	keysFlagOutput      = "output"
)

// keysExitStatuses is the exit-status paragraph of the keys commands.
var keysExitStatuses = exitStatusHelp("keys")

// keysCommand returns the "batv keys" command and its subcommands.
func keysCommand() *cli.Command { return keysCmd{rand: rand.Reader}.command() }

func (k keysCmd) command() *cli.Command {
	return &cli.Command{
		Name:  "keys",
		Usage: "manage the keyring: create, list, rotate, prune, import, export and check keys",
		UsageText: `batv keys [--keyring PATH] COMMAND [command options]

The keyring is one JSON file holding up to ten keys, one per key id 0-9 (the
digit after "prvs=" in a tag). At any instant one key signs; a key scheduled to
sign later (pending) already verifies; a key that stopped signing keeps
verifying for the maximum tag lifetime + 1 day + the grace period, then is
retired and can be pruned. A key signs for at most about 980 days, so that it
retires before its first tags could be valid again (the expiry day has three
digits): rotate at least that often (yearly is a good habit). The file must be mode 0600; the commands take a lock
(the file name + ".lock") and replace the file atomically, so they can run
while the daemon reads it. Key bytes are never printed, except by export.

The keyring is --keyring PATH (on this command or a subcommand), else
$BATV_KEYRING, else /var/lib/batv/keyring.json. See docs/keyring.md for the
file format and the rotation procedures.

` + keysExitStatuses,
		Flags: []cli.Flag{
			keyringFlag(),
			&cli.StringFlag{
				Name:   keysFlagAt,
				Usage:  "for testing: act as if the time were `TIME` (RFC 3339) instead of reading the clock",
				Hidden: true,
			},
		},
		Subcommands: []*cli.Command{
			k.initCommand(),
			keysListCommand(),
			k.rotateCommand(),
			keysPruneCommand(),
			keysImportCommand(),
			keysExportCommand(),
			keysCheckCommand(),
		},
	}
}

// keysKeyringFlag is the --keyring flag of a subcommand. It reads no
// environment variable, so that an explicit --keyring on "keys" is not
// overridden by $BATV_KEYRING; keysPath applies the precedence.
func keysKeyringFlag() *cli.StringFlag {
	f := keyringFlag()
	f.EnvVars = nil
	f.Value = ""
	f.Usage = "the keyring file `PATH` (default: --keyring of batv keys, else $" + envKeyring + ", else " + keyring.DefaultPath + ")"
	return f
}

func (k keysCmd) initCommand() *cli.Command {
	return &cli.Command{
		Name:  "init",
		Usage: "create a new keyring with one signing key",
		UsageText: `batv keys init [--per-domain] [--max-lifetime DAYS] [--grace DURATION] [--id ID]

Creates the keyring file, mode 0600, with one key of 32 random bytes that signs
at once. Refuses to overwrite an existing file. Run it as the user the daemon
runs as, or give the file to that user afterwards (the other commands keep the
owner of the file they replace). The maximum lifetime, the grace period and
per-domain derivation are recorded in the file and cannot be changed by the
commands later.

` + keysExitStatuses,
		Flags: []cli.Flag{
			keysKeyringFlag(),
			&cli.BoolFlag{
				Name: keysFlagPerDomain,
				Usage: "derive a distinct key per sender domain from each stored key (HKDF-SHA256), so that " +
					"export --domain can give one domain's key to a partner without the others",
			},
			&cli.IntFlag{
				Name:  keysFlagMaxLifetime,
				Usage: "the longest tag lifetime, in `DAYS` (1-30), that any signer of the site uses",
				Value: keyring.DefaultMaxLifetimeDays,
			},
			&cli.DurationFlag{
				Name:  keysFlagGrace,
				Usage: "how long a key keeps verifying after its last tag expired: a `DURATION` from 0 to 720h, in whole seconds",
				Value: keyring.DefaultGrace,
			},
			&cli.IntFlag{
				Name:  keysFlagID,
				Usage: "the `ID` (0-9) of the first key; pick one an old system whose keys you will import did not use",
				Value: 0,
			},
		},
		Action: k.init,
	}
}

func keysListCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "show the keys and their states, never their secrets",
		UsageText: `batv keys list [--json]

Shows the keyring's settings, the signing key, when the signing key next
changes, and for each key: its id, state (pending, signing, verifying or
retired), length in bytes, not_before, when it stops or stopped signing, and
when it retires. A key signs for at most about 980 days (less with a longer
lifetime or grace period): a date marked * is that limit, which a rotation
must come before; every key then retires within 990 days of starting to sign,
before the three-digit expiry day of its first tags comes round again. A
length marked ! is shorter than 16 bytes: such a key only verifies. Warnings go
to standard error.

` + keysExitStatuses,
		Flags: []cli.Flag{
			keysKeyringFlag(),
			&cli.BoolFlag{Name: keysFlagJSON, Usage: "print one JSON object instead of a table"},
		},
		Action: keysList,
	}
}

func (k keysCmd) rotateCommand() *cli.Command {
	return &cli.Command{
		Name:  "rotate",
		Usage: "add a new key that signs after a propagation delay (or at once with --now)",
		UsageText: `batv keys rotate [--delay DURATION | --now]

Adds a key of 32 random bytes, with the first key id after the newest key's
whose previous key is retired. The new key verifies at once and signs from
now + --delay; the current signing key stops signing at that instant and keeps
verifying until it retires. On a fleet, copy the file to every host within the
delay: each host then verifies the new key before any host signs with it. On a
single host, --now makes the new key sign at once.

A staged rotation is refused while a key is still pending. --now replaces a
pending key too; that key never signs, but keeps verifying until it retires.

` + keysExitStatuses,
		Flags: []cli.Flag{
			keysKeyringFlag(),
			&cli.DurationFlag{
				Name:  keysFlagDelay,
				Usage: "schedule the new key to sign after `DURATION`; it must exceed the time to copy the file to every host",
				Value: keyring.DefaultPropagationDelay,
			},
			&cli.BoolFlag{Name: keysFlagNow, Usage: "sign with the new key at once (a single host); same as --delay 0"},
		},
		Action: k.rotate,
	}
}

func keysPruneCommand() *cli.Command {
	return &cli.Command{
		Name:  "prune",
		Usage: "remove retired keys",
		UsageText: `batv keys prune

Removes the keys that are retired: no tag made with them can still be valid.
The file is rewritten only if a key was removed.

` + keysExitStatuses,
		Flags:  []cli.Flag{keysKeyringFlag()},
		Action: keysPrune,
	}
}

func keysImportCommand() *cli.Command {
	return &cli.Command{
		Name:  "import",
		Usage: "add a key from batv-tools or Exim so its tags keep verifying",
		UsageText: `batv keys import --id ID [--format raw|string|hex|base64] [--until TIME | --sign] FILE

Adds the secret in FILE ("-" for standard input) as key --id, which must be the
key id the old system wrote in its tags (the digit after "prvs="; always 0 for
batv-tools). The id must be free or its key retired. FILE must be a regular
file; a key that comes through a pipe is read from standard input.

Formats: raw, the default, is the whole file byte for byte, final newline
included: that is how batv-tools reads its key file. string is an Exim prvs
secret: the file's bytes without one final newline (write it with printf '%s',
or with a newline: either works). hex and base64 decode the file's text,
surrounding white space ignored. The secret is never taken from the command
line, where other users could see it.

A batv-tools key map (the file its key-map option names, lines such as
"@example.com /etc/batv-key") given as FILE is recognised: the key file it names
is imported, as --id 0. A map whose senders use different key files is refused,
since a batv keyring holds one key per id for every domain.

By default the key only verifies: it counts as having stopped signing now, or
at --until, when the old system stops or stopped signing with it, and verifies
until that instant + the maximum lifetime + 1 day + grace. --sign makes it the
signing key at once instead. Keys shorter than 16 bytes are accepted with a
warning, to verify only: they never sign, and --sign refuses them.

` + keysExitStatuses,
		Flags: []cli.Flag{
			keysKeyringFlag(),
			&cli.IntFlag{Name: keysFlagID, Usage: "the key `ID` (0-9) of the imported key", Required: true},
			&cli.StringFlag{
				Name:  keysFlagFormat,
				Usage: "the `FORMAT` of FILE: raw (a batv-tools key file), string (an Exim secret), hex or base64",
				Value: "raw",
			},
			&cli.StringFlag{
				Name:  keysFlagUntil,
				Usage: "the `TIME` (RFC 3339) at which the old system stops or stopped signing with the key (default: now)",
			},
			&cli.BoolFlag{Name: keysFlagSign, Usage: "make the imported key (16 bytes or more) the signing key now instead of verify-only"},
		},
		Action: keysImport,
	}
}

func keysExportCommand() *cli.Command {
	return &cli.Command{
		Name:  "export",
		Usage: "write one key's secret, or its key for one domain, for another system",
		UsageText: `batv keys export --id ID [--domain DOMAIN] [--format raw|hex|base64] [--output FILE]

Writes the secret of key --id to standard output, or to a new file --output
created 0600. With --domain, on a per-domain keyring, writes the key derived for
that domain instead: a partner or secondary MX given it can sign and verify for
that domain only. Without --domain it is the stored secret, which on a
per-domain keyring signs for every domain. A warning is printed when standard
output is a terminal.

` + keysExitStatuses,
		Flags: []cli.Flag{
			keysKeyringFlag(),
			&cli.IntFlag{Name: keysFlagID, Usage: "the `ID` (0-9) of the key to export", Required: true},
			&cli.StringFlag{Name: keysFlagDomain, Usage: "export the key derived for `DOMAIN` (per-domain keyrings only)"},
			&cli.StringFlag{
				Name:  keysFlagFormat,
				Usage: "the output `FORMAT`: raw (the bytes, a batv-tools key file), hex or base64 (these two end with a newline)",
				Value: "hex",
			},
			&cli.StringFlag{
				Name:      keysFlagOutput,
				Usage:     "write to the new file `FILE`, mode 0600, instead of standard output; an existing file is not overwritten",
				TakesFile: true,
			},
		},
		Action: keysExport,
	}
}

func keysCheckCommand() *cli.Command {
	return &cli.Command{
		Name:  "check",
		Usage: "validate a keyring file and report every problem and warning",
		UsageText: `batv keys check [FILE]

Checks FILE (default: the keyring) as the daemon would load it: a regular file
of mode 0600, valid JSON with no unknown fields, a supported version, valid
settings, and keys with distinct ids 0-9, canonical base64 secrets, valid times
and signing periods that do not overlap. Every problem found is reported, never
quoting a value of the file, then warnings: a file owned by another user than
the one running the check (it must be the daemon's user), weak (short) keys, a
key that is a batv-tools key map imported by mistake, retired keys to prune, no
key signing, signing that ends with no key to follow (from 90 days before a key
reaches its longest signing period), every id in use.

` + exitStatusHelp("keys check"),
		Flags:  []cli.Flag{keysKeyringFlag()},
		Action: keysCheck,
	}
}

// keysPath returns the keyring path: the innermost explicit --keyring,
// then $BATV_KEYRING (through the keys command's flag), then the default.
func keysPath(c *cli.Context) string {
	for _, cc := range c.Lineage() {
		if cc.Command != nil && cc.IsSet(flagKeyring) {
			if p := cc.String(flagKeyring); p != "" {
				return p
			}
		}
	}
	return keyring.DefaultPath
}

// keysTime returns the instant the command acts at: --at if given, else
// the clock.
func keysTime(c *cli.Context) (time.Time, error) {
	s := c.String(keysFlagAt)
	if s == "" {
		return time.Now(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, usageError("--%s %q is not an RFC 3339 time such as 2025-01-31T12:00:00Z", keysFlagAt, s)
	}
	return t, nil
}

// keysFail turns an error of package keyring into an exit status.
func keysFail(err error) error {
	msg := err.Error()
	if errors.Is(err, fs.ErrNotExist) && !errors.Is(err, keyring.ErrWrite) {
		msg += " (create a keyring with \"batv keys init\")"
	}
	return cli.Exit(msg, keysExitCode(err))
}

func keysExitCode(err error) int {
	switch {
	case errors.Is(err, keyring.ErrWrite), errors.Is(err, keyring.ErrLocked):
		return exitFailure
	case errors.Is(err, keyring.ErrInvalid), errors.Is(err, keyring.ErrUnsupportedVersion),
		errors.Is(err, keyring.ErrInsecureMode), errors.Is(err, keyring.ErrInvalidOption),
		errors.Is(err, keyring.ErrNoKey), errors.Is(err, keyring.ErrNotPerDomain),
		errors.Is(err, fs.ErrNotExist), errors.Is(err, fs.ErrPermission):
		return exitUsage
	}
	return exitFailure
}

func keysWarn(c *cli.Context, format string, args ...any) {
	fmt.Fprintf(c.App.ErrWriter, "batv: warning: "+format+"\n", args...)
}

func keysNoArgs(c *cli.Context) error {
	if c.Args().Present() {
		return usageError("batv keys %s takes no arguments, got %q", c.Command.Name, c.Args().First())
	}
	return nil
}

// fmtTime formats an instant for output, "-" for the zero time.
func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func (k keysCmd) init(c *cli.Context) error {
	if err := keysNoArgs(c); err != nil {
		return err
	}
	now, err := keysTime(c)
	if err != nil {
		return err
	}
	opts := keyring.DefaultOptions()
	opts.PerDomain = c.Bool(keysFlagPerDomain)
	opts.MaxLifetimeDays = c.Int(keysFlagMaxLifetime)
	opts.Grace = c.Duration(keysFlagGrace)
	opts.FirstID = c.Int(keysFlagID)
	path := keysPath(c)
	r, err := keyring.File{Path: path}.Create(now, k.rand, opts)
	if err != nil {
		return keysFail(err)
	}
	perDomain := "no"
	if r.PerDomain() {
		perDomain = "yes"
	}
	fmt.Fprintf(c.App.Writer, "created %s: max lifetime %d days, grace %s, per-domain keys %s\nkey %d signs from %s\n",
		path, r.MaxLifetimeDays(), r.Grace(), perDomain, opts.FirstID, fmtTime(r.Keys(now)[0].NotBefore))
	return nil
}

type keysListJSON struct {
	Path            string            `json:"path"`
	At              string            `json:"at"`
	Created         string            `json:"created"`
	MaxLifetimeDays int               `json:"max_lifetime_days"`
	GraceSeconds    int64             `json:"grace_seconds"`
	PerDomain       bool              `json:"per_domain"`
	SigningKey      *int              `json:"signing_key"`
	NextChange      string            `json:"next_change,omitempty"`
	Keys            []keysListKeyJSON `json:"keys"`
}

type keysListKeyJSON struct {
	ID             int    `json:"id"`
	State          string `json:"state"`
	Size           int    `json:"size"`
	Weak           bool   `json:"weak"`
	Created        string `json:"created"`
	NotBefore      string `json:"not_before"`
	StoppedSigning string `json:"stopped_signing"`
	SigningLimit   bool   `json:"signing_limit"`
	Retires        string `json:"retires"`
}

func keysList(c *cli.Context) error {
	if err := keysNoArgs(c); err != nil {
		return err
	}
	now, err := keysTime(c)
	if err != nil {
		return err
	}
	path := keysPath(c)
	r, err := keyring.File{Path: path}.Load()
	if err != nil {
		return keysFail(err)
	}
	for _, w := range r.Warnings(now) {
		keysWarn(c, "%s: %s", path, w)
	}
	signing, signs := r.SigningKeyID(now)
	next, changes := r.NextChange(now)
	if c.Bool(keysFlagJSON) {
		out := keysListJSON{
			Path:            path,
			At:              fmtTime(now),
			Created:         fmtTime(r.Created()),
			MaxLifetimeDays: r.MaxLifetimeDays(),
			GraceSeconds:    int64(r.Grace() / time.Second),
			PerDomain:       r.PerDomain(),
			Keys:            []keysListKeyJSON{},
		}
		if signs {
			out.SigningKey = &signing
		}
		if changes {
			out.NextChange = fmtTime(next)
		}
		for _, k := range r.Keys(now) {
			jk := keysListKeyJSON{
				ID:             k.ID,
				State:          k.State.String(),
				Size:           k.Size,
				Weak:           k.Weak,
				Created:        fmtTime(k.Created),
				NotBefore:      fmtTime(k.NotBefore),
				StoppedSigning: fmtTime(k.StoppedSigning),
				SigningLimit:   k.Limited,
				Retires:        fmtTime(k.Retires),
			}
			out.Keys = append(out.Keys, jk)
		}
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return cli.Exit(fmt.Sprintf("write: %v", err), exitFailure)
		}
		return nil
	}

	var b bytes.Buffer
	perDomain := "no"
	if r.PerDomain() {
		perDomain = "yes"
	}
	fmt.Fprintf(&b, "keyring %s at %s\n", path, fmtTime(now))
	fmt.Fprintf(&b, "created %s, max lifetime %d days, grace %s, per-domain keys %s\n",
		fmtTime(r.Created()), r.MaxLifetimeDays(), r.Grace(), perDomain)
	if signs {
		fmt.Fprintf(&b, "signing key: %d\n", signing)
	} else {
		fmt.Fprintf(&b, "signing key: none\n")
	}
	if changes {
		fmt.Fprintf(&b, "next signing key change: %s\n", fmtTime(next))
	} else {
		fmt.Fprintf(&b, "next signing key change: none scheduled\n")
	}
	fmt.Fprintln(&b)
	tw := tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tBYTES\tNOT BEFORE\tSTOPS SIGNING\tRETIRES")
	limited, weak := false, false
	for _, k := range r.Keys(now) {
		stops, size := fmtTime(k.StoppedSigning), strconv.Itoa(k.Size)
		if k.Limited {
			stops, limited = stops+" *", true
		}
		if k.Weak {
			size, weak = size+" !", true
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.State, size,
			fmtTime(k.NotBefore), stops, fmtTime(k.Retires))
	}
	tw.Flush()
	if limited {
		fmt.Fprintf(&b, "\n* the end of the key's longest signing period (%d days): rotate before then\n", int(r.MaxSigningPeriod()/(24*time.Hour)))
	}
	if weak {
		fmt.Fprintf(&b, "\n! shorter than %d bytes: the key only verifies, it never signs\n", keyring.MinKeySize)
	}
	if _, err := c.App.Writer.Write(b.Bytes()); err != nil {
		return cli.Exit(fmt.Sprintf("write: %v", err), exitFailure)
	}
	return nil
}

func (k keysCmd) rotate(c *cli.Context) error {
	if err := keysNoArgs(c); err != nil {
		return err
	}
	now, err := keysTime(c)
	if err != nil {
		return err
	}
	delay := c.Duration(keysFlagDelay)
	if c.Bool(keysFlagNow) {
		if c.IsSet(keysFlagDelay) && delay != 0 {
			return usageError("--%s and --%s contradict each other", keysFlagNow, keysFlagDelay)
		}
		delay = 0
	}
	if delay < 0 {
		return usageError("--%s %s is negative", keysFlagDelay, delay)
	}
	path := keysPath(c)
	r, id, err := keyring.File{Path: path}.Rotate(now, delay, k.rand)
	if err != nil {
		return keysFail(err)
	}
	infos := r.Keys(now)
	var added keyring.KeyInfo
	for _, k := range infos {
		if k.ID == id {
			added = k
		}
	}
	w := c.App.Writer
	if delay == 0 {
		fmt.Fprintf(w, "key %d added: it signs from now (%s)\n", id, fmtTime(added.NotBefore))
	} else {
		fmt.Fprintf(w, "key %d added: it verifies from now and signs from %s (after %s)\n", id, fmtTime(added.NotBefore), delay)
	}
	keysReportSuperseded(w, infos, added)
	if delay > 0 {
		fmt.Fprintf(w, "copy %s to every host before %s\n", path, fmtTime(added.NotBefore))
	}
	return nil
}

func keysPrune(c *cli.Context) error {
	if err := keysNoArgs(c); err != nil {
		return err
	}
	now, err := keysTime(c)
	if err != nil {
		return err
	}
	_, removed, err := keyring.File{Path: keysPath(c)}.Prune(now)
	if err != nil {
		return keysFail(err)
	}
	if len(removed) == 0 {
		fmt.Fprintln(c.App.Writer, "no key is retired; nothing removed")
		return nil
	}
	ids := make([]string, len(removed))
	for i, id := range removed {
		ids[i] = strconv.Itoa(id)
	}
	fmt.Fprintf(c.App.Writer, "removed retired keys: %s\n", strings.Join(ids, ", "))
	return nil
}

// decodeImport extracts the secret from the contents of an imported file.
// Error messages never quote the data.
func decodeImport(data []byte, format string) ([]byte, error) {
	switch format {
	case "raw":
		return data, nil
	case "string":
		return bytes.TrimSuffix(data, []byte("\n")), nil
	case "hex":
		text := bytes.TrimSpace(data)
		b := make([]byte, hex.DecodedLen(len(text)))
		if _, err := hex.Decode(b, text); err != nil {
			return nil, errors.New("the file is not hexadecimal text")
		}
		return b, nil
	case "base64":
		b, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(data)))
		if err != nil {
			return nil, errors.New("the file is not base64 text")
		}
		return b, nil
	}
	return nil, fmt.Errorf("unknown format %q", format)
}

func keysImport(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError("import takes one argument, the key file (or - for standard input)")
	}
	now, err := keysTime(c)
	if err != nil {
		return err
	}
	var opts keyring.ImportOptions
	opts.Sign = c.Bool(keysFlagSign)
	if s := c.String(keysFlagUntil); s != "" {
		if opts.Sign {
			return usageError("--%s and --%s contradict each other", keysFlagSign, keysFlagUntil)
		}
		if opts.Until, err = time.Parse(time.RFC3339, s); err != nil {
			return usageError("--%s %q is not an RFC 3339 time such as 2025-01-31T12:00:00Z", keysFlagUntil, s)
		}
	}
	format := c.String(keysFlagFormat)
	switch format {
	case "raw", "string", "hex", "base64":
	default:
		return usageError("unknown --%s %q: use raw, string, hex or base64", keysFlagFormat, format)
	}

	name := c.Args().First()
	var data []byte
	if name == "-" {
		name = "standard input"
		data, err = io.ReadAll(io.LimitReader(c.App.Reader, keyring.MaxKeyFileSize+1))
		if err != nil {
			return usageError("read the key from %s: %v", name, err)
		}
		if len(data) > keyring.MaxKeyFileSize {
			return usageError("%s is larger than %d bytes: not a key file", name, keyring.MaxKeyFileSize)
		}
	} else if data, err = keyring.ReadKeyFile(name); err != nil {
		return usageError("read the key: %v (give - to read a key from a pipe)", err)
	}
	var note string
	if entries, ok := keyring.ParseKeyMap(data); ok && (format == "raw" || format == "string") {
		if data, note, err = keyMapKey(name, entries, c.Int(keysFlagID)); err != nil {
			return err
		}
		format = "raw"
	}
	secret, err := decodeImport(data, format)
	if err != nil {
		return usageError("%s: %v", name, err)
	}
	if len(secret) == 0 {
		return usageError("%s holds an empty key", name)
	}

	id := c.Int(keysFlagID)
	path := keysPath(c)
	r, err := keyring.File{Path: path}.Import(now, id, secret, opts)
	if err != nil {
		return keysFail(err)
	}
	if len(secret) < keyring.MinKeySize {
		keysWarn(c, "key %d is only %d bytes long; keys shorter than %d bytes are weak: keep it only as long as the old system's tags need it",
			id, len(secret), keyring.MinKeySize)
	}
	w := c.App.Writer
	if note != "" {
		fmt.Fprintln(w, note)
	}
	infos := r.Keys(now)
	for _, k := range infos {
		if k.ID != id {
			continue
		}
		fmt.Fprintf(w, "imported key %d (%d bytes)", id, k.Size)
		if format == "raw" && bytes.HasSuffix(secret, []byte("\n")) {
			fmt.Fprintf(w, ", including the file's final newline as batv-tools reads it")
		}
		fmt.Fprintln(w)
		if k.State == keyring.Signing {
			fmt.Fprintf(w, "key %d signs from %s\n", id, fmtTime(k.NotBefore))
		} else {
			fmt.Fprintf(w, "key %d only verifies, until %s\n", id, fmtTime(k.Retires))
		}
		keysReportSuperseded(w, infos, k)
	}
	return nil
}

// keyMapKey returns the key a batv-tools key map (read from name) names,
// and a line saying where it came from. batv-tools writes key id 0 in
// every tag and picks the key by sender; a batv keyring has one key per id
// for every domain, so a map whose senders use different keys cannot be
// imported whole, and is refused with what to do instead. An empty key
// file (/dev/null) turns BATV off for its sender: nothing to import.
func keyMapKey(name string, entries []keyring.KeyMapEntry, id int) (key []byte, note string, err error) {
	if id != 0 {
		return nil, "", usageError("%s is a batv-tools key map: batv-tools writes key id 0 in every tag, so its keys can only verify as --%s 0",
			name, keysFlagID)
	}
	type use struct {
		file    string
		senders []string
	}
	var keys []*use
	byKey := map[string]*use{}
	var off []string
	for _, e := range entries {
		var data []byte
		if e.KeyFile != os.DevNull {
			if data, err = keyring.ReadKeyFile(e.KeyFile); err != nil {
				return nil, "", usageError("%s line %d (a batv-tools key map): the key file of %s: %v", name, e.Line, e.Sender, err)
			}
		}
		if len(data) == 0 {
			off = append(off, e.Sender)
			continue
		}
		u := byKey[string(data)]
		if u == nil {
			u = &use{file: e.KeyFile}
			byKey[string(data)] = u
			keys = append(keys, u)
			key = data
		}
		u.senders = append(u.senders, e.Sender)
	}
	switch len(keys) {
	case 0:
		return nil, "", usageError("%s is a batv-tools key map whose key files are all empty (BATV off for %s): there is no key to import",
			name, strings.Join(off, ", "))
	case 1:
	default:
		var list []string
		for _, u := range keys {
			list = append(list, fmt.Sprintf("%s for %s", u.file, strings.Join(u.senders, ", ")))
		}
		return nil, "", usageError("%s is a batv-tools key map with %d different keys (%s); batv-tools tags all carry key id 0 and a batv keyring "+
			"holds one key per id for every domain, so only one of them can verify here: import the key file whose tags matter most "+
			"(batv keys import --%s 0 FILE); bounces to tags batv-tools made with the others are refused until they expire",
			name, len(keys), strings.Join(list, "; "), keysFlagID)
	}
	note = fmt.Sprintf("%s is a batv-tools key map: importing the key file %s, the key of %s", name, keys[0].file, strings.Join(keys[0].senders, ", "))
	if len(off) > 0 {
		note += fmt.Sprintf("; BATV is off for %s (empty key file), nothing to import", strings.Join(off, ", "))
	}
	return key, note, nil
}

// keysReportSuperseded tells which keys stop signing because the key added
// starts.
func keysReportSuperseded(w io.Writer, infos []keyring.KeyInfo, added keyring.KeyInfo) {
	if !added.NotBefore.Before(added.StoppedSigning) && !added.StoppedSigning.IsZero() {
		return // a verify-only key supersedes nothing
	}
	for _, k := range infos {
		if k.ID == added.ID || !k.StoppedSigning.Equal(added.NotBefore) {
			continue
		}
		if k.NotBefore.Equal(k.StoppedSigning) {
			fmt.Fprintf(w, "key %d is superseded before it signed; it verifies until %s\n", k.ID, fmtTime(k.Retires))
		} else {
			fmt.Fprintf(w, "key %d stops signing at %s and verifies until %s\n", k.ID, fmtTime(k.StoppedSigning), fmtTime(k.Retires))
		}
	}
}

func keysExport(c *cli.Context) error {
	if err := keysNoArgs(c); err != nil {
		return err
	}
	now, err := keysTime(c)
	if err != nil {
		return err
	}
	format := c.String(keysFlagFormat)
	switch format {
	case "raw", "hex", "base64":
	default:
		return usageError("unknown --%s %q: use raw, hex or base64", keysFlagFormat, format)
	}
	path := keysPath(c)
	r, err := keyring.File{Path: path}.Load()
	if err != nil {
		return keysFail(err)
	}
	id, domain := c.Int(keysFlagID), c.String(keysFlagDomain)
	secret, err := r.Export(id, domain)
	if err != nil {
		return keysFail(err)
	}
	for _, k := range r.Keys(now) {
		if k.ID == id && k.State == keyring.Retired {
			keysWarn(c, "key %d is retired: it no longer verifies anything", id)
		}
	}
	if r.PerDomain() && domain == "" {
		keysWarn(c, "key %d is a stored secret of a per-domain keyring: it signs for every domain; use --%s to export one domain's key",
			id, keysFlagDomain)
	}
	var out []byte
	switch format {
	case "raw":
		out = secret
	case "hex":
		out = []byte(hex.EncodeToString(secret) + "\n")
	case "base64":
		out = []byte(base64.StdEncoding.EncodeToString(secret) + "\n")
	}

	if name := c.String(keysFlagOutput); name != "" {
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return cli.Exit(fmt.Sprintf("export: %v", err), exitFailure)
		}
		_, err = f.Write(out)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(name)
			return cli.Exit(fmt.Sprintf("export: %v", err), exitFailure)
		}
		what := fmt.Sprintf("key %d", id)
		if domain != "" {
			what += " for " + domain
		}
		fmt.Fprintf(c.App.Writer, "wrote %s (%s) to %s\n", what, format, name)
		return nil
	}
	if isTerminal(c.App.Writer) {
		keysWarn(c, "writing a secret key to a terminal")
	}
	if _, err := c.App.Writer.Write(out); err != nil {
		return cli.Exit(fmt.Sprintf("export: %v", err), exitFailure)
	}
	return nil
}

// isTerminal reports whether w is a terminal: a character device other
// than the null device.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	if null, err := os.Stat(os.DevNull); err == nil && os.SameFile(fi, null) {
		return false
	}
	return true
}

func keysCheck(c *cli.Context) error {
	if c.NArg() > 1 {
		return usageError("check takes at most one argument, the keyring file")
	}
	now, err := keysTime(c)
	if err != nil {
		return err
	}
	path := keysPath(c)
	if c.NArg() == 1 {
		path = c.Args().First()
	}
	res := keyring.File{Path: path}.Check(now)
	for _, p := range res.Problems {
		fmt.Fprintf(c.App.ErrWriter, "batv: %s: %s\n", path, p)
	}
	for _, w := range res.Warnings {
		keysWarn(c, "%s: %s", path, w)
	}
	if n := len(res.Problems); n > 0 {
		return cli.Exit(fmt.Sprintf("%s: %s found; the keyring cannot be used", path, plural(n, "problem")), exitUsage)
	}
	r := res.Keyring
	signing := "no key signs now"
	if id, ok := r.SigningKeyID(now); ok {
		signing = fmt.Sprintf("key %d signs", id)
	}
	fmt.Fprintf(c.App.Writer, "%s: ok: %s, %s, %s\n", path, plural(len(r.Keys(now)), "key"), signing, plural(len(res.Warnings), "warning"))
	return nil
}

// plural returns "1 key", "2 keys".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
