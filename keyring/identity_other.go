//go:build !unix

package keyring

import (
	"io/fs"
	"os"
)

// identityOf returns what tells one version of a file from another.
func identityOf(fi fs.FileInfo) identity {
	return identity{exists: true, size: fi.Size(), mtime: fi.ModTime().UnixNano(), mode: fi.Mode()}
}

// keepOwner does nothing where files have no Unix owner.
func keepOwner(*os.File, fs.FileInfo) error { return nil }

// openNonBlock is 0 where there are no FIFOs to block on.
const openNonBlock = 0

// ownerWarning does nothing where files have no Unix owner.
func ownerWarning(fs.FileInfo) string { return "" }
