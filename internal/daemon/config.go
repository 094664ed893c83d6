// Package daemon runs the batv milter daemon: it reads the configuration
// file and the keyring, serves the milter, socketmap and policy service
// listeners, and reloads, logs, counts and shuts down the way a mail
// administrator expects.
package daemon

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"golang.org/x/sys/unix"

	"github.com/batv/batv/internal/serve"
	"github.com/batv/batv/keyring"
	"github.com/batv/batv/milter"
	"github.com/batv/batv/policy"
)

// ErrConfig is wrapped by every configuration problem.
var ErrConfig = errors.New("daemon: invalid configuration")

// Config is the whole configuration file. See docs/batv.toml for every
// option with its default and an example.
type Config struct {
	// Keyring is the keyring file.
	Keyring string `toml:"keyring"`
	// CreateKeyring creates the keyring with one signing key if the file
	// does not exist when the daemon starts.
	CreateKeyring bool `toml:"create_keyring"`
	// KeyringPoll is how often the keyring file is checked for changes.
	KeyringPoll Duration `toml:"keyring_poll"`

	Log           LogConfig          `toml:"log"`
	Metrics       MetricsConfig      `toml:"metrics"`
	Limits        LimitsConfig       `toml:"limits"`
	Listeners     []Listener         `toml:"listener"`
	Socketmap     *SocketmapConf     `toml:"socketmap"`
	PolicyService *PolicyServiceConf `toml:"policy_service"`

	Sign   SignConfig   `toml:"sign"`
	Verify VerifyConfig `toml:"verify"`
}

// SignConfig is the [sign] table: policy.SignConfig as the file spells it.
type SignConfig struct {
	Domains           []string `toml:"domains"`
	Lifetime          int      `toml:"lifetime"`
	SubAddress        string   `toml:"sub_address"`
	InternalNetworks  []string `toml:"internal_networks"`
	SubmissionDaemons []string `toml:"submission_daemons"`
	Authenticated     bool     `toml:"authenticated"`
	Local             bool     `toml:"local"`
	ExemptSenders     []string `toml:"exempt_senders"`
	ExemptRecipients  []string `toml:"exempt_recipients"`
	OnError           string   `toml:"on_error"`
}

// VerifyConfig is the [verify] table: policy.VerifyConfig as the file
// spells it.
type VerifyConfig struct {
	Domains             []string  `toml:"domains"`
	MaxLifetime         int       `toml:"max_lifetime"`
	Strict              bool      `toml:"strict"`
	ClockSkew           Duration  `toml:"clock_skew"`
	Delimiter           string    `toml:"delimiter"`
	UntaggedBounce      string    `toml:"untagged_bounce"`
	RefuseUntaggedAt    string    `toml:"refuse_untagged_at"`
	InvalidTagReply     string    `toml:"invalid_tag_reply"`
	ExemptRecipients    []string  `toml:"exempt_recipients"`
	ExemptClients       []string  `toml:"exempt_clients"`
	GraceUntil          time.Time `toml:"grace_until"`
	QueueLifetime       Duration  `toml:"queue_lifetime"`
	StatusHeader        string    `toml:"status_header"`
	RemoveForgedHeaders bool      `toml:"remove_forged_headers"`
}

// Policy is the policy configuration of the file. The [sign] and [verify]
// tables have the fields of policy.SignConfig and policy.VerifyConfig, by
// name (a test checks it), with Duration for time.Duration.
func (c *Config) Policy() policy.Config {
	var p policy.Config
	copyFields(reflect.ValueOf(&p.Sign).Elem(), reflect.ValueOf(c.Sign))
	copyFields(reflect.ValueOf(&p.Verify).Elem(), reflect.ValueOf(c.Verify))
	return p
}

// copyFields sets each field of dst to the field of src of the same name,
// converted to its type.
func copyFields(dst, src reflect.Value) {
	for i := range dst.NumField() {
		name := dst.Type().Field(i).Name
		dst.Field(i).Set(src.FieldByName(name).Convert(dst.Field(i).Type()))
	}
}

// Duration is a time.Duration written as a Go duration string ("90s",
// "120h") in the configuration file.
type Duration time.Duration

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(time.Duration(d).String()), nil
}

