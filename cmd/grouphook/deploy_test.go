package main

// The deployment files and the README checked against the code:
// docker-compose.yml and the Dockerfile run exactly the commands the tests
// run, the Grafana dashboard and the Prometheus rules use only metrics (and
// labels) the daemon exports, the rules file is well formed, and the
// README's configuration table lists exactly the variables Config reads.

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func readRepoFile(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ---------------------------------------------------------------------------
// docker-compose.yml, read line by line (no YAML library): the file keeps
// to two-space indentation and flow-style command lists.

// composeServices returns each service's lines (below its "  name:" line).
func composeServices(t testing.TB, text string) map[string][]string {
	t.Helper()
	services := map[string][]string{}
	in, cur := false, ""
	for _, line := range strings.Split(text, "\n") {
		switch {
		case line == "services:":
			in = true
			continue
		case in && line != "" && !strings.HasPrefix(line, " ") && !strings.HasPrefix(line, "#"):
			in = false // the next top-level key
		}
		if !in {
			continue
		}
		if m := regexp.MustCompile(`^  ([a-z][a-z0-9-]*):\s*$`).FindStringSubmatch(line); m != nil {
			cur = m[1]
			services[cur] = nil
			continue
		}
		if cur != "" {
			services[cur] = append(services[cur], line)
		}
	}
	if len(services) == 0 {
		t.Fatal("docker-compose.yml has no services")
	}
	return services
}

// composeCommand returns a service's command: ["a", "b"] (flow style, which
// is JSON) or a block list of "- item" lines, where an item ">-" folds the
// more indented lines below it into one string.
func composeCommand(t testing.TB, lines []string) []string {
	t.Helper()
	for i, line := range lines {
		rest, ok := strings.CutPrefix(line, "    command:")
		if !ok {
			continue
		}
		if rest = strings.TrimSpace(rest); rest != "" {
			var cmd []string
			if err := json.Unmarshal([]byte(rest), &cmd); err != nil {
				t.Fatalf("command %s is not a flow list of strings: %v", rest, err)
			}
			return cmd
		}
		var cmd []string
		for j := i + 1; j < len(lines); j++ {
			item, ok := strings.CutPrefix(lines[j], "      - ")
			if !ok {
				break
			}
			if item == ">-" {
				var folded []string
				for j+1 < len(lines) && strings.HasPrefix(lines[j+1], "        ") {
					j++
					folded = append(folded, strings.TrimSpace(lines[j]))
				}
				item = strings.Join(folded, " ")
			}
			cmd = append(cmd, item)
		}
		return cmd
	}
	return nil
}

// composeEnv returns the "KEY: value" pairs under a service's environment
// (and under the x-grouphook-env anchor when the service merges it).
func composeEnv(lines []string) map[string]string {
	env := map[string]string{}
	in := false
	for _, line := range lines {
		if strings.TrimSpace(line) == "environment:" {
			in = true
			continue
		}
		if in && !strings.HasPrefix(line, "      ") {
			in = false
		}
		if !in || strings.HasPrefix(strings.TrimSpace(line), "#") || strings.HasPrefix(strings.TrimSpace(line), "<<:") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok {
			env[k] = strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	return env
}

// composeAnchorEnv returns the settings of the x-grouphook-env block that
// grouphook's services merge with "<<: *grouphook-env".
func composeAnchorEnv(t testing.TB, text string) map[string]string {
	t.Helper()
	env := map[string]string{}
	in := false
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "x-grouphook-env: &grouphook-env") {
			in = true
			continue
		}
		if !in {
			continue
		}
		if !strings.HasPrefix(line, "  ") {
			break
		}
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		env[k] = strings.Trim(strings.TrimSpace(v), `"`)
	}
	if len(env) == 0 || !strings.Contains(text, "<<: *grouphook-env") {
		t.Fatal("docker-compose.yml has no x-grouphook-env block merged into the grouphook services")
	}
	return env
}

// TestDockerCompose checks docker-compose.yml: PostgreSQL runs with
// wal_level=logical (and a bounded max_slot_wal_keep_size), grouphook's
// services run exactly "grouphook migrate" and "grouphook run", each
// GROUPHOOK_* setting in it is one Config reads, the receiver's secret is
// the registered one, and Prometheus loads deploy/. Then the very commands
// (and the endpoint-registering SQL) run against a real database: migrate
// exits 0, the SQL inserts the endpoint, run streams and stops cleanly.
func TestDockerCompose(t *testing.T) {
	t.Parallel()
	text := readRepoFile(t, "docker-compose.yml")
	services := composeServices(t, text)
	for _, name := range []string{"postgres", "migrate", "register-endpoint", "grouphook", "receiver", "prometheus"} {
		if _, ok := services[name]; !ok {
			t.Errorf("docker-compose.yml has no service %q", name)
		}
	}

	pg := composeCommand(t, services["postgres"])
	if !slices.Contains(pg, "wal_level=logical") {
		t.Errorf("postgres command %q does not set wal_level=logical", pg)
	}
	if !slices.ContainsFunc(pg, func(s string) bool { return strings.HasPrefix(s, "max_slot_wal_keep_size=") }) {
		t.Errorf("postgres command %q does not bound max_slot_wal_keep_size", pg)
	}
	migrateCmd := composeCommand(t, services["migrate"])
	runCmd := composeCommand(t, services["grouphook"])
	if !slices.Equal(migrateCmd, []string{"grouphook", "migrate"}) {
		t.Errorf("migrate service runs %q, want [grouphook migrate]", migrateCmd)
	}
	if !slices.Equal(runCmd, []string{"grouphook", "run"}) {
		t.Errorf("grouphook service runs %q, want [grouphook run]", runCmd)
	}

	known := map[string]bool{}
	for _, v := range knownVariables() {
		known[v] = true
	}
	for _, m := range regexp.MustCompile(`\b(GROUPHOOK_[A-Z0-9_]+|DATABASE_URL)\b`).FindAllString(text, -1) {
		if !known[m] {
			t.Errorf("docker-compose.yml sets %s, which grouphook does not read", m)
		}
	}
	secrets := regexp.MustCompile(`whsec_[A-Za-z0-9+/=]+`).FindAllString(text, -1)
	if len(secrets) != 2 || secrets[0] != secrets[1] {
		t.Errorf("the registered secret and the receiver's WEBHOOK_SECRET differ: %q", secrets)
	}
	if env := composeEnv(services["receiver"]); !strings.HasPrefix(env["WEBHOOK_SECRET"], "whsec_") || env["PORT"] != "3000" {
		t.Errorf("receiver environment %v", env)
	}
	if !strings.Contains(text, "http://receiver:3000/webhook") || !strings.Contains(readRepoFile(t, "examples/node/webhook_example.js"), "'/webhook'") {
		t.Error("the registered URL does not match the receiver's port and default path")
	}
	prom := strings.Join(services["prometheus"], "\n")
	for _, want := range []string{"./deploy/prometheus.yml:/etc/prometheus/prometheus.yml", "./deploy/prometheus-rules.yml:/etc/prometheus/rules/grouphook.yml"} {
		if !strings.Contains(prom, want) {
			t.Errorf("prometheus service does not mount %s", want)
		}
	}
	promCfg := readRepoFile(t, "deploy/prometheus.yml")
	if !strings.Contains(promCfg, "/etc/prometheus/rules/grouphook.yml") || !strings.Contains(promCfg, `"grouphook:9187"`) {
		t.Errorf("deploy/prometheus.yml does not load the rules and scrape grouphook:9187:\n%s", promCfg)
	}
	for _, f := range []string{"deploy/compose-init.sql", "examples/node/Dockerfile"} {
		readRepoFile(t, f)
	}

	// The same commands, for real. DATABASE_URL points at a test database;
	// the other settings are the compose file's.
	db := newTestDB(t, readRepoFile(t, "deploy/compose-init.sql"))
	composed := composeAnchorEnv(t, text)
	maps.Copy(composed, composeEnv(services["grouphook"]))
	if composed["GROUPHOOK_TABLE"] != "public.groups" || composed["GROUPHOOK_ALLOW_PRIVATE_DESTINATIONS"] != "true" {
		t.Errorf("the grouphook service's environment %v lacks the shared settings or the private-destination switch", composed)
	}
	env := db.env(composed)
	env["DATABASE_URL"] = db.URL
	c := startChild(t, env, migrateCmd[1:]...)
	if code := c.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("%q exited %d:\n%s%s", migrateCmd, code, c.stdout.String(), c.stderr.String())
	}
	register := composeCommand(t, services["register-endpoint"])
	if len(register) < 2 || register[0] != "psql" || register[len(register)-2] != "-c" {
		t.Fatalf("register-endpoint command %q is not psql ... -c SQL", register)
	}
	psql(t, db.URL, register[len(register)-1])
	psql(t, db.URL, register[len(register)-1]) // a restart of the service adds nothing
	if n := db.queryString(t, "SELECT count(*)::text FROM grouphook.endpoints WHERE url = 'http://receiver:3000/webhook'"); n != "1" {
		t.Errorf("%s endpoint rows after registering twice, want 1", n)
	}
	c = startChild(t, env, runCmd[1:]...)
	c.waitStreaming(t, db)
	c.signal(t, syscall.SIGTERM)
	if code := c.wait(t, 30*time.Second); code != 0 {
		t.Errorf("%q exited %d after SIGTERM:\n%s", runCmd, code, tail(c.stderr.String(), 5000))
	}
}

