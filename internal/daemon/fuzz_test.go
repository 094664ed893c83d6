package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// FuzzParseConfig checks the configuration parser on any input: it never
// panics; it either returns a configuration or a *ConfigError that matches
// ErrConfig and lists at least one problem; what it accepts passes Check
// and builds a policy, the same checks the daemon runs at start and on
// reload; what it accepts or refuses once it accepts or refuses again, the
// same way; and what it accepts, written back as
// TOML, parses to the same configuration. Seeds are in
// testdata/fuzz/FuzzParseConfig, plus the test configuration and
// docs/batv.toml.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(validConfig))
	if doc, err := os.ReadFile("../../docs/batv.toml"); err == nil {
		f.Add(doc)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig("fuzz.toml", data)
		if err != nil {
			var ce *ConfigError
			if cfg != nil || !errors.Is(err, ErrConfig) || !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("ParseConfig: %v (%T), config %v", err, err, cfg != nil)
			}
			for _, p := range ce.Problems {
				if strings.TrimSpace(p) == "" {
					t.Fatalf("an empty problem in %q", ce.Problems)
				}
			}
			// Refused again, with the same problems in the same order.
			again, err2 := ParseConfig("fuzz.toml", data)
			if again != nil || err2 == nil || err2.Error() != err.Error() {
				t.Fatalf("parsing again: %v, %v; first %v", again, err2, err)
			}
			return
		}
		if problems := cfg.Check(); len(problems) != 0 {
			t.Fatalf("accepted, but Check says %v", problems)
		}
		if err := cfg.Policy().Check(); err != nil {
			t.Fatalf("accepted, but the policy does not build: %v", err)
		}
		if len(cfg.Listeners) == 0 && cfg.PolicyService == nil {
			t.Fatal("accepted with neither a milter listener nor a policy service")
		}
		if ps := cfg.PolicyService; ps != nil {
			if _, _, err := ParseAddress(ps.Address); err != nil {
				t.Fatalf("policy service: %v", err)
			}
		}
		for _, l := range cfg.Listeners {
			if _, _, err := ParseAddress(l.Address); err != nil {
				t.Fatalf("listener %q: %v", l.Name, err)
			}
			if _, err := parseRoles(l.Roles); err != nil {
				t.Fatalf("listener %q: %v", l.Name, err)
			}
		}
		again, err := ParseConfig("fuzz.toml", data)
		if err != nil || show(again) != show(cfg) {
			t.Fatalf("parsing again: %v\n%s\n%s", err, show(again), show(cfg))
		}
		// Written back, it reads the same.
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(cfg); err != nil {
			t.Fatalf("encoding an accepted configuration: %v", err)
		}
		back, err := ParseConfig("encoded.toml", buf.Bytes())
		if err != nil {
			t.Fatalf("the encoded configuration does not parse: %v\n%s", err, buf.Bytes())
		}
		if a, b := show(back), show(cfg); a != b {
			t.Fatalf("round trip changed the configuration:\n%s\n%s\nencoded:\n%s", b, a, buf.Bytes())
		}
	})
}

// show formats a configuration with what its pointers point to.
func show(c *Config) string {
	if c == nil {
		return "<nil>"
	}
	sm, ps := "none", "none"
	if c.Socketmap != nil {
		sm = fmt.Sprintf("%+v", *c.Socketmap)
	}
	if c.PolicyService != nil {
		ps = fmt.Sprintf("%+v", *c.PolicyService)
	}
	cc := *c
	cc.Socketmap, cc.PolicyService = nil, nil
	return fmt.Sprintf("%+v socketmap %s policy_service %s", cc, sm, ps)
}

// TestConfigValueErrorsAllReported: a file with two values the TOML
// decoder cannot convert (two invalid durations) gets both reported, in
// file order, every time. The decoder itself stops at one, picked by its
// map order (found by FuzzParseConfig, seed 9219b47f528fa6c6).
func TestConfigValueErrorsAllReported(t *testing.T) {
	data := []byte("keyring = \"/k\"\n[sign]\ndomains = [\"example.com\"]\n[limits]\nidle_timeout = \"soon\"\nshutdown_timeout = \"later\"\n")
	first := ""
	for i := range 50 {
		_, err := ParseConfig("batv.toml", data)
		if err == nil {
			t.Fatal("accepted")
		}
		msg := err.Error()
		if !strings.Contains(msg, ":5:") || !strings.Contains(msg, ":6:") {
			t.Fatalf("parse %d does not report both lines 5 and 6: %v", i, err)
		}
		if i == 0 {
			first = msg
		} else if msg != first {
			t.Fatalf("parse %d: %q, first %q", i, msg, first)
		}
	}
}