// LogConfig sets the log format and level.
type LogConfig struct {
	// Format is "text" (default) or "json".
	Format string `toml:"format"`
	// Level is "debug", "info" (default), "warn" or "error".
	Level string `toml:"level"`
}

// MetricsConfig sets the Prometheus endpoint.
type MetricsConfig struct {
	// Listen is the HOST:PORT of the metrics and health endpoint; empty
	// (default) switches it off. Keep it on loopback or a management
	// network.
	Listen string `toml:"listen"`
}

// LimitsConfig bounds resources.
type LimitsConfig struct {
	// MaxConnections bounds concurrent MTA connections per listener.
	MaxConnections int `toml:"max_connections"`
	// IdleTimeout closes an MTA connection idle this long.
	IdleTimeout Duration `toml:"idle_timeout"`
	// ShutdownTimeout is how long messages in flight may take to finish
	// when the daemon stops.
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
}

// Listener is one milter socket.
type Listener struct {
	// Name labels the listener in logs and metrics.
	Name string `toml:"name"`
	// Address is "unix:/path" or "inet:HOST:PORT".
	Address string `toml:"address"`
	// Roles are "outbound" and/or "inbound".
	Roles []string `toml:"roles"`
	Socket
}

// SocketmapConf is the lookup service Postfix queries for tagged
// recipients (see docs/postfix.md).
type SocketmapConf struct {
	// Address is "unix:/path" or "inet:HOST:PORT".
	Address string `toml:"address"`
	Socket
}

// PolicyServiceConf is the Postfix policy service (check_policy_service)
// that decides inbound recipients without a milter (see docs/postfix.md).
type PolicyServiceConf struct {
	// Address is "unix:/path" or "inet:HOST:PORT".
	Address string `toml:"address"`
	Socket
}

// PolicyServiceName labels the policy service's listener in logs and
// metrics.
const PolicyServiceName = "policy_service"

// Socket is the ownership and mode of a unix socket.
type Socket struct {
	// Mode is the octal permission of a unix socket, e.g. "0660".
	Mode string `toml:"socket_mode"`
	// Group is the group (name or number) of a unix socket, e.g.
	// "postfix", so that Postfix can connect to it.
	Group string `toml:"socket_group"`
}

// Defaults.
const (
	DefaultMilterAddress    = "inet:127.0.0.1:8891"
	DefaultSocketmapAddress = "inet:127.0.0.1:8892"
	DefaultMaxConnections   = 1024
	DefaultShutdownTimeout  = 30 * time.Second
	DefaultKeyringPoll      = 5 * time.Second
)

// DefaultConfig is the embedded configuration: loopback listeners, the
// keyring in its default place (created on first start), the policy
// defaults, and the given domains signed and verified. Its milter only
// verifies: every local user can reach a TCP listener, and a milter that
// signs signs for whoever claims SMTP AUTH.
func DefaultConfig(domains ...string) Config {
	c := Config{
		Keyring:       keyring.DefaultPath,
		CreateKeyring: true,
		KeyringPoll:   Duration(DefaultKeyringPoll),
		Log:           LogConfig{Format: "text", Level: "info"},
		Limits: LimitsConfig{
			MaxConnections:  DefaultMaxConnections,
			IdleTimeout:     Duration(serve.DefaultIdleTimeout),
			ShutdownTimeout: Duration(DefaultShutdownTimeout),
		},
		Listeners: []Listener{{Name: "milter", Address: DefaultMilterAddress, Roles: []string{"inbound"},
			Socket: Socket{Mode: "0660"}}},
		Socketmap: &SocketmapConf{Address: DefaultSocketmapAddress, Socket: Socket{Mode: "0660"}},
	}
	p := policy.DefaultConfig(domains...)
	copyFields(reflect.ValueOf(&c.Sign).Elem(), reflect.ValueOf(p.Sign))
	copyFields(reflect.ValueOf(&c.Verify).Elem(), reflect.ValueOf(p.Verify))
	return c
}

// LoadConfig reads a configuration file over the defaults. Every problem
// found is reported, each with its line where it has one, wrapping
// ErrConfig; unknown keys are errors.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &ConfigError{Problems: []string{err.Error()}}
	}
	return ParseConfig(path, data)
}

