package postfixdoc

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const page = "# Page\n\n## One\n\n```\n# main.cf of one\nsmtpd_milters = x\n```\n\n```\n# master.cf\nsmtp inet n - n - - smtpd\n```\n\n" +
	"## Two\n\nText.\n\n```toml\n[ignored]\n```\n\n```\n# main.cf of two\n# a comment\na = b,\n    c\nd=e\n\n" +
	"restrictions =\n\tr1,\n\tr2 arg\n```\n\n```\n# /etc/postfix/checks\n/^X:/ IGNORE\n```\n\n### Two, below\n\n" +
	"```\n# master.cf of two\nsmtp      inet  n       -       y       -       -       smtpd\n  -o cleanup_service_name=c\n" +
	"c unix n - y - 0 cleanup\n  -o a=b=c\n  -o empty=\n```\n\n## Three\n\n```\n# main.cf\nx = y\n```\n"

func write(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "page.md")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestRead(t *testing.T) {
	s, err := Read(write(t, page), "## Two")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"a": "b, c", "d": "e", "restrictions": "r1, r2 arg"}; !reflect.DeepEqual(s.Main, want) {
		t.Errorf("main.cf %q, want %q", s.Main, want)
	}
	if want := map[string]string{"/etc/postfix/checks": "/^X:/ IGNORE\n"}; !reflect.DeepEqual(s.Files, want) {
		t.Errorf("files %q, want %q", s.Files, want)
	}
	if len(s.Services) != 2 || s.Services[0].Name() != "smtp" || s.Services[1].Line("n") != "c unix n - n - 0 cleanup" ||
		!reflect.DeepEqual(s.Services[0].Options, [][2]string{{"cleanup_service_name", "c"}}) ||
		!reflect.DeepEqual(s.Services[1].Options, [][2]string{{"a", "b=c"}, {"empty", ""}}) {
		t.Errorf("services %+v", s.Services)
	}
}

func TestReadErrors(t *testing.T) {
	for _, tt := range []struct{ name, content, heading, want string }{
		{"no section", page, "## Four", `has no section "## Four"`},
		{"no master.cf", page, "## Three", "no main.cf or no master.cf block"},
		{"not name = value", "## S\n```\n# main.cf\nnothing\n```\n", "## S", `main.cf: "nothing" is not name = value`},
		{"continuation first", "## S\n```\n# main.cf\n  x\n```\n", "## S", "a continuation line without a parameter"},
		{"option first", "## S\n```\n# master.cf\n  -o a=b\n```\n", "## S", "is not an -o name=value of a service"},
		{"short service", "## S\n```\n# master.cf\nsmtp inet n\n```\n", "## S", "is not a service line"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Read(write(t, tt.content), tt.heading)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want %q", err, tt.want)
			}
		})
	}
}
