package keyring

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func createTestFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keyring.json")
	if _, err := (File{Path: path}).Create(t0, &countingReader{}, DefaultOptions()); err != nil {
		t.Fatal(err)
	}
	return path
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dirEntries lists a directory, to find leftover temporary files.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestCreate(t *testing.T) {
	path := createTestFile(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("created with mode %04o, want 0600", perm)
	}
	if lf, err := os.Stat((File{Path: path}).LockPath()); err != nil || lf.Mode().Perm() != 0o600 {
		t.Errorf("lock file: %v", err)
	}
	before := readFile(t, path)
	_, err = File{Path: path}.Create(t0.Add(day), &countingReader{next: 9}, DefaultOptions())
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), path) {
		t.Errorf("second Create: err %v, want ErrExists naming the file", err)
	}
	if !bytes.Equal(readFile(t, path), before) {
		t.Error("Create changed an existing file")
	}
	if names := dirEntries(t, filepath.Dir(path)); len(names) != 2 {
		t.Errorf("directory holds %v; want the keyring and its lock", names)
	}
	if _, err := (File{Path: filepath.Join(t.TempDir(), "missing", "k.json")}).Create(t0, &countingReader{}, DefaultOptions()); err == nil {
		t.Error("Create in a missing directory succeeded")
	}
}

func TestLoadMode(t *testing.T) {
	path := createTestFile(t)
	for _, mode := range []fs.FileMode{0o644, 0o640, 0o604, 0o620, 0o660} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := File{Path: path}.Load()
		want := fmt.Sprintf("%04o", mode)
		if !errors.Is(err, ErrInsecureMode) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), want) {
			t.Errorf("mode %s: err %v; want ErrInsecureMode naming %s and %s", want, err, path, want)
		}
		// Nor is such a file rewritten.
		if _, _, err := (File{Path: path}).Rotate(t0.Add(day), 0, &countingReader{}); !errors.Is(err, ErrInsecureMode) {
			t.Errorf("Rotate on mode %s: err %v", want, err)
		}
	}
	for _, mode := range []fs.FileMode{0o600, 0o400} {
		os.Chmod(path, mode)
		if _, err := (File{Path: path}).Load(); err != nil {
			t.Errorf("mode %04o: %v", mode, err)
		}
	}
	if _, err := (File{Path: filepath.Dir(path)}).Load(); !errors.Is(err, ErrInvalid) {
		t.Errorf("Load of a directory: err %v", err)
	}
	if _, err := (File{Path: filepath.Join(t.TempDir(), "none.json")}).Load(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a missing file: err %v", err)
	}
}

// TestDamagedFileNeverReplaced: every operation refuses a damaged file and
// leaves it as it was, reporting what is wrong.
func TestDamagedFileNeverReplaced(t *testing.T) {
	for name, data := range map[string]string{
		"truncated": validFile[:200],
		"garbage":   "\x00\x01 not json",
		"bad key":   strings.Replace(validFile, `"AAEC`, `"!AEC`, 1),
		"empty":     "",
		"too large": strings.Repeat(" ", maxFileSize+1),
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "keyring.json")
			if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
			_, errLoad := File{Path: path}.Load()
			_, _, errRotate := File{Path: path}.Rotate(t0.Add(30*day), 0, &countingReader{})
			_, _, errPrune := File{Path: path}.Prune(t0.Add(30 * day))
			_, errImport := File{Path: path}.Import(t0.Add(30*day), 5, []byte("0123456789abcdef"), ImportOptions{})
			for _, err := range []error{errLoad, errRotate, errPrune, errImport} {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), path) {
					t.Errorf("err %v; want ErrInvalid naming the file", err)
				}
			}
			if got := readFile(t, path); string(got) != data {
				t.Error("the damaged file was changed")
			}
			if res := (File{Path: path}).Check(t0); len(res.Problems) == 0 || res.Keyring != nil {
				t.Errorf("Check found no problem: %+v", res)
			}
		})
	}
}

