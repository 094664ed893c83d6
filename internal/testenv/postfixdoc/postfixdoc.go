// Package postfixdoc reads the Postfix configuration a section of
// docs/postfix.md gives, so that the end-to-end tests and the storm
// benchmark run Postfix with the page's own lines, and the page cannot
// drift from what they run.
//
// A section gives its configuration in fenced blocks whose first line
// names the file: "# main.cf ..." (parameters, "name = value", continued
// on indented lines), "# master.cf ..." (services, each with its "-o
// name=value" lines), or "# /path/of/a/file" (the file's content).
package postfixdoc

import (
	"fmt"
	"os"
	"strings"
)

// Section is the configuration of one section.
type Section struct {
	// Main are the main.cf parameters.
	Main map[string]string
	// Services are the master.cf services, in order.
	Services []Service
	// Files are the other files, by path.
	Files map[string]string
}

// Service is one master.cf service.
type Service struct {
	// Fields are service, type, private, unpriv, chroot, wakeup, maxproc
	// and command (with its arguments).
	Fields []string
	// Options are the -o name=value options, in order.
	Options [][2]string
}

// Name is the service's name (its first field).
func (s Service) Name() string { return s.Fields[0] }

// Line is the service's line with chroot as its chroot field.
func (s Service) Line(chroot string) string {
	f := append([]string(nil), s.Fields...)
	f[4] = chroot
	return strings.Join(f, " ")
}

// Read reads the section with the heading line heading ("## An MX without
// a milter") of the markdown file path: up to the next heading of the
// same level. It is an error if the section has no main.cf or master.cf
// block, or a block it cannot read.
func Read(path, heading string) (*Section, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	_, text, ok := strings.Cut("\n"+string(data), "\n"+heading+"\n")
	if !ok {
		return nil, fmt.Errorf("%s has no section %q", path, heading)
	}
	level := heading[:strings.IndexByte(heading, ' ')+1]
	text, _, _ = strings.Cut(text, "\n"+level)
	s := &Section{Main: map[string]string{}, Files: map[string]string{}}
	blocks := strings.Split(text, "```")
	for i := 1; i < len(blocks); i += 2 {
		first, body, _ := strings.Cut(strings.TrimPrefix(blocks[i], "\n"), "\n")
		switch {
		case strings.HasPrefix(first, "# main.cf"):
			err = parseMain(body, s.Main)
		case strings.HasPrefix(first, "# master.cf"):
			var svcs []Service
			svcs, err = parseMaster(body)
			s.Services = append(s.Services, svcs...)
		case strings.HasPrefix(first, "# /"):
			s.Files[strings.TrimPrefix(first, "# ")] = body
		}
		if err != nil {
			return nil, fmt.Errorf("%s, %q: %w", path, heading, err)
		}
	}
	if len(s.Main) == 0 || len(s.Services) == 0 {
		return nil, fmt.Errorf("%s, %q: no main.cf or no master.cf block", path, heading)
	}
	return s, nil
}

// parseMain reads main.cf lines into into.
func parseMain(text string, into map[string]string) error {
	last := ""
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#"):
		case line[0] == ' ' || line[0] == '\t':
			if last == "" {
				return fmt.Errorf("main.cf: a continuation line without a parameter: %q", line)
			}
			into[last] = strings.TrimSpace(into[last] + " " + strings.TrimSpace(line))
		default:
			name, value, ok := strings.Cut(line, "=")
			if !ok {
				return fmt.Errorf("main.cf: %q is not name = value", line)
			}
			last = strings.TrimSpace(name)
			into[last] = strings.TrimSpace(value)
		}
	}
	return nil
}

// parseMaster reads master.cf services and their -o options.
func parseMaster(text string) ([]Service, error) {
	var out []Service
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "" || strings.HasPrefix(trimmed, "#"):
		case line[0] == ' ' || line[0] == '\t':
			opt, ok := strings.CutPrefix(trimmed, "-o ")
			name, value, ok2 := strings.Cut(opt, "=")
			if !ok || !ok2 || len(out) == 0 {
				return nil, fmt.Errorf("master.cf: %q is not an -o name=value of a service", line)
			}
			s := &out[len(out)-1]
			s.Options = append(s.Options, [2]string{name, value})
		default:
			f := strings.Fields(line)
			if len(f) < 8 {
				return nil, fmt.Errorf("master.cf: %q is not a service line", line)
			}
			out = append(out, Service{Fields: f})
		}
	}
	return out, nil
}
