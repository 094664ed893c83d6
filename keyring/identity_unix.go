//go:build unix

package keyring

import (
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// identityOf returns what tells one version of a file from another.
func identityOf(fi fs.FileInfo) identity {
	id := identity{
		exists: true,
		size:   fi.Size(),
		mtime:  fi.ModTime().UnixNano(),
		mode:   fi.Mode(),
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.dev = uint64(st.Dev)
		id.ino = uint64(st.Ino)
	}
	return id
}

// keepOwner gives f the owner and group of old, if they differ.
func keepOwner(f *os.File, old fs.FileInfo) error {
	st, ok := old.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	cur, err := f.Stat()
	if err != nil {
		return err
	}
	if c, ok := cur.Sys().(*syscall.Stat_t); ok && c.Uid == st.Uid && c.Gid == st.Gid {
		return nil
	}
	return f.Chown(int(st.Uid), int(st.Gid))
}

// openNonBlock opens files without blocking: a FIFO with no writer would
// block open(2) itself.
const openNonBlock = syscall.O_NONBLOCK

// ownerWarning says who owns the file if it is not the user running the
// program, or returns "".
func ownerWarning(fi fs.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || int(st.Uid) == os.Geteuid() {
		return ""
	}
	return fmt.Sprintf("the file is owned by %s, not by %s, who runs this check: with mode 0600 only its owner (and root) can read it, so its owner must be the user the daemon runs as",
		userName(int(st.Uid)), userName(os.Geteuid()))
}

// userName returns "name (uid N)", or "uid N" if the user has no name.
func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return fmt.Sprintf("%s (uid %d)", u.Username, uid)
	}
	return fmt.Sprintf("uid %d", uid)
}
