package daemon

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"
	"golang.org/x/sys/unix"

	"github.com/batv/batv/internal/logq"
	"github.com/batv/batv/internal/metrics"
	"github.com/batv/batv/internal/policyd"
	"github.com/batv/batv/internal/serve"
	"github.com/batv/batv/internal/socketmap"
	"github.com/batv/batv/keyring"
	"github.com/batv/batv/milter"
	"github.com/batv/batv/policy"
)

// Options are what the command line gives the daemon beside the file.
type Options struct {
	// ConfigPath is the configuration file, or "" for the embedded
	// default (DefaultConfig with Domains).
	ConfigPath string
	// Domains are signed and verified when there is no file; with a file
	// they are added to both lists.
	Domains []string
	// Keyring overrides the keyring path of the configuration.
	Keyring string
	// Stderr receives the log.
	Stderr io.Writer
	// Now returns the time; nil means time.Now. For tests.
	Now func() time.Time
	// Reload and Stop are signalled by the caller: each receive on Reload
	// reloads; Stop's first receive shuts down gracefully, a second one
	// forces the exit.
	Reload <-chan struct{}
	Stop   <-chan struct{}
	// Ready, if set, is called with the daemon once it serves.
	Ready func(*Daemon)
	// Version is the program's version, for the log and batv_build_info.
	Version string
}

// Daemon is a running batv daemon.
type Daemon struct {
	opts     Options
	log      *slog.Logger
	level    slog.LevelVar
	state    atomic.Pointer[state]
	started  *Config // the configuration the listeners were opened with
	keys     *keyring.Watcher
	metrics  *daemonMetrics
	registry *prometheus.Registry

	listeners   []*serve.Listener
	lines       *logq.Queue // the milter sessions' log lines
	metricsAddr string      // where the metrics endpoint listens, once it does
	closers     []func()

	reloadMu sync.Mutex
}

// state is everything a decision is made with; replaced as a whole.
type state struct {
	cfg    *Config
	policy *policy.Policy
}

// Run loads the configuration and keyring, serves until Stop, and returns
// nil after a graceful shutdown. A configuration or keyring problem at
// start is returned wrapping ErrConfig or a keyring error.
func Run(opts Options) error {
	d := &Daemon{opts: opts}
	if d.opts.Stderr == nil {
		d.opts.Stderr = os.Stderr
	}
	cfg, err := d.loadConfig()
	if err != nil {
		return err
	}
	fdNeed, fdLimit, err := cfg.checkDescriptors()
	if err != nil {
		return &ConfigError{Problems: []string{err.Error()}}
	}
	// A missing socket directory is not a configuration error here:
	// another unit may create it, so a restart may help (check-config
	// reports it as one).
	if err := errors.Join(cfg.checkSocketDirs()...); err != nil {
		return err
	}
	d.setLogger(cfg)
	for _, w := range cfg.Warnings() {
		d.log.Warn("configuration: " + w)
	}

	if err := d.openKeyring(cfg); err != nil {
		return err
	}
	st, err := d.buildState(cfg)
	if err != nil {
		return err
	}
	d.state.Store(st)
	d.started = cfg
	d.registry = prometheus.NewRegistry()
	d.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d.metrics = newDaemonMetrics(d.registry, d, opts.Version)
	mm := metrics.New(d.registry)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := d.listen(cfg, mm); err != nil {
		d.closeAll()
		return err
	}
	go d.keys.Run(ctx, time.Duration(cfg.KeyringPoll))
	d.log.Info("batv started", "version", opts.Version, "config", d.configName(), "keyring", cfg.Keyring,
		"listeners", len(cfg.Listeners), "socketmap", cfg.Socketmap != nil, "policy_service", cfg.PolicyService != nil,
		"descriptors_needed", fdNeed, "descriptor_limit", fdLimit,
		"grace_until", st.policy.GraceUntil().UTC().Format(time.RFC3339))
	d.logKeyring()
	_, _ = sddaemon.SdNotify(false, sddaemon.SdNotifyReady)
	d.releaseStartupPages()
	if opts.Ready != nil {
		opts.Ready(d)
	}

	for {
		select {
		case <-opts.Reload:
			d.Reload()
		case <-opts.Stop:
			return d.shutdown(cfg)
		}
	}
}

