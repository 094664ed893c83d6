package daemon

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/policy"
)

// A valid file, changed one mistake at a time: each mistake gives its own
// message, with the line it is on.
const validConfig = `keyring = "/var/lib/batv/keyring.json"
[log]
format = "json"
level = "warn"
[metrics]
listen = "127.0.0.1:9466"
[limits]
max_connections = 100
idle_timeout = "20m"
shutdown_timeout = "10s"
[[listener]]
name = "mx"
address = "unix:/var/spool/postfix/batv/milter.sock"
roles = ["inbound"]
socket_group = "postfix"
socket_mode = "0660"
[[listener]]
name = "submission"
address = "inet:127.0.0.1:8891"
roles = ["outbound"]
[socketmap]
address = "unix:/var/spool/postfix/batv/socketmap.sock"
[sign]
domains = ["example.com", "example.net"]
lifetime = 5
internal_networks = ["10.0.0.0/8", "2001:db8::/32"]
submission_daemons = ["ORIGINATING"]
exempt_recipients = ["lists.example.org"]
[verify]
max_lifetime = 7
strict = true
clock_skew = "30m"
untagged_bounce = "tempfail"
invalid_tag_reply = "deliver"
exempt_clients = ["198.51.100.0/24"]
grace_until = 2027-01-01T00:00:00Z
status_header = "X-Our-BATV"
[policy_service]
address = "unix:/var/spool/postfix/batv/policy.sock"
socket_group = "postfix"
`

func TestParseValidConfig(t *testing.T) {
	cfg, err := ParseConfig("batv.toml", []byte(validConfig))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Listeners) != 2 || cfg.Listeners[1].Name != "submission" || cfg.Socketmap == nil ||
		cfg.Sign.Lifetime != 5 || !cfg.Verify.Strict || time.Duration(cfg.Verify.ClockSkew) != 30*time.Minute ||
		cfg.Verify.UntaggedBounce != "tempfail" || cfg.Limits.MaxConnections != 100 || cfg.Log.Format != "json" ||
		!cfg.Verify.GraceUntil.Equal(time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)) || cfg.Verify.StatusHeader != "X-Our-BATV" {
		t.Fatalf("parsed %+v", cfg)
	}
	if ps := cfg.PolicyService; ps == nil || ps.Address != "unix:/var/spool/postfix/batv/policy.sock" || ps.Group != "postfix" {
		t.Fatalf("policy service %+v", ps)
	}
	// Options not in the file keep their defaults.
	if !cfg.Sign.Authenticated || !cfg.Verify.RemoveForgedHeaders || cfg.Verify.Delimiter != "+" {
		t.Fatalf("defaults lost: %+v", cfg)
	}
}

