package main

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/keyring"
)

// keysT0 is the fixed instant the keys tests start at.
const keysT0 = "2025-03-01T10:00:00Z"

func keysAt(t *testing.T, offset time.Duration) string {
	t.Helper()
	t0, err := time.Parse(time.RFC3339, keysT0)
	if err != nil {
		t.Fatal(err)
	}
	return t0.Add(offset).Format(time.RFC3339)
}

// generatedSecrets are the keys the deterministic reader hands out, in
// order: printable, so that a leak is easy to spot in any form.
var generatedSecrets = [][]byte{
	[]byte("GENERATED-SECRET-KEY-NUMBER-0001"),
	[]byte("GENERATED-SECRET-KEY-NUMBER-0002"),
	[]byte("GENERATED-SECRET-KEY-NUMBER-0003"),
	[]byte("GENERATED-SECRET-KEY-NUMBER-0004"),
	[]byte("GENERATED-SECRET-KEY-NUMBER-0005"),
	[]byte("GENERATED-SECRET-KEY-NUMBER-0006"),
}

// knownRandom is a random source that yields generatedSecrets, for
// runKeysWith.
func knownRandom() io.Reader { return bytes.NewReader(bytes.Join(generatedSecrets, nil)) }

type keysResult struct {
	code           int
	stdout, stderr string
}

// runKeys runs "batv keys ARGS" with stdin and returns what it did.
func runKeys(t *testing.T, stdin string, args ...string) keysResult {
	t.Helper()
	return runKeysWith(t, nil, stdin, args...)
}

// runKeysWith is runKeys with the keys commands reading new keys from
// rand (crypto/rand if nil).
func runKeysWith(t *testing.T, rand io.Reader, stdin string, args ...string) keysResult {
	t.Helper()
	var out, errOut bytes.Buffer
	app := newApp(strings.NewReader(stdin), &out, &errOut)
	if rand != nil {
		for i, c := range app.Commands {
			if c.Name == "keys" {
				app.Commands[i] = keysCmd{rand: rand}.command()
				setUsageErrorHandler(app.Commands[i : i+1])
			}
		}
	}
	code := runApp(app, append([]string{"batv", "keys"}, args...), &errOut)
	return keysResult{code, out.String(), errOut.String()}
}

func (r keysResult) String() string {
	return "exit " + string(rune('0'+r.code)) + "\nstdout:\n" + r.stdout + "stderr:\n" + r.stderr
}

func expectKeys(t *testing.T, r keysResult, code int, substrings ...string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit status %d, want %d\n%s", r.code, code, r)
	}
	all := r.stdout + r.stderr
	for _, s := range substrings {
		if !strings.Contains(all, s) {
			t.Errorf("output lacks %q\n%s", s, r)
		}
	}
}

func newKeysDir(t *testing.T) (dir, path string) {
	dir = t.TempDir()
	return dir, filepath.Join(dir, "keyring.json")
}

func initKeyring(t *testing.T, path string, extra ...string) {
	t.Helper()
	initKeyringWith(t, nil, path, extra...)
}

// initKeyringWith is initKeyring with the first key read from rand.
func initKeyringWith(t *testing.T, rand io.Reader, path string, extra ...string) {
	t.Helper()
	args := append([]string{"--keyring", path, "--at", keysT0, "init"}, extra...)
	expectKeys(t, runKeysWith(t, rand, "", args...), exitOK)
}

type listOutput struct {
	SigningKey *int   `json:"signing_key"`
	NextChange string `json:"next_change"`
	Keys       []struct {
		ID             int    `json:"id"`
		State          string `json:"state"`
		Size           int    `json:"size"`
		NotBefore      string `json:"not_before"`
		StoppedSigning string `json:"stopped_signing"`
		Retires        string `json:"retires"`
	} `json:"keys"`
}

func listJSON(t *testing.T, path, at string) listOutput {
	t.Helper()
	r := runKeys(t, "", "--keyring", path, "--at", at, "list", "--json")
	if r.code != exitOK {
		t.Fatalf("list --json:\n%s", r)
	}
	var out listOutput
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("list --json output: %v\n%s", err, r.stdout)
	}
	return out
}

