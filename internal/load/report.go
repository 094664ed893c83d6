package load

import (
	"fmt"
	"io"
	"strings"
	"time"

	gomilter "github.com/d--j/go-milter"
)

// WriteText writes the report for a person to read.
func (r *Report) WriteText(w io.Writer) error {
	check := "every reply checked"
	if r.AnyReply {
		check = "any well-formed reply accepted"
	}
	var b strings.Builder
	row := func(k, format string, args ...any) {
		fmt.Fprintf(&b, "%-17s "+format+"\n", append([]any{k}, args...)...)
	}
	row("workload", "%s (%s)", r.Workload, check)
	row("milter", "%s %s: asks for %s", r.Network, r.Address, StagesString(r.Negotiated.Protocol))
	row("round trips", "%d per message, %d per connection", r.RoundTrips, r.ConnRoundTrips)
	per := "all"
	if r.PerConn > 0 {
		per = fmt.Sprint(r.PerConn)
	}
	row("pattern", "%d connections at once, %s messages per connection, %d warm-up messages",
		r.Concurrency, per, r.Warmup)
	row("messages", "%d sent, %d checked, %d errors, %d mismatches (%d connections)",
		r.Messages, r.OK, r.Errors, r.Mismatches, r.Connections)
	row("throughput", "%.0f messages/s (%v)", r.Rate, r.Elapsed.Round(time.Millisecond))
	row("latency", "p50 %v, p90 %v, p99 %v, max %v", Micro(r.P50), Micro(r.P90), Micro(r.P99), Micro(r.Max))
	if r.MilterCPU > 0 || r.PeakRSS > 0 {
		row("milter CPU", "%v per message (%v in all)", Micro(r.CPUPerMessage), r.MilterCPU.Round(time.Millisecond))
		row("milter peak RSS", "%.1f MiB", float64(r.PeakRSS)/(1<<20))
	}
	if r.ClientCPU > 0 && r.OK > 0 {
		row("load tool CPU", "%v per message", Micro(r.ClientCPU/time.Duration(r.OK)))
	}
	for _, s := range r.Samples {
		row("problem", "%s", s)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Micro rounds d for display: to the microsecond below 10 ms, to 0.1 ms
// above.
func Micro(d time.Duration) time.Duration {
	if d < 10*time.Millisecond {
		return d.Round(time.Microsecond)
	}
	return d.Round(100 * time.Microsecond)
}

// StagesString lists the per-message stages a protocol mask asks for,
// e.g. "MAIL RCPT HEADER EOM".
func StagesString(proto uint32) string {
	stages := []struct {
		name   string
		noSend gomilter.OptProtocol
	}{
		{"CONNECT", gomilter.OptNoConnect}, {"HELO", gomilter.OptNoHelo},
		{"MAIL", gomilter.OptNoMailFrom}, {"RCPT", gomilter.OptNoRcptTo}, {"DATA", gomilter.OptNoData},
		{"HEADER", gomilter.OptNoHeaders}, {"EOH", gomilter.OptNoEOH}, {"BODY", gomilter.OptNoBody},
	}
	var names []string
	for _, s := range stages {
		if gomilter.OptProtocol(proto)&s.noSend == 0 {
			names = append(names, s.name)
		}
	}
	return strings.Join(append(names, "EOM"), " ")
}
