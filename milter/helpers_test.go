package milter

import (
	"testing"
	"time"

	"github.com/batv/batv/internal/testenv/tagtest"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/policy"
)

var (
	testKeys = batv.SingleKey{ID: 4, Secret: []byte("milter test key, 32 bytes long!!")}
	// testNow is 2026-11-28 10:00 UTC; the grace period is over unless a
	// test says otherwise.
	testNow = time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
)

// testPolicy is the default policy for example.com and example.net, with
// mod applied and the grace period over.
func testPolicy(t testing.TB, mod func(*policy.Config)) *policy.Policy {
	t.Helper()
	cfg := policy.DefaultConfig("example.com", "example.net")
	cfg.Verify.GraceUntil = testNow.Add(-365 * 24 * time.Hour)
	if mod != nil {
		mod(&cfg)
	}
	p, err := policy.New(cfg, testKeys)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// tag signs addr with the test key, daysAgo days before testNow.
func tag(t testing.TB, addr string, daysAgo int) string {
	t.Helper()
	return tagtest.Sign(t, testKeys, addr, testNow.AddDate(0, 0, -daysAgo))
}

// forge makes a tag that does not verify.
func forge(tagged string) string { return tagtest.Forge(tagged) }