// ParseConfig is LoadConfig on the file's contents; name prefixes the
// locations in errors.
func ParseConfig(name string, data []byte) (*Config, error) {
	cfg := DefaultConfig()
	// Listeners and socketmap in a file replace the defaults entirely.
	cfg.Listeners, cfg.Socketmap = nil, nil
	cfg.CreateKeyring = false
	// A syntax error is reported alone: what follows it cannot be read.
	raw, err := toml.Decode(string(data), &map[string]any{})
	if err != nil {
		return nil, &ConfigError{Problems: []string{decodeProblem(name, err)}}
	}
	// Every key is lower case. The decoder matches keys without regard to
	// case, so "Address" would be taken for "address", and with both in one
	// table which one wins depends on its map order: such keys are
	// reported alone, as what the rest means is not certain.
	if problems := casedKeys(name, data, raw.Keys()); len(problems) > 0 {
		return nil, &ConfigError{Problems: problems}
	}
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&cfg)
	if err != nil {
		return nil, &ConfigError{Problems: valueProblems(name, data, err)}
	}
	loc := newLocator(data)
	var errs []string
	undecoded := map[string]bool{}
	for _, k := range md.Undecoded() {
		undecoded[k.String()] = true
	}
	for _, k := range md.Undecoded() {
		// Report an unknown table once, not each of its keys.
		if len(k) > 1 && undecoded[k[:len(k)-1].String()] {
			continue
		}
		errs = append(errs, fmt.Sprintf("%s:%d: unknown key %q", name, loc.line(k), k.String()))
	}
	// A file with no milter listener gets the default one, unless it
	// serves the policy service: an MX can run without a milter.
	if len(cfg.Listeners) == 0 && cfg.PolicyService == nil {
		cfg.Listeners = DefaultConfig().Listeners
	}
	problems := cfg.Check()
	if err := cfg.Policy().Check(); err != nil {
		problems = append(problems, unjoin(err)...)
	}
	for _, e := range problems {
		errs = append(errs, name+":"+loc.describe(e))
	}
	if len(errs) > 0 {
		return nil, &ConfigError{Problems: errs}
	}
	return &cfg, nil
}

// casedKeys reports each key of keys (in file order) that is not all
// lower case.
func casedKeys(name string, data []byte, keys []toml.Key) []string {
	loc := newLocator(data)
	var out []string
	for _, k := range keys {
		last := k[len(k)-1]
		if last != strings.ToLower(last) {
			out = append(out, fmt.Sprintf("%s:%d: unknown key %q (keys are lower case: %q)",
				name, loc.line(k), k.String(), strings.ToLower(last)))
		}
	}
	return out
}

// ConfigError lists every problem found in a configuration, each with its
// file and line where it has one. It matches ErrConfig with errors.Is.
type ConfigError struct {
	Problems []string
}

func (e *ConfigError) Error() string {
	return "invalid configuration:\n  " + strings.Join(e.Problems, "\n  ")
}

// Is makes errors.Is(err, ErrConfig) true.
func (e *ConfigError) Is(target error) bool { return target == ErrConfig }

// problem is a configuration problem tied to a key path ("sign.lifetime",
// "listener[1].address").
type problem struct {
	key, msg string
}

func (p problem) Error() string { return p.key + ": " + p.msg }

