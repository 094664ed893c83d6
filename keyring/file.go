package keyring

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gofrs/flock"
)

// How long the file operations wait for another process's lock, and how
// often they try.
var (
	lockTimeout = 30 * time.Second
	lockRetry   = 20 * time.Millisecond
)

// LockPath returns the lock file the operations use for the keyring at
// path: the same name with ".lock" appended, in the same directory. It is
// created 0600 and never removed.
func LockPath(path string) string { return path + ".lock" }

// Load reads, checks and parses the keyring file at path. The file must be
// a regular file that group and others have no access to (ErrInsecureMode,
// naming the file and its mode); its contents are checked as by Parse, and
// the error names the file.
func Load(path string) (*Keyring, error) {
	r, _, err := load(path)
	return r, err
}

// load is Load that also returns the identity of the file it read (the
// zero identity if it could not open it).
func load(path string) (*Keyring, identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, identity{}, fmt.Errorf("keyring: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, identity{}, fmt.Errorf("keyring: %w", err)
	}
	id := identityOf(fi)
	if err := checkMode(path, fi); err != nil {
		return nil, id, err
	}
	data, err := readAll(f)
	if err != nil {
		return nil, id, fmt.Errorf("%w: %s: %w", ErrInvalid, path, err)
	}
	r, problems, kind := parse(data)
	if kind != nil {
		return nil, id, fmt.Errorf("%w: %s: %s", kind, path, strings.Join(problems, "; "))
	}
	return r, id, nil
}

func checkMode(path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s: %s", ErrInvalid, path, notRegular(fi))
	}
	if problem := modeProblem(fi); problem != "" {
		return fmt.Errorf("%w: %s: %s (chmod 600 %s)", ErrInsecureMode, path, problem, path)
	}
	return nil
}

func notRegular(fi fs.FileInfo) string {
	return fmt.Sprintf("not a regular file (mode %s)", fi.Mode())
}

// modeProblem describes what is wrong with the file's permissions, or
// returns "".
func modeProblem(fi fs.FileInfo) string {
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Sprintf("the file has mode %04o (%s), which gives group or others access; it must be 0600", perm, fi.Mode())
	}
	return ""
}

func readAll(f *os.File) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("larger than %d bytes; a keyring is a few kilobytes", maxFileSize)
	}
	return data, nil
}

// CheckResult is what Check found in a keyring file.
type CheckResult struct {
	// Keyring is the parsed keyring, nil if the file has a problem.
	Keyring *Keyring
	// Problems are the reasons the file cannot be used, one phrase each.
	Problems []string
	// Warnings are things allowed but worth attention; see
	// Keyring.Warnings.
	Warnings []string
}

// Check examines the keyring file at path as Load would, but reports every
// problem it finds (the file's mode and every invalid field or key) rather
// than the first, and the warnings at now if the file is usable. Problems
// and warnings do not repeat the path.
func Check(path string, now time.Time) CheckResult {
	var res CheckResult
	problem := func(err error) CheckResult {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = fmt.Errorf("%s: %w", pe.Op, pe.Err)
		}
		res.Problems = append(res.Problems, err.Error())
		return res
	}
	f, err := os.Open(path)
	if err != nil {
		return problem(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return problem(err)
	}
	if !fi.Mode().IsRegular() {
		return problem(errors.New(notRegular(fi)))
	}
	if p := modeProblem(fi); p != "" {
		res.Problems = append(res.Problems, p)
	}
	data, err := readAll(f)
	if err != nil {
		return problem(err)
	}
	r, problems, _ := parse(data)
	res.Problems = append(res.Problems, problems...)
	if len(res.Problems) == 0 {
		res.Keyring = r
		res.Warnings = r.Warnings(now)
	}
	return res
}

