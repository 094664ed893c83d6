// Command unitfilter runs a command under the system call filter of a
// systemd unit, as systemd would apply it: the unit's SystemCallFilter=
// lines in order, their sets expanded as "systemd-analyze syscall-filter"
// lists them, and SystemCallErrorNumber= for the calls the filter leaves
// out; and its LimitNOFILE=. It needs systemd-analyze but no running systemd, so a test, and CI on
// the installed package, can check that batv starts, serves and stops under
// the filter its unit ships:
//
//	unitfilter -unit /lib/systemd/system/batv.service -- /usr/sbin/batv milter --config FILE
//
// Run it as the unit's user (runuser -u batv -- unitfilter ...): systemd
// too changes the user before it applies the filter. The rest of the
// unit's sandbox (namespaces, capabilities) is not applied.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
)

func main() {
	unit := flag.String("unit", "", "the systemd unit `FILE` whose [Service] SystemCallFilter= applies")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: unitfilter -unit FILE -- COMMAND [ARG]...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *unit == "" || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*unit, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "unitfilter:", err)
		os.Exit(1)
	}
}

// run loads the unit's filter into this process and executes args.
func run(unitPath string, args []string) error {
	data, err := os.ReadFile(unitPath)
	if err != nil {
		return err
	}
	u, err := parseUnit(data)
	if err != nil {
		return fmt.Errorf("%s: %w", unitPath, err)
	}
	out, err := exec.Command("systemd-analyze", "syscall-filter").Output()
	if err != nil {
		return fmt.Errorf("systemd-analyze syscall-filter: %w", err)
	}
	policy, err := u.policy(parseSets(out))
	if err != nil {
		return fmt.Errorf("%s: %w", unitPath, err)
	}
	path, err := exec.LookPath(args[0])
	if err != nil {
		return err
	}
	if err := u.setNofile(); err != nil {
		return fmt.Errorf("%s: %w", unitPath, err)
	}
	// TSYNC: every thread of this process, then the program it executes.
	filter := seccomp.Filter{NoNewPrivs: true, Flag: seccomp.FilterFlagTSync, Policy: policy}
	if err := seccomp.LoadFilter(filter); err != nil {
		return err
	}
	return syscall.Exec(path, args, os.Environ())
}

// unitFilter is what a unit says about system calls.
type unitFilter struct {
	filters []string // the SystemCallFilter= values, in order
	errno   string   // SystemCallErrorNumber=, "" if not set
	nofile  string   // LimitNOFILE=, "" if not set
}

// setNofile sets RLIMIT_NOFILE as LimitNOFILE= says: "N", or "SOFT:HARD".
// A user who may not raise the hard limit that far gets the hard limit it
// has, and a warning.
func (u unitFilter) setNofile() error {
	if u.nofile == "" {
		return nil
	}
	soft, hard, ok := strings.Cut(u.nofile, ":")
	if !ok {
		hard = soft
	}
	var lim syscall.Rlimit
	var err1, err2 error
	lim.Cur, err1 = strconv.ParseUint(soft, 10, 64)
	lim.Max, err2 = strconv.ParseUint(hard, 10, 64)
	if err1 != nil || err2 != nil || lim.Cur > lim.Max {
		return fmt.Errorf("LimitNOFILE=%s: want N or SOFT:HARD", u.nofile)
	}
	err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	if err == syscall.EPERM {
		var have syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &have); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "unitfilter: LimitNOFILE=%s: this user may not raise the hard limit beyond %d; using that\n", u.nofile, have.Max)
		lim.Cur, lim.Max = min(lim.Cur, have.Max), have.Max
		err = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	return err
}

// parseUnit reads the system call settings of a unit's [Service] section.
func parseUnit(data []byte) (unitFilter, error) {
	var u unitFilter
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasPrefix(line, "[") {
			section = line
			continue
		}
		key, value, _ := strings.Cut(line, "=")
		if section != "[Service]" {
			continue
		}
		switch strings.TrimSpace(key) {
		case "SystemCallFilter":
			if value = strings.TrimSpace(value); value == "" {
				u.filters = nil // an empty assignment resets the list
				continue
			}
			u.filters = append(u.filters, value)
		case "SystemCallErrorNumber":
			u.errno = strings.TrimSpace(value)
		case "LimitNOFILE":
			u.nofile = strings.TrimSpace(value)
		}
	}
	if len(u.filters) == 0 {
		return u, fmt.Errorf("no SystemCallFilter= in [Service]")
	}
	return u, sc.Err()
}