func states(l listOutput) string {
	var s []string
	for _, k := range l.Keys {
		s = append(s, string(rune('0'+k.ID))+":"+k.State)
	}
	return strings.Join(s, " ")
}

func TestKeysLifecycle(t *testing.T) {
	_, path := newKeysDir(t)
	kr := func(at time.Duration, args ...string) keysResult {
		return runKeys(t, "", append([]string{"--keyring", path, "--at", keysAt(t, at)}, args...)...)
	}

	expectKeys(t, kr(0, "init"), exitOK, "created "+path, "key 0 signs from "+keysT0)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("keyring file: %v", err)
	}
	expectKeys(t, kr(0, "init"), exitFailure, "already exists")

	r := kr(time.Hour, "list")
	// The only key stops signing at the end of its longest signing
	// period, 981 days, and retires 9 days later.
	limit, retire := keysAt(t, 981*24*time.Hour), keysAt(t, 990*24*time.Hour)
	expectKeys(t, r, exitOK, "signing key: 0", "next signing key change: "+limit,
		"* the end of the key's longest signing period (981 days): rotate before then")
	if table := strings.Join(strings.Fields(r.stdout), " "); !strings.Contains(table,
		"ID STATE BYTES NOT BEFORE STOPS SIGNING RETIRES 0 signing 32 "+keysT0+" "+limit+" * "+retire) {
		t.Errorf("list table:\n%s", r.stdout)
	}

	// Staged rotation a week later.
	week := 7 * 24 * time.Hour
	expectKeys(t, kr(week, "rotate"), exitOK, "key 1 added", "signs from "+keysAt(t, week+time.Hour),
		"key 0 stops signing at "+keysAt(t, week+time.Hour), "copy "+path+" to every host")
	expectKeys(t, kr(week+time.Minute, "rotate"), exitFailure, "rotation is already pending", "key 1 starts signing at")
	l := listJSON(t, path, keysAt(t, week+30*time.Minute))
	if *l.SigningKey != 0 || states(l) != "0:signing 1:pending" || l.NextChange != keysAt(t, week+time.Hour) {
		t.Errorf("before the switch: signing %d, %s, next %s", *l.SigningKey, states(l), l.NextChange)
	}
	l = listJSON(t, path, keysAt(t, week+time.Hour))
	retire0 := keysAt(t, week+time.Hour+9*24*time.Hour)
	if *l.SigningKey != 1 || states(l) != "0:verifying 1:signing" || l.Keys[0].Retires != retire0 {
		t.Errorf("after the switch: signing %d, %s, key 0 retires %s", *l.SigningKey, states(l), l.Keys[0].Retires)
	}

	// Immediate rotation, then prune once key 0 is retired.
	expectKeys(t, kr(8*24*time.Hour, "rotate", "--now"), exitOK, "key 2 added: it signs from now", "key 1 stops signing at "+keysAt(t, 8*24*time.Hour))
	expectKeys(t, kr(8*24*time.Hour, "rotate", "--now", "--delay", "2h"), exitUsage, "contradict")
	expectKeys(t, kr(9*24*time.Hour, "prune"), exitOK, "no key is retired")
	expectKeys(t, kr(week+time.Hour+9*24*time.Hour, "check"), exitOK, "ok: 3 keys, key 2 signs", "key 0 is retired")
	expectKeys(t, kr(week+time.Hour+9*24*time.Hour, "prune"), exitOK, "removed retired keys: 0")
	l = listJSON(t, path, retire0)
	if states(l) != "1:verifying 2:signing" {
		t.Errorf("after prune: %s", states(l))
	}
}

