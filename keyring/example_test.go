package keyring_test

import (
	"crypto/rand"
	"fmt"
	"time"

	"github.com/batv/batv/keyring"
)

// A staged rotation: the new key verifies at once and signs after the
// propagation delay; the old key keeps verifying until its tags expire.
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
			retires := "not scheduled"
			if !k.Retires.IsZero() {
				retires = k.Retires.Format(time.RFC3339)
			}
			fmt.Printf("  key %d %s, retires: %s\n", k.ID, k.State, retires)
		}
	}
	// Output:
	// new key: 1
	// 2025-01-08T12:00:00Z: key 0 signs
	//   key 0 signing, retires: 2025-01-17T13:00:00Z
	//   key 1 pending, retires: not scheduled
	// 2025-01-08T13:00:00Z: key 1 signs
	//   key 0 verifying, retires: 2025-01-17T13:00:00Z
	//   key 1 signing, retires: not scheduled
}