func TestFileOperations(t *testing.T) {
	path := createTestFile(t)
	rnd := &countingReader{next: 64}

	r, id, err := File{Path: path}.Rotate(t0.Add(7*day), time.Hour, rnd)
	if err != nil || id != 1 {
		t.Fatalf("Rotate: id %d, err %v", id, err)
	}
	loaded, err := File{Path: path}.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mustEncode(t, loaded), mustEncode(t, r)) {
		t.Error("the file differs from the returned keyring")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("rewritten with mode %04o", fi.Mode().Perm())
	}
	if _, _, err := (File{Path: path}).Rotate(t0.Add(7*day), time.Hour, rnd); !errors.Is(err, ErrRotationPending) {
		t.Errorf("second staged Rotate: %v", err)
	}

	// Prune with nothing to remove does not rewrite the file.
	before, _ := os.Stat(path)
	_, removed, err := File{Path: path}.Prune(t0.Add(8 * day))
	if err != nil || removed != nil {
		t.Fatalf("Prune: %v %v", removed, err)
	}
	if after, _ := os.Stat(path); !os.SameFile(before, after) {
		t.Error("Prune rewrote the file with nothing to remove")
	}
	_, removed, err = File{Path: path}.Prune(t0.Add(30 * day))
	if err != nil || fmt.Sprint(removed) != "[0]" {
		t.Fatalf("Prune: %v %v", removed, err)
	}
	if r, _ := (File{Path: path}).Load(); len(r.Keys(t0)) != 1 {
		t.Error("Prune did not remove key 0 from the file")
	}

	if _, err := (File{Path: path}).Import(t0.Add(30*day), 4, []byte("exim secret"), ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	if r, _ := (File{Path: path}).Load(); !verifies(r, t0.Add(30*day), 4) {
		t.Error("imported key not in the file")
	}
	if names := dirEntries(t, filepath.Dir(path)); len(names) != 2 {
		t.Errorf("directory holds %v after the operations", names)
	}

	missing := filepath.Join(t.TempDir(), "none.json")
	if _, _, err := (File{Path: missing}).Rotate(t0, 0, rnd); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Rotate of a missing file: %v", err)
	}
	if _, err := os.Stat((File{Path: missing}).LockPath()); err == nil {
		t.Error("a failed operation on a missing keyring left a lock file")
	}
}

func TestCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring.json")
	bad := strings.NewReplacer(`"id": 1,`, `"id": 0,`, `"AAEC`, `"*AEC`).Replace(validFile)
	os.WriteFile(path, []byte(bad), 0o644)
	res := File{Path: path}.Check(t0)
	if len(res.Problems) != 3 {
		t.Errorf("problems %q; want the mode, the duplicate id and the base64", res.Problems)
	}
	for _, p := range res.Problems {
		if strings.Contains(p, path) {
			t.Errorf("problem %q repeats the path", p)
		}
	}
	os.WriteFile(path, []byte(validFile), 0o600)
	os.Chmod(path, 0o600)
	res = File{Path: path}.Check(time.Date(2025, 1, 30, 0, 0, 0, 0, time.UTC))
	if len(res.Problems) != 0 || res.Keyring == nil || len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "key 0 is retired") {
		t.Errorf("valid file: %+v", res)
	}
	res = File{Path: filepath.Join(filepath.Dir(path), "none")}.Check(t0)
	if len(res.Problems) != 1 || !strings.Contains(res.Problems[0], "no such file") {
		t.Errorf("missing file: %q", res.Problems)
	}
}

// TestKeepOwner: the replacement file keeps the owner and group of the
// file it replaces, so a daemon running as another user can still read it.
func TestKeepOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing a file's owner needs root")
	}
	path := createTestFile(t)
	if err := os.Chown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, _, err := (File{Path: path}).Rotate(t0.Add(day), 0, &countingReader{}); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != 65534 || st.Gid != 65534 {
		t.Errorf("owner %d:%d after rotate, want 65534:65534", st.Uid, st.Gid)
	}
}

