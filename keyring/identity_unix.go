//go:build unix

package keyring

import (
	"io/fs"
	"os"
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