func (d *Daemon) configName() string {
	if d.opts.ConfigPath == "" {
		return "(embedded default)"
	}
	return d.opts.ConfigPath
}

func (d *Daemon) now() time.Time {
	if d.opts.Now != nil {
		return d.opts.Now()
	}
	return time.Now()
}

// loadConfig reads the file (or takes the embedded default), applies the
// command-line overrides and checks the result.
func (d *Daemon) loadConfig() (*Config, error) {
	var cfg *Config
	if d.opts.ConfigPath == "" {
		c := DefaultConfig(d.opts.Domains...)
		cfg = &c
		if len(d.opts.Domains) == 0 {
			return nil, fmt.Errorf("%w: without a configuration file, give the mail domains to sign and verify (--domain)", ErrConfig)
		}
	} else {
		var err error
		if cfg, err = LoadConfig(d.opts.ConfigPath); err != nil {
			return nil, err
		}
		cfg.Sign.Domains = append(cfg.Sign.Domains, d.opts.Domains...)
		if len(cfg.Verify.Domains) > 0 {
			cfg.Verify.Domains = append(cfg.Verify.Domains, d.opts.Domains...)
		}
	}
	if d.opts.Keyring != "" {
		cfg.Keyring = d.opts.Keyring
	}
	// The file was checked as it was read; what the command line added is
	// checked here, with the rest, before anything is created.
	problems := cfg.Check()
	if err := cfg.Policy().Check(); err != nil {
		problems = append(problems, unjoin(err)...)
	}
	if len(problems) > 0 {
		ce := &ConfigError{}
		for _, p := range problems {
			ce.Problems = append(ce.Problems, p.Error())
		}
		return nil, ce
	}
	if len(cfg.Sign.Domains) == 0 && len(cfg.Verify.Domains) == 0 {
		return nil, fmt.Errorf("%w: no domains to sign or verify (sign.domains, verify.domains or --domain)", ErrConfig)
	}
	return cfg, nil
}

func (d *Daemon) setLogger(cfg *Config) {
	lvl, _ := parseLevel(cfg.Log.Level)
	d.level.Set(lvl)
	hopts := &slog.HandlerOptions{Level: &d.level}
	newHandler := func(w io.Writer) slog.Handler {
		if cfg.Log.Format == "json" {
			return slog.NewJSONHandler(w, hopts)
		}
		return slog.NewTextHandler(w, hopts)
	}
	if journalStream(d.opts.Stderr) {
		d.log = slog.New(newPriorityHandler(d.opts.Stderr, newHandler))
		return
	}
	d.log = slog.New(newHandler(d.opts.Stderr))
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil || strings.ContainsAny(s, "+-") {
		return 0, fmt.Errorf("%q: want debug, info, warn or error", s)
	}
	return l, nil
}

// openKeyring loads the keyring, creating it first when configured to and
// it does not exist.
func (d *Daemon) openKeyring(cfg *Config) error {
	if cfg.CreateKeyring {
		if _, err := os.Stat(cfg.Keyring); errors.Is(err, fs.ErrNotExist) {
			if err := os.MkdirAll(filepath.Dir(cfg.Keyring), 0o700); err != nil {
				return fmt.Errorf("creating the keyring directory: %w", err)
			}
			opts := keyring.DefaultOptions()
			opts.MaxLifetimeDays = maxLifetime(cfg)
			if _, err := (keyring.File{Path: cfg.Keyring}).Create(d.now(), rand.Reader, opts); err != nil {
				return err
			}
			d.log.Info("keyring created with one signing key", "keyring", cfg.Keyring)
		}
	}
	w, err := keyring.NewWatcher(cfg.Keyring, d.keyringChanged)
	if err != nil {
		return keyringError{err}
	}
	d.keys = w
	return nil
}

func maxLifetime(cfg *Config) int {
	return max(cfg.Sign.Lifetime, cfg.Verify.MaxLifetime)
}

