package keyring

import (
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxKeyFileSize bounds a key file read by ReadKeyFile and a key map read
// by the import command: a key is at most MaxKeySize bytes, and a key map a
// few lines per domain.
const MaxKeyFileSize = 64 << 10

// ReadKeyFile reads a key file to import (a batv-tools key file, or an Exim
// secret written to a file): the whole contents of a regular file of at
// most MaxKeyFileSize bytes. It opens the file without blocking and refuses
// anything but a regular file, so that a FIFO or a device given by mistake
// cannot hang the command; a key that comes through a pipe is read from
// standard input instead. Errors name the file, never its contents.
func ReadKeyFile(path string) ([]byte, error) {
	f, _, err := openRegular(path)
	if err != nil {
		if _, ok := err.(errNotRegular); ok {
			return nil, fmt.Errorf("keyring: %s: %w", path, err)
		}
		return nil, fmt.Errorf("keyring: %w", err)
	}
	defer f.Close()
	data, err := readAll(f, MaxKeyFileSize, "not a key file")
	if err != nil {
		return nil, fmt.Errorf("keyring: %s: %w", path, err)
	}
	return data, nil
}

// KeyMapEntry is one line of a batv-tools key map (the file its "key-map"
// option names): the senders the key applies to and the file the key is
// read from.
type KeyMapEntry struct {
	// Sender is an address, or "@" and a domain for the whole domain.
	Sender string
	// KeyFile is the key file's path. batv-tools reads the whole file as
	// the key; an empty file (such as /dev/null) turns BATV off for the
	// sender.
	KeyFile string
	// Line is the entry's line number in the key map, from 1.
	Line int
}

// ParseKeyMap reads data as a batv-tools key map: lines of a sender and a
// key file separated by white space, blank lines and lines starting with
// "#" ignored. ok is false if data is not one: some line is not of that
// shape, the text is not UTF-8 or holds control characters, or it has no
// entry. A key file read whole (random bytes) is never taken for a key map.
func ParseKeyMap(data []byte) (entries []KeyMapEntry, ok bool) {
	if !utf8.Valid(data) {
		return nil, false
	}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSuffix(line, "\r")
		for _, c := range line {
			if c < ' ' && c != '\t' || c == 0x7f {
				return nil, false
			}
		}
		text := strings.TrimSpace(line)
		if text == "" || text[0] == '#' {
			continue
		}
		j := strings.IndexAny(text, " \t")
		if j < 0 || !strings.Contains(text[:j], "@") {
			return nil, false
		}
		entries = append(entries, KeyMapEntry{Sender: text[:j], KeyFile: strings.TrimLeft(text[j:], " \t"), Line: i + 1})
	}
	return entries, len(entries) > 0
}

// looksLikeKeyMap reports whether a secret is in fact the text of a
// batv-tools key map, imported by mistake as a key.
func looksLikeKeyMap(secret []byte) bool {
	if !bytes.Contains(secret, []byte("@")) {
		return false
	}
	_, ok := ParseKeyMap(secret)
	return ok
}
