package stormbench

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// clockTick is the unit of the times in /proc/PID/stat: USER_HZ, which
// Linux fixes at 100 for user space.
const clockTick = 10 * time.Millisecond

// procStat is what TreeCPU reads of one /proc/PID/stat line.
type procStat struct {
	pid, ppid int
	// self is utime+stime: the process's own CPU time; children is
	// cutime+cstime: that of its descendants it has waited for.
	self, children time.Duration
}

// parseStat reads a /proc/PID/stat line. The command name, field 2, is in
// parentheses and may hold spaces and parentheses itself: the fields are
// counted after its last ')'.
func parseStat(b []byte) (procStat, error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 1 || end < open {
		return procStat{}, fmt.Errorf("stormbench: malformed /proc stat line %q", b)
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	f := bytes.Fields(b[end+1:])
	// f[0] is field 3 (state): ppid is field 4, utime..cstime 14..17.
	if err != nil || len(f) < 15 {
		return procStat{}, fmt.Errorf("stormbench: malformed /proc stat line %q", b)
	}
	var n [5]int64
	for i, j := range []int{1, 11, 12, 13, 14} {
		if n[i], err = strconv.ParseInt(string(f[j]), 10, 64); err != nil {
			return procStat{}, fmt.Errorf("stormbench: malformed /proc stat line %q", b)
		}
	}
	return procStat{pid: pid, ppid: int(n[0]),
		self: time.Duration(n[1]+n[2]) * clockTick, children: time.Duration(n[3]+n[4]) * clockTick}, nil
}

// TreeCPU returns the CPU time (user and system) that process root and all
// its descendants have used: the own time of each live process of the tree
// plus the time of the descendants they have reaped. A process that
// exits between two calls (an smtpd at max_use, say) is thus still
// counted, in its parent's children time, once its parent has waited for
// it, as Postfix's master does at once. The resolution is 10 ms per
// process.
func TreeCPU(root int) (time.Duration, error) {
	return treeCPU("/proc", root)
}

func treeCPU(proc string, root int) (time.Duration, error) {
	paths, err := filepath.Glob(filepath.Join(proc, "[0-9]*", "stat"))
	if err != nil {
		return 0, err
	}
	kids := map[int][]procStat{}
	var top *procStat
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // gone since the listing
		}
		st, err := parseStat(b)
		if err != nil {
			return 0, err
		}
		if st.pid == root {
			top = &st
		}
		kids[st.ppid] = append(kids[st.ppid], st)
	}
	if top == nil {
		return 0, fmt.Errorf("stormbench: process %d not found in %s", root, proc)
	}
	var total time.Duration
	var walk func(st procStat)
	walk = func(st procStat) {
		total += st.self + st.children
		for _, k := range kids[st.pid] {
			walk(k)
		}
	}
	walk(*top)
	return total, nil
}
