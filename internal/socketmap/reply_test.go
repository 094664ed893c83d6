package socketmap

import (
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestReplyWire(t *testing.T) {
	long := strings.Repeat("x", MaxReplySize-len("OK "))
	tests := []struct {
		name  string
		reply Reply
		want  string
	}{
		{"ok", OK("alice@example.com"), "20:OK alice@example.com,"},
		{"ok empty", OK(""), "3:OK ,"},
		{"ok spaces", OK("a b  c"), "9:OK a b  c,"},
		{"ok utf8", OK("jürgen@exämple.com"), "23:OK jürgen@exämple.com,"},
		{"ok comma colon", OK("1:a,"), "7:OK 1:a,,"},
		{"ok max size", OK(long), "100000:OK " + long + ","},
		{"notfound", NotFound(), "9:NOTFOUND ,"},
		{"notfound data dropped", Reply{Status: StatusNotFound, Data: "x"}, "9:NOTFOUND ,"},
		{"temp", Temp("database unavailable"), "25:TEMP database unavailable,"},
		{"temp empty", Temp(""), "5:TEMP ,"},
		{"timeout", Timeout("backend timed out"), "25:TIMEOUT backend timed out,"},
		{"perm", Perm("no such map"), "16:PERM no such map,"},
		{"zero status", Reply{}, "45:TEMP invalid reply status from lookup handler,"},
		{"bad status", Reply{Status: 42, Data: "x"}, "45:TEMP invalid reply status from lookup handler,"},
		{"ok newline", OK("a\nb"), "40:TEMP invalid characters in lookup result,"},
		{"ok cr", OK("a\rb"), "40:TEMP invalid characters in lookup result,"},
		{"ok nul", OK("a\x00b"), "40:TEMP invalid characters in lookup result,"},
		{"ok tab", OK("a\tb"), "40:TEMP invalid characters in lookup result,"},
		{"ok del", OK("a\x7fb"), "40:TEMP invalid characters in lookup result,"},
		{"ok control after utf8", OK("é\n"), "40:TEMP invalid characters in lookup result,"},
		{"ok invalid utf8", OK("a\xffb"), "40:TEMP invalid characters in lookup result,"},
		{"ok too long", OK(long + "y"), "27:TEMP lookup result too long,"},
		{"temp newline", Temp("line1\nline2\r\x00"), "18:TEMP line1?line2??,"},
		{"perm invalid utf8", Perm("bad \xff\xfe byte"), "16:PERM bad ?? byte,"},
		{"timeout replacement char kept", Timeout("x\uFFFDy"), "13:TIMEOUT x\uFFFDy,"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(appendReply(nil, tt.reply.sanitize()))
			// The expectation itself must be a valid netstring.
			if l, p, _ := strings.Cut(tt.want, ":"); l != strconv.Itoa(len(p)-1) {
				t.Fatalf("bad test: length %s for a %d-byte payload", l, len(p)-1)
			}
			if got != tt.want {
				if len(got) > 80 {
					t.Errorf("got %.80q... (%d bytes), want %.80q... (%d bytes)", got, len(got), tt.want, len(tt.want))
				} else {
					t.Errorf("got %q, want %q", got, tt.want)
				}
			}
		})
	}
}

func TestReasonTruncated(t *testing.T) {
	// 199 ASCII bytes then a 2-byte rune: the rune does not fit and is
	// dropped whole.
	r := Temp(strings.Repeat("a", MaxReasonSize-1) + "é and more").sanitize()
	if len(r.Data) != MaxReasonSize-1 || !utf8.ValidString(r.Data) {
		t.Fatalf("truncated reason: %d bytes, valid UTF-8 %v", len(r.Data), utf8.ValidString(r.Data))
	}
	r = Perm(strings.Repeat("é", 300)).sanitize()
	if len(r.Data) != MaxReasonSize || !utf8.ValidString(r.Data) {
		t.Fatalf("truncated reason: %d bytes, valid UTF-8 %v", len(r.Data), utf8.ValidString(r.Data))
	}
	// A clean short reason is passed through without copying.
	in := Temp("fine reason")
	if out := in.sanitize(); out != in {
		t.Fatalf("clean reason changed: %q", out.Data)
	}
}

func TestStatusString(t *testing.T) {
	for s, want := range map[Status]string{
		StatusOK: "OK", StatusNotFound: "NOTFOUND", StatusTemp: "TEMP",
		StatusTimeout: "TIMEOUT", StatusPerm: "PERM", 0: "Status(0)", 9: "Status(9)",
	} {
		if got := s.String(); got != want {
			t.Errorf("Status(%d).String() = %q, want %q", s, got, want)
		}
	}
	if got := NotFound().String(); got != "NOTFOUND " {
		t.Errorf("NotFound().String() = %q", got)
	}
	if got := OK("a\nb").String(); got != "TEMP "+reasonBadData {
		t.Errorf("OK(bad).String() = %q", got)
	}
}

func TestSanitizeOKNoAlloc(t *testing.T) {
	r := OK("prvs=0123abcdef=alice@example.com")
	buf := make([]byte, 0, 128)
	if n := testing.AllocsPerRun(100, func() {
		buf = appendReply(buf[:0], r.sanitize())
	}); n != 0 {
		t.Errorf("encoding an OK reply allocates %v times", n)
	}
}
