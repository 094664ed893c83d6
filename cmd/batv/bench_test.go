package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/internal/testenv/miltertest"
)

// benchMilter serves batv's milter, both roles, with key id 2 and the
// secret of keyFile, on a unix socket; it returns the bench address.
func benchMilter(t *testing.T, keyFile string) string {
	t.Helper()
	secret, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return "unix:" + miltertest.Serve(t, "example.com", batv.SingleKey{ID: 2, Secret: secret})
}

func TestBenchCLI(t *testing.T) {
	key := writeSecret(t, "demo key for batv\n")
	addr := benchMilter(t, key)
	common := []string{"bench", "--milter", addr, "--secret-file", key, "--key-id", "2",
		"--messages", "40", "--warmup", "4", "--concurrency", "3", "--per-connection", "5"}
	for _, w := range []string{"outbound", "inbound-valid", "inbound-forged"} {
		code, out, errOut := runCLI(t, append(common, "--workload", w, "--pid", fmt.Sprint(os.Getpid()), "--reset-peak-rss")...)
		if code != 0 || errOut != "" || !strings.Contains(out, "40 sent, 40 checked, 0 errors, 0 mismatches") ||
			!strings.Contains(out, "milter peak RSS") {
			t.Errorf("%s: exit %d\n%s\n%s", w, code, out, errOut)
		}
	}

	code, out, errOut := runCLI(t, append(common, "--json")...)
	var rep struct {
		Workload string  `json:"workload"`
		OK       int     `json:"ok"`
		Rate     float64 `json:"messages_per_second"`
	}
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || rep.Workload != "outbound" || rep.OK != 40 || rep.Rate <= 0 {
		t.Errorf("json: exit %d, %v, %+v\n%s\n%s", code, err, rep, out, errOut)
	}

	// Any reply, no key.
	code, out, errOut = runCLI(t, "bench", "--milter", addr, "--any-reply", "--messages", "10", "--warmup", "0", "-c", "1")
	if code != 0 || !strings.Contains(out, "any well-formed reply accepted") {
		t.Errorf("any reply: exit %d\n%s\n%s", code, out, errOut)
	}

	// The wrong key: every outbound tag is a mismatch, exit status 1.
	other := writeSecret(t, "another key\n")
	code, out, errOut = runCLI(t, "bench", "--milter", addr, "--secret-file", other, "--key-id", "2",
		"--messages", "10", "--warmup", "0", "-c", "1")
	if code != 1 || !strings.Contains(out, "10 mismatches") || !strings.Contains(errOut, "10 of 10 messages failed") {
		t.Errorf("wrong key: exit %d\n%s\n%s", code, out, errOut)
	}
}

func TestBenchCLIUsage(t *testing.T) {
	key := writeSecret(t, "demo key for batv\n")
	dir := t.TempDir()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"bench"}, "milter"},
		{[]string{"bench", "--milter", "/tmp/x.sock", "--any-reply"}, "want unix:PATH or inet:HOST:PORT"},
		{[]string{"bench", "--milter", "unix:/x", "--any-reply", "--workload", "sideways"}, "--workload"},
		{[]string{"bench", "--milter", "unix:/x", "--any-reply", "--messages", "0"}, "--messages"},
		{[]string{"bench", "--milter", "unix:/x", "--any-reply", "--concurrency", "0"}, "--concurrency"},
		{[]string{"bench", "--milter", "unix:/x", "--any-reply", "extra"}, "no arguments"},
		{[]string{"bench", "--milter", "unix:/x", "--any-reply", "--reset-peak-rss"}, "needs --pid"},
		{[]string{"bench", "--milter", "unix:/x", "--keyring", filepath.Join(dir, "none.json")}, "--any-reply"},
		{[]string{"bench", "--milter", "unix:/x", "--secret-file", key, "--key-id", "12"}, "key id"},
		{[]string{"bench", "--milter", "unix:" + filepath.Join(dir, "none.sock"), "--any-reply"}, "cannot drive the milter"},
	} {
		code, _, errOut := runCLI(t, tt.args...)
		if code != exitUsage || !strings.Contains(errOut, tt.want) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", tt.args, code, errOut, tt.want)
		}
	}
}
