package stormbench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"time"
)

// Measurement is one scenario's load in one run, with the CPU time that
// the MX (Postfix's process tree and the scenario's daemons) used for it.
type Measurement struct {
	Result *Result
	CPU    time.Duration
}

// The figures of a measurement.
func (m Measurement) refusalsPerSec() float64 {
	return float64(m.Result.Total(Refused, Untagged, Forged)) / m.Result.Elapsed.Seconds()
}

func (m Measurement) legitPerSec() float64 {
	return float64(m.Result.Count[Legit][Accepted]) / m.Result.Elapsed.Seconds()
}

// cpuPerRefusal is in microseconds, NaN without refusals.
func (m Measurement) cpuPerRefusal() float64 {
	n := m.Result.Total(Refused, Untagged, Forged)
	if n == 0 {
		return math.NaN()
	}
	return float64(m.CPU.Microseconds()) / float64(n)
}

// p99 is in milliseconds.
func (m Measurement) p99() float64 {
	return float64(m.Result.Percentile(99).Microseconds()) / 1000
}

// Row is one scenario of the table: its measurements, one per run, in run
// order.
type Row struct {
	Scenario string
	Runs     []Measurement
}

// WriteTable writes the markdown table of one concurrency level: a line
// per row with the median over the runs of each figure and of its ratio
// to rows[ref] in the same run (legitimate mail also to rows[alone]), and
// the sessions whose outcome was not a refusal of a bounce or an
// acceptance of legitimate mail, summed over the runs.
func WriteTable(w io.Writer, clients int, rows []Row, ref, alone int) error {
	type figure func(Measurement) float64
	median := func(r Row, f figure) float64 {
		v := make([]float64, len(r.Runs))
		for i, m := range r.Runs {
			v[i] = f(m)
		}
		return medianOf(v)
	}
	ratio := func(r Row, base int, f figure) string {
		v := make([]float64, len(r.Runs))
		for i, m := range r.Runs {
			v[i] = f(m) / f(rows[base].Runs[i])
		}
		x := medianOf(v)
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return "-"
		}
		return fmt.Sprintf("%.2f", x)
	}
	num := func(x float64, format string) string {
		if math.IsNaN(x) {
			return "-"
		}
		return fmt.Sprintf(format, x)
	}
	if _, err := fmt.Fprintf(w, "\n%d concurrent clients, median of %d runs; × is the ratio to %q in the same run\n\n"+
		"| scenario | refusals/s | × | legitimate accepted/s | × | × %s | CPU per refused bounce | × | p99 reply | × | bounces accepted | legitimate not accepted | deferred or failed |\n"+
		"|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
		clients, len(rows[ref].Runs), rows[ref].Scenario, rows[alone].Scenario); err != nil {
		return err
	}
	for _, r := range rows {
		var accepted, legitLost, other int
		for _, m := range r.Runs {
			accepted += m.Result.Total(Accepted, Untagged, Forged)
			legitLost += m.Result.Count[Legit][Refused]
			other += m.Result.Total(Deferred) + m.Result.Total(Failed)
		}
		if _, err := fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s µs | %s | %s ms | %s | %d | %d | %d |\n",
			r.Scenario,
			num(median(r, Measurement.refusalsPerSec), "%.0f"), ratio(r, ref, Measurement.refusalsPerSec),
			num(median(r, Measurement.legitPerSec), "%.1f"), ratio(r, ref, Measurement.legitPerSec), ratio(r, alone, Measurement.legitPerSec),
			num(median(r, Measurement.cpuPerRefusal), "%.0f"), ratio(r, ref, Measurement.cpuPerRefusal),
			num(median(r, Measurement.p99), "%.1f"), ratio(r, ref, Measurement.p99),
			accepted, legitLost, other); err != nil {
			return err
		}
	}
	return nil
}

// medianOf returns the median of v (the mean of the middle two for an
// even count), NaN for none.
func medianOf(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}
