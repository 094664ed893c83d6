// Command benchrun is the load half of "make bench": it starts the batv
// milter daemon and the do-nothing reference milter (internal/refmilter)
// side by side, drives both with the same load (package internal/load,
// the engine of "batv bench") and prints a table of throughput, latency,
// milter CPU per message and peak memory, with each batv figure set
// against the reference's from the same run.
//
//	go run ./internal/benchrun -batv bin/batv -ref bin/refmilter
//
// Every measurement is repeated -runs times, batv and the reference
// alternating, and the median is shown. The daemons run with a fresh
// keyring and configuration in a temporary directory, log at info level
// (one line per decision, as in production) to a file there, and are
// stopped, and the directory removed, at the end or on SIGINT/SIGTERM.
// docs/performance.md explains the scenarios and records measured
// figures.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/batv/batv/internal/load"
	"github.com/batv/batv/internal/testenv/daemontest"
	"github.com/batv/batv/keyring"
)

func main() {
	var o runOptions
	flag.StringVar(&o.batv, "batv", "bin/batv", "the batv binary")
	flag.StringVar(&o.ref, "ref", "bin/refmilter", "the reference milter binary")
	flag.IntVar(&o.messages, "messages", 6000, "messages per measurement")
	flag.IntVar(&o.warmup, "warmup", 1000, "warm-up messages before each measurement")
	flag.IntVar(&o.runs, "runs", 3, "measurements per milter and scenario (the median is shown)")
	flag.StringVar(&o.only, "only", "", "run only the scenarios whose name contains this")
	flag.StringVar(&o.verify, "verify", "", "lines added to batv's [verify] table, e.g. 'refuse_untagged_at = \"rcpt\"'")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchrun:", err)
		os.Exit(1)
	}
}

type runOptions struct {
	batv, ref              string
	verify                 string // lines for batv's [verify] table
	messages, warmup, runs int
	only                   string
}

// A target is one milter socket under test.
type target struct {
	name     string // as shown in the table
	network  string
	address  string
	proc     *proc
	anyReply bool
	ref      bool
}

// A scenario is one load pattern and workload, run against several
// targets, the last of which is the reference the others are set
// against.
type scenario struct {
	name        string
	workload    load.Workload
	concurrency int
	perConn     int
	messages    int
	targets     []*target
}

