package daemontest_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/internal/daemon"
	"github.com/batv/batv/internal/testenv/daemontest"
)

// TestTOML: the daemon reads every field of a Config as meant, and lines
// appended to the file are in [verify].
func TestTOML(t *testing.T) {
	c := daemontest.Config{
		Keyring: "/k/keyring.json", KeyringPoll: "100ms", LogLevel: "warn", Metrics: "127.0.0.1:9100",
		MaxConnections: 7, ShutdownTimeout: "2s",
		Listeners: []daemontest.Listener{
			{Name: "both", Address: "unix:/s/m.sock", Roles: []string{"outbound", "inbound"}, Postfix: true},
			{Name: "in", Address: "inet:127.0.0.1:1234", Roles: []string{"inbound"}},
		},
		Socketmap: "unix:/s/map.sock", PolicyService: "unix:/s/policy.sock",
		Sign:   `internal_networks = ["10.0.0.0/8"]`,
		Verify: `untagged_bounce = "tag"`,
	}
	cfg, err := daemon.ParseConfig("batv.toml", []byte(c.TOML()+"remove_forged_headers = false\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Keyring != c.Keyring || time.Duration(cfg.KeyringPoll) != 100*time.Millisecond || cfg.Log.Level != "warn" ||
		cfg.Metrics.Listen != c.Metrics || cfg.Limits.MaxConnections != 7 || time.Duration(cfg.Limits.ShutdownTimeout) != 2*time.Second {
		t.Errorf("top level, [log], [metrics] or [limits] misread: %+v", cfg)
	}
	if len(cfg.Listeners) != 2 {
		t.Fatalf("listeners: %+v", cfg.Listeners)
	}
	l := cfg.Listeners[0]
	if l.Name != "both" || l.Address != "unix:/s/m.sock" || !slices.Equal(l.Roles, []string{"outbound", "inbound"}) ||
		l.Group != "postfix" || l.Mode != "0660" || cfg.Listeners[1].Group != "" {
		t.Errorf("listeners misread: %+v", cfg.Listeners)
	}
	if cfg.Socketmap == nil || cfg.Socketmap.Address != c.Socketmap || cfg.Socketmap.Group != "postfix" ||
		cfg.PolicyService == nil || cfg.PolicyService.Address != c.PolicyService || cfg.PolicyService.Mode != "0660" {
		t.Errorf("socketmap or policy service misread: %+v %+v", cfg.Socketmap, cfg.PolicyService)
	}
	if !slices.Equal(cfg.Sign.Domains, []string{"example.com"}) || strings.Join(cfg.Sign.InternalNetworks, ",") != "10.0.0.0/8" {
		t.Errorf("[sign] misread: %+v", cfg.Sign)
	}
	if !cfg.Verify.GraceUntil.Before(time.Now()) || cfg.Verify.UntaggedBounce != "tag" || cfg.Verify.RemoveForgedHeaders {
		t.Errorf("[verify] misread: %+v", cfg.Verify)
	}
}