func TestConfigMistakes(t *testing.T) {
	tests := []struct {
		name, old, new, want string
	}{
		{"syntax", `level = "warn"`, `level = "warn`, "batv.toml:4:"},
		{"unknown key", `level = "warn"`, "level = \"warn\"\nlevl = 1", `batv.toml:5: unknown key "log.levl"`},
		{"unknown section", `[metrics]`, "[metrix]", `unknown key "metrix`},
		{"key in capitals", `level = "warn"`, "Level = \"warn\"", `batv.toml:4: unknown key "log.Level" (keys are lower case: "level")`},
		{"one key spelled twice", `name = "mx"`, "name = \"mx\"\nNAME = \"other\"", `batv.toml:13: unknown key "listener.NAME"`},
		{"wrong type", `lifetime = 5`, `lifetime = "5"`, "batv.toml:25: sign.lifetime: incompatible types"},
		{"bad duration", `idle_timeout = "20m"`, `idle_timeout = "twenty"`, "batv.toml:9"},
		{"log format", `format = "json"`, `format = "xml"`, `batv.toml:3: log.format: "xml": want text or json`},
		{"log level", `level = "warn"`, `level = "loud"`, `batv.toml:4: log.level: "loud"`},
		{"metrics address", `listen = "127.0.0.1:9466"`, `listen = "localhost"`, `batv.toml:6: metrics.listen`},
		{"no connections", `max_connections = 100`, `max_connections = 0`, `batv.toml:8: limits.max_connections: 0`},
		{"short idle timeout", `idle_timeout = "20m"`, `idle_timeout = "5s"`, `batv.toml:9: limits.idle_timeout`},
		{"relative socket", `"unix:/var/spool/postfix/batv/milter.sock"`, `"unix:batv/milter.sock"`, `batv.toml:13: listener[0].address: "unix:batv/milter.sock": a unix socket path must be absolute`},
		{"address scheme", `"inet:127.0.0.1:8891"`, `"tcp:127.0.0.1:8891"`, `batv.toml:19: listener[1].address`},
		{"duplicate name", `name = "submission"`, `name = "mx"`, `batv.toml:18: listener[1].name: "mx" is used twice`},
		{"duplicate address", `"inet:127.0.0.1:8891"`, `"unix:/var/spool/postfix/batv/milter.sock"`, `batv.toml:19: listener[1].address: "unix:/var/spool/postfix/batv/milter.sock" is the same socket as listener[0].address ("unix:/var/spool/postfix/batv/milter.sock")`},
		{"same listener as localhost", `"unix:/var/spool/postfix/batv/socketmap.sock"`, `"inet:LocalHost.:8891"`, `batv.toml:22: socketmap.address: "inet:LocalHost.:8891" is the same socket as listener[1].address ("inet:127.0.0.1:8891")`},
		{"same socket with //", `"unix:/var/spool/postfix/batv/socketmap.sock"`, `"unix:/var/spool/postfix//batv/./milter.sock"`, `socketmap.address: "unix:/var/spool/postfix//batv/./milter.sock" is the same socket as listener[0].address`},
		{"every interface takes the port", `"unix:/var/spool/postfix/batv/socketmap.sock"`, `"inet::9466"`, `batv.toml:6: metrics.listen: "127.0.0.1:9466" is the same socket as socketmap.address ("inet::9466")`},
		{"mapped IPv4", `listen = "127.0.0.1:9466"`, `listen = "[::ffff:127.0.0.1]:8891"`, `metrics.listen: "[::ffff:127.0.0.1]:8891" is the same socket as listener[1].address`},
		{"short shutdown", `shutdown_timeout = "10s"`, `shutdown_timeout = "1ns"`, `batv.toml:10: limits.shutdown_timeout: 1ns is too short`},
		{"delimiter", `lifetime = 5`, "lifetime = 5\nsub_address = \"-\"", `verify.delimiter: "+" differs from sign.sub_address "-"`},
		{"empty label", `"example.net"]`, `"example..net"]`, `sign.domains: "example..net" is not a domain name`},
		{"every network", `"2001:db8::/32"`, `"::/0"`, `sign.internal_networks: ::/0 holds every address`},
		{"every client", `"198.51.100.0/24"`, `"0.0.0.0/0"`, `verify.exempt_clients: 0.0.0.0/0 holds every address`},
		{"protected domain exempt", `exempt_clients =`, "exempt_recipients = [\"example.net\"]\nexempt_clients =", `verify.exempt_recipients: "example.net" is a protected domain`},
		{"role", `roles = ["outbound"]`, `roles = ["sideways"]`, `batv.toml:20: listener[1].roles: "sideways"`},
		{"no role", `roles = ["outbound"]`, `roles = []`, `listener[1].roles: at least one`},
		{"world socket", `socket_mode = "0660"`, `socket_mode = "0666"`, `batv.toml:16: listener[0].socket_mode: "0666" lets every local user`},
		{"group on a TCP listener", `roles = ["outbound"]`, `roles = ["outbound"]
socket_group = "postfix"`, `batv.toml:21: listener[1].socket_group: applies to unix sockets only`},
		{"lifetime", `lifetime = 5`, `lifetime = 31`, `batv.toml:25: sign.lifetime: 31`},
		{"domain", `"example.net"]`, `"exa mple.net"]`, `sign.domains: "exa mple.net" is not a domain`},
		{"network", `"10.0.0.0/8"`, `"10.0.0.0/40"`, `sign.internal_networks: "10.0.0.0/40"`},
		{"max lifetime", `max_lifetime = 7`, `max_lifetime = 3`, `verify.max_lifetime: 3 is shorter than sign.lifetime 5`},
		{"clock skew", `clock_skew = "30m"`, `clock_skew = "48h"`, `verify.clock_skew: 48h0m0s`},
		{"untagged action", `untagged_bounce = "tempfail"`, `untagged_bounce = "bounce"`, `verify.untagged_bounce: "bounce"`},
		{"reply action", `invalid_tag_reply = "deliver"`, `invalid_tag_reply = "drop"`, `verify.invalid_tag_reply: "drop"`},
		{"client", `"198.51.100.0/24"`, `"partner.example"`, `verify.exempt_clients: "partner.example"`},
		{"header", `status_header = "X-Our-BATV"`, `status_header = "X Our"`, `verify.status_header: "X Our"`},
		{"policy service socket", `"unix:/var/spool/postfix/batv/policy.sock"`, `"unix:batv/policy.sock"`,
			`batv.toml:39: policy_service.address: "unix:batv/policy.sock": a unix socket path must be absolute`},
		{"policy service address used twice", `"unix:/var/spool/postfix/batv/policy.sock"`, `"unix:/var/spool/postfix/batv/socketmap.sock"`,
			`batv.toml:39: policy_service.address: "unix:/var/spool/postfix/batv/socketmap.sock" is the same socket as socketmap.address ("unix:/var/spool/postfix/batv/socketmap.sock")`},
		{"policy service group on TCP", `"unix:/var/spool/postfix/batv/policy.sock"`, `"inet:127.0.0.1:8893"`,
			`batv.toml:40: policy_service.socket_group: applies to unix sockets only`},
		{"a listener named as the policy service", `name = "submission"`, `name = "policy_service"`,
			`batv.toml:18: listener[1].name: "policy_service" names the listener of [policy_service]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(validConfig, tt.old) {
				t.Fatalf("%q not in the valid config", tt.old)
			}
			_, err := ParseConfig("batv.toml", []byte(strings.Replace(validConfig, tt.old, tt.new, 1)))
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("err = %v, want ErrConfig", err)
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || len(ce.Problems) != 1 {
				t.Fatalf("want exactly one problem, got %v", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error\n%v\ndoes not contain %q", err, tt.want)
			}
		})
	}
}

func TestConfigReportsEveryProblemAtOnce(t *testing.T) {
	bad := strings.NewReplacer(`format = "json"`, `format = "xml"`, `lifetime = 5`, `lifetime = 31`,
		`untagged_bounce = "tempfail"`, `untagged_bounce = "x"`).Replace(validConfig) + "typo = 1\n"
	_, err := ParseConfig("batv.toml", []byte(bad))
	var ce *ConfigError
	if !errors.As(err, &ce) || len(ce.Problems) < 4 {
		t.Fatalf("want at least 4 problems, got %v", err)
	}
}

// An unknown key in two tables of an array is reported at each of its
// lines, the same every time.
func TestUnknownKeyInEachListener(t *testing.T) {
	data := []byte("keyring = \"/k\"\n[[listener]]\nbogus = 1\n[[listener]]\nbogus = 2\n[sign]\ndomains = [\"example.com\"]\n")
	for range 20 {
		_, err := ParseConfig("batv.toml", data)
		if err == nil || !strings.Contains(err.Error(), `batv.toml:3: unknown key "listener.bogus"`) ||
			!strings.Contains(err.Error(), `batv.toml:5: unknown key "listener.bogus"`) {
			t.Fatalf("%v", err)
		}
	}
}

// TestPolicyFields: [sign] and [verify] have every field of the policy's
// configuration, by name, and no other; what the file sets reaches the
// policy.
func TestPolicyFields(t *testing.T) {
	for _, pair := range [][2]reflect.Type{
		{reflect.TypeFor[policy.SignConfig](), reflect.TypeFor[SignConfig]()},
		{reflect.TypeFor[policy.VerifyConfig](), reflect.TypeFor[VerifyConfig]()},
	} {
		p, f := pair[0], pair[1]
		if p.NumField() != f.NumField() {
			t.Errorf("%v has %d fields, %v %d", p, p.NumField(), f, f.NumField())
		}
		for i := range p.NumField() {
			ff, ok := f.FieldByName(p.Field(i).Name)
			if !ok || !ff.Type.ConvertibleTo(p.Field(i).Type) {
				t.Errorf("%v.%s has no counterpart in %v", p, p.Field(i).Name, f)
			}
		}
	}
	cfg := DefaultConfig("example.com")
	cfg.Verify.ClockSkew = Duration(time.Minute)
	cfg.Sign.ExemptSenders = []string{"noreply@example.com"}
	p := cfg.Policy()
	if p.Verify.ClockSkew != time.Minute || len(p.Sign.ExemptSenders) != 1 || p.Sign.Domains[0] != "example.com" ||
		p.Verify.UntaggedBounce != "reject" {
		t.Fatalf("policy configuration %+v", p)
	}
}

// TestWarningsLoggedAtStart: what check-config prints as a warning the
// daemon logs at start, at level WARN.
func TestWarningsLoggedAtStart(t *testing.T) {
	td := startTestDaemonWith(t, func(td *testDaemon) string {
		return strings.Replace(testConfig(td.keyring, td.sock, "", ""), `listen = "127.0.0.1:0"`, `listen = ":0"`, 1)
	})
	want := `level=WARN msg="configuration: metrics.listen: \":0\" listens on every interface: every host that reaches this one can talk to the metrics endpoint"`
	if !strings.Contains(td.log.String(), want) {
		t.Fatalf("no %s in the log:\n%s", want, td.log.String())
	}
}

// TestEmbeddedDefaultDoesNotSignOnTCP: the embedded default's milter
// listens on TCP, which every local user can reach, so it only verifies;
// a file that signs on TCP gets a warning.
func TestEmbeddedDefaultDoesNotSignOnTCP(t *testing.T) {
	cfg := DefaultConfig("example.com")
	for _, l := range cfg.Listeners {
		if network, _, _ := ParseAddress(l.Address); network == "tcp" && slices.Contains(l.Roles, "outbound") {
			t.Errorf("the embedded default signs on %s", l.Address)
		}
	}
	if w := cfg.Warnings(); len(w) != 0 {
		t.Errorf("the embedded default has warnings: %q", w)
	}
	cfg.Listeners[0].Roles = []string{"outbound", "inbound"}
	want := `listener[0].address: "inet:127.0.0.1:8891" signs (role outbound) on TCP: every local user can connect`
	if w := cfg.Warnings(); len(w) != 1 || !strings.HasPrefix(w[0], want) {
		t.Errorf("warnings %q, want %q", w, want)
	}
}

// TestPolicyServiceWithoutMilter: a file with [policy_service] and no
// [[listener]] opens no milter listener; one with neither gets the
// default milter listener.
func TestPolicyServiceWithoutMilter(t *testing.T) {
	cfg, err := ParseConfig("batv.toml", []byte("keyring = \"/k\"\n[policy_service]\naddress = \"unix:/run/batv/policy.sock\"\n[sign]\ndomains = [\"example.com\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Listeners) != 0 || cfg.PolicyService == nil {
		t.Fatalf("listeners %v, policy service %v", cfg.Listeners, cfg.PolicyService)
	}
	cfg, err = ParseConfig("batv.toml", []byte("keyring = \"/k\"\n[sign]\ndomains = [\"example.com\"]\n"))
	if err != nil || len(cfg.Listeners) != 1 || cfg.Listeners[0].Name != "milter" {
		t.Fatalf("no listener: %v, %v", cfg, err)
	}
}
