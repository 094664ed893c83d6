package policy

import "testing"

// BenchmarkPolicy is the cost of the decisions themselves, without the
// protocol.
func BenchmarkPolicy(b *testing.B) {
	p := testPolicy(b, nil)
	valid := tag(b, "user@example.com", 1)
	b.Run("Sign", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if r := p.Sign("alice@example.com", []string{"bob@example.org"}, testNow); r.Address == "" {
				b.Fatal(r)
			}
		}
	})
	b.Run("Recipient", func(b *testing.B) {
		trx := p.Begin(mxClient, "")
		b.ReportAllocs()
		for b.Loop() {
			if r := trx.Recipient(valid, testNow); r.Action != ActAccept {
				b.Fatal(r)
			}
		}
	})
}