// Check validates the parts of the configuration the policy does not (the
// policy is checked when it is built with the keyring) and returns every
// problem.
func (c *Config) Check() []error {
	var out []error
	add := func(key, format string, args ...any) {
		out = append(out, problem{key, fmt.Sprintf(format, args...)})
	}
	if c.Keyring == "" {
		add("keyring", "must name the keyring file")
	}
	if c.KeyringPoll < Duration(100*time.Millisecond) {
		add("keyring_poll", "%v is too short (at least 100ms)", time.Duration(c.KeyringPoll))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		add("log.format", "%q: want text or json", c.Log.Format)
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		add("log.level", "%v", err)
	}
	if c.Limits.MaxConnections < 1 {
		add("limits.max_connections", "%d: at least 1", c.Limits.MaxConnections)
	}
	if c.Limits.IdleTimeout < Duration(time.Minute) {
		add("limits.idle_timeout", "%v is shorter than a minute, below Postfix's own timeouts", time.Duration(c.Limits.IdleTimeout))
	}
	if c.Limits.ShutdownTimeout < Duration(time.Second) {
		add("limits.shutdown_timeout", "%v is too short for a message in flight to finish (at least 1s)", time.Duration(c.Limits.ShutdownTimeout))
	}
	names := map[string]bool{}
	for i, l := range c.Listeners {
		key := fmt.Sprintf("listener[%d]", i)
		if l.Name == "" {
			add(key+".name", "must be set")
		} else if l.Name == "socketmap" || l.Name == PolicyServiceName {
			add(key+".name", "%q names the listener of [%s] in logs and metrics: choose another", l.Name, l.Name)
		} else if names[l.Name] {
			add(key+".name", "%q is used twice", l.Name)
		}
		names[l.Name] = true
		checkSocket(key, l.Address, l.Socket, add)
		if _, err := parseRoles(l.Roles); err != nil {
			add(key+".roles", "%v", err)
		}
	}
	if c.Socketmap != nil {
		checkSocket("socketmap", c.Socketmap.Address, c.Socketmap.Socket, add)
	}
	if ps := c.PolicyService; ps != nil {
		checkSocket("policy_service", ps.Address, ps.Socket, add)
	}
	var seen []endpoint
	for _, e := range c.endpoints() {
		if e.err != nil {
			add(e.key, "%v", e.err)
			continue
		}
		for _, o := range seen {
			if e.overlaps(o) {
				add(e.key, "%q is the same socket as %s (%q)", e.addr, o.key, o.addr)
				break
			}
		}
		seen = append(seen, e)
	}
	return out
}

// Warnings lists what is valid but exposes batv beyond Postfix: listeners
// reachable from other hosts, and host names (batv listens on one of
// their addresses only). check-config prints them, the daemon logs them at
// start.
func (c *Config) Warnings() []string {
	var out []string
	for _, e := range c.endpoints() {
		if e.err != nil || e.network != "tcp" {
			continue
		}
		what := "a milter, lookup or policy listener"
		if e.key == "metrics.listen" {
			what = "the metrics endpoint"
		}
		switch {
		case e.outbound && e.host != "" && e.ip.IsLoopback():
			out = append(out, fmt.Sprintf("%s: %q signs (role outbound) on TCP: every local user can connect, claim SMTP AUTH and have addresses signed; "+
				"a unix socket with socket_group keeps it to the MTA", e.key, e.addr))
		case e.host == "":
			out = append(out, fmt.Sprintf("%s: %q listens on every interface: every host that reaches this one can talk to %s", e.key, e.addr, what))
		case !e.ip.IsValid():
			out = append(out, fmt.Sprintf("%s: %q is a host name: batv listens on the first address it resolves to; give the address", e.key, e.addr))
		case !e.ip.IsLoopback():
			out = append(out, fmt.Sprintf("%s: %q is not a loopback address: other hosts can talk to %s", e.key, e.addr, what))
		}
	}
	return out
}

// endpoint is where a listener listens, for comparing listeners.
type endpoint struct {
	key, addr string
	err       error
	network   string
	path      string     // a unix socket's path, cleaned
	host      string     // "" for every interface; lowercased
	ip        netip.Addr // the host's address, if it is one
	port      int
	outbound  bool // a milter listener that signs
}

// endpoints are the addresses of the listeners, the socketmap and the
// metrics endpoint.
func (c *Config) endpoints() []endpoint {
	var out []endpoint
	for i, l := range c.Listeners {
		e := newEndpoint(fmt.Sprintf("listener[%d].address", i), l.Address)
		e.outbound = slices.Contains(l.Roles, "outbound")
		out = append(out, e)
	}
	if c.Socketmap != nil {
		out = append(out, newEndpoint("socketmap.address", c.Socketmap.Address))
	}
	if c.PolicyService != nil {
		out = append(out, newEndpoint("policy_service.address", c.PolicyService.Address))
	}
	if c.Metrics.Listen != "" {
		e := endpoint{key: "metrics.listen", addr: c.Metrics.Listen, network: "tcp"}
		host, port, err := net.SplitHostPort(c.Metrics.Listen)
		p, perr := strconv.Atoi(port)
		if err != nil || perr != nil || p < 0 || p > 65535 {
			// Port 0 picks a free port, which the log then names.
			e.err = fmt.Errorf("%q: want host:port", c.Metrics.Listen)
		}
		e.setHost(host, p)
		out = append(out, e)
	}
	return out
}

