package daemon

import (
	"bytes"
	"os"
	"testing"
)

// TestReferenceIsGenerated: docs/batv.toml is what Reference writes.
func TestReferenceIsGenerated(t *testing.T) {
	have, err := os.ReadFile("../../docs/batv.toml")
	if err != nil {
		t.Fatal(err)
	}
	if want := Reference(); !bytes.Equal(have, want) {
		os.WriteFile(t.TempDir()+"/want.toml", want, 0o644)
		t.Fatalf("docs/batv.toml is not what the reference in internal/daemon says: run go generate ./internal/daemon (make docs)")
	}
}