func TestKeysInitOptions(t *testing.T) {
	_, path := newKeysDir(t)
	initKeyring(t, path, "--per-domain", "--max-lifetime", "14", "--grace", "2h", "--id", "3")
	r, err := keyring.File{Path: path}.Load()
	if err != nil {
		t.Fatal(err)
	}
	at, _ := time.Parse(time.RFC3339, keysT0)
	if id, _ := r.SigningKeyID(at); !r.PerDomain() || r.MaxLifetimeDays() != 14 || r.Grace() != 2*time.Hour || id != 3 {
		t.Errorf("settings not recorded: %s, signing key %d", r, id)
	}
	_, path2 := newKeysDir(t)
	for _, args := range [][]string{
		{"--max-lifetime", "31"}, {"--max-lifetime", "0"}, {"--grace", "-1s"}, {"--id", "10"}, {"extra-argument"},
	} {
		r := runKeys(t, "", append([]string{"--keyring", path2, "init"}, args...)...)
		expectKeys(t, r, exitUsage)
		if _, err := os.Stat(path2); err == nil {
			t.Fatalf("init %v created the file", args)
		}
	}
	expectKeys(t, runKeys(t, "", "--keyring", path2, "--at", "yesterday", "init"), exitUsage, "--at")
	expectKeys(t, runKeys(t, "", "--keyring", filepath.Join(path2, "sub", "k.json"), "init"), exitFailure, "no such file or directory")
}

func TestKeysPathPrecedence(t *testing.T) {
	dir, _ := newKeysDir(t)
	a, b, c := filepath.Join(dir, "a.json"), filepath.Join(dir, "b.json"), filepath.Join(dir, "c.json")
	initKeyring(t, a)
	initKeyring(t, b, "--id", "1")
	initKeyring(t, c, "--id", "2")
	signer := func(r keysResult) string {
		t.Helper()
		if r.code != exitOK {
			t.Fatalf("list:\n%s", r)
		}
		for _, line := range strings.Split(r.stdout, "\n") {
			if strings.HasPrefix(line, "keyring ") {
				return strings.Fields(line)[1]
			}
		}
		return ""
	}
	t.Setenv(envKeyring, a)
	if got := signer(runKeys(t, "", "list")); got != a {
		t.Errorf("$%s: listed %s", envKeyring, got)
	}
	if got := signer(runKeys(t, "", "--keyring", b, "list")); got != b {
		t.Errorf("keys --keyring over the environment: listed %s", got)
	}
	if got := signer(runKeys(t, "", "--keyring", b, "list", "--keyring", c)); got != c {
		t.Errorf("list --keyring over keys --keyring: listed %s", got)
	}
	t.Setenv(envKeyring, "")
	os.Unsetenv(envKeyring)
	r := runKeys(t, "", "list")
	if !strings.Contains(r.stderr, keyring.DefaultPath) && !strings.Contains(r.stdout, keyring.DefaultPath) {
		t.Errorf("default path not used:\n%s", r)
	}
}