// parseSets reads the output of "systemd-analyze syscall-filter": a set's
// name at the start of a line, then its members indented, each a system
// call or another set. Comments, and the calls listed as commented out
// (those that the running kernel does not know), are skipped.
func parseSets(out []byte) map[string][]string {
	sets := map[string][]string{}
	cur := ""
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "@"):
			cur = strings.TrimSpace(line)
		case strings.HasPrefix(line, " ") && cur != "":
			if m := strings.TrimSpace(line); m != "" && !strings.HasPrefix(m, "#") {
				sets[cur] = append(sets[cur], m)
			}
		default:
			cur = ""
		}
	}
	return sets
}

// expand returns the system calls a filter word stands for: a set, with
// the sets in it, or one call.
func expand(word string, sets map[string][]string) ([]string, error) {
	if !strings.HasPrefix(word, "@") {
		return []string{word}, nil
	}
	members, ok := sets[word]
	if !ok {
		return nil, fmt.Errorf("unknown system call set %s", word)
	}
	var calls []string
	for _, m := range members {
		c, err := expand(m, sets)
		if err != nil {
			return nil, err
		}
		calls = append(calls, c...)
	}
	return calls, nil
}

// syscalls applies the filter lines as systemd does: the first line makes
// the filter an allow list, or a deny list if it starts with "~"; an allow
// list starts with @default. Then each line in order adds its calls to the
// list, or, for a line of the other kind, removes them. It returns the
// calls on the list and whether it is an allow list.
func (u unitFilter) syscalls(sets map[string][]string) (map[string]bool, bool, error) {
	list := map[string]bool{}
	allow := !strings.HasPrefix(u.filters[0], "~")
	if allow {
		calls, err := expand("@default", sets)
		if err != nil {
			return nil, false, err
		}
		for _, c := range calls {
			list[c] = true
		}
	}
	for _, f := range u.filters {
		f, invert := strings.CutPrefix(f, "~")
		for _, word := range strings.Fields(f) {
			word, _, _ = strings.Cut(word, ":") // a per-call errno: not supported, the call still counts
			calls, err := expand(word, sets)
			if err != nil {
				return nil, false, err
			}
			for _, c := range calls {
				if invert == allow {
					delete(list, c)
				} else {
					list[c] = true
				}
			}
		}
	}
	return list, allow, nil
}

// policy is the seccomp policy of the unit's filter for this machine's
// architecture. Calls this architecture does not have are left out, as
// systemd leaves them out.
func (u unitFilter) policy(sets map[string][]string) (seccomp.Policy, error) {
	list, allow, err := u.syscalls(sets)
	if err != nil {
		return seccomp.Policy{}, err
	}
	info, err := arch.GetInfo("")
	if err != nil {
		return seccomp.Policy{}, err
	}
	var names []string
	for c := range list {
		if _, ok := info.SyscallNames[c]; ok {
			names = append(names, c)
		}
	}
	slices.Sort(names)
	// The action for the calls the filter refuses.
	refuse := seccomp.ActionKillProcess
	switch u.errno {
	case "":
	case "EPERM":
		refuse = seccomp.ActionErrno // returns EPERM
	default:
		return seccomp.Policy{}, fmt.Errorf("SystemCallErrorNumber=%s: only EPERM is supported", u.errno)
	}
	if allow {
		return seccomp.Policy{DefaultAction: refuse,
			Syscalls: []seccomp.SyscallGroup{{Action: seccomp.ActionAllow, Names: names}}}, nil
	}
	return seccomp.Policy{DefaultAction: seccomp.ActionAllow,
		Syscalls: []seccomp.SyscallGroup{{Action: refuse, Names: names}}}, nil
}
