package e2e

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestPostfixDocsLines: docs/postfix.md has the lines the site of these
// tests takes from it (newSiteWith, TestRecipientAccessSeesTags), written
// as the page says to write them.
func TestPostfixDocsLines(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "docs", "postfix.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	var want []string
	for k, v := range docsMain {
		want = append(want, "\n"+k+" = "+v+"\n")
	}
	for k, v := range docsSubmission {
		want = append(want, "\n  -o "+k+"="+v+"\n")
	}
	sort.Strings(want)
	want = append(want,
		// The MX: the tests' sites use "tempfail" unless they say otherwise.
		"\nmilter_default_action = tempfail\n",
		"\n    check_recipient_access hash:/etc/postfix/recipient_access,\n    check_recipient_access pipemap:{socketmap:unix:batv/socketmap.sock:strip, hash:/etc/postfix/recipient_access},\n",
	)
	for _, w := range want {
		if !strings.Contains(doc, w) {
			t.Errorf("docs/postfix.md has no line %q", strings.Trim(w, "\n"))
		}
	}
}
