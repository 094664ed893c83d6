//go:build !linux

package daemon

import "errors"

// releaseStartupPages is implemented on Linux only.
func releaseStartupPages() (before, after int64, err error) {
	return 0, 0, errors.ErrUnsupported
}