func TestKeysImportFormats(t *testing.T) {
	dir, path := newKeysDir(t)
	initKeyring(t, path)
	at, _ := time.Parse(time.RFC3339, keysT0)
	for i, tc := range []struct {
		format string
		file   string
		want   string
	}{
		{"raw", "batv-tools key\n", "batv-tools key\n"}, // the newline is part of the key
		{"", "raw is the default\r\n", "raw is the default\r\n"},
		{"string", "exim secret\n", "exim secret"},     // one final newline dropped
		{"string", "exim secret", "exim secret"},       // or none there
		{"string", "exim secret\n\n", "exim secret\n"}, // only one
		{"string", "  spaces kept \n", "  spaces kept "},
		{"hex", "  6865782D6b6579\n", "hex-key"},
		{"base64", "YmFzZTY0LWtleQ==\n", "base64-key"},
	} {
		id := i + 1
		file := filepath.Join(dir, "key"+string(rune('0'+id)))
		os.WriteFile(file, []byte(tc.file), 0o600)
		args := []string{"--keyring", path, "--at", keysT0, "import", "--id", string(rune('0' + id))}
		if tc.format != "" {
			args = append(args, "--format", tc.format)
		}
		r := runKeys(t, "", append(args, file)...)
		expectKeys(t, r, exitOK, "imported key "+string(rune('0'+id)), "only verifies, until "+keysAt(t, 9*24*time.Hour))
		kr, err := keyring.File{Path: path}.Load()
		if err != nil {
			t.Fatal(err)
		}
		k, ok := kr.VerificationKey(at, id, "example.com")
		if !ok || string(k.Secret) != tc.want {
			t.Errorf("format %q of %q: key %q, want %q", tc.format, tc.file, k.Secret, tc.want)
		}
		if len(tc.want) < keyring.MinKeySize && !strings.Contains(r.stderr, "warning: key "+string(rune('0'+id))+" is only") {
			t.Errorf("no warning for a %d-byte key:\n%s", len(tc.want), r)
		}
		if tc.format == "raw" && !strings.Contains(r.stdout, "final newline") {
			t.Errorf("raw import with a newline does not say so:\n%s", r)
		}
	}

	// Standard input, --sign, --until.
	_, path = newKeysDir(t)
	initKeyring(t, path)
	expectKeys(t, runKeys(t, "from stdin, sixteen+", "--keyring", path, "--at", keysAt(t, time.Hour), "import", "--id", "5", "--sign", "-"),
		exitOK, "key 5 signs from "+keysAt(t, time.Hour), "key 0 stops signing at "+keysAt(t, time.Hour))
	until := keysAt(t, 30*24*time.Hour)
	os.WriteFile(filepath.Join(dir, "old"), []byte("old system secret"), 0o600)
	expectKeys(t, runKeys(t, "", "--keyring", path, "--at", keysT0, "import", "--id", "7", "--until", until, filepath.Join(dir, "old")),
		exitOK, "only verifies, until "+keysAt(t, 39*24*time.Hour))

	// Refusals.
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--id", "5", filepath.Join(dir, "old")}, exitFailure, "key 5 is signing; rotate it out first"},
		{[]string{"--id", "7", filepath.Join(dir, "old")}, exitFailure, "key 7 is verifying until " + keysAt(t, 39*24*time.Hour) + "; its id can be reused from then"},
		{[]string{"--id", "12", filepath.Join(dir, "old")}, exitUsage, "not a digit"},
		{[]string{filepath.Join(dir, "old")}, exitUsage, `Required flag "id"`},
		{[]string{"--id", "6"}, exitUsage, "one argument"},
		{[]string{"--id", "6", filepath.Join(dir, "missing")}, exitUsage, "no such file"},
		{[]string{"--id", "6", "--format", "pem", filepath.Join(dir, "old")}, exitUsage, "unknown --format"},
		{[]string{"--id", "6", "--format", "hex", filepath.Join(dir, "old")}, exitUsage, "not hexadecimal"},
		{[]string{"--id", "6", "--format", "base64", filepath.Join(dir, "old")}, exitUsage, "not base64"},
		{[]string{"--id", "6", "--sign", "--until", until, filepath.Join(dir, "old")}, exitUsage, "contradict"},
		{[]string{"--id", "6", "--until", "soon", filepath.Join(dir, "old")}, exitUsage, "RFC 3339"},
		{[]string{"--id", "6", "--until", "2025-01-01T00:00:00Z", filepath.Join(dir, "old")}, exitUsage, "can no longer be valid"},
		{[]string{"--id", "6", "--format", "string", "-"}, exitUsage, "empty key"},
	} {
		r := runKeys(t, "\n", append([]string{"--keyring", path, "--at", keysAt(t, 2*time.Hour), "import"}, tc.args...)...)
		expectKeys(t, r, tc.code, tc.msg)
	}
}

