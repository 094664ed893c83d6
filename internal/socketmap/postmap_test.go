package socketmap

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/batv/batv/internal/serve"
	"github.com/batv/batv/internal/testenv/postfixtest"
)

// These tests use postmap(1) from the installed Postfix as a real
// socketmap client. They are skipped when postmap is missing, unless
// BATV_E2E=1 (then they fail).

// postmapEnv returns the postmap binary and a config directory with a
// minimal main.cf (the system may have none), or skips the test.
func postmapEnv(t *testing.T) (bin, configDir string) {
	t.Helper()
	bin, err := exec.LookPath("postmap")
	if err != nil {
		for _, p := range []string{"/usr/sbin/postmap", "/usr/local/sbin/postmap"} {
			if _, e := os.Stat(p); e == nil {
				bin, err = p, nil
				break
			}
		}
	}
	if err != nil {
		postfixtest.SkipOrFail(t, "postmap (Postfix) not installed (apt-get install postfix)")
	}
	configDir = t.TempDir()
	mainCF := "compatibility_level = 3.6\nmyhostname = socketmap.test\n"
	if err := os.WriteFile(filepath.Join(configDir, "main.cf"), []byte(mainCF), 0o644); err != nil {
		t.Fatal(err)
	}
	return bin, configDir
}

type postmapResult struct {
	stdout, stderr string
	exit           int
}

// postmap runs "postmap -c configDir args..." with stdin.
func runPostmap(t *testing.T, bin, configDir, stdin string, args ...string) postmapResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"-c", configDir}, args...)...)
	cmd.Env = append(os.Environ(), "MAIL_CONFIG="+configDir)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	res := postmapResult{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.exit = ee.ExitCode()
	default:
		t.Fatalf("postmap %q: %v", args, err)
	}
	t.Logf("postmap %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), res.exit, res.stdout, res.stderr)
	return res
}