// buildState compiles the policy of cfg with the current keyring.
func (d *Daemon) buildState(cfg *Config) (*state, error) {
	kr := d.keys.Current()
	p, err := newPolicy(cfg, kr)
	if err != nil {
		return nil, err
	}
	return &state{cfg: cfg, policy: p}, nil
}

// Reload rereads the configuration file and the keyring and swaps them in
// together; on any error the running state stays and the error is logged.
// Messages in flight finish with the state they started with.
func (d *Daemon) Reload() error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	_, _ = sddaemon.SdNotify(false, reloadingState())
	// systemd has no way to hear that a reload failed: READY=1 ends the
	// reload either way, and STATUS= says how it went in systemctl status.
	status := "reloaded"
	defer func() { _, _ = sddaemon.SdNotify(false, sddaemon.SdNotifyReady+"\nSTATUS="+status) }()

	cfg, err := d.loadConfig()
	if err == nil {
		err = d.keys.Reload()
	}
	var st *state
	if err == nil {
		st, err = d.buildState(cfg)
	}
	if err != nil {
		d.metrics.reload("config", false, d.now())
		d.log.Error("reload failed: the running configuration and keyring stay in force", "err", err)
		status = "reload failed, running on the previous configuration: " + err.Error()
		return err
	}
	if restart := listenersChanged(d.started, cfg); restart != "" {
		d.log.Warn("reload: listener changes take effect at the next restart", "changed", restart)
		status = "reloaded; changes to " + restart + " wait for a restart"
	}
	if cfg.Keyring != d.started.Keyring {
		if _, err := (keyring.File{Path: cfg.Keyring}).Load(); err != nil {
			d.log.Warn("reload: the new keyring path cannot be used, so the next restart will fail", "keyring", cfg.Keyring, "err", err)
		}
	}
	d.state.Store(st)
	lvl, _ := parseLevel(cfg.Log.Level)
	d.level.Set(lvl)
	d.metrics.reload("config", true, d.now())
	d.log.Info("reloaded", "config", d.configName(), "keyring", cfg.Keyring)
	d.logKeyring()
	return nil
}

// keyringChanged is the keyring watcher's report of a changed file.
func (d *Daemon) keyringChanged(err error) {
	if err != nil {
		d.metrics.reload("keyring", false, d.now())
		d.log.Error("keyring changed but cannot be used: the previous keys stay in force", "err", err)
		return
	}
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	old := d.state.Load()
	st, err := d.buildState(old.cfg)
	if err != nil {
		d.metrics.reload("keyring", false, d.now())
		d.log.Error("keyring changed but cannot be used: the previous keys stay in force", "err", err)
		return
	}
	d.state.Store(st)
	d.metrics.reload("keyring", true, d.now())
	d.log.Info("keyring reloaded")
	d.logKeyring()
}

// releaseStartupPages leaves resident only the pages of the executable
// that serving uses (pages_linux.go), and says so at debug level.
func (d *Daemon) releaseStartupPages() {
	before, after, err := releaseStartupPages()
	if err != nil {
		d.log.Debug("start-up pages of the executable kept", "error", err)
		return
	}
	d.log.Debug("start-up pages of the executable released", "resident_file_kib_before", before>>10, "resident_file_kib_after", after>>10)
}

func (d *Daemon) logKeyring() {
	kr := d.keys.Current()
	now := d.now()
	id, ok := kr.SigningKeyID(now)
	attrs := []any{"keys", len(kr.Keys(now)), "signing_key_id", id, "has_signing_key", ok}
	if next, ok := kr.NextChange(now); ok {
		attrs = append(attrs, "next_signing_change", next.UTC().Format(time.RFC3339))
	}
	d.log.Info("keyring state", attrs...)
	for _, w := range kr.Warnings(now) {
		d.log.Warn("keyring: " + w)
	}
}

