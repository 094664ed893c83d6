package keyring_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/batv/batv/batv"
	"github.com/batv/batv/keyring"
)

// A staged rotation: the new key verifies at once and signs after the
// propagation delay; the old key keeps verifying until its tags expire.
// Every key stops signing at the latest MaxSigningPeriod (981 days here)
// after it starts, and retires within 990 days of its start.
func ExampleKeyring_Rotate() {
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	r, err := keyring.New(t0, rand.Reader, keyring.DefaultOptions())
	if err != nil {
		panic(err)
	}
	week := t0.Add(7 * 24 * time.Hour)
	r, id, err := r.Rotate(week, keyring.DefaultPropagationDelay, rand.Reader)
	if err != nil {
		panic(err)
	}
	fmt.Println("new key:", id)
	for _, at := range []time.Time{week, week.Add(time.Hour)} {
		signing, _ := r.SigningKeyID(at)
		fmt.Printf("%s: key %d signs\n", at.Format(time.RFC3339), signing)
		for _, k := range r.Keys(at) {
			fmt.Printf("  key %d %s, signs until %s, retires %s\n", k.ID, k.State,
				k.StoppedSigning.Format(time.DateOnly), k.Retires.Format(time.DateOnly))
		}
	}
	// Output:
	// new key: 1
	// 2025-01-08T12:00:00Z: key 0 signs
	//   key 0 signing, signs until 2025-01-08, retires 2025-01-17
	//   key 1 pending, signs until 2027-09-16, retires 2027-09-25
	// 2025-01-08T13:00:00Z: key 1 signs
	//   key 0 verifying, signs until 2025-01-08, retires 2025-01-17
	//   key 1 signing, signs until 2027-09-16, retires 2027-09-25
}

// A Watcher is the keyring of a long-running program: it is a
// batv.Keyring whose keys follow the file. Here a rotation (as "batv keys
// rotate --now" would make it) reaches a signer and a verifier built once,
// at start, and the tags made before it still verify.
func ExampleWatcher() {
	dir, err := os.MkdirTemp("", "keyring-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	file := keyring.File{Path: filepath.Join(dir, "keyring.json")}
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	if _, err := file.Create(t0, rand.Reader, keyring.DefaultOptions()); err != nil {
		panic(err)
	}

	w, err := keyring.NewWatcher(file.Path, func(err error) {
		if err != nil {
			log.Printf("keyring changed but cannot be used: %v", err)
		}
	})
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go w.Run(ctx, 0) // polls the file every 5 seconds

	signer := batv.Signer{Keys: w, Lifetime: 7}
	verifier := batv.Verifier{Keys: w, MaxLifetime: 7}
	for _, err := range []error{signer.Validate(), verifier.Validate()} {
		if err != nil {
			panic(err) // a lifetime longer than the keyring keeps keys for
		}
	}
	before, _ := signer.SignAt("alice@example.com", t0)

	t1 := t0.Add(2 * 24 * time.Hour)
	if _, _, err := file.Rotate(t1, 0, rand.Reader); err != nil {
		panic(err)
	}
	if err := w.Reload(); err != nil { // or wait for Run to notice
		panic(err)
	}
	after, _ := signer.SignAt("alice@example.com", t1)
	fmt.Println("key", before.KeyID, "signed before the rotation, key", after.KeyID, "after it")
	for _, tag := range []string{before.Address, after.Address} {
		r, _ := verifier.VerifyAt(tag, t1)
		fmt.Printf("key %d: %s\n", r.Tag.KeyID, r.Status)
	}
	// Output:
	// key 0 signed before the rotation, key 1 after it
	// key 0: valid
	// key 1: valid
}