func TestKeysExport(t *testing.T) {
	dir, path := newKeysDir(t)
	initKeyringWith(t, knownRandom(), path)
	secret := generatedSecrets[0]
	for format, want := range map[string]string{
		"raw":    string(secret),
		"hex":    hex.EncodeToString(secret) + "\n",
		"base64": base64.StdEncoding.EncodeToString(secret) + "\n",
		"":       hex.EncodeToString(secret) + "\n",
	} {
		args := []string{"--keyring", path, "export", "--id", "0"}
		if format != "" {
			args = append(args, "--format", format)
		}
		r := runKeys(t, "", args...)
		if r.code != exitOK || r.stdout != want || r.stderr != "" {
			t.Errorf("export --format %q: %q, want %q\n%s", format, r.stdout, want, r)
		}
	}

	out := filepath.Join(dir, "exported.key")
	r := runKeys(t, "", "--keyring", path, "export", "--id", "0", "--format", "raw", "--output", out)
	expectKeys(t, r, exitOK, "wrote key 0 (raw) to "+out)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, secret) {
		t.Errorf("exported file holds %q", got)
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o600 {
		t.Errorf("exported file mode %04o", fi.Mode().Perm())
	}
	expectKeys(t, runKeys(t, "", "--keyring", path, "export", "--id", "0", "--output", out), exitFailure, "file exists")

	// The exported raw file imports back as the same key (batv-tools form).
	_, other := newKeysDir(t)
	initKeyring(t, other, "--id", "5")
	expectKeys(t, runKeys(t, "", "--keyring", other, "--at", keysT0, "import", "--id", "0", out), exitOK)
	if kr, _ := (keyring.File{Path: other}).Load(); kr != nil {
		at, _ := time.Parse(time.RFC3339, keysT0)
		if k, _ := kr.VerificationKey(at, 0, "x"); !bytes.Equal(k.Secret, secret) {
			t.Error("round trip through export and import changed the key")
		}
	}

	// A terminal as standard output gets a warning on standard error.
	if tty, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0); err == nil {
		var errOut bytes.Buffer
		code := run([]string{"batv", "keys", "--keyring", path, "export", "--id", "0"}, strings.NewReader(""), tty, &errOut)
		tty.Close()
		if code != exitOK || !strings.Contains(errOut.String(), "warning: writing a secret key to a terminal") {
			t.Errorf("export to a terminal: exit %d, stderr %q", code, errOut.String())
		}
		assertNoSecretForms(t, errOut.String(), secret)
	}

	expectKeys(t, runKeys(t, "", "--keyring", path, "export", "--id", "3"), exitUsage, "no key 3")
	expectKeys(t, runKeys(t, "", "--keyring", path, "export", "--id", "0", "--domain", "example.com"), exitUsage, "does not derive per-domain")
	expectKeys(t, runKeys(t, "", "--keyring", path, "export", "--id", "0", "--format", "string"), exitUsage, "unknown --format")
	expectKeys(t, runKeys(t, "", "--keyring", path, "export"), exitUsage, `Required flag "id"`)
}

func TestKeysExportDomain(t *testing.T) {
	_, path := newKeysDir(t)
	initKeyringWith(t, knownRandom(), path, "--per-domain")
	want, err := hkdf.Key(sha256.New, generatedSecrets[0], nil, "batv-prvs-domain-key-v1:example.com", 32)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"example.com", "Example.COM"} {
		r := runKeys(t, "", "--keyring", path, "export", "--id", "0", "--domain", d)
		if r.code != exitOK || r.stdout != hex.EncodeToString(want)+"\n" {
			t.Errorf("export --domain %s:\n%s", d, r)
		}
	}
	r := runKeys(t, "", "--keyring", path, "export", "--id", "0", "--domain", "example.org")
	if r.stdout == hex.EncodeToString(want)+"\n" {
		t.Error("two domains export the same key")
	}
	expectKeys(t, runKeys(t, "", "--keyring", path, "export", "--id", "0"), exitOK, "warning: key 0 is a stored secret of a per-domain keyring")
}

func TestIsTerminal(t *testing.T) {
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	file, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	for name, w := range map[string]interface{ Write([]byte) (int, error) }{
		"buffer": &bytes.Buffer{}, "/dev/null": null, "regular file": file,
	} {
		if isTerminal(w) {
			t.Errorf("%s counted as a terminal", name)
		}
	}
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal to test with: %v", err)
	}
	defer ptmx.Close()
	if !isTerminal(ptmx) {
		t.Error("a pseudo-terminal is not counted as a terminal")
	}
}

