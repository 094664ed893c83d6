package daemon

// Tests that keep the shipped documentation true to the code: the annotated
// configuration reference docs/batv.toml and the Grafana dashboard
// docs/grafana-dashboard.json.

import (
	"bufio"
	"bytes"
	"encoding"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/batv/batv/internal/mta"
)

const (
	referencePath = "../../docs/batv.toml"
	dashboardPath = "../../docs/grafana-dashboard.json"
	alertsPath    = "../../docs/prometheus-alerts.yml"
)

// The reference parses as a configuration, with every problem reported.
func TestReferenceConfigParses(t *testing.T) {
	cfg := loadReference(t)
	if cfg.Socketmap == nil || len(cfg.Listeners) != 1 {
		t.Errorf("the reference should configure one listener and the socketmap for Postfix, got %d listeners, socketmap %v",
			len(cfg.Listeners), cfg.Socketmap)
	}
}

// Every key of the configuration structs is documented in the reference,
// with a default and an example, and every key the reference shows (set or
// commented out) exists.
func TestReferenceConfigDocumentsEveryKey(t *testing.T) {
	keys, tables := map[string]bool{}, map[string]bool{}
	collectTOMLKeys(t, reflect.TypeFor[Config](), "", keys, tables)
	if len(keys) < 40 {
		t.Fatalf("found only %d keys in Config: the walk is broken", len(keys))
	}
	doc := scanReference(t, readFile(t, referencePath))

	for _, k := range sortedKeys(keys) {
		e, ok := doc.keys[k]
		if !ok {
			t.Errorf("%s: option %q is not documented (add it, with its default and an example)", referencePath, k)
			continue
		}
		if !strings.Contains(e.comment, "Default:") {
			t.Errorf("%s:%d: %s: the comment above it has no \"Default:\" line", referencePath, e.line, k)
		}
		if !strings.Contains(e.comment, "Example:") {
			t.Errorf("%s:%d: %s: the comment above it has no \"Example:\" line", referencePath, e.line, k)
		}
	}
	for _, k := range sortedKeys(doc.keys) {
		if !keys[k] {
			t.Errorf("%s:%d: %q is not an option of the configuration", referencePath, doc.keys[k].line, k)
		}
	}
	for _, tb := range sortedKeys(tables) {
		if !doc.tables[tb] {
			t.Errorf("%s: table [%s] has no header line", referencePath, tb)
		}
	}
}

// The values the reference sets are the defaults, except for the few it
// sets on purpose for the Postfix setup of docs/postfix.md. So a "Default:"
// line cannot silently disagree with the value below it.
func TestReferenceConfigValuesAreDefaults(t *testing.T) {
	set := loadReference(t)
	dflt, err := ParseConfig("empty", nil)
	if err != nil {
		t.Fatalf("an empty file: %v", err)
	}
	// The reference's deliberate choices.
	deliberate := map[string]bool{"sign.domains": true, "listener": true, "socketmap": true}
	var diffs []string
	compareConfig(reflect.ValueOf(*set), reflect.ValueOf(*dflt), "", deliberate, &diffs)
	for _, d := range diffs {
		t.Errorf("%s: %s", referencePath, d)
	}
}