func listenersChanged(a, b *Config) string {
	var changed []string
	if fmt.Sprint(a.Listeners) != fmt.Sprint(b.Listeners) {
		changed = append(changed, "listener")
	}
	if fmt.Sprint(a.Socketmap) != fmt.Sprint(b.Socketmap) {
		changed = append(changed, "socketmap")
	}
	if fmt.Sprint(a.PolicyService) != fmt.Sprint(b.PolicyService) {
		changed = append(changed, PolicyServiceName)
	}
	if a.Metrics != b.Metrics {
		changed = append(changed, "metrics")
	}
	if a.Limits != b.Limits {
		changed = append(changed, "limits")
	}
	if a.Log.Format != b.Log.Format {
		changed = append(changed, "log.format")
	}
	if a.Keyring != b.Keyring || a.KeyringPoll != b.KeyringPoll {
		changed = append(changed, "keyring path or poll interval")
	}
	return strings.Join(changed, ", ")
}

func reloadingState() string {
	return "RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(monotonicUsec(), 10)
}

// logQueueLines is how many of the milter sessions' log lines wait for the
// writer before a session waits for it. A waiting line holds its values (a
// few hundred bytes), and at 256 busy connections a queue of 1024 lines
// held about 0.5 MiB more at the peak than one of 64 (docs/performance.md,
// Stacks).
const logQueueLines = 64

// listen opens every listener and starts serving.
func (d *Daemon) listen(cfg *Config, mm *metrics.Metrics) error {
	current := func() *policy.Policy { return d.state.Load().policy }
	open := func(name, address string, sock Socket) (*serve.Listener, error) {
		ln, err := openListener(address, sock)
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", name, err)
		}
		l := serve.New(ln, serve.Options{Name: name, MaxConns: cfg.Limits.MaxConnections,
			IdleTimeout: time.Duration(cfg.Limits.IdleTimeout), Logger: d.log, Metrics: mm})
		d.listeners = append(d.listeners, l)
		d.closers = append(d.closers, func() { ln.Close() })
		return l, nil
	}
	run := func(l *serve.Listener, name string, handle func(*serve.Conn)) {
		go func() {
			if err := l.Serve(handle); err != nil && !errors.Is(err, serve.ErrClosed) {
				d.log.Error("listener stopped", "listener", name, "err", err)
			}
		}()
	}
	d.lines = logq.New(logQueueLines)
	for _, lc := range cfg.Listeners {
		roles, _ := parseRoles(lc.Roles)
		l, err := open(lc.Name, lc.Address, lc.Socket)
		if err != nil {
			return err
		}
		srv := &milter.Server{Name: lc.Name, Roles: roles, Policy: current, Logger: d.log, Lines: d.lines, Metrics: mm, Now: d.opts.Now}
		run(l, lc.Name, srv.ServeConn)
		d.log.Info("listening", "listener", lc.Name, "address", lc.Address, "roles", roles.String())
	}
	if sm := cfg.Socketmap; sm != nil {
		l, err := open("socketmap", sm.Address, sm.Socket)
		if err != nil {
			return err
		}
		guard := newLookupGuard(d.log, mm)
		run(l, "socketmap", func(c *serve.Conn) { socketmap.ServeConn(c, d.lookup(guard, c)) })
		d.log.Info("listening", "listener", "socketmap", "address", sm.Address)
	}
	if ps := cfg.PolicyService; ps != nil {
		l, err := open(PolicyServiceName, ps.Address, ps.Socket)
		if err != nil {
			return err
		}
		srv := &policyd.Server{Handler: &policyd.Frontend{Policy: current, Metrics: mm, Now: d.opts.Now}}
		run(l, PolicyServiceName, srv.ServeConn)
		d.log.Info("listening", "listener", PolicyServiceName, "address", ps.Address)
	}
	if cfg.Metrics.Listen != "" {
		if err := d.serveMetrics(cfg.Metrics.Listen); err != nil {
			return err
		}
	}
	return nil
}

func (d *Daemon) serveMetrics(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", d.health)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: metricsTimeout, ReadTimeout: metricsTimeout,
		WriteTimeout: metricsTimeout, IdleTimeout: metricsIdleTimeout, ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelWarn)}
	d.closers = append(d.closers, func() { srv.Close() })
	// Connections over the limit wait in the kernel's queue, holding no
	// descriptor of batv's.
	go srv.Serve(netutil.LimitListener(ln, metricsMaxConns))
	d.metricsAddr = ln.Addr().String()
	d.log.Info("metrics listening", "address", d.metricsAddr)
	return nil
}

