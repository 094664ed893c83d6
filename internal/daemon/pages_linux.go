package daemon

// Start-up pages. A Go program's start touches most of its executable:
// package initialisation, the configuration and keyring parsers, the CLI.
// The kernel maps file pages in blocks around each fault, so a daemon that
// has started has about 10 MiB of its 13 MB executable resident, most of
// which it will not touch again. Those pages are read-only copies of the
// file; dropping our mappings of them loses nothing (the kernel maps a page
// again from the page cache, or reads it from the file, the next time it is
// touched) and leaves resident what the daemon really uses. The exception
// is the RELRO segment of a position-independent build (-buildmode=pie, as
// some distributions build): the dynamic loader writes its relocations
// there at start and then makes it read-only, so its pages are not the
// file's, and dropping them would crash the daemon.

import (
	"bufio"
	"debug/elf"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// releaseStartupPages drops this process's mappings of the read-only
// segments of its own executable (its code and read-only data), and
// returns how many bytes of file pages were resident before and after.
// Writable mappings and the relocated read-only data are never touched:
// their changed pages exist nowhere else.
func releaseStartupPages() (before, after int64, err error) {
	fi, err := os.Stat("/proc/self/exe")
	if err != nil {
		return 0, 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, fmt.Errorf("no inode for /proc/self/exe")
	}
	relocated, err := relocatedRanges("/proc/self/exe")
	if err != nil {
		return 0, 0, err
	}
	ranges, err := readOnlyMappings("/proc/self/maps", st.Ino, relocated)
	if err != nil {
		return 0, 0, err
	}
	before = residentFilePages()
	for _, r := range ranges {
		if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, r[0], r[1]-r[0], syscall.MADV_DONTNEED); errno != 0 {
			return before, residentFilePages(), fmt.Errorf("madvise: %w", errno)
		}
	}
	return before, residentFilePages(), nil
}

// relocatedRanges returns the file offsets [start, end) of exe's RELRO
// segments (PT_GNU_RELRO), rounded out to whole pages: read-only data that
// the dynamic loader relocated before it made it read-only.
func relocatedRanges(exe string) ([][2]uint64, error) {
	f, err := elf.Open(exe)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	page := uint64(os.Getpagesize())
	var ranges [][2]uint64
	for _, p := range f.Progs {
		if p.Type == elf.PT_GNU_RELRO {
			ranges = append(ranges, [2]uint64{p.Off &^ (page - 1), (p.Off + p.Memsz + page - 1) &^ (page - 1)})
		}
	}
	return ranges, nil
}

// readOnlyMappings lists the private mappings of the file with inode ino
// in a /proc/PID/maps file that are neither writable nor shared, and map
// none of the file offsets in skip, as [start, end) address pairs.
func readOnlyMappings(path string, ino uint64, skip [][2]uint64) ([][2]uintptr, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ranges [][2]uintptr
	s := bufio.NewScanner(f)
	for s.Scan() {
		// address perms offset dev inode [path]
		fields := strings.Fields(s.Text())
		if len(fields) < 5 || fields[4] != strconv.FormatUint(ino, 10) {
			continue
		}
		if perms := fields[1]; len(perms) != 4 || perms[0] != 'r' || perms[1] != '-' || perms[3] != 'p' {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		off, err3 := strconv.ParseUint(fields[2], 16, 64)
		if !ok || err1 != nil || err2 != nil || err3 != nil || end <= start {
			return nil, fmt.Errorf("%s: unreadable line %q", path, s.Text())
		}
		if slices.ContainsFunc(skip, func(r [2]uint64) bool { return off < r[1] && r[0] < off+(end-start) }) {
			continue
		}
		ranges = append(ranges, [2]uintptr{uintptr(start), uintptr(end)})
	}
	return ranges, s.Err()
}

// residentFilePages is RssFile from /proc/self/status in bytes, or -1.
func residentFilePages() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return -1
			}
			return kb << 10
		}
	}
	return -1
}