// Create writes a new keyring (see New) to path, which must not exist
// (ErrExists). The file is created 0600, atomically, under the lock.
func Create(path string, now time.Time, rand io.Reader, opts Options) (*Keyring, error) {
	if err := opts.validate(); err != nil {
		return nil, err // before creating a lock file
	}
	var r *Keyring
	err := withLock(path, func() error {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%w: %s; it is never overwritten (use rotate to add a key)", ErrExists, path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("keyring: %w", err)
		}
		var err error
		if r, err = New(now, rand, opts); err != nil {
			return err
		}
		return writeFile(path, r, nil)
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Rotate applies Keyring.Rotate to the file at path, under the lock, and
// replaces the file atomically. It returns the new keyring and the new
// key's id.
func Rotate(path string, now time.Time, delay time.Duration, rand io.Reader) (*Keyring, int, error) {
	var id int
	r, err := update(path, func(r *Keyring) (*Keyring, error) {
		nr, newID, err := r.Rotate(now, delay, rand)
		id = newID
		return nr, err
	})
	if err != nil {
		return nil, 0, err
	}
	return r, id, nil
}

// Prune applies Keyring.Prune to the file at path, under the lock. It
// rewrites the file only if a key was removed, and returns the removed ids.
func Prune(path string, now time.Time) (*Keyring, []int, error) {
	var removed []int
	r, err := update(path, func(r *Keyring) (*Keyring, error) {
		nr, ids := r.Prune(now)
		removed = ids
		return nr, nil
	})
	if err != nil {
		return nil, nil, err
	}
	return r, removed, nil
}

// Import applies Keyring.Import to the file at path, under the lock, and
// replaces the file atomically.
func Import(path string, now time.Time, id int, secret []byte, opts ImportOptions) (*Keyring, error) {
	return update(path, func(r *Keyring) (*Keyring, error) {
		return r.Import(now, id, secret, opts)
	})
}

// update loads the file under the lock, applies fn and writes the result
// if it differs. The replacement keeps the old file's owner and group.
func update(path string, fn func(*Keyring) (*Keyring, error)) (*Keyring, error) {
	// Report a missing keyring without leaving a lock file behind.
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	var result *Keyring
	err := withLock(path, func() error {
		old, _, err := load(path)
		if err != nil {
			return err
		}
		r, err := fn(old)
		if err != nil {
			return err
		}
		result = r
		if r == old {
			return nil
		}
		fi, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrWrite, err)
		}
		return writeFile(path, r, fi)
	})
	if err != nil {
		return nil, err
	}
	return result, nil
}

// withLock runs fn holding the exclusive lock of the keyring at path.
func withLock(path string, fn func() error) error {
	lp := LockPath(path)
	l := flock.New(lp, flock.SetPermissions(0o600))
	ctx, cancel := context.WithTimeout(context.Background(), lockTimeout)
	defer cancel()
	ok, err := l.TryLockContext(ctx, lockRetry)
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%w: another process held %s for %s", ErrLocked, lp, lockTimeout)
	}
	if err != nil || !ok {
		return fmt.Errorf("%w: lock %s: %w", ErrWrite, lp, err)
	}
	defer l.Unlock()
	return fn()
}

// writeFile replaces path atomically with the encoded keyring: a 0600
// temporary file in the same directory, written and synced, renamed over
// path, then the directory synced. If old is not nil the new file gets its
// owner and group. On any error path is left as it was.
func writeFile(path string, r *Keyring, old fs.FileInfo) (err error) {
	data, err := r.encode()
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrWrite, path, err)
	}
	renamed := false
	defer func() {
		if err != nil && !renamed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrWrite, path, err)
	}
	if old != nil {
		if err := keepOwner(tmp, old); err != nil {
			return fmt.Errorf("%w: %s: keep the owner of the old file: %w", ErrWrite, path, err)
		}
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrWrite, path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrWrite, path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrWrite, path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrWrite, path, err)
	}
	renamed = true
	// The rename is done: from here the new file is in place, and a
	// failure only means it might not survive a crash.
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("%w: %s: sync directory: %w", ErrWrite, path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("%w: %s: sync directory: %w", ErrWrite, path, err)
	}
	return nil
}