func loadReference(t *testing.T) *Config {
	t.Helper()
	cfg, err := ParseConfig(referencePath, readFile(t, referencePath))
	if err != nil {
		t.Fatalf("the reference configuration does not parse: %v", err)
	}
	return cfg
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// isTOMLValue reports whether a type is a single TOML value rather than a
// table: a non-struct, or a struct that decodes itself from text or is a
// time (time.Time is both).
func isTOMLValue(t reflect.Type) bool {
	return t.Kind() != reflect.Struct || reflect.PointerTo(t).Implements(textUnmarshaler)
}

// collectTOMLKeys walks a configuration struct as BurntSushi/toml decodes
// it: embedded structs without a tag are flattened, pointers followed,
// slices of structs are arrays of tables. Keys are "table.key"; the
// elements of an array of tables share one path ("listener.name").
func collectTOMLKeys(t *testing.T, typ reflect.Type, prefix string, keys, tables map[string]bool) {
	t.Helper()
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	for i := range typ.NumField() {
		f := typ.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "-" {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if f.Anonymous && name == "" && !isTOMLValue(ft) {
			collectTOMLKeys(t, ft, prefix, keys, tables)
			continue
		}
		if name == "" {
			t.Errorf("%s.%s has no toml tag: give it one so that its key is explicit", typ, f.Name)
			continue
		}
		key := prefix + name
		elem := ft
		if elem.Kind() == reflect.Slice {
			elem = elem.Elem()
			for elem.Kind() == reflect.Pointer {
				elem = elem.Elem()
			}
		}
		if !isTOMLValue(elem) {
			tables[key] = true
			collectTOMLKeys(t, elem, key+".", keys, tables)
			continue
		}
		keys[key] = true
	}
}

// referenceDoc is what the reference shows: its keys, set or commented out,
// each with the comment above it, and its table headers.
type referenceDoc struct {
	keys   map[string]docEntry
	tables map[string]bool
}

type docEntry struct {
	line    int
	comment string
}

var (
	// A table header, possibly commented out: "[sign]", "[[listener]]",
	// "# [socketmap]". An example indented in a comment ("#     [x]") is not one.
	docTableRe = regexp.MustCompile(`^#? ?\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*$`)
	// A key line, possibly commented out: "lifetime = 7", "#grace_until = ...".
	docKeyRe = regexp.MustCompile(`^#? ?([A-Za-z0-9_-]+)\s*=`)
)

func scanReference(t *testing.T, data []byte) referenceDoc {
	t.Helper()
	doc := referenceDoc{keys: map[string]docEntry{}, tables: map[string]bool{}}
	prefix := ""
	var comment []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "":
			comment = nil
		case docTableRe.MatchString(line):
			table := docTableRe.FindStringSubmatch(line)[1]
			doc.tables[table] = true
			prefix = table + "."
			comment = nil
		case docKeyRe.MatchString(line):
			key := prefix + docKeyRe.FindStringSubmatch(line)[1]
			if prev, dup := doc.keys[key]; dup {
				t.Errorf("%s:%d: %s is shown twice (first at line %d)", referencePath, n, key, prev.line)
			}
			doc.keys[key] = docEntry{line: n, comment: strings.Join(comment, "\n")}
			comment = nil
		case strings.HasPrefix(line, "#"):
			comment = append(comment, line)
		}
	}
	return doc
}

// compareConfig reports the leaves where a and b differ, by key path.
// Empty and nil slices are equal; paths in skip are not compared.
func compareConfig(a, b reflect.Value, path string, skip map[string]bool, diffs *[]string) {
	if skip[path] {
		return
	}
	typ := a.Type()
	switch {
	case typ.Kind() == reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				*diffs = append(*diffs, fmt.Sprintf("%s is set, but not by default (or the reverse)", path))
			}
			return
		}
		compareConfig(a.Elem(), b.Elem(), path, skip, diffs)
	case typ.Kind() == reflect.Slice:
		if a.Len() == 0 && b.Len() == 0 {
			return
		}
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*diffs = append(*diffs, fmt.Sprintf("%s = %v, but the default is %v", path, a.Interface(), b.Interface()))
		}
	case !isTOMLValue(typ):
		for i := range typ.NumField() {
			f := typ.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			p := path
			if !(f.Anonymous && name == "") {
				p = strings.TrimPrefix(path+"."+name, ".")
			}
			compareConfig(a.Field(i), b.Field(i), p, skip, diffs)
		}
	default:
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*diffs = append(*diffs, fmt.Sprintf("%s = %v, but the default is %v", path, a.Interface(), b.Interface()))
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Every metric name in the dashboard's queries is one a running daemon
// exports. The daemon is started for real, on unix sockets in a temporary
// directory, and one message goes through its milter so that the vectors
// and the histogram have series and their types are known.
func TestDashboardMetricsExist(t *testing.T) {
	exported := runningDaemonMetrics(t)
	for _, must := range []string{"batv_decision_seconds_bucket", "batv_reloads_total", "batv_keyring_signing_key_id", "go_goroutines", "process_start_time_seconds"} {
		if !exported[must] {
			t.Fatalf("the running daemon does not export %s: the test's view of the registry is broken", must)
		}
	}

	var dash any
	if err := json.Unmarshal(readFile(t, dashboardPath), &dash); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	exprs := dashboardQueries(dash, "")
	if len(exprs) < 10 {
		t.Fatalf("found only %d queries in %s", len(exprs), dashboardPath)
	}
	used := map[string]bool{}
	for _, q := range exprs {
		names := promQLMetricNames(q.expr)
		if len(names) == 0 {
			t.Errorf("%s: %s: no metric name found in %q", dashboardPath, q.where, q.expr)
		}
		for _, n := range names {
			used[n] = true
			if !exported[n] {
				t.Errorf("%s: %s: %q uses %s, which batv does not export", dashboardPath, q.where, q.expr, n)
			}
		}
	}
	// Every batv metric is on the dashboard (a histogram by its buckets).
	for _, n := range sortedKeys(exported) {
		base, isSum := strings.CutSuffix(n, "_sum")
		if !isSum {
			base, isSum = strings.CutSuffix(n, "_count")
		}
		if !strings.HasPrefix(n, "batv_") || isSum && exported[base+"_bucket"] {
			continue
		}
		if !used[n] {
			t.Errorf("%s: batv exports %s, but no panel shows it", dashboardPath, n)
		}
	}
}

