package daemon

import (
	"bytes"
	"strings"
)

//go:generate go run ../../cmd/batv generate-reference ../../docs/batv.toml

// The configuration reference: every option of the file, with its
// explanation, its default and an example. It is the one source of
// docs/batv.toml (Reference writes it; a test keeps the file in step) and
// of the man page batv.toml(5); tests check that it documents every key
// Config has, and that the values it writes are the defaults, except the
// ones it sets for the Postfix setup of docs/postfix.md.

// refSection is one table of the file (or the top-level keys).
type refSection struct {
	title string // the heading
	table string // "[log]", "[[listener]]", or "" for the top level
	doc   string
	// options are the table's keys, in the order the file lists them.
	options []refOption
	// commented writes the table header and every key commented out: a
	// table the Postfix setup of docs/postfix.md does not need.
	commented bool
}

// refOption is one key.
type refOption struct {
	key, doc string
	// default_ says what the default is, in words where the value alone
	// does not say it; example is a line that sets it otherwise.
	default_, example string
	// value is what the reference file sets: the default, or the value of
	// the Postfix setup; commented writes the line commented out, for a
	// default TOML cannot write.
	value     string
	commented bool
}

// rule is the line above and below a section heading.
var rule = "# " + strings.Repeat("=", 77)

// Reference is the annotated configuration reference, docs/batv.toml.
func Reference() []byte {
	var b bytes.Buffer
	b.WriteString(referenceHeader + "\n")
	for _, s := range reference {
		b.WriteString("\n" + rule + "\n# " + s.title + "\n" + rule + "\n#\n")
		writeComment(&b, s.doc)
		if s.table != "" {
			if s.commented {
				b.WriteString("#")
			}
			b.WriteString(s.table + "\n")
		}
		for _, o := range s.options {
			b.WriteString("\n")
			writeComment(&b, o.doc)
			b.WriteString("#\n")
			writeComment(&b, "Default: "+o.default_)
			writeComment(&b, "Example: "+o.example)
			if o.commented || s.commented {
				b.WriteString("#")
			}
			b.WriteString(o.key + " = " + o.value + "\n")
		}
	}
	return b.Bytes()
}

// writeComment writes text as TOML comment lines.
func writeComment(b *bytes.Buffer, text string) {
	for _, l := range strings.Split(text, "\n") {
		if l == "" {
			b.WriteString("#\n")
		} else {
			b.WriteString("# " + l + "\n")
		}
	}
}