// TestDockerfile: multi-stage, a static (CGO_ENABLED=0) build of
// ./cmd/grouphook, a distroless static final image, a non-root user, and
// "grouphook run" as the default command (the tests' command).
func TestDockerfile(t *testing.T) {
	text := readRepoFile(t, "Dockerfile")
	var froms []string
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "FROM ") {
			froms = append(froms, line)
		}
	}
	if len(froms) != 2 || !strings.Contains(froms[0], " AS build") || !strings.HasPrefix(froms[1], "FROM gcr.io/distroless/static") {
		t.Errorf("want a build stage and a distroless static final stage, got %q", froms)
	}
	final := text[strings.LastIndex(text, "\nFROM "):]
	for _, want := range []string{"CGO_ENABLED=0", "./cmd/grouphook", "-X main.version="} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	for _, want := range []string{"USER 65532:65532", "COPY --from=build /out/grouphook /usr/local/bin/grouphook", `CMD ["grouphook", "run"]`} {
		if !strings.Contains(final, want) {
			t.Errorf("the final stage lacks %q", want)
		}
	}
	if strings.Contains(final, "ENTRYPOINT") {
		t.Error("an ENTRYPOINT would turn compose's [grouphook migrate] into grouphook grouphook migrate")
	}
	ignore := readRepoFile(t, ".dockerignore")
	if !strings.Contains(ignore, "examples/node/node_modules") || !strings.Contains(ignore, ".git") {
		t.Errorf(".dockerignore should leave out .git and node_modules:\n%s", ignore)
	}
}

