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

// DefaultLockTimeout is how long the operations of a File wait for another
// process's lock unless its LockTimeout says otherwise.
const DefaultLockTimeout = 30 * time.Second

// lockRetry is how often the operations try the lock while they wait.
const lockRetry = 20 * time.Millisecond

// File is a keyring file, with the operations that read, check and change
// it. The changing operations (Create, Rotate, Prune, Import) apply the pure
// methods of Keyring under an exclusive lock, the file's LockPath, and
// replace the file atomically; a reader sees the old file or the new one.
//
// Path may be a symbolic link: the operations read, lock and replace the
// file it points to, so the link stays a link and the file it names is the
// one that changes. Every read opens the file without blocking and refuses
// anything but a regular file, so a FIFO or a device in its place cannot
// hang a reload or a command.
type File struct {
	// Path is the keyring file.
	Path string
	// LockTimeout is how long the changing operations wait for the lock
	// held by another process before failing with ErrLocked; 0 means
	// DefaultLockTimeout.
	LockTimeout time.Duration
}

// LockPath returns the lock file the operations use: the keyring file (the
// file Path points to, if it is a symbolic link) with ".lock" appended, in
// the same directory. It is created 0600 and never removed.
func (f File) LockPath() string {
	if target, err := filepath.EvalSymlinks(f.Path); err == nil {
		return target + ".lock"
	}
	return f.Path + ".lock"
}

// Load reads, checks and parses the keyring file. It must be a regular file
// that group and others have no access to (ErrInsecureMode, naming the file
// and its mode); its contents are checked as by Parse, and the error names
// the file.
func (f File) Load() (*Keyring, error) {
	r, _, err := load(f.Path)
	return r, err
}

// load is Load that also returns the identity of the file it read (the
// zero identity if it could not open it).
func load(path string) (*Keyring, identity, error) {
	fd, fi, err := openRegular(path)
	if err != nil {
		var id identity
		if fi != nil {
			id = identityOf(fi)
		}
		return nil, id, wrapOpenError(path, err)
	}
	defer fd.Close()
	id := identityOf(fi)
	if problem := modeProblem(fi); problem != "" {
		return nil, id, fmt.Errorf("%w: %s: %s (chmod 600 %s)", ErrInsecureMode, path, problem, path)
	}
	data, err := readAll(fd, maxFileSize, "a keyring is a few kilobytes")
	if err != nil {
		return nil, id, fmt.Errorf("%w: %s: %w", ErrInvalid, path, err)
	}
	r, problems, kind := parse(data)
	if kind != nil {
		return nil, id, fmt.Errorf("%w: %s: %s", kind, path, strings.Join(problems, "; "))
	}
	return r, id, nil
}

// errNotRegular is what openRegular returns for anything but a regular
// file; its message says what the file is.
type errNotRegular struct{ mode fs.FileMode }

func (e errNotRegular) Error() string {
	return fmt.Sprintf("not a regular file (mode %s)", e.mode)
}

// openRegular opens path for reading without blocking (a FIFO with no
// writer would block the open itself) and returns it if it is a regular
// file. For anything else the error is an errNotRegular, with the file's
// information.
func openRegular(path string) (*os.File, fs.FileInfo, error) {
	fd, err := os.OpenFile(path, os.O_RDONLY|openNonBlock, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := fd.Stat()
	if err != nil {
		fd.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		fd.Close()
		return nil, fi, errNotRegular{fi.Mode()}
	}
	return fd, fi, nil
}

// wrapOpenError gives an error of openRegular its class: ErrInvalid for a
// file that is not a regular file, the os error otherwise.
func wrapOpenError(path string, err error) error {
	var nr errNotRegular
	if errors.As(err, &nr) {
		return fmt.Errorf("%w: %s: %w", ErrInvalid, path, err)
	}
	return fmt.Errorf("keyring: %w", err)
}

// modeProblem describes what is wrong with the file's permissions, or
// returns "".
func modeProblem(fi fs.FileInfo) string {
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Sprintf("the file has mode %04o (%s), which gives group or others access; it must be 0600", perm, fi.Mode())
	}
	return ""
}

