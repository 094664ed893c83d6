package stormbench

import (
	"math"
	"strings"
	"testing"
	"time"
)

func measurement(elapsed time.Duration, refused, legit, accepted int, cpu time.Duration, p99 time.Duration) Measurement {
	r := &Result{Elapsed: elapsed, Latencies: []time.Duration{p99}}
	r.Count[Untagged][Refused] = refused
	r.Count[Legit][Accepted] = legit
	r.Count[Untagged][Accepted] = accepted
	return Measurement{Result: r, CPU: cpu}
}

func TestWriteTable(t *testing.T) {
	rows := []Row{
		{"alone", []Measurement{
			measurement(time.Second, 100, 50, 400, 2*time.Second, 20*time.Millisecond),
			measurement(time.Second, 100, 40, 400, 2*time.Second, 30*time.Millisecond),
		}},
		{"blanket", []Measurement{
			measurement(time.Second, 1000, 100, 0, time.Second, 10*time.Millisecond),
			measurement(time.Second, 800, 80, 0, time.Second, 10*time.Millisecond),
		}},
		{"other", []Measurement{
			measurement(time.Second, 900, 90, 0, 900*time.Millisecond, 20*time.Millisecond),
			measurement(time.Second, 800, 80, 0, time.Second, 15*time.Millisecond),
		}},
	}
	var b strings.Builder
	if err := WriteTable(&b, 20, rows, 1, 0); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`20 concurrent clients, median of 2 runs; × is the ratio to "blanket" in the same run`,
		// Medians of the values, and of the ratios run by run: refusals
		// 0.9 and 1.0, CPU per refusal 1000/1000 µs and 1250/1250 µs.
		"| other | 850 | 0.95 | 85.0 | 0.95 | 1.90 | 1125 µs | 1.00 | 17.5 ms | 1.75 | 0 | 0 | 0 |",
		"| blanket | 900 | 1.00 | 90.0 | 1.00 | 2.00 | 1125 µs | 1.00 | 10.0 ms | 1.00 | 0 | 0 | 0 |",
		"| alone | 100 | 0.11 | 45.0 | 0.50 | 1.00 | 20000 µs | 18.00 | 25.0 ms | 2.50 | 800 | 0 | 0 |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing %q in\n%s", want, b.String())
		}
	}
}

func TestMedianOf(t *testing.T) {
	for _, c := range []struct {
		v    []float64
		want float64
	}{{[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}, {[]float64{7}, 7}} {
		if got := medianOf(c.v); got != c.want {
			t.Errorf("%v: %v", c.v, got)
		}
	}
	if !math.IsNaN(medianOf(nil)) {
		t.Error("median of nothing is not NaN")
	}
}