func TestKeysCheck(t *testing.T) {
	dir, path := newKeysDir(t)
	initKeyring(t, path)
	expectKeys(t, runKeys(t, "", "--keyring", path, "--at", keysT0, "check"), exitOK, path+": ok: 1 key, key 0 signs, 0 warnings")

	bad := filepath.Join(dir, "bad.json")
	data, _ := os.ReadFile(path)
	data = bytes.Replace(data, []byte(`"max_lifetime_days": 7`), []byte(`"max_lifetime_days": 45`), 1)
	data = bytes.Replace(data, []byte(`"id": 0`), []byte(`"id": 11`), 1)
	os.WriteFile(bad, data, 0o640)
	r := runKeys(t, "", "--at", keysT0, "check", bad)
	expectKeys(t, r, exitUsage, "mode 0640", "max_lifetime_days is 45", "keys[0]: id is not a digit", "3 problems found")

	os.WriteFile(bad, []byte("{\n  \"version\": 1,\n  oops\n}\n"), 0o600)
	os.Chmod(bad, 0o600)
	expectKeys(t, runKeys(t, "", "check", bad), exitUsage, "line 3, column 3", "1 problem found")
	expectKeys(t, runKeys(t, "", "check", filepath.Join(dir, "missing")), exitUsage, "no such file")
	expectKeys(t, runKeys(t, "", "check", bad, bad), exitUsage, "at most one argument")

	// Damaged and insecure files are refused by every command, exit 2.
	os.Chmod(path, 0o644)
	for _, cmd := range [][]string{{"list"}, {"rotate"}, {"prune"}, {"export", "--id", "0"}} {
		expectKeys(t, runKeys(t, "", append([]string{"--keyring", path}, cmd...)...), exitUsage, path, "mode 0644")
	}
	expectKeys(t, runKeys(t, "", "--keyring", bad, "list"), exitUsage, "line 3, column 3")
	expectKeys(t, runKeys(t, "", "--keyring", filepath.Join(dir, "none.json"), "rotate"), exitUsage, "batv keys init")
}

// keysHelperEnv makes TestKeysHelperProcess run batv with the arguments
// it holds (a JSON array), as a separate process.
const keysHelperEnv = "BATV_KEYS_TEST_HELPER_ARGS"

func TestKeysHelperProcess(t *testing.T) {
	args := os.Getenv(keysHelperEnv)
	if args == "" {
		t.Skip("helper process for TestKeysConcurrentRotate")
	}
	var argv []string
	if err := json.Unmarshal([]byte(args), &argv); err != nil {
		t.Fatal(err)
	}
	os.Exit(run(argv, os.Stdin, os.Stdout, os.Stderr))
}

// TestKeysConcurrentRotate runs rotate --now commands at once, as separate
// processes: all succeed in turn, with distinct ids, and the file stays
// valid. (Not goroutines: urfave/cli's help flag is a shared global.)
func TestKeysConcurrentRotate(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Skip(err)
	}
	_, path := newKeysDir(t)
	initKeyring(t, path)
	argv, _ := json.Marshal([]string{"batv", "keys", "--keyring", path, "--at", keysAt(t, time.Hour), "rotate", "--now"})
	const n = 3
	cmds := make([]*exec.Cmd, n)
	outs := make([]bytes.Buffer, n)
	for i := range cmds {
		cmds[i] = exec.Command(exe, "-test.run=^TestKeysHelperProcess$", "-test.count=1")
		cmds[i].Env = append(os.Environ(), keysHelperEnv+"="+string(argv))
		cmds[i].Stdout = &outs[i]
		cmds[i].Stderr = &outs[i]
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	added := map[string]bool{}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("rotate %d: %v\n%s", i, err, outs[i].String())
			continue
		}
		out := outs[i].String()
		j := strings.Index(out, "key ")
		if j < 0 || !strings.Contains(out, "added") {
			t.Errorf("rotate %d: %s", i, out)
			continue
		}
		added[strings.Fields(out[j:])[1]] = true
	}
	if len(added) != n || !added["1"] || !added["2"] || !added["3"] {
		t.Errorf("ids added: %v", added)
	}
	expectKeys(t, runKeys(t, "", "--keyring", path, "--at", keysAt(t, time.Hour), "check"), exitOK, "ok: 4 keys")
}