func TestPostmap(t *testing.T) {
	bin, cfg := postmapEnv(t)
	h := &recordingHandler{}
	ts := startServer(t, h, serve.Options{})
	table := "socketmap:unix:" + ts.path + ":untag"

	t.Run("found", func(t *testing.T) {
		r := runPostmap(t, bin, cfg, "", "-q", "found-1@example.com", table)
		if r.exit != 0 || r.stdout != "value-of-untag:found-1@example.com\n" {
			t.Errorf("got exit %d stdout %q, want exit 0 and the value", r.exit, r.stdout)
		}
	})
	t.Run("notfound", func(t *testing.T) {
		r := runPostmap(t, bin, cfg, "", "-q", "nobody@example.com", table)
		if r.exit != 1 || r.stdout != "" {
			t.Errorf("got exit %d stdout %q, want exit 1 and no output", r.exit, r.stdout)
		}
	})
	t.Run("temp", func(t *testing.T) {
		r := runPostmap(t, bin, cfg, "", "-q", "temp@example.com", table)
		if r.exit != 1 || r.stdout != "" {
			t.Errorf("got exit %d stdout %q, want exit 1 and no output", r.exit, r.stdout)
		}
		if !strings.Contains(r.stderr, "warning: "+table+" socketmap server temporary error: database unavailable") ||
			!strings.Contains(r.stderr, "fatal: table "+table+": query error") {
			t.Errorf("stderr %q does not carry the TEMP reason and the query error", r.stderr)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		r := runPostmap(t, bin, cfg, "", "-q", "timeout@example.com", table)
		if r.exit != 1 || !strings.Contains(r.stderr, "socketmap server timeout error: backend timed out") {
			t.Errorf("got exit %d stderr %q, want exit 1 with the TIMEOUT reason", r.exit, r.stderr)
		}
	})
	t.Run("perm", func(t *testing.T) {
		r := runPostmap(t, bin, cfg, "", "-q", "perm@example.com", table)
		if r.exit != 1 || !strings.Contains(r.stderr, "socketmap server permanent error: no such map") {
			t.Errorf("got exit %d stderr %q, want a failure with the PERM reason", r.exit, r.stderr)
		}
	})
	t.Run("stdin", func(t *testing.T) {
		in := "found-a@example.com\nnobody@example.com\nfound-b@example.com\n"
		r := runPostmap(t, bin, cfg, in, "-q", "-", table)
		want := "found-a@example.com\tvalue-of-untag:found-a@example.com\n" +
			"found-b@example.com\tvalue-of-untag:found-b@example.com\n"
		if r.exit != 0 || r.stdout != want {
			t.Errorf("got exit %d stdout %q, want exit 0 and %q", r.exit, r.stdout, want)
		}
	})
	// The key must reach the handler with its case: BATV tags are
	// case-sensitive. -f only affects fixed-case tables (hash:, ...).
	t.Run("case", func(t *testing.T) {
		const key = "Found.Mixed.Case@Example.COM"
		before := len(h.got())
		runPostmap(t, bin, cfg, "", "-q", key, table)
		runPostmap(t, bin, cfg, "", "-f", "-q", key, table)
		runPostmap(t, bin, cfg, key+"\n", "-q", "-", table)
		got := h.got()[before:]
		want := []string{"untag|" + key, "untag|" + key, "untag|" + key}
		if !slices.Equal(got, want) {
			t.Errorf("handler saw %q, want %q", got, want)
		}
	})
	// One postmap process sends all its queries on one connection.
	t.Run("connection reuse", func(t *testing.T) {
		var in strings.Builder
		for range 20 {
			in.WriteString("nobody@example.com\n")
		}
		before, opened := len(h.got()), ts.accepted(t)
		runPostmap(t, bin, cfg, in.String(), "-q", "-", table)
		if n := len(h.got()) - before; n != 20 {
			t.Errorf("handler saw %d lookups, want 20", n)
		}
		if n := ts.accepted(t) - opened; n != 1 {
			t.Errorf("%d connections for 20 lookups, want 1", n)
		}
	})
}

func countLog(l *logRecorder, substr string) int {
	n := 0
	for _, r := range l.all() {
		if strings.Contains(r, substr) {
			n++
		}
	}
	return n
}

// TestPostmapReconnectsAfterIdleClose: when the server closes an idle
// connection, Postfix's client reconnects and retries the next lookup
// transparently (dict_sockmap retries once on EOF). Postfix daemons ignore
// SIGPIPE; postmap does not (a plain "postmap -q -" is killed by SIGPIPE
// when it writes its next query to the closed connection), so postmap runs
// here with SIGPIPE ignored, as a daemon would.
func TestPostmapReconnectsAfterIdleClose(t *testing.T) {
	bin, cfg := postmapEnv(t)
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh to run postmap with SIGPIPE ignored")
	}
	h := &recordingHandler{}
	ts := startServer(t, h, serve.Options{IdleTimeout: 200 * time.Millisecond})
	table := "socketmap:unix:" + ts.path + ":untag"

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sh, "-c", `trap "" PIPE; exec "$@"`, "sh", bin, "-c", cfg, "-q", "-", table)
	cmd.Env = append(os.Environ(), "MAIL_CONFIG="+cfg)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(stdin, "found-1\n"); err != nil {
		t.Fatal(err)
	}
	ts.log.wait(t, "the peer sent nothing for too long") // the server closed postmap's connection
	if _, err := io.WriteString(stdin, "found-2\n"); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	err = cmd.Wait()
	t.Logf("postmap: %v, stdout %q, stderr %q", err, out.String(), errb.String())
	if err != nil {
		t.Fatalf("postmap failed after the server closed an idle connection: %v", err)
	}
	want := "found-1\tvalue-of-untag:found-1\nfound-2\tvalue-of-untag:found-2\n"
	if out.String() != want {
		t.Errorf("stdout %q, want %q", out.String(), want)
	}
	if n := ts.accepted(t); n != 2 {
		t.Errorf("%d connections, want 2 (a reconnect)", n)
	}
}
