package daemon

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batv/batv/keyring"
)

// setJournalStream points $JOURNAL_STREAM at f, as systemd does for the
// stream it connects to the journal.
func setJournalStream(t *testing.T, f *os.File) {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
}

func TestJournalStream(t *testing.T) {
	dir := t.TempDir()
	journal, err := os.Create(filepath.Join(dir, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	defer journal.Close()
	other, err := os.Create(filepath.Join(dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	t.Setenv("JOURNAL_STREAM", "")
	if journalStream(journal) {
		t.Error("without $JOURNAL_STREAM: taken as the journal")
	}
	setJournalStream(t, journal)
	if !journalStream(journal) {
		t.Errorf("the stream $JOURNAL_STREAM=%s names: not taken as the journal", os.Getenv("JOURNAL_STREAM"))
	}
	if journalStream(other) {
		t.Error("another file: taken as the journal")
	}
	if journalStream(&bytes.Buffer{}) {
		t.Error("a buffer: taken as the journal")
	}
	for _, bad := range []string{"1", "x:1", "1:x", ":"} {
		t.Setenv("JOURNAL_STREAM", bad)
		if journalStream(journal) {
			t.Errorf("$JOURNAL_STREAM=%q: taken as the journal", bad)
		}
	}
}

// Each line starts with its level's priority, and is otherwise the line
// the plain handler writes, attributes and groups included.
func TestPriorityHandler(t *testing.T) {
	noTime := func(groups []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey && len(groups) == 0 {
			return slog.Attr{}
		}
		return a
	}
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			opts := &slog.HandlerOptions{Level: slog.LevelDebug - 4, ReplaceAttr: noTime}
			newHandler := func(w io.Writer) slog.Handler {
				if format == "json" {
					return slog.NewJSONHandler(w, opts)
				}
				return slog.NewTextHandler(w, opts)
			}
			var got, plain bytes.Buffer
			logWith := func(l *slog.Logger) {
				l = l.With("listener", "milter").WithGroup("g")
				for _, lvl := range []slog.Level{slog.LevelDebug - 4, slog.LevelDebug, slog.LevelInfo, slog.LevelInfo + 2,
					slog.LevelWarn, slog.LevelError, slog.LevelError + 4} {
					l.Log(t.Context(), lvl, "a line", "k", "two\nlines")
				}
			}
			logWith(slog.New(newPriorityHandler(&got, newHandler)))
			logWith(slog.New(newHandler(&plain)))

			want := []string{"<7>", "<7>", "<6>", "<6>", "<4>", "<3>", "<3>"}
			gotLines := strings.Split(strings.TrimSuffix(got.String(), "\n"), "\n")
			plainLines := strings.Split(strings.TrimSuffix(plain.String(), "\n"), "\n")
			if len(gotLines) != len(want) || len(plainLines) != len(want) {
				t.Fatalf("got %d lines, the plain handler %d, want %d:\n%s", len(gotLines), len(plainLines), len(want), got.String())
			}
			for i, line := range gotLines {
				if line != want[i]+plainLines[i] {
					t.Errorf("line %d:\n got %q\nwant %q", i, line, want[i]+plainLines[i])
				}
			}
		})
	}
}

// The daemon writes the priorities when its standard error is the
// journal, and the plain lines otherwise.
func TestDaemonLogsJournalPriorities(t *testing.T) {
	dir := t.TempDir()
	kr, sock, config := filepath.Join(dir, "keyring.json"), filepath.Join(dir, "m.sock"), filepath.Join(dir, "batv.toml")
	if _, err := (keyring.File{Path: kr}).Create(keyringCreated, rand.Reader, keyring.DefaultOptions()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(config, []byte(testConfig(kr, sock, "", "")), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, journal := range []bool{true, false} {
		t.Run(fmt.Sprintf("journal=%v", journal), func(t *testing.T) {
			stderr, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
			if err != nil {
				t.Fatal(err)
			}
			defer stderr.Close()
			t.Setenv("JOURNAL_STREAM", "")
			if journal {
				setJournalStream(t, stderr)
			}
			reload, stop, done := make(chan struct{}), make(chan struct{}, 2), make(chan error, 1)
			runTestDaemon(t, Options{ConfigPath: config, Stderr: stderr, Reload: reload}, stop, done)
			// A reload of a file that is not valid: an error line.
			good, _ := os.ReadFile(config)
			if err := os.WriteFile(config, append(good, "bogus = 1\n"...), 0o600); err != nil {
				t.Fatal(err)
			}
			defer os.WriteFile(config, good, 0o600)
			reload <- struct{}{}
			var log string
			for deadline := time.Now().Add(10 * time.Second); !strings.Contains(log, "reload failed"); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("no reload failure in the log:\n%s", log)
				}
				data, _ := os.ReadFile(stderr.Name())
				log = string(data)
			}
			for _, l := range strings.Split(strings.TrimSpace(log), "\n") {
				prefix := ""
				if journal {
					switch {
					case strings.Contains(l, "level=ERROR"):
						prefix = "<3>"
					case strings.Contains(l, "level=WARN"):
						prefix = "<4>"
					case strings.Contains(l, "level=INFO"):
						prefix = "<6>"
					default:
						prefix = "<7>"
					}
				}
				if !strings.HasPrefix(l, prefix+"time=") {
					t.Errorf("want the prefix %q: %q", prefix, l)
				}
			}
		})
	}
}
