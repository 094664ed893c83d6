package daemon

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// canary is in the executable's writable data: releasing the start-up
// pages must not take it back to the value in the file.
var canary = []int{1, 2, 3}

func TestReleaseStartupPages(t *testing.T) {
	canary[1] = 42
	before, after, err := releaseStartupPages()
	if err != nil {
		t.Fatal(err)
	}
	if before <= 0 || after < 0 || after >= before {
		t.Errorf("resident file pages %d bytes before, %d after: want fewer after", before, after)
	}
	if !slices.Equal(canary, []int{1, 42, 3}) {
		t.Errorf("a changed variable reads %v after the release: writable pages were dropped", canary)
	}
	t.Logf("resident file pages: %d KiB before, %d KiB after", before>>10, after>>10)
}

func TestReadOnlyMappings(t *testing.T) {
	maps := `00400000-009ac000 r-xp 00000000 fe:00 777 /usr/sbin/batv
009ac000-00ff5000 r--p 005ac000 fe:00 777 /usr/sbin/batv
00ff5000-0104a000 r--p 00bf5000 fe:00 777 /usr/sbin/batv
0104a000-0107b000 rw-p 00c4a000 fe:00 777 /usr/sbin/batv
0107b000-030c0000 rw-p 00000000 00:00 0 
7f0000000000-7f0000001000 r--s 00000000 fe:00 777 /usr/sbin/batv
7f0000001000-7f0000002000 r--p 00000000 fe:00 7770 /usr/lib/other
7f0000002000-7f0000003000 r-xp 00001000 fe:00 777 /usr/sbin/batv (deleted)
7ffc65a15000-7ffc65a36000 rw-p 00000000 00:00 0                          [stack]
`
	path := filepath.Join(t.TempDir(), "maps")
	if err := os.WriteFile(path, []byte(maps), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := readOnlyMappings(path, 777, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := [][2]uintptr{{0x400000, 0x9ac000}, {0x9ac000, 0xff5000}, {0xff5000, 0x104a000}, {0x7f0000002000, 0x7f0000003000}}
	if !slices.Equal(got, want) {
		t.Errorf("got %x, want %x", got, want)
	}
	// The RELRO segment, at file offsets 0xbf5000 to 0xc4a000, relocated
	// by the dynamic loader: its mapping is left alone.
	got, err = readOnlyMappings(path, 777, [][2]uint64{{0xbf5000, 0xc4a000}})
	if err != nil {
		t.Fatal(err)
	}
	if want := slices.Delete(slices.Clone(want), 2, 3); !slices.Equal(got, want) {
		t.Errorf("with the RELRO segment skipped: got %x, want %x", got, want)
	}

	if err := os.WriteFile(path, []byte("zz-00 r-xp 00000000 fe:00 777 /usr/sbin/batv\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readOnlyMappings(path, 777, nil); err == nil {
		t.Error("an unreadable address range was accepted")
	}
}

// TestReleaseStartupPagesPIE: in a position-independent executable the
// dynamic loader relocates data at start and then makes it read-only;
// releasing the start-up pages must leave it, or the program crashes (as
// it did before relocatedRanges). This package's tests, built as a PIE,
// run TestReleaseStartupPages.
func TestReleaseStartupPagesPIE(t *testing.T) {
	if testing.Short() {
		t.Skip("builds this package's tests again")
	}
	bin := filepath.Join(t.TempDir(), "daemon-pie.test")
	if out, err := exec.Command("go", "test", "-c", "-buildmode=pie", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building the tests as a PIE: %v\n%s", err, out)
	}
	relocated, err := relocatedRanges(bin)
	if err != nil || len(relocated) == 0 {
		t.Fatalf("the PIE build has no RELRO segment (%v): this test shows nothing", err)
	}
	out, err := exec.Command(bin, "-test.run", "^TestReleaseStartupPages$", "-test.v").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestReleaseStartupPages") {
		t.Fatalf("TestReleaseStartupPages in a PIE: %v\n%s", err, out)
	}
	t.Logf("RELRO file ranges %x; %s", relocated, strings.TrimSpace(string(out)))
}