// The metrics endpoint's limits: a scraper needs one connection, and
// keeps it open between scrapes (every 15 s to 1 min).
const (
	metricsMaxConns    = 16
	metricsTimeout     = 10 * time.Second
	metricsIdleTimeout = 2 * time.Minute
)

// MetricsAddr is the address the metrics endpoint listens on, or "".
func (d *Daemon) MetricsAddr() string { return d.metricsAddr }

// health answers 200 when the daemon can sign and verify, 503 otherwise.
func (d *Daemon) health(w http.ResponseWriter, _ *http.Request) {
	kr := d.keys.Current()
	if _, ok := kr.SigningKeyID(d.now()); !ok {
		http.Error(w, "no signing key in the keyring", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

// shutdown stops the listeners and drains; a second Stop forces it.
func (d *Daemon) shutdown(cfg *Config) error {
	_, _ = sddaemon.SdNotify(false, sddaemon.SdNotifyStopping)
	timeout := time.Duration(cfg.Limits.ShutdownTimeout)
	d.log.Info("shutting down: finishing messages in flight", "timeout", timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	go func() {
		select {
		case <-d.opts.Stop:
			d.log.Warn("second stop signal: closing all connections now")
			cancel()
		case <-ctx.Done():
		}
	}()
	var wg sync.WaitGroup
	for _, l := range d.listeners {
		wg.Go(func() { _ = l.Shutdown(ctx) })
	}
	wg.Wait()
	d.closeAll()
	d.log.Info("stopped")
	return nil
}

func (d *Daemon) closeAll() {
	for _, c := range d.closers {
		c()
	}
	if d.lines != nil {
		d.lines.Close() // the lines that wait are written; later ones at once
	}
}

// openListener listens on a "unix:" or "inet:" address. A unix socket left
// by a dead process is removed; one a live process answers on is an error,
// and so is any other file at the path.
func openListener(addr string, s Socket) (net.Listener, error) {
	network, where, err := ParseAddress(addr)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		if err := removeStaleSocket(where); err != nil {
			return nil, err
		}
	}
	ln, err := listenPrivate(network, where)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		ln.(*net.UnixListener).SetUnlinkOnClose(true)
		if err := setSocketAccess(where, s); err != nil {
			ln.Close()
			return nil, err
		}
	}
	return ln, nil
}

// listenPrivate listens; a unix socket is created with mode 0600, so that
// nobody else can connect before setSocketAccess gives it its group and
// mode. (The umask is the process's: a file another goroutine creates
// meanwhile is made more private, never less.)
func listenPrivate(network, where string) (net.Listener, error) {
	if network == "unix" {
		old := syscall.Umask(0o177)
		defer syscall.Umask(old)
	}
	return net.Listen(network, where)
}

// removeStaleSocket removes the socket file at path if it is provably
// stale: a stream connection to it is refused, which the kernel answers
// only when no socket is bound to the file. Anything else leaves the file
// in place and is an error: a connection accepted or queued (a live
// listener, perhaps a batv already running), a full backlog (EAGAIN, a
// live listener that is behind), a socket of another type (EPROTOTYPE, a
// datagram service), no permission, or any other answer: batv does not
// delete what it cannot prove is dead.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket: not removing it", path)
	}
	switch err := probeSocket(path); {
	case errors.Is(err, unix.ECONNREFUSED):
		return os.Remove(path)
	case errors.Is(err, unix.ENOENT):
		return nil // removed meanwhile
	default:
		return fmt.Errorf("%s: %s: not removing it", path, socketInUse(err))
	}
}

// probeSocket connects to the unix socket at path without waiting and
// returns the connect's error (nil: connected).
func probeSocket(path string) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Connect(fd, &unix.SockaddrUnix{Name: path})
}