// TestConcurrentRotate runs rotations at once from goroutines: the lock
// serialises them, so each succeeds in turn (or is refused cleanly) and the
// file ends valid with distinct ids.
func TestConcurrentRotate(t *testing.T) {
	t.Run("now", func(t *testing.T) {
		path := createTestFile(t)
		const n = 6
		var wg sync.WaitGroup
		ids := make([]int, n)
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, ids[i], errs[i] = File{Path: path}.Rotate(t0.Add(day), 0, &countingReader{next: byte(32 * (i + 1))})
			}()
		}
		wg.Wait()
		seen := map[int]bool{0: true}
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("rotation %d: %v", i, errs[i])
			}
			if seen[ids[i]] {
				t.Errorf("id %d given twice", ids[i])
			}
			seen[ids[i]] = true
		}
		r, err := File{Path: path}.Load()
		if err != nil {
			t.Fatal(err)
		}
		if got := len(r.Keys(t0)); got != n+1 {
			t.Errorf("%d keys in the file, want %d", got, n+1)
		}
	})
	t.Run("staged", func(t *testing.T) {
		path := createTestFile(t)
		const n = 6
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _, errs[i] = File{Path: path}.Rotate(t0.Add(day), time.Hour, &countingReader{next: byte(i)})
			}()
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, ErrRotationPending):
				t.Errorf("unexpected error %v", err)
			}
		}
		if ok != 1 {
			t.Errorf("%d staged rotations succeeded, want exactly 1", ok)
		}
		if r, err := (File{Path: path}).Load(); err != nil || len(r.Keys(t0)) != 2 {
			t.Errorf("file after the race: %v", err)
		}
	})
}

// The helper process of TestConcurrentRotateProcesses and
// TestReadOnlyDirectory: it runs one operation on the keyring named in the
// environment and prints the outcome as JSON.
const helperEnv = "KEYRING_TEST_HELPER"

type helperResult struct {
	ID  int    `json:"id"`
	Err string `json:"err"`
	Is  string `json:"is"`
}

func TestHelperProcess(t *testing.T) {
	op := os.Getenv(helperEnv)
	if op == "" {
		t.Skip("helper process for other tests")
	}
	path := os.Getenv(helperEnv + "_PATH")
	seed, _ := strconv.Atoi(os.Getenv(helperEnv + "_SEED"))
	var res helperResult
	var err error
	switch op {
	case "rotate":
		_, res.ID, err = File{Path: path}.Rotate(t0.Add(day), 0, &countingReader{next: byte(seed)})
	default:
		t.Fatalf("unknown helper op %q", op)
	}
	if err != nil {
		res.Err = err.Error()
		for name, e := range map[string]error{"ErrWrite": ErrWrite, "ErrLocked": ErrLocked, "ErrInvalid": ErrInvalid} {
			if errors.Is(err, e) {
				res.Is = name
			}
		}
	}
	json.NewEncoder(os.Stdout).Encode(res)
}

