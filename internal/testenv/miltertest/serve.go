// Package miltertest serves batv's milter on a unix socket, for the tests
// of the packages that drive it as an MTA would.
package miltertest

import (
	"context"
	"testing"
	"time"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/serve"
	"github.com/batv/batv/internal/testenv/conntest"
	"github.com/batv/batv/milter"
	"github.com/batv/batv/policy"
)

// Serve serves the milter with both roles and the default policy for
// domain, signing and verifying with keys and with the grace period for
// untagged bounces over, on a unix socket in a new temporary directory
// (short enough for sun_path), until the test ends. It returns the
// socket's path.
func Serve(t testing.TB, domain string, keys batv.Keyring) string {
	t.Helper()
	cfg := policy.DefaultConfig(domain)
	cfg.Verify.GraceUntil = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	p, err := policy.New(cfg, keys)
	if err != nil {
		t.Fatal(err)
	}
	ln, path := conntest.ListenUnix(t, "m.sock")
	l := serve.New(ln, serve.Options{Name: "test"})
	srv := &milter.Server{Name: "test", Roles: milter.Outbound | milter.Inbound, Policy: func() *policy.Policy { return p }}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		l.Shutdown(ctx)
		<-done
	})
	return path
}