func newEndpoint(key, addr string) endpoint {
	e := endpoint{key: key, addr: addr}
	network, where, err := ParseAddress(addr)
	e.network, e.err = network, err
	switch {
	case err != nil:
	case network == "unix":
		e.path = filepath.Clean(where)
	default:
		host, port, _ := splitHostPort(where)
		e.setHost(host, port)
	}
	return e
}

// setHost takes the host as Go's net.Listen does: "" and an unspecified
// address (0.0.0.0 too) are every interface, of both families; localhost
// is 127.0.0.1.
func (e *endpoint) setHost(host string, port int) {
	e.port = port
	e.host = strings.TrimSuffix(strings.ToLower(host), ".")
	if e.host == "localhost" {
		e.host = "127.0.0.1"
	}
	if a, err := netip.ParseAddr(e.host); err == nil {
		e.ip = a.Unmap()
		e.host = e.ip.String()
		if e.ip.IsUnspecified() {
			e.host = ""
		}
	}
}

// overlaps reports whether two endpoints cannot both be listened on: the
// same socket file, or the same port where one of them takes every
// interface. Port 0 (a free port) overlaps nothing.
func (e endpoint) overlaps(o endpoint) bool {
	if e.network != o.network {
		return false
	}
	if e.network == "unix" {
		return e.path == o.path
	}
	return e.port != 0 && e.port == o.port && (e.host == o.host || e.host == "" || o.host == "")
}

// descriptorReserve is what batv needs beside its connections: its
// listening sockets, the keyring and configuration files, the log, the
// runtime's poller, /proc for the process metrics, and a connection
// accepted only to be refused at a listener's limit.
const descriptorReserve = 64

// descriptors is the number of file descriptors the configuration lets
// batv hold at once: every listener's limits.max_connections, the metrics
// endpoint's limit and the reserve. When the process may open that many,
// no listener can take the descriptors another needs: a flood of lookup
// or metrics connections cannot stop the milter from accepting.
func (c *Config) descriptors() (n int, why string) {
	listeners, metrics := 0, 0
	for _, e := range c.endpoints() {
		if e.key == "metrics.listen" {
			metrics = metricsMaxConns
		} else {
			listeners++
		}
	}
	n = listeners*c.Limits.MaxConnections + metrics + descriptorReserve
	return n, fmt.Sprintf("%d listeners × limits.max_connections %d, %d for the metrics endpoint, %d reserved",
		listeners, c.Limits.MaxConnections, metrics, descriptorReserve)
}

// checkDescriptors reports a descriptor limit (RLIMIT_NOFILE) below what
// the configuration needs, after raising the soft limit as far as the
// hard one allows. (Go raises it at start; a seccomp filter that refuses
// setrlimit, as the shipped unit's does, leaves what systemd set:
// LimitNOFILE.)
// It returns what is needed and the limit.
func (c *Config) checkDescriptors() (int, uint64, error) {
	need, why := c.descriptors()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return need, 0, fmt.Errorf("reading the descriptor limit: %w", err)
	}
	if lim.Cur < uint64(need) && lim.Max > lim.Cur {
		raised := lim
		raised.Cur = min(lim.Max, uint64(need))
		if unix.Setrlimit(unix.RLIMIT_NOFILE, &raised) == nil {
			lim = raised
		}
	}
	if lim.Cur >= uint64(need) {
		return need, lim.Cur, nil
	}
	return need, lim.Cur, problem{"limits.max_connections", fmt.Sprintf("batv may need %d file descriptors (%s), but may open only %d "+
		"(RLIMIT_NOFILE, hard limit %d): lower max_connections, or raise the limit (LimitNOFILE= in the systemd unit, ulimit -n)",
		need, why, lim.Cur, lim.Max)}
}