// TestKeysNoSecretInOutput runs every command with known secrets and
// checks that no output shows them in any encoding, except the standard
// output of export.
func TestKeysNoSecretInOutput(t *testing.T) {
	rnd := knownRandom()
	dir, path := newKeysDir(t)
	imported := []byte("IMPORTED-EXIM-SECRET-STRING-0042")
	short := []byte("TinySecret")
	os.WriteFile(filepath.Join(dir, "exim"), append(append([]byte{}, imported...), '\n'), 0o600)
	os.WriteFile(filepath.Join(dir, "short"), short, 0o600)
	secrets := append([][]byte{imported, short}, generatedSecrets...)

	var outputs []keysResult
	kr := func(stdin string, at time.Duration, args ...string) keysResult {
		r := runKeysWith(t, rnd, stdin, append([]string{"--keyring", path, "--at", keysAt(t, at)}, args...)...)
		outputs = append(outputs, r)
		return r
	}
	day := 24 * time.Hour
	kr("", 0, "init", "--per-domain")
	kr("", 0, "init")
	kr("", 0, "list")
	kr("", 0, "list", "--json")
	kr("", 0, "import", "--id", "4", "--format", "string", filepath.Join(dir, "exim"))
	kr("", 0, "import", "--id", "4", "--format", "string", filepath.Join(dir, "exim")) // id in use
	kr("", 0, "import", "--id", "5", filepath.Join(dir, "short"))                      // warning
	kr(string(imported), 0, "import", "--id", "6", "--format", "hex", "-")             // not hex
	kr("", day, "rotate")
	kr("", day, "rotate")
	kr("", 2*day, "rotate", "--now")
	kr("", 2*day, "list")
	kr("", 2*day, "check")
	kr("", 20*day, "list")
	kr("", 20*day, "prune")
	kr("", 20*day, "export", "--id", "2", "--output", filepath.Join(dir, "out"))
	kr("", 20*day, "export", "--id", "2", "--output", filepath.Join(dir, "out")) // exists
	kr("", 20*day, "export", "--id", "9")                                        // no such key

	// A damaged file that holds the secrets: check reports every problem
	// without quoting any.
	data, _ := os.ReadFile(path)
	damaged := bytes.Replace(data, []byte(`"id": 2`), []byte(`"id": 3`), 1)
	damaged = bytes.Replace(damaged, []byte(`"secret": "`), []byte(`"secret": "!`), 1)
	os.WriteFile(path, damaged, 0o644)
	kr("", 20*day, "check")
	kr("", 20*day, "list")
	kr("", 20*day, "rotate")
	os.WriteFile(path, data[:len(data)-40], 0o600)
	os.Chmod(path, 0o600)
	kr("", 20*day, "check")
	kr("", 20*day, "export", "--id", "2")

	for _, r := range outputs {
		for _, s := range secrets {
			assertNoSecretForms(t, r.stdout, s)
			assertNoSecretForms(t, r.stderr, s)
		}
	}

	// export's standard output is the one place a secret goes.
	os.WriteFile(path, data, 0o600)
	r := runKeys(t, "", "--keyring", path, "export", "--id", "2", "--format", "raw")
	if r.code != exitOK || !bytes.Contains(bytes.Join(generatedSecrets, nil), []byte(r.stdout)) || len(r.stdout) != 32 {
		t.Errorf("export:\n%s", r)
	}
	assertNoSecretForms(t, r.stderr, []byte(r.stdout))
}

func assertNoSecretForms(t *testing.T, out string, secret []byte) {
	t.Helper()
	h := hex.EncodeToString(secret)
	for _, form := range []string{
		string(secret), h, strings.ToUpper(h),
		base64.StdEncoding.EncodeToString(secret), base64.RawStdEncoding.EncodeToString(secret),
	} {
		if strings.Contains(out, form) {
			t.Errorf("output shows the secret %q as %q:\n%s", secret, form, out)
		}
	}
}

// TestKeysManPage: the usage text renders into batv(8).
func TestKeysManPage(t *testing.T) {
	page, err := manPage()
	if err != nil {
		t.Fatal(err)
	}
	man := unroff(page)
	for _, s := range []string{"[--delay DURATION | --now]", "propagation delay", "delay", "1h0m0s",
		"0  done", "1  refused by the keyring's state", "0  the file can be used, even with warnings", "prune", "batv-tools", "BATV_KEYRING"} {
		if !strings.Contains(man, s) {
			t.Errorf("man page lacks %q", s)
		}
	}
	if strings.Contains(man, "act as if the time were") {
		t.Error("the hidden --at flag of keys appears in the man page")
	}
}