func run(ctx context.Context, o runOptions, out io.Writer) (err error) {
	dir, err := os.MkdirTemp("", "batv-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var procs []*proc
	defer func() {
		for _, p := range procs {
			if e := p.stop(); e != nil && err == nil {
				err = e
			}
		}
	}()

	kr := filepath.Join(dir, "keyring.json")
	if b, err := exec.CommandContext(ctx, o.batv, "keys", "init", "--keyring", kr).CombinedOutput(); err != nil {
		return fmt.Errorf("batv keys init: %v: %s", err, b)
	}
	keys, err := keyring.File{Path: kr}.Load()
	if err != nil {
		return err
	}
	sock := func(name string) string { return filepath.Join(dir, name+".sock") }
	batvPort, refPort := freePort(), freePort()
	if batvPort == 0 || refPort == 0 {
		return errors.New("no free TCP port on 127.0.0.1")
	}

	// Daemon A: the policy defaults (forged status headers removed by the
	// milter), one listener per role combination. Daemon B: the same with
	// remove_forged_headers = false, as docs/postfix.md suggests for a
	// busy MX that strips them with header_checks.
	bothRoles := []string{"outbound", "inbound"}
	cfgA := daemonConfig(kr, true, []daemontest.Listener{
		{Name: "both", Address: "unix:" + sock("both"), Roles: bothRoles},
		{Name: "out", Address: "unix:" + sock("out"), Roles: []string{"outbound"}},
		{Name: "in", Address: "unix:" + sock("in"), Roles: []string{"inbound"}},
		{Name: "tcp", Address: fmt.Sprintf("inet:127.0.0.1:%d", batvPort), Roles: bothRoles},
	}, o.verify)
	cfgB := daemonConfig(kr, false, []daemontest.Listener{{Name: "in", Address: "unix:" + sock("in-nohdr"), Roles: []string{"inbound"}}}, o.verify)
	start := func(name string, args ...string) (*proc, error) {
		p, err := startProc(ctx, filepath.Join(dir, name+".log"), args...)
		if err == nil {
			procs = append(procs, p)
		}
		return p, err
	}
	var batvA, batvB, refUnix, refTCP *proc
	for _, s := range []struct {
		p    **proc
		name string
		args []string
		wait []string
	}{
		{&batvA, "batv-a", []string{o.batv, "milter", "--config", writeFile(dir, "a.toml", cfgA)},
			[]string{"unix:" + sock("both"), "unix:" + sock("out"), "unix:" + sock("in"), fmt.Sprintf("tcp:127.0.0.1:%d", batvPort)}},
		{&batvB, "batv-b", []string{o.batv, "milter", "--config", writeFile(dir, "b.toml", cfgB)},
			[]string{"unix:" + sock("in-nohdr")}},
		{&refUnix, "ref-unix", []string{o.ref, "-listen", "unix:" + sock("ref")}, []string{"unix:" + sock("ref")}},
		{&refTCP, "ref-tcp", []string{o.ref, "-listen", fmt.Sprintf("inet:127.0.0.1:%d", refPort)},
			[]string{fmt.Sprintf("tcp:127.0.0.1:%d", refPort)}},
	} {
		p, err := start(s.name, s.args...)
		if err != nil {
			return err
		}
		if err := p.waitListening(ctx, s.wait); err != nil {
			return err
		}
		*s.p = p
	}

	unix := func(name, path string, p *proc) *target {
		return &target{name: name, network: "unix", address: path, proc: p}
	}
	ref := &target{name: "reference (go-milter, does nothing)", network: "unix", address: sock("ref"), proc: refUnix, anyReply: true, ref: true}
	refT := &target{name: "reference (go-milter, does nothing)", network: "tcp", address: fmt.Sprintf("127.0.0.1:%d", refPort), proc: refTCP, anyReply: true, ref: true}
	both := unix("batv, listener outbound+inbound", sock("both"), batvA)
	outOnly := unix("batv, listener outbound", sock("out"), batvA)
	inOnly := unix("batv, listener inbound", sock("in"), batvA)
	inNoHdr := unix("batv, listener inbound, remove_forged_headers=false", sock("in-nohdr"), batvB)
	tcpBoth := &target{name: "batv, listener outbound+inbound", network: "tcp", address: fmt.Sprintf("127.0.0.1:%d", batvPort), proc: batvA}

	n := o.messages
	scenarios := []scenario{
		{"unix, 64 connections x 10 messages", load.Outbound, 64, 10, n, []*target{both, outOnly, ref}},
		{"unix, 64 connections x 10 messages", load.InboundValid, 64, 10, n, []*target{both, inOnly, inNoHdr, ref}},
		{"unix, 64 connections x 10 messages", load.InboundForged, 64, 10, n, []*target{both, inOnly, ref}},
		{"tcp loopback, 1 connection", load.Outbound, 1, 0, max(n/3, 100), []*target{tcpBoth, refT}},
		{"tcp loopback, 1 connection", load.InboundValid, 1, 0, max(n/3, 100), []*target{tcpBoth, refT}},
		{"unix, 256 connections x 10 messages", load.Outbound, 256, 10, n, []*target{both, outOnly, ref}},
		{"unix, 256 connections x 10 messages", load.InboundValid, 256, 10, n, []*target{both, inOnly, ref}},
	}

	fmt.Fprintf(out, "benchrun: %d messages per measurement after %d warm-up, median of %d runs, batv and the reference alternating\n",
		n, o.warmup, o.runs)
	fmt.Fprintf(out, "machine: %s\n\n", machine())
	fmt.Fprintln(out, "| scenario | workload | milter | round trips | msg/s | p50 | p99 | CPU/msg | peak RSS | msg/s vs ref | CPU vs ref | p99 vs ref |")
	fmt.Fprintln(out, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, sc := range scenarios {
		if o.only != "" && !strings.Contains(sc.name+" "+string(sc.workload), o.only) {
			continue
		}
		reps := make([][]*load.Report, len(sc.targets))
		for r := 0; r < o.runs; r++ {
			for i, t := range sc.targets {
				rep, err := measure(ctx, o, sc, t, keys)
				if err != nil {
					return fmt.Errorf("%s, %s, %s: %w", sc.name, sc.workload, t.name, err)
				}
				reps[i] = append(reps[i], rep)
			}
		}
		refMed := median(reps[len(reps)-1])
		for i, t := range sc.targets {
			m := median(reps[i])
			ratio := func(a, b float64) string {
				if t.ref || b == 0 {
					return "-"
				}
				return fmt.Sprintf("%.2f", a/b)
			}
			fmt.Fprintf(out, "| %s | %s | %s | %d | %.0f | %v | %v | %v | %.1f MiB | %s | %s | %s |\n",
				sc.name, sc.workload, t.name, m.roundTrips, m.rate, load.Micro(m.p50), load.Micro(m.p99),
				load.Micro(m.cpu), float64(m.rss)/(1<<20),
				ratio(m.rate, refMed.rate), ratio(float64(m.cpu), float64(refMed.cpu)), ratio(float64(m.p99), float64(refMed.p99)))
		}
	}
	fmt.Fprintf(out, "\nmachine at the end: %s\n", machine())
	return nil
}

// measure runs one load against one target, resetting its peak RSS
// first so that the figure is that of this measurement.
func measure(ctx context.Context, o runOptions, sc scenario, t *target, keys *keyring.Keyring) (*load.Report, error) {
	if err := t.proc.alive(); err != nil {
		return nil, err
	}
	rep, err := load.Run(ctx, load.Options{
		Network: t.network, Address: t.address, Workload: sc.workload, AnyReply: t.anyReply,
		Messages: sc.messages, Warmup: o.warmup, Concurrency: sc.concurrency, PerConn: sc.perConn,
		Keys: keys, PID: t.proc.cmd.Process.Pid, ResetPeakRSS: true,
	})
	if err != nil {
		return nil, err
	}
	if rep.Failed() {
		return nil, fmt.Errorf("%d errors, %d mismatches, %d checked: %s", rep.Errors, rep.Mismatches, rep.OK,
			strings.Join(rep.Samples, "; "))
	}
	return rep, nil
}

type summary struct {
	rate          float64
	p50, p99, cpu time.Duration
	rss           int64
	roundTrips    int
}

// median takes each figure's median over the runs separately.
func median(reps []*load.Report) summary {
	mid := func(f func(*load.Report) float64) float64 {
		v := make([]float64, len(reps))
		for i, r := range reps {
			v[i] = f(r)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return summary{
		rate:       mid(func(r *load.Report) float64 { return r.Rate }),
		p50:        time.Duration(mid(func(r *load.Report) float64 { return float64(r.P50) })),
		p99:        time.Duration(mid(func(r *load.Report) float64 { return float64(r.P99) })),
		cpu:        time.Duration(mid(func(r *load.Report) float64 { return float64(r.CPUPerMessage) })),
		rss:        int64(mid(func(r *load.Report) float64 { return float64(r.PeakRSS) })),
		roundTrips: reps[0].RoundTrips,
	}
}

// daemonConfig is a batv.toml for the benchmark: the keyring, info-level
// logs, the listeners, signing and verifying example.com (the load
// generator's default domain), and no grace period for untagged bounces.
func daemonConfig(keyringPath string, removeForged bool, ls []daemontest.Listener, verify string) string {
	return daemontest.Config{
		Keyring: keyringPath, LogLevel: "info", MaxConnections: 4096, Listeners: ls,
		Verify: fmt.Sprintf("remove_forged_headers = %v\n%s", removeForged, verify),
	}.TOML()
}

func writeFile(dir, name, content string) string {
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		panic(err)
	}
	return path
}

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// proc is a milter process the benchmark started.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan error
}

func startProc(ctx context.Context, logPath string, args ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, log: logPath, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	return p, nil
}

// waitListening waits until every address ("unix:PATH", "tcp:HOST:PORT")
// accepts connections.
func (p *proc) waitListening(ctx context.Context, addrs []string) error {
	deadline := time.Now().Add(15 * time.Second)
	for _, a := range addrs {
		network, address, _ := strings.Cut(a, ":")
		for {
			if c, err := net.DialTimeout(network, address, time.Second); err == nil {
				c.Close()
				break
			}
			if err := p.alive(); err != nil {
				return err
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("%s: not listening on %s; log:\n%s", p.cmd.Path, a, p.tail())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

func (p *proc) alive() error {
	select {
	case err := <-p.done:
		p.done <- err
		return fmt.Errorf("%s exited (%v); log:\n%s", p.cmd.Path, err, p.tail())
	default:
		return nil
	}
}

func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// stop sends SIGTERM and waits; after 10 seconds it kills.
func (p *proc) stop() error {
	if err := p.alive(); err != nil {
		return nil // already gone
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop on SIGTERM", p.cmd.Path)
	}
}

// machine describes the machine for the report.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = ", load average " + strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return fmt.Sprintf("%d CPUs (%s)%s", runtime.NumCPU(), model, load)
}