// checkSocketDirs reports the unix sockets whose directory does not
// exist: the daemon could not create them. It looks at the file system,
// so it is made at start and by check-config, not on reload (the
// listeners of a reload wait for the next start).
func (c *Config) checkSocketDirs() []error {
	var out []error
	for _, e := range c.endpoints() {
		if e.err != nil || e.network != "unix" {
			continue
		}
		dir := filepath.Dir(e.path)
		fi, err := os.Stat(dir)
		switch {
		case err != nil:
			out = append(out, problem{e.key, fmt.Sprintf("the socket's directory: %v", err)})
		case !fi.IsDir():
			out = append(out, problem{e.key, fmt.Sprintf("the socket's directory %s is not a directory", dir)})
		}
	}
	return out
}

func checkSocket(key, addr string, s Socket, add func(string, string, ...any)) {
	if s.Mode != "" {
		if _, err := parseMode(s.Mode); err != nil {
			add(key+".socket_mode", "%v", err)
		}
	}
	// (The embedded default's TCP listeners carry the default mode 0660.)
	if network, _, err := ParseAddress(addr); err == nil && network != "unix" {
		if s.Mode != "" && s.Mode != "0660" {
			add(key+".socket_mode", "applies to unix sockets only")
		}
		if s.Group != "" {
			add(key+".socket_group", "applies to unix sockets only")
		}
	}
}

// ParseAddress parses a listener address: "unix:/path" or
// "inet:HOST:PORT" (Postfix's milter syntax; "inet6:" is accepted too).
func ParseAddress(addr string) (network, address string, err error) {
	kind, rest, ok := strings.Cut(addr, ":")
	switch {
	case !ok || rest == "":
		return "", "", fmt.Errorf("%q: want unix:/path or inet:host:port", addr)
	case kind == "unix":
		if !strings.HasPrefix(rest, "/") {
			return "", "", fmt.Errorf("%q: a unix socket path must be absolute", addr)
		}
		return "unix", rest, nil
	case kind == "inet" || kind == "inet6":
		if _, _, err := splitHostPort(rest); err != nil {
			return "", "", fmt.Errorf("%q: %v", addr, err)
		}
		return "tcp", rest, nil
	}
	return "", "", fmt.Errorf("%q: want unix:/path or inet:host:port", addr)
}

func splitHostPort(s string) (string, int, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return "", 0, fmt.Errorf("%q has no port", s)
	}
	host := strings.TrimSuffix(strings.TrimPrefix(s[:i], "["), "]")
	port, err := strconv.Atoi(s[i+1:])
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("%q: port must be 1-65535", s)
	}
	return host, port, nil
}

func parseMode(s string) (os.FileMode, error) {
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o777 {
		return 0, fmt.Errorf("%q is not an octal mode like 0660", s)
	}
	if v&0o007 != 0 {
		return 0, fmt.Errorf("%q lets every local user talk to the milter; use 0660 with socket_group", s)
	}
	return os.FileMode(v), nil
}

func parseRoles(roles []string) (milter.Roles, error) {
	var r milter.Roles
	for _, s := range roles {
		switch s {
		case "outbound":
			r |= milter.Outbound
		case "inbound":
			r |= milter.Inbound
		default:
			return 0, fmt.Errorf("%q: want outbound or inbound", s)
		}
	}
	if r == 0 {
		return 0, errors.New("at least one of outbound, inbound")
	}
	return r, nil
}

// locator finds the line of a key in a TOML file, for error messages:
// BurntSushi/toml does not report positions of keys it decoded.
type locator struct {
	lines map[string]int // "table.key" or "table[i].key" -> line
	// inArrays lists, for a key of an array of tables without its index
	// ("listener.key"), its lines in file order; used counts the ones
	// line has handed out.
	inArrays map[string][]int
	used     map[string]int
}

// valueProblems reports every value of data that cannot be converted to
// its setting's type, err being the first one the decoder met. The
// decoder stops at one (which one depends on its map order), so the line
// of each is blanked in turn and the file decoded again, until no more
// turn up; the problems come back in file order.
func valueProblems(name string, data []byte, err error) []string {
	type found struct {
		line int
		text string
	}
	var all []found
	lines := bytes.SplitAfter(bytes.Clone(data), []byte("\n"))
	for range len(lines) {
		line := errorLine(err)
		all = append(all, found{line, decodeProblem(name, err)})
		if line < 1 || line > len(lines) || bytes.HasPrefix(bytes.TrimSpace(lines[line-1]), []byte("[")) {
			break // no line, or a table's: blanking it would move its keys
		}
		lines[line-1] = []byte("\n")
		blanked := string(bytes.Join(lines, nil))
		if _, err := toml.Decode(blanked, &map[string]any{}); err != nil {
			break // blanking the line broke the syntax: stop here
		}
		if _, err = toml.Decode(blanked, &Config{}); err == nil {
			break
		}
	}
	slices.SortStableFunc(all, func(a, b found) int { return a.line - b.line })
	out := make([]string, len(all))
	for i, f := range all {
		out[i] = f.text
	}
	return out
}