// readAll reads at most limit bytes of f; more is an error that says what
// the file should be.
func readAll(f *os.File, limit int, should string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(f, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(data) > limit {
		return nil, fmt.Errorf("larger than %d bytes; %s", limit, should)
	}
	return data, nil
}

// CheckResult is what Check found in a keyring file.
type CheckResult struct {
	// Keyring is the parsed keyring, nil if the file has a problem.
	Keyring *Keyring
	// Problems are the reasons the file cannot be used, one phrase each.
	Problems []string
	// Warnings are things allowed but worth attention: the file's owner
	// if it is not the user running the check, and Keyring.Warnings.
	Warnings []string
}

// Check examines the keyring file as Load would, but reports every problem
// it finds (the file's mode and every invalid field or key) rather than
// the first, and the warnings at now if the file is usable. Problems and
// warnings do not repeat the path, and never quote a value of the file.
func (f File) Check(now time.Time) CheckResult {
	var res CheckResult
	problem := func(err error) CheckResult {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = fmt.Errorf("%s: %w", pe.Op, pe.Err)
		}
		res.Problems = append(res.Problems, err.Error())
		return res
	}
	fd, fi, err := openRegular(f.Path)
	if errors.Is(err, fs.ErrPermission) {
		if fi, serr := os.Stat(f.Path); serr == nil {
			if w := ownerWarning(fi); w != "" {
				res.Problems = append(res.Problems, w)
			}
		}
	}
	if err != nil {
		return problem(err)
	}
	defer fd.Close()
	if p := modeProblem(fi); p != "" {
		res.Problems = append(res.Problems, p)
	}
	data, err := readAll(fd, maxFileSize, "a keyring is a few kilobytes")
	if err != nil {
		return problem(err)
	}
	r, problems, _ := parse(data)
	res.Problems = append(res.Problems, problems...)
	if len(res.Problems) == 0 {
		res.Keyring = r
		if w := ownerWarning(fi); w != "" {
			res.Warnings = append(res.Warnings, w)
		}
		res.Warnings = append(res.Warnings, r.Warnings(now)...)
	}
	return res
}

// Create writes a new keyring (see New) to the file, which must not exist
// (ErrExists; a symbolic link is not followed). The file is created 0600,
// atomically, under the lock.
func (f File) Create(now time.Time, rand io.Reader, opts Options) (*Keyring, error) {
	if err := opts.validate(); err != nil {
		return nil, err // before creating a lock file
	}
	var r *Keyring
	err := f.withLock(f.Path, func() error {
		if _, err := os.Lstat(f.Path); err == nil {
			return fmt.Errorf("%w: %s; it is never overwritten (use rotate to add a key)", ErrExists, f.Path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("keyring: %w", err)
		}
		var err error
		if r, err = New(now, rand, opts); err != nil {
			return err
		}
		return writeFile(f.Path, r, nil)
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Rotate applies Keyring.Rotate to the file, under the lock, and replaces
// the file atomically. It returns the new keyring and the new key's id.
func (f File) Rotate(now time.Time, delay time.Duration, rand io.Reader) (*Keyring, int, error) {
	var id int
	r, err := f.update(func(r *Keyring) (*Keyring, error) {
		nr, newID, err := r.Rotate(now, delay, rand)
		id = newID
		return nr, err
	})
	if err != nil {
		return nil, 0, err
	}
	return r, id, nil
}

// Prune applies Keyring.Prune to the file, under the lock. It rewrites the
// file only if a key was removed, and returns the removed ids.
func (f File) Prune(now time.Time) (*Keyring, []int, error) {
	var removed []int
	r, err := f.update(func(r *Keyring) (*Keyring, error) {
		nr, ids := r.Prune(now)
		removed = ids
		return nr, nil
	})
	if err != nil {
		return nil, nil, err
	}
	return r, removed, nil
}

// Import applies Keyring.Import to the file, under the lock, and replaces
// the file atomically.
func (f File) Import(now time.Time, id int, secret []byte, opts ImportOptions) (*Keyring, error) {
	return f.update(func(r *Keyring) (*Keyring, error) {
		return r.Import(now, id, secret, opts)
	})
}

// update loads the file under the lock, applies fn and writes the result
// if it differs. It works on the file Path points to; the replacement
// keeps the old file's owner and group.
func (f File) update(fn func(*Keyring) (*Keyring, error)) (*Keyring, error) {
	// Report a missing keyring without leaving a lock file behind.
	target, err := filepath.EvalSymlinks(f.Path)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	var result *Keyring
	err = f.withLock(target, func() error {
		old, _, err := load(target)
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
		fi, err := os.Stat(target)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrWrite, err)
		}
		return writeFile(target, r, fi)
	})
	if err != nil {
		return nil, err
	}
	return result, nil
}

// withLock runs fn holding the exclusive lock of the keyring file at path
// (already resolved).
func (f File) withLock(path string, fn func() error) error {
	timeout := f.LockTimeout
	if timeout <= 0 {
		timeout = DefaultLockTimeout
	}
	lp := path + ".lock"
	l := flock.New(lp, flock.SetPermissions(0o600))
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ok, err := l.TryLockContext(ctx, lockRetry)
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%w: another process held %s for %s", ErrLocked, lp, timeout)
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