// ---------------------------------------------------------------------------
// Metrics used by the dashboard and the alerts

// exportedMetrics maps every grouphook series name the daemon's registry
// can export to its label names: from the descriptors of every Metrics
// collector (vectors export nothing until used, so Gather alone would miss
// them) and from Gather. Histograms add _bucket (with le), _sum and _count.
func exportedMetrics(t testing.TB) map[string][]string {
	t.Helper()
	reg, m := newMetricsRegistry()
	out := map[string][]string{}
	descRE := regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		c, ok := v.Field(i).Interface().(prometheus.Collector)
		if !ok {
			continue
		}
		ch := make(chan *prometheus.Desc, 8)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			mm := descRE.FindStringSubmatch(d.String())
			if mm == nil {
				t.Fatalf("cannot read descriptor %s", d)
			}
			var labels []string
			if mm[2] != "" {
				for _, l := range strings.Split(mm[2], ",") {
					labels = append(labels, strings.TrimSuffix(strings.TrimPrefix(l, "c("), ")"))
				}
			}
			out[mm[1]] = labels
			if strings.Contains(v.Field(i).Type().String(), "Histogram") {
				out[mm[1]+"_bucket"] = append(slices.Clone(labels), "le")
				out[mm[1]+"_sum"] = labels
				out[mm[1]+"_count"] = labels
			}
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if _, ok := out[mf.GetName()]; !ok && strings.HasPrefix(mf.GetName(), "grouphook_") {
			var labels []string
			if ms := mf.GetMetric(); len(ms) > 0 {
				for _, lp := range ms[0].GetLabel() {
					labels = append(labels, lp.GetName())
				}
			}
			out[mf.GetName()] = labels
		}
	}
	return out
}