// Every metric the alert rules use is one a running daemon exports (or
// Prometheus's own up).
func TestAlertRulesMetricsExist(t *testing.T) {
	exported := runningDaemonMetrics(t)
	exported["up"] = true
	var exprs []string
	lines := strings.Split(string(readFile(t, alertsPath)), "\n")
	for i := 0; i < len(lines); i++ {
		indent, expr, ok := strings.Cut(lines[i], "expr: ")
		if !ok || strings.TrimSpace(indent) != "" {
			continue
		}
		if expr == "|" { // a block: the lines indented further
			expr = ""
			for i+1 < len(lines) && len(lines[i+1])-len(strings.TrimLeft(lines[i+1], " ")) > len(indent) {
				i++
				expr += lines[i] + "\n"
			}
		}
		exprs = append(exprs, expr)
	}
	if len(exprs) < 10 {
		t.Fatalf("found only %d expressions in %s", len(exprs), alertsPath)
	}
	for _, expr := range exprs {
		names := promQLMetricNames(expr)
		if len(names) == 0 {
			t.Errorf("%s: no metric name found in %q", alertsPath, expr)
		}
		for _, n := range names {
			if !exported[n] {
				t.Errorf("%s: %q uses %s, which batv does not export", alertsPath, expr, n)
			}
		}
	}
}

// runningDaemonMetrics starts a daemon, sends it one message and returns
// the names of the series it can export: each described metric, with the
// _bucket, _sum and _count series of histograms and summaries.
func runningDaemonMetrics(t *testing.T) map[string]bool {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "milter.sock")
	cfgPath := filepath.Join(dir, "batv.toml")
	writeTestFile(t, cfgPath, fmt.Sprintf(`keyring = %q
create_keyring = true
[[listener]]
name = "milter"
address = "unix:%s"
roles = ["outbound", "inbound"]
[socketmap]
address = "unix:%s"
[sign]
domains = ["example.com"]
`, filepath.Join(dir, "keyring.json"), sock, filepath.Join(dir, "socketmap.sock")))

	ready := make(chan *Daemon, 1)
	stop := make(chan struct{}, 2)
	done := make(chan error, 1)
	go func() {
		done <- Run(Options{ConfigPath: cfgPath, Stderr: io.Discard, Stop: stop, Reload: make(chan struct{}),
			Ready: func(d *Daemon) { ready <- d }})
	}()
	var d *Daemon
	select {
	case d = <-ready:
	case err := <-done:
		t.Fatalf("the daemon did not start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon did not start within 30s")
	}
	defer func() {
		stop <- struct{}{}
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	}()

	c := dialMX(t, sock)
	res, err := c.Send(&mta.Message{Sender: "", Recipients: []string{"alice@example.com"}, QueueID: "4ABC1", Body: []byte("x\r\n")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(&mta.Message{Sender: "alice@example.com", Recipients: []string{"bob@example.org"},
		AuthUser: "alice", QueueID: "4ABC2", Body: []byte("x\r\n")}); err != nil {
		t.Fatal(err)
	}
	if !res.Delivered() {
		t.Fatalf("the bounce in the grace period was refused: %v", res)
	}
	c.Close()

	types := map[string]dto.MetricType{}
	mfs, err := d.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		types[mf.GetName()] = mf.GetType()
	}
	ch := make(chan *prometheus.Desc)
	go func() { d.registry.Describe(ch); close(ch) }()
	names := map[string]bool{}
	for desc := range ch {
		m := descNameRe.FindStringSubmatch(desc.String())
		if m == nil {
			t.Fatalf("cannot read the name of %s", desc)
		}
		name := m[1]
		switch types[name] {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[name], names[name+"_sum"], names[name+"_count"] = true, true, true
		default:
			names[name] = true
		}
	}
	return names
}

func writeTestFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

var descNameRe = regexp.MustCompile(`^Desc\{fqName: "([a-zA-Z_:][a-zA-Z0-9_:]*)"`)

type dashboardQuery struct{ where, expr string }

// dashboardQueries returns the PromQL of every panel target ("expr") and
// template variable ("query" of a query variable), with where it is.
func dashboardQueries(v any, where string) []dashboardQuery {
	var out []dashboardQuery
	switch v := v.(type) {
	case map[string]any:
		if title, ok := v["title"].(string); ok {
			where = strings.TrimPrefix(where+" > "+title, " > ")
		} else if name, ok := v["name"].(string); ok {
			where = strings.TrimPrefix(where+" > variable "+name, " > ")
		}
		if expr, ok := v["expr"].(string); ok && expr != "" {
			out = append(out, dashboardQuery{where, expr})
		}
		if v["type"] == "query" {
			switch q := v["query"].(type) {
			case string:
				out = append(out, dashboardQuery{where, q})
			case map[string]any:
				if s, ok := q["query"].(string); ok {
					out = append(out, dashboardQuery{where, s})
				}
			}
		}
		for _, k := range sortedKeys(v) {
			out = append(out, dashboardQueries(v[k], where)...)
		}
	case []any:
		for _, e := range v {
			out = append(out, dashboardQueries(e, where)...)
		}
	}
	return out
}

var (
	promStringRe   = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	promBracesRe   = regexp.MustCompile(`\{[^{}]*\}|\[[^\[\]]*\]`)
	promGroupingRe = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	grafanaVarRe   = regexp.MustCompile(`\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*`)
	labelValuesRe  = regexp.MustCompile(`^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$`)
	promIdentRe    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	promKeywords   = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true,
		"group_right": true, "offset": true, "bool": true, "and": true, "or": true, "unless": true,
		"inf": true, "nan": true, "Inf": true, "NaN": true, "atan2": true}
)

// promQLMetricNames returns the metric names a PromQL expression (or a
// Grafana label_values query) selects. It is a tokenizer, not a parser:
// it drops strings, label matchers, ranges, grouping clauses and Grafana
// variables, then takes each identifier that is not a function call, a
// keyword or part of a number.
func promQLMetricNames(expr string) []string {
	if m := labelValuesRe.FindStringSubmatch(expr); m != nil {
		expr = m[1]
	}
	expr = grafanaVarRe.ReplaceAllString(expr, "1")
	expr = promStringRe.ReplaceAllString(expr, `""`)
	for {
		next := promBracesRe.ReplaceAllString(expr, " ")
		if next == expr {
			break
		}
		expr = next
	}
	expr = promGroupingRe.ReplaceAllString(expr, " ")
	var names []string
	for _, loc := range promIdentRe.FindAllStringIndex(expr, -1) {
		id := expr[loc[0]:loc[1]]
		if loc[0] > 0 && (isDigit(expr[loc[0]-1]) || expr[loc[0]-1] == '.') {
			continue // 1e3, 5m
		}
		rest := strings.TrimLeft(expr[loc[1]:], " \t\n")
		if strings.HasPrefix(rest, "(") || promKeywords[id] {
			continue
		}
		if !slices.Contains(names, id) {
			names = append(names, id)
		}
	}
	return names
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func TestPromQLMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (result) (rate(batv_outbound_messages_total{instance=~"$instance"}[$__rate_interval]))`: {"batv_outbound_messages_total"},
		`histogram_quantile(0.99, sum by (le, direction) (rate(batv_decision_seconds_bucket[5m])))`:     {"batv_decision_seconds_bucket"},
		`time() - process_start_time_seconds{job="batv"}`:                                               {"process_start_time_seconds"},
		`label_values(batv_keyring_signing_key_id, instance)`:                                           {"batv_keyring_signing_key_id"},
		`a_total / on (instance) group_left b_info offset 1h > 1e3`:                                     {"a_total", "b_info"},
		`sum without (x) (increase(c_total{a="{b}"}[1h:5m]))`:                                           {"c_total"},
	} {
		if got := promQLMetricNames(expr); !slices.Equal(got, want) {
			t.Errorf("promQLMetricNames(%q) = %q, want %q", expr, got, want)
		}
	}
}