// socketInUse says why a socket file that did not refuse a connection is
// left alone.
func socketInUse(err error) string {
	switch {
	case err == nil:
		return "another process is listening on it (is batv already running?)"
	case errors.Is(err, unix.EAGAIN):
		return "another process is listening on it, with a full backlog (is batv already running?)"
	case errors.Is(err, unix.EPROTOTYPE):
		return "another process has a socket of another type (datagram) bound to it"
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return "cannot tell whether it is in use (permission denied)"
	}
	return fmt.Sprintf("cannot tell whether it is in use (%v)", err)
}

func setSocketAccess(path string, s Socket) error {
	if s.Group != "" {
		gid, err := lookupGroup(s.Group)
		if err != nil {
			return err
		}
		if err := os.Chown(path, -1, gid); err != nil {
			return fmt.Errorf("socket_group %s: %w", s.Group, err)
		}
	}
	mode := os.FileMode(0o660)
	if s.Mode != "" {
		m, err := parseMode(s.Mode)
		if err != nil {
			return err
		}
		mode = m
	}
	return os.Chmod(path, mode)
}

func lookupGroup(name string) (int, error) {
	if gid, err := strconv.Atoi(name); err == nil {
		return gid, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("socket_group: %w", err)
	}
	return strconv.Atoi(g.Gid)
}

// ErrKeyring is wrapped by the error of a keyring that cannot be loaded at
// start or by Check: missing, unreadable, readable by others, damaged or of
// an unknown version. Like a configuration error, it needs a person:
// restarting does not help.
var ErrKeyring = errors.New("daemon: keyring cannot be used")

// keyringError marks err with ErrKeyring and keeps its message.
type keyringError struct{ err error }

func (e keyringError) Error() string   { return e.err.Error() }
func (e keyringError) Unwrap() []error { return []error{ErrKeyring, e.err} }

// Checked is what Check built: the configuration, the keyring and the
// policy the daemon would run with.
type Checked struct {
	Config  *Config
	Keyring *keyring.Keyring
	Policy  *policy.Policy
	// KeyringMissing is set when the keyring file does not exist and the
	// configuration has the daemon create it at start (create_keyring):
	// Keyring is then a throwaway one, made only to build the policy.
	KeyringMissing bool
	// Warnings are what the daemon would log as warnings at start
	// (Config.Warnings).
	Warnings []string
}

// Check does everything Run does before it listens: it reads and checks
// the configuration, loads the keyring and builds the policy. It returns
// every configuration problem at once (wrapping ErrConfig), or the
// keyring's error. It does not create a missing keyring; when the daemon
// would create it, the policy is built with a throwaway one and the result
// says so.
func Check(opts Options) (*Checked, error) {
	d := &Daemon{opts: opts}
	cfg, err := d.loadConfig()
	if err != nil {
		return nil, err
	}
	host := cfg.checkSocketDirs()
	if _, _, err := cfg.checkDescriptors(); err != nil {
		host = append(host, err)
	}
	if len(host) > 0 {
		return nil, &ConfigError{Problems: problemTexts(errors.Join(host...))}
	}
	ch := &Checked{Config: cfg, Warnings: cfg.Warnings()}
	ch.Keyring, err = keyring.File{Path: cfg.Keyring}.Load()
	if errors.Is(err, fs.ErrNotExist) && cfg.CreateKeyring {
		opts := keyring.DefaultOptions()
		opts.MaxLifetimeDays = maxLifetime(cfg)
		ch.Keyring, err = keyring.New(d.now(), rand.Reader, opts)
		ch.KeyringMissing = true
	}
	if err != nil {
		return nil, keyringError{err}
	}
	if ch.Policy, err = newPolicy(cfg, ch.Keyring); err != nil {
		return nil, err
	}
	return ch, nil
}

// newPolicy builds the policy of cfg with keyring kr, after checking that
// the keyring keeps keys long enough for the lifetimes cfg uses.
func newPolicy(cfg *Config, kr *keyring.Keyring) (*policy.Policy, error) {
	p, err := policy.New(cfg.Policy(), kr)
	if err != nil {
		return nil, &ConfigError{Problems: problemTexts(err)}
	}
	return p, nil
}