var (
	metricRef   = regexp.MustCompile(`\b(grouphook_[a-z0-9_]+)(\{[^}]*\})?`)
	selectorKey = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)`)
	groupingRE  = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
)

// targetLabels are added by Prometheus, not by grouphook.
var targetLabels = map[string]bool{"job": true, "instance": true}

// checkExpr fails the test when expr names a grouphook metric the daemon
// does not export, selects on a label that metric lacks, or groups by a
// label none of its metrics has.
func checkExpr(t testing.TB, where, expr string, exported map[string][]string) []string {
	t.Helper()
	var used []string
	all := map[string]bool{"le": strings.Contains(expr, "_bucket")}
	refs := metricRef.FindAllStringSubmatch(expr, -1)
	if len(refs) == 0 {
		t.Errorf("%s: %q uses no grouphook metric", where, expr)
	}
	for _, ref := range refs {
		name := ref[1]
		labels, ok := exported[name]
		if !ok {
			t.Errorf("%s: metric %s is not exported by grouphook", where, name)
			continue
		}
		used = append(used, name)
		for _, l := range labels {
			all[l] = true
		}
		for _, sel := range selectorKey.FindAllStringSubmatch(ref[2], -1) {
			if !slices.Contains(labels, sel[1]) && !targetLabels[sel[1]] {
				t.Errorf("%s: %s has no label %q (it has %v)", where, name, sel[1], labels)
			}
		}
	}
	for _, g := range groupingRE.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(g[1], ",") {
			if l = strings.TrimSpace(l); l != "" && !all[l] && !targetLabels[l] {
				t.Errorf("%s: groups by %q, which none of its metrics has", where, l)
			}
		}
	}
	return used
}

// TestDashboardMetricsExist: every query of deploy/grafana-dashboard.json
// uses only exported metrics and labels, and the dashboard covers
// throughput, latency, lag, failures by endpoint and queue depth.
func TestDashboardMetricsExist(t *testing.T) {
	exported := exportedMetrics(t)
	var dash struct {
		Title  string
		Panels []struct {
			Title   string
			Type    string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal([]byte(readRepoFile(t, "deploy/grafana-dashboard.json")), &dash); err != nil {
		t.Fatalf("deploy/grafana-dashboard.json: %v", err)
	}
	used := map[string]bool{}
	queries := 0
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			queries++
			for _, n := range checkExpr(t, "panel "+p.Title, q.Expr, exported) {
				used[n] = true
			}
		}
	}
	for _, want := range []string{
		"grouphook_events_total",                    // throughput
		"grouphook_deliveries_total",                // throughput, failures by endpoint
		"grouphook_delivery_latency_seconds_bucket", // latency
		"grouphook_replication_slot_lag_bytes",      // lag
		"grouphook_queue_deliveries",                // queue depth
	} {
		if !used[want] {
			t.Errorf("the dashboard does not use %s", want)
		}
	}
	t.Logf("%d panels, %d queries, %d metrics", len(dash.Panels), queries, len(used))
}

// rule is one alerting rule of deploy/prometheus-rules.yml.
type rule struct {
	alert, expr, forDur         string
	labels, annotations, fields map[string]string
}

// parseRules reads the rules file line by line: "- alert:" starts a rule,
// its keys sit at one indentation, labels and annotations one level deeper,
// and a ">-" value folds the more indented lines below it.
func parseRules(t testing.TB, text string) []rule {
	t.Helper()
	lines := strings.Split(text, "\n")
	indent := func(s string) int { return len(s) - len(strings.TrimLeft(s, " ")) }
	var rules []rule
	var cur *rule
	var section map[string]string
	keyIndent := -1
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if strings.HasPrefix(trimmed, "- alert:") || strings.HasPrefix(trimmed, "- record:") {
			rules = append(rules, rule{labels: map[string]string{}, annotations: map[string]string{}, fields: map[string]string{}})
			cur = &rules[len(rules)-1]
			keyIndent = indent(line) + 2
			section = nil
			trimmed = strings.TrimPrefix(trimmed, "- ")
		} else if cur == nil || indent(line) < keyIndent {
			cur = nil
			continue
		}
		k, v, ok := strings.Cut(trimmed, ":")
		if !ok {
			t.Fatalf("line %d: %q is not key: value", i+1, line)
		}
		v = strings.TrimSpace(v)
		if v == ">-" || v == ">" || v == "|" {
			var folded []string
			base := indent(line)
			for i+1 < len(lines) && (strings.TrimSpace(lines[i+1]) == "" || indent(lines[i+1]) > base) {
				i++
				folded = append(folded, strings.TrimSpace(lines[i]))
			}
			v = strings.TrimSpace(strings.Join(folded, " "))
		}
		switch {
		case indent(line) == keyIndent || strings.HasPrefix(strings.TrimSpace(line), "- alert:"):
			section = nil
			switch k {
			case "labels":
				section = cur.labels
			case "annotations":
				section = cur.annotations
			}
			cur.fields[k] = v
		case section != nil:
			section[k] = strings.Trim(v, `"'`)
		default:
			t.Fatalf("line %d: %q is outside any rule key", i+1, line)
		}
	}
	for i := range rules {
		r := &rules[i]
		r.alert, r.expr, r.forDur = r.fields["alert"], r.fields["expr"], r.fields["for"]
	}
	return rules
}

