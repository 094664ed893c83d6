package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The migrations of docs/keyring.md, run with the commands and checked
// against testvectors/sign.json, whose tags come from generate.py, an
// implementation independent of batv. batv-tools signs and verifies with
// key id 0 only (prvs.cpp: key_num is always '0' when signing, and any
// other digit fails validation), with the whole key file as the key.

// vectorKeyID0 returns the sign.json vector made with key id 0 and a
// 32-byte key: the key, the instant to act at (midday of its date) and the
// address with the tag batv-tools would make.
func vectorKeyID0(t *testing.T) (key []byte, at time.Time, addr, tagged string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "testvectors", "sign.json"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Vectors []struct {
			Name     string `json:"name"`
			KeyHex   string `json:"key_hex"`
			KeyID    int    `json:"key_id"`
			Date     string `json:"date"`
			Lifetime int    `json:"lifetime"`
			Address  string `json:"address"`
			Expected string `json:"expected"`
		} `json:"vectors"`
	}
	if err := json.Unmarshal(data, &file); err != nil {
		t.Fatal(err)
	}
	for _, v := range file.Vectors {
		if v.Name != "sign/key-id-0" {
			continue
		}
		if v.KeyID != 0 || v.Lifetime != 7 || !strings.HasPrefix(v.Expected, "prvs=0") {
			t.Fatalf("sign/key-id-0 is not a key id 0, 7-day vector: %+v", v)
		}
		key, err := hex.DecodeString(v.KeyHex)
		if err != nil || len(key) != 32 {
			t.Fatalf("sign/key-id-0: key %q: %v", v.KeyHex, err)
		}
		d, err := time.Parse(time.DateOnly, v.Date)
		if err != nil {
			t.Fatal(err)
		}
		return key, d.Add(12 * time.Hour), v.Address, v.Expected
	}
	t.Fatal("no vector sign/key-id-0")
	return nil, time.Time{}, "", ""
}

// runBatv runs batv with args and returns what it did.
func runBatv(args ...string) keysResult {
	var out, errOut bytes.Buffer
	code := run(append([]string{"batv"}, args...), strings.NewReader(""), &out, &errOut)
	return keysResult{code, out.String(), errOut.String()}
}

