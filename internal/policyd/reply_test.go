package policyd

import (
	"errors"
	"strings"
	"testing"
)

func TestReplyConstructors(t *testing.T) {
	for _, c := range []struct {
		r    Reply
		want string
	}{
		{Dunno(), "DUNNO"},
		{OK(), "OK"},
		{Reject(""), "REJECT"},
		{Reject("5.7.1 Bounce refused"), "REJECT 5.7.1 Bounce refused"},
		{Defer("4.7.1 Try later"), "DEFER 4.7.1 Try later"},
		{DeferIfPermit("Service unavailable"), "DEFER_IF_PERMIT Service unavailable"},
		{Hold("quarantine: forged tag"), "HOLD quarantine: forged tag"},
		{Prepend("X-BATV-Status", "valid; key=1"), "PREPEND X-BATV-Status: valid; key=1"},
		{Redirect("alice@example.com"), "REDIRECT alice@example.com"},
		{Code(550, "5.7.1", "Bounce refused"), "550 5.7.1 Bounce refused"},
		{Code(451, "", "Try later"), "451 Try later"},
		{Code(554, "5.7.1", ""), "554 5.7.1"},
	} {
		if c.r.Action != c.want || c.r.String() != c.want {
			t.Errorf("got %q, want %q", c.r.Action, c.want)
		}
		if err := c.r.Validate(); err != nil {
			t.Errorf("%q: %v", c.want, err)
		}
		if got := string(appendReply(nil, c.r)); got != "action="+c.want+"\n\n" {
			t.Errorf("wire form %q", got)
		}
	}
}

func TestReplyValidate(t *testing.T) {
	for _, a := range []string{
		"DUNNO", "reject_unverified_sender", "my_restriction_class", "REJECT Bounce refusé",
		"450", "550 no enhanced code", "550 5.7.1", "421 4.3.0 closing", "550 5.123.456 x",
		"prepend X-A: v", "PREPEND X-A:", "PREPEND X-A:no-space", "FILTER smtp:[127.0.0.1]:10025",
		strings.Repeat("x", MaxActionLen),
	} {
		if err := (Reply{a}).Validate(); err != nil {
			t.Errorf("%q: %v", a, err)
		}
	}
	for _, a := range []string{
		"", " DUNNO", "REJECT a\nb", "REJECT a\rb", "REJECT a\x00b", "REJECT a\tb", "REJECT a\x7fb",
		"REJECT \xe9", strings.Repeat("x", MaxActionLen+1),
		"250 ok", "650 x", "55 x", "5500 x", "5x0 x", "550 4.7.1 class mismatch", "450 5.7.1 class mismatch",
		"550 5.7 short", "550 5.1000.1 long", "550 5..1 empty", "550 5.7.1x", "550 5.a.1 x",
		"PREPEND", "PREPEND X-A", "PREPEND : v", "PREPEND X A: v", "PREPEND Xé: v",
	} {
		if err := (Reply{a}).Validate(); !errors.Is(err, ErrBadReply) {
			t.Errorf("%q: got %v, want ErrBadReply", a, err)
		}
	}
}