// TestPrometheusRules validates deploy/prometheus-rules.yml by hand (no
// promtool here, see the README): one group named grouphook; each rule is
// an alert with a non-empty expr over exported metrics and labels, a valid
// "for", a severity label, and summary and description annotations; and the
// alerts the issue asks for are there.
func TestPrometheusRules(t *testing.T) {
	text := readRepoFile(t, "deploy/prometheus-rules.yml")
	if !strings.HasPrefix(strings.TrimSpace(regexp.MustCompile(`(?m)^#.*\n`).ReplaceAllString(text, "")), "groups:") ||
		!strings.Contains(text, "\n  - name: grouphook\n    rules:\n") {
		t.Fatal("want groups: with one group named grouphook and its rules")
	}
	if strings.Contains(text, "\t") {
		t.Error("tabs in YAML")
	}
	exported := exportedMetrics(t)
	rules := parseRules(t, text)
	names := map[string]bool{}
	for _, r := range rules {
		if r.alert == "" {
			t.Errorf("a rule without alert: %v", r.fields)
			continue
		}
		if names[r.alert] {
			t.Errorf("alert %s twice", r.alert)
		}
		names[r.alert] = true
		if strings.TrimSpace(r.expr) == "" {
			t.Errorf("%s: empty expr", r.alert)
		} else {
			checkExpr(t, r.alert, r.expr, exported)
			if strings.Count(r.expr, "(") != strings.Count(r.expr, ")") {
				t.Errorf("%s: unbalanced parentheses in %q", r.alert, r.expr)
			}
		}
		if _, err := time.ParseDuration(r.forDur); err != nil {
			t.Errorf("%s: for %q is not a duration", r.alert, r.forDur)
		}
		switch r.labels["severity"] {
		case "info", "warning", "critical":
		default:
			t.Errorf("%s: severity %q, want info, warning or critical", r.alert, r.labels["severity"])
		}
		if r.annotations["summary"] == "" || r.annotations["description"] == "" {
			t.Errorf("%s: summary and description annotations are required: %v", r.alert, r.annotations)
		}
		for k := range r.fields {
			if !slices.Contains([]string{"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, k) {
				t.Errorf("%s: unknown key %q", r.alert, k)
			}
		}
	}
	wanted := map[string]string{
		"GrouphookSlotLagHigh":          "grouphook_replication_slot_lag_bytes",
		"GrouphookSlotWALNotReserved":   `grouphook_replication_slot_wal_status{wal_status!="reserved"}`,
		"GrouphookNoActiveStreamer":     "grouphook_replication_streaming",
		"GrouphookDeadDeliveriesRising": "grouphook_dead_deliveries_total",
		"GrouphookEndpointDisabled":     "grouphook_endpoints_disabled_total",
	}
	for alert, metric := range wanted {
		found := false
		for _, r := range rules {
			if r.alert == alert && strings.Contains(r.expr, metric) {
				found = true
			}
		}
		if !found {
			t.Errorf("no alert %s on %s", alert, metric)
		}
	}
	var got []string
	for n := range names {
		got = append(got, n)
	}
	sort.Strings(got)
	t.Logf("%d alerts: %v", len(got), got)
}

// ---------------------------------------------------------------------------
// README

// TestREADMEConfigurationTable: the variables in the first column of the
// README's configuration table are exactly those Config reads (its env
// tags), and each default in a tag appears, code-formatted, in the row's
// default column.
func TestREADMEConfigurationTable(t *testing.T) {
	text := readRepoFile(t, "README.md")
	start := strings.Index(text, "\n## Configuration\n")
	if start < 0 {
		t.Fatal("README.md has no ## Configuration section")
	}
	section := text[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	code := regexp.MustCompile("`([^`]*)`")
	documented := map[string]string{} // variable -> default cell
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) < 4 {
			t.Errorf("table row with fewer than three cells: %q", line)
			continue
		}
		for _, m := range code.FindAllStringSubmatch(cells[1], -1) {
			if _, dup := documented[m[1]]; dup {
				t.Errorf("%s is documented twice", m[1])
			}
			documented[m[1]] = cells[2]
		}
	}
	tags := map[string]string{} // variable -> default ("" when none)
	ct := reflect.TypeOf(Config{})
	for i := range ct.NumField() {
		tag := ct.Field(i).Tag.Get("env")
		name, _, _ := strings.Cut(tag, ",")
		def := ""
		if j := strings.Index(tag, "default="); j >= 0 {
			def = tag[j+len("default="):] // go-envconfig: the default runs to the end, commas included
		}
		tags[strings.TrimSpace(name)] = def
	}
	var missing, extra []string
	for name := range tags {
		if _, ok := documented[name]; !ok {
			missing = append(missing, name)
		}
	}
	for name := range documented {
		if _, ok := tags[name]; !ok {
			extra = append(extra, name)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 {
		t.Errorf("Config reads variables the README's configuration table does not document: %v", missing)
	}
	if len(extra) > 0 {
		t.Errorf("the README's configuration table documents variables Config does not read: %v", extra)
	}
	for name, def := range tags {
		cell, ok := documented[name]
		if !ok || def == "" {
			continue
		}
		if !strings.Contains(cell, "`"+def+"`") {
			t.Errorf("%s: the README's default column %q does not show the default `%s`", name, strings.TrimSpace(cell), def)
		}
	}
}