// TestMigrationFromBatvTools: a site moves from batv-tools, whose key file
// and key map stay as they were. batv's own key takes another id than 0;
// batv-tools' key is imported as id 0, from its key map.
func TestMigrationFromBatvTools(t *testing.T) {
	key, at, addr, tagged := vectorKeyID0(t)
	dir, path := newKeysDir(t)
	keyFile := filepath.Join(dir, "batv-key")
	keyMap := filepath.Join(dir, "batv-keys.conf")
	os.WriteFile(keyFile, key, 0o600)
	os.WriteFile(keyMap, []byte("# batv-tools key map\n@example.com\t"+keyFile+"\n"), 0o600)
	rfc := func(d time.Duration) string { return at.Add(d).Format(time.RFC3339) }
	day := 24 * time.Hour

	t.Run("cut-over", func(t *testing.T) {
		// Every host switches to batv at once: batv signs with its own
		// key, 1; batv-tools' key only verifies, until its tags expire.
		expectKeys(t, runKeys(t, "", "--keyring", path, "--at", rfc(0), "init", "--id", "1"), exitOK, "key 1 signs")
		expectKeys(t, runKeys(t, "", "--keyring", path, "--at", rfc(0), "import", "--id", "0", keyMap), exitOK,
			"is a batv-tools key map: importing the key file "+keyFile+", the key of @example.com",
			"imported key 0 (32 bytes)", "key 0 only verifies, until "+rfc(9*day))
		expectKeys(t, runBatv("verify", "--keyring", path, "--at", at.Format(time.DateOnly), tagged), exitOK, "valid "+addr)
		r := runBatv("sign", "--keyring", path, "--at", at.Format(time.DateOnly), addr)
		if r.code != exitOK || !strings.HasPrefix(r.stdout, "prvs=1") {
			t.Errorf("batv signs with key 1 after the cut-over:\n%s", r)
		}
		// Retired 9 days after the import: the tag is no longer valid.
		expectKeys(t, runBatv("verify", "--keyring", path, "--at", at.Add(9*day).Format(time.DateOnly), tagged), 5, "unknown-key")
	})

	t.Run("batv-tools peers still verify", func(t *testing.T) {
		// Some hosts (or a secondary MX) still run batv-tools, which
		// refuses every tag whose key id is not 0: batv signs with
		// batv-tools' key, as id 0, and its tags are batv-tools' own.
		_, path := newKeysDir(t)
		expectKeys(t, runKeys(t, "", "--keyring", path, "--at", rfc(-time.Hour), "init", "--id", "1"), exitOK)
		expectKeys(t, runKeys(t, "", "--keyring", path, "--at", rfc(0), "import", "--id", "0", "--sign", keyFile), exitOK,
			"key 0 signs from "+rfc(0), "key 1 stops signing at "+rfc(0))
		r := runBatv("sign", "--keyring", path, "--at", at.Format(time.DateOnly), addr)
		if r.code != exitOK || strings.TrimSpace(r.stdout) != tagged {
			t.Errorf("batv signs %q with batv-tools' key as id 0; the vector says %s\n%s", r.stdout, tagged, r)
		}
		// Once no batv-tools host is left: rotate. The new key takes
		// id 1 (retired since), not 0, which a batv-tools host refuses.
		expectKeys(t, runKeys(t, "", "--keyring", path, "--at", rfc(30*day), "rotate", "--now"), exitOK, "key 1 added")
		r = runBatv("sign", "--keyring", path, "--at", at.Add(30*day).Format(time.DateOnly), addr)
		if r.code != exitOK || !strings.HasPrefix(r.stdout, "prvs=1") {
			t.Errorf("after the rotation:\n%s", r)
		}
	})

	t.Run("key map refusals", func(t *testing.T) {
		_, path := newKeysDir(t)
		initKeyring(t, path, "--id", "1")
		other := filepath.Join(dir, "other-key")
		os.WriteFile(other, bytes.Repeat([]byte{7}, 64), 0o600)
		for _, tc := range []struct {
			name, keyMap string
			id           string
			want         []string
		}{
			{"id other than 0", "@example.com " + keyFile + "\n", "3",
				[]string{"batv-tools writes key id 0 in every tag", "--id 0"}},
			{"two keys", "@example.com " + keyFile + "\n@example.org " + other + "\nbob@example.com " + keyFile + "\n", "0",
				[]string{"2 different keys", keyFile + " for @example.com, bob@example.com", other + " for @example.org", "only one of them can verify"}},
			{"no key", "@example.com /dev/null\n", "0", []string{"all empty", "BATV off for @example.com"}},
			{"missing key file", "@example.com " + filepath.Join(dir, "none") + "\n", "0",
				[]string{"line 1 (a batv-tools key map): the key file of @example.com", "no such file"}},
		} {
			m := filepath.Join(dir, "map")
			os.WriteFile(m, []byte(tc.keyMap), 0o600)
			r := runKeys(t, "", "--keyring", path, "import", "--id", tc.id, m)
			expectKeys(t, r, exitUsage, tc.want...)
			assertNoSecretForms(t, r.stdout+r.stderr, key)
		}
		// A disabled sender beside the key is said and skipped.
		m := filepath.Join(dir, "map")
		os.WriteFile(m, []byte("@example.com "+keyFile+"\nbob@example.com /dev/null\n"), 0o600)
		expectKeys(t, runKeys(t, "", "--keyring", path, "--at", keysT0, "import", "--id", "0", m), exitOK,
			"BATV is off for bob@example.com (empty key file), nothing to import", "imported key 0 (32 bytes)")
	})
}

// TestMigrationToBatvToolsPeer: batv signs for a domain whose bounces may
// come back through a host that runs batv-tools (a secondary MX, or a
// host not yet moved). The key batv signs with must have id 0, and the
// peer's key file is batv's key, exported raw.
func TestMigrationToBatvToolsPeer(t *testing.T) {
	key, at, addr, tagged := vectorKeyID0(t)
	dir, path := newKeysDir(t)
	expectKeys(t, runKeysWith(t, bytes.NewReader(key), "", "--keyring", path, "--at", at.Format(time.RFC3339), "init"),
		exitOK, "key 0 signs")
	peerKey := filepath.Join(dir, "batv-key")
	expectKeys(t, runKeys(t, "", "--keyring", path, "export", "--id", "0", "--format", "raw", "--output", peerKey), exitOK)
	if got, _ := os.ReadFile(peerKey); !bytes.Equal(got, key) {
		t.Fatal("the exported key file is not the key")
	}
	r := runBatv("sign", "--keyring", path, "--at", at.Format(time.DateOnly), addr)
	if r.code != exitOK || strings.TrimSpace(r.stdout) != tagged {
		t.Errorf("batv signs %q; a batv-tools peer with the exported key expects %s\n%s", r.stdout, tagged, r)
	}
}