// errorLine is the line of a decoding error, or 0.
func errorLine(err error) int {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return pe.Position.Line
	}
	if m := tomlErrRe.FindStringSubmatch(err.Error()); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 0
}

// decodeProblem words a decoding error with the file name and line.
func decodeProblem(name string, err error) string {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return fmt.Sprintf("%s:%d:%d: %s", name, pe.Position.Line, pe.Position.Col, pe.Message)
	}
	if m := tomlErrRe.FindStringSubmatch(err.Error()); m != nil {
		key := ""
		if m[2] != "" {
			key = " " + m[2] + ":"
		}
		return fmt.Sprintf("%s:%s:%s %s", name, m[1], key, m[3])
	}
	return fmt.Sprintf("%s: %v", name, err)
}

// tomlErrRe matches BurntSushi/toml's decoding errors that are not a
// ParseError: "toml: line 3 (last key "a.b"): message".
var tomlErrRe = regexp.MustCompile(`^toml: line (\d+)(?: \(last key "([^"]*)"\))?: (.*)$`)

var (
	tableRe = regexp.MustCompile(`^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]`)
	arrayRe = regexp.MustCompile(`^\s*\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]`)
	keyRe   = regexp.MustCompile(`^\s*([A-Za-z0-9_-]+)\s*=`)
)

func newLocator(data []byte) *locator {
	l := &locator{lines: map[string]int{}, inArrays: map[string][]int{}, used: map[string]int{}}
	prefix := ""
	arrays := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if m := arrayRe.FindStringSubmatch(line); m != nil {
			prefix = fmt.Sprintf("%s[%d].", m[1], arrays[m[1]])
			arrays[m[1]]++
			l.lines[strings.TrimSuffix(prefix, ".")] = n
		} else if m := tableRe.FindStringSubmatch(line); m != nil {
			prefix = m[1] + "."
			l.lines[m[1]] = n
		} else if m := keyRe.FindStringSubmatch(line); m != nil {
			if _, dup := l.lines[prefix+m[1]]; !dup {
				l.lines[prefix+m[1]] = n
			}
			if stripped := stripIndexes(prefix + m[1]); stripped != prefix+m[1] {
				l.inArrays[stripped] = append(l.inArrays[stripped], n)
			}
		}
	}
	return l
}

// line returns the line of an undecoded key, or 0. Undecoded keys of
// arrays of tables come without an index, once per table that has them,
// in file order: each call for such a key gives its next line.
func (l *locator) line(k toml.Key) int {
	s := k.String()
	if n, ok := l.lines[s]; ok {
		return n
	}
	lines := l.inArrays[s]
	if len(lines) == 0 {
		return 0
	}
	i := min(l.used[s], len(lines)-1)
	l.used[s]++
	return lines[i]
}

var indexRe = regexp.MustCompile(`\[\d+\]`)

func stripIndexes(s string) string { return indexRe.ReplaceAllString(s, "") }

// describe prefixes a problem with its line, when the key is in the file.
func (l *locator) describe(err error) string {
	var p problem
	var fe *policy.FieldError
	key, text := "", err.Error()
	switch {
	case errors.As(err, &p):
		key = p.key
	case errors.As(err, &fe):
		key = fe.Field
	}
	for k := key; k != ""; {
		if n, ok := l.lines[k]; ok {
			return fmt.Sprintf("%d: %s", n, text)
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return " " + text
}

// unjoin returns the errors inside an errors.Join.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// problemTexts is the text of each problem in err.
func problemTexts(err error) []string {
	var out []string
	for _, e := range unjoin(err) {
		out = append(out, e.Error())
	}
	return out
}