func helperCommand(t *testing.T, exe, op, path string, seed int) *exec.Cmd {
	cmd := exec.Command(exe, "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+op, helperEnv+"_PATH="+path, helperEnv+"_SEED="+strconv.Itoa(seed))
	return cmd
}

func parseHelperOutput(t *testing.T, out []byte) helperResult {
	t.Helper()
	for _, line := range bytes.Split(out, []byte("\n")) {
		var res helperResult
		if bytes.HasPrefix(line, []byte("{")) && json.Unmarshal(line, &res) == nil {
			return res
		}
	}
	t.Fatalf("no result from the helper process:\n%s", out)
	return helperResult{}
}

// TestConcurrentRotateProcesses is TestConcurrentRotate across processes,
// which is what the lock file is for.
func TestConcurrentRotateProcesses(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Skip(err)
	}
	path := createTestFile(t)
	const n = 4
	cmds := make([]*exec.Cmd, n)
	outs := make([]bytes.Buffer, n)
	for i := range n {
		cmds[i] = helperCommand(t, exe, "rotate", path, 32*(i+1))
		cmds[i].Stdout = &outs[i]
		cmds[i].Stderr = &outs[i]
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[int]bool{0: true}
	for i := range n {
		cmds[i].Wait()
		res := parseHelperOutput(t, outs[i].Bytes())
		if res.Err != "" {
			t.Errorf("process %d: %s", i, res.Err)
			continue
		}
		if seen[res.ID] {
			t.Errorf("id %d given twice", res.ID)
		}
		seen[res.ID] = true
	}
	r, err := File{Path: path}.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got := len(r.Keys(t0)); got != n+1 {
		t.Errorf("%d keys in the file, want %d", got, n+1)
	}
}

// TestReadOnlyDirectory: when the directory cannot be written, Rotate
// fails with ErrWrite and a clear reason, and the old file is intact with
// no temporary file left. Tests usually run as root, whom permissions do
// not stop, so the operation then runs in a helper process as nobody.
func TestReadOnlyDirectory(t *testing.T) {
	base, err := os.MkdirTemp("", "keyring-ro-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(base, "ro"), 0o755); os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	dir := filepath.Join(base, "ro")
	os.Mkdir(dir, 0o755)
	path := filepath.Join(dir, "keyring.json")
	if _, err := (File{Path: path}).Create(t0, &countingReader{}, DefaultOptions()); err != nil {
		t.Fatal(err)
	}
	before := readFile(t, path)

	asRoot := os.Geteuid() == 0
	var exe string
	if asRoot {
		// The test binary lives in a private build directory: copy it
		// where nobody can run it, and give nobody the files (but not the
		// directory).
		self, err := os.Executable()
		if err != nil {
			t.Skip(err)
		}
		exe = filepath.Join(base, "keyring.test")
		data, err := os.ReadFile(self)
		if err != nil {
			t.Skip(err)
		}
		if err := os.WriteFile(exe, data, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{path, (File{Path: path}).LockPath()} {
			if err := os.Chown(p, 65534, 65534); err != nil {
				t.Skipf("cannot simulate a read-only directory: %v", err)
			}
		}
	} else {
		os.Chmod(dir, 0o555)
	}

	run := func(t *testing.T) helperResult {
		if !asRoot {
			_, _, err := File{Path: path}.Rotate(t0.Add(day), 0, &countingReader{})
			res := helperResult{}
			if err != nil {
				res.Err = err.Error()
				if errors.Is(err, ErrWrite) {
					res.Is = "ErrWrite"
				}
			}
			return res
		}
		cmd := helperCommand(t, exe, "rotate", path, 0)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		cmd.Dir = base
		out, err := cmd.CombinedOutput()
		if err != nil && len(out) == 0 {
			t.Skipf("cannot run a helper process as nobody: %v", err)
		}
		return parseHelperOutput(t, out)
	}

	t.Run("temporary file", func(t *testing.T) {
		res := run(t)
		t.Logf("as root: %t; result: %+v", asRoot, res)
		if res.Is != "ErrWrite" || !strings.Contains(res.Err, "permission denied") || !strings.Contains(res.Err, dir) {
			t.Errorf("result %+v; want ErrWrite saying permission denied in %s", res, dir)
		}
		if !bytes.Equal(readFile(t, path), before) {
			t.Error("the keyring changed")
		}
		if names := dirEntries(t, dir); len(names) != 2 {
			t.Errorf("directory holds %v", names)
		}
	})
	t.Run("lock file", func(t *testing.T) {
		if err := os.Remove((File{Path: path}).LockPath()); err != nil && !asRoot {
			t.Skip("cannot remove the lock file from the read-only directory")
		}
		res := run(t)
		t.Logf("as root: %t; result: %+v", asRoot, res)
		if res.Is != "ErrWrite" || !strings.Contains(res.Err, "lock") || !strings.Contains(res.Err, "permission denied") {
			t.Errorf("result %+v; want ErrWrite about the lock file", res)
		}
		if !bytes.Equal(readFile(t, path), before) {
			t.Error("the keyring changed")
		}
	})
}
