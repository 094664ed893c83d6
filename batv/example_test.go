package batv_test

import (
	"fmt"
	"time"

	"github.com/batv/batv/batv"
)

// A fixed key and day keep the examples' output stable. Real keys are at
// least 16 random bytes from crypto/rand, kept in a keyring.
var (
	key = batv.SingleKey{ID: 1, Secret: []byte("an example key, not a secret one")}
	now = func() time.Time { return time.Date(2026, 11, 28, 9, 30, 0, 0, time.UTC) }
)

func ExampleSigner_Sign() {
	s := batv.Signer{Keys: key, Now: now}
	for _, sender := range []string{"alice@example.com", "", "SRS0=x=yy=example.org=bob@example.com"} {
		r, err := s.Sign(sender)
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		if r.Skip != batv.NotSkipped {
			fmt.Printf("%q left unsigned: %s\n", sender, r.Skip)
			continue
		}
		fmt.Println(r.Address)
	}
	// Output:
	// prvs=1792c8ebc2=alice@example.com
	// "" left unsigned: null-sender
	// "SRS0=x=yy=example.org=bob@example.com" left unsigned: srs
}

func ExampleVerifier_Verify() {
	v := batv.Verifier{Keys: key, Now: now}
	for _, rcpt := range []string{
		"prvs=1792c8ebc2=alice@example.com", // as signed above
		"prvs=1792c8ebc3=alice@example.com", // forged
		"alice@example.com",                 // untagged
	} {
		r, err := v.Verify(rcpt)
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		if r.Status == batv.Valid {
			fmt.Printf("%s: deliver to %s (key %d, %d days left)\n", r.Status, r.Untagged(), r.Tag.KeyID, r.DaysLeft)
		} else {
			fmt.Println(r.Status)
		}
	}
	// Output:
	// valid: deliver to alice@example.com (key 1, 7 days left)
	// bad-signature
	// missing
}
