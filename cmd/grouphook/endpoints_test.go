package main

// "grouphook endpoints": every subcommand and its error paths, against a
// real database, in-process and through the real binary.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/grouphook/grouphook/deliver"
)

var (
	printedSecret = regexp.MustCompile(`(?m)^(?:new )?secret: (whsec_[A-Za-z0-9+/]{43}=)$`)
	addedID       = regexp.MustCompile(`^added endpoint (\d+) `)
)

// cli runs "grouphook endpoints args..." in-process with cfg.
func cli(t *testing.T, cfg Config, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := endpointsCommand(ctx, cfg, args, &out)
	return out.String(), err
}

func mustCLI(t *testing.T, cfg Config, args ...string) string {
	t.Helper()
	out, err := cli(t, cfg, args...)
	if err != nil {
		t.Fatalf("endpoints %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// endpointRow reads the columns the CLI must not print.
func (db *testDB) secrets(t *testing.T, id int64) (current, previous string) {
	t.Helper()
	return db.queryString(t, "SELECT secret_key FROM grouphook.endpoints WHERE id = $1", id),
		db.queryString(t, "SELECT previous_secret_key FROM grouphook.endpoints WHERE id = $1", id)
}

func TestEndpointsCLI(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, groupsDDL)
	db.migrate(t, nil)
	cfg := db.config(t, map[string]string{"GROUPHOOK_ROTATION_OVERLAP": "2h"})
	var shown []string // every secret printed; only add and rotate-secret may print them

	// add, with a generated secret.
	out := mustCLI(t, cfg, "add", "--url", "https://acme.example/hooks/groups?token=t0k3n")
	m := printedSecret.FindStringSubmatch(out)
	idm := addedID.FindStringSubmatch(out)
	if m == nil || idm == nil || !strings.Contains(out, "not shown again") {
		t.Fatalf("add printed:\n%s", out)
	}
	a, _ := strconv.ParseInt(idm[1], 10, 64)
	if cur, _ := db.secrets(t, a); cur != m[1] {
		t.Fatal("add printed a secret that is not the stored one")
	}
	shown = append(shown, m[1])

	// add, everything given, as JSON; flags after the first may come in any order.
	given := randomSecret(t, true)
	out = mustCLI(t, cfg, "add", "--json", "--client", "acme", "--events", "delete,CREATE", "--no-data",
		"--secret", given, "--url", "http://b.example/h", "--disabled")
	var added endpointWithSecret
	if err := json.Unmarshal([]byte(out), &added); err != nil {
		t.Fatalf("add --json: %v\n%s", err, out)
	}
	b := added.Endpoint
	if added.Secret != given || b.ClientID == nil || *b.ClientID != "acme" || strings.Join(b.Events, ",") != "CREATE,DELETE" ||
		b.IncludeData || b.Enabled || b.URL != "http://b.example/h" {
		t.Errorf("add --json: %s", out)
	}
	shown = append(shown, given)

	// list, list --client, list --json.
	out = mustCLI(t, cfg, "list")
	for _, want := range []string{"ID", "URL", "https://acme.example/hooks/groups?token=t0k3n", "http://b.example/h", "acme", "disabled", "CREATE,DELETE", "keys"} {
		if !strings.Contains(out, want) {
			t.Errorf("list does not show %q:\n%s", want, out)
		}
	}
	out = mustCLI(t, cfg, "list", "--client", "acme")
	if strings.Contains(out, "acme.example") || !strings.Contains(out, "b.example") {
		t.Errorf("list --client acme:\n%s", out)
	}
	out = mustCLI(t, cfg, "list", "--client", "nobody")
	if !strings.Contains(out, "no endpoints") {
		t.Errorf("list --client nobody:\n%s", out)
	}
	var listed []deliver.EndpointInfo
	if err := json.Unmarshal([]byte(mustCLI(t, cfg, "list", "--json")), &listed); err != nil || len(listed) != 2 || listed[0].ID != a {
		t.Errorf("list --json: %v %+v", err, listed)
	}
	if out := mustCLI(t, cfg, "list", "--json", "--client", "nobody"); strings.TrimSpace(out) != "[]" {
		t.Errorf("list --json of nobody = %q, want []", out)
	}

	// show, show --json.
	out = mustCLI(t, cfg, "show", strconv.FormatInt(a, 10))
	for _, want := range []string{"https://acme.example/hooks/groups?token=t0k3n", "(hidden;", "every client", "CREATE,UPDATE,DELETE"} {
		if !strings.Contains(out, want) {
			t.Errorf("show does not show %q:\n%s", want, out)
		}
	}
	var info deliver.EndpointInfo
	if err := json.Unmarshal([]byte(mustCLI(t, cfg, "show", "--json", strconv.FormatInt(b.ID, 10))), &info); err != nil || info.ID != b.ID {
		t.Errorf("show --json: %v %+v", err, info)
	}

	// update: some fields, then the client cleared and data back on.
	ids := strconv.FormatInt(b.ID, 10)
	out = mustCLI(t, cfg, "update", ids, "--url", "https://b2.example/h", "--events", "UPDATE", "--client", "initech")
	if !strings.Contains(out, "updated endpoint "+ids) {
		t.Errorf("update printed:\n%s", out)
	}
	if err := json.Unmarshal([]byte(mustCLI(t, cfg, "update", "--json", "--no-client", "--data", ids)), &info); err != nil {
		t.Fatal(err)
	}
	if info.URL != "https://b2.example/h" || strings.Join(info.Events, ",") != "UPDATE" || info.ClientID != nil || !info.IncludeData {
		t.Errorf("after update: %+v", info)
	}
	mustCLI(t, cfg, "update", ids, "--no-data")
	if db.queryString(t, "SELECT include_data::text FROM grouphook.endpoints WHERE id = $1", b.ID) != "false" {
		t.Error("update --no-data did not turn include_data off")
	}

	// enable, disable.
	if out := mustCLI(t, cfg, "enable", ids); !strings.Contains(out, "enabled endpoint "+ids) {
		t.Errorf("enable printed:\n%s", out)
	}
	if db.queryString(t, "SELECT enabled::text FROM grouphook.endpoints WHERE id = $1", b.ID) != "true" {
		t.Error("enable did not enable")
	}
	if out := mustCLI(t, cfg, "disable", ids); !strings.Contains(out, "disabled endpoint "+ids) || !strings.Contains(out, "wait") {
		t.Errorf("disable printed:\n%s", out)
	}
	if db.queryString(t, "SELECT enabled::text || ' ' || disabled_reason FROM grouphook.endpoints WHERE id = $1", b.ID) != "false "+deliver.OperatorDisabledReason {
		t.Error("disable did not disable with the operator's reason")
	}

	// rotate-secret: the default overlap (GROUPHOOK_ROTATION_OVERLAP=2h),
	// then a given secret without overlap.
	oldA, _ := db.secrets(t, a)
	ida := strconv.FormatInt(a, 10)
	out = mustCLI(t, cfg, "rotate-secret", ida)
	m = printedSecret.FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "x-hashed-key uses the new secret") {
		t.Fatalf("rotate-secret printed:\n%s", out)
	}
	shown = append(shown, m[1])
	if cur, prev := db.secrets(t, a); cur != m[1] || prev != oldA {
		t.Error("rotate-secret did not keep the old secret as the previous one")
	}
	left := db.queryString(t, "SELECT round(extract(epoch FROM previous_secret_expires_at - now()) / 60)::text FROM grouphook.endpoints WHERE id = $1", a)
	if left != "120" {
		t.Errorf("the overlap ends in %s minutes, want 120 (GROUPHOOK_ROTATION_OVERLAP=2h)", left)
	}
	if out := mustCLI(t, cfg, "list"); !strings.Contains(out, "rotating") {
		t.Errorf("list does not show the rotation:\n%s", out)
	}
	if out := mustCLI(t, cfg, "show", ida); !strings.Contains(out, "previous secret") {
		t.Errorf("show does not show the rotation:\n%s", out)
	}
	next := randomSecret(t, false)
	var rotated endpointWithSecret
	if err := json.Unmarshal([]byte(mustCLI(t, cfg, "rotate-secret", ida, "--secret", next, "--overlap", "0s", "--json")), &rotated); err != nil {
		t.Fatal(err)
	}
	shown = append(shown, next)
	if cur, prev := db.secrets(t, a); rotated.Secret != next || cur != next || prev != "" || rotated.Endpoint.PreviousSecretExpiresAt != nil {
		t.Error("rotate-secret --overlap 0s kept the old secret")
	}
	out = mustCLI(t, cfg, "rotate-secret", "--overlap", "10m", ida)
	if m = printedSecret.FindStringSubmatch(out); m == nil {
		t.Fatalf("rotate-secret --overlap printed:\n%s", out)
	}
	shown = append(shown, m[1])

	// Only add and rotate-secret print secrets.
	for _, args := range [][]string{{"list"}, {"list", "--json"}, {"show", ida}, {"show", "--json", ida}, {"show", ids},
		{"update", ida, "--events", "CREATE,UPDATE,DELETE"}, {"update", "--json", ida, "--no-data"}, {"disable", ida}, {"enable", ida}} {
		out := mustCLI(t, cfg, args...)
		for _, s := range append(shown, oldA) {
			if strings.Contains(out, s) {
				t.Errorf("endpoints %s printed a secret:\n%s", strings.Join(args, " "), out)
			}
		}
	}

	// remove.
	if out := mustCLI(t, cfg, "remove", ids); !strings.Contains(out, "removed endpoint "+ids) {
		t.Errorf("remove printed:\n%s", out)
	}
	if n := db.queryString(t, "SELECT count(*)::text FROM grouphook.endpoints"); n != "1" {
		t.Errorf("%s endpoints after remove, want 1", n)
	}
}

func TestEndpointsCLIErrors(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, groupsDDL)
	db.migrate(t, nil)
	cfg := db.config(t, nil)
	secret := randomSecret(t, true)
	out := mustCLI(t, cfg, "add", "--url", "https://ok.example/", "--secret", secret, "--client", "acme")
	id := addedID.FindStringSubmatch(out)[1]
	before := db.queryString(t, "SELECT string_agg(t::text, ';' ORDER BY id) FROM grouphook.endpoints t")
	const short = "tooShortSecret"

	for _, c := range []struct {
		name  string
		args  []string
		usage bool     // a command-line error (exit 2); else an input or lookup error (exit 1)
		want  []string // in the message
	}{
		{"no subcommand", nil, true, []string{"subcommand"}},
		{"unknown subcommand", []string{"frob"}, true, []string{`"frob"`}},
		{"unknown flag", []string{"list", "--bogus"}, true, []string{"bogus"}},
		{"add without url", []string{"add", "--client", "x"}, true, []string{"--url"}},
		{"add with an argument", []string{"add", "--url", "https://x.example/", "extra"}, true, []string{"no arguments"}},
		{"add with an empty secret", []string{"add", "--url", "https://x.example/", "--secret", ""}, true, []string{"--secret"}},
		{"list with an argument", []string{"list", "acme"}, true, []string{"no arguments"}},
		{"show without id", []string{"show"}, true, []string{"one endpoint id"}},
		{"show two ids", []string{"show", "1", "2"}, true, []string{"one endpoint id"}},
		{"show a word", []string{"show", "abc"}, true, []string{`"abc"`, "not an endpoint id"}},
		{"show zero", []string{"show", "0"}, true, []string{"not an endpoint id"}},
		{"update nothing", []string{"update", id}, true, []string{"something to change"}},
		{"update client and no-client", []string{"update", id, "--client", "x", "--no-client"}, true, []string{"not both"}},
		{"update data and no-data", []string{"update", id, "--data", "--no-data"}, true, []string{"not both"}},
		{"enable without id", []string{"enable"}, true, []string{"one endpoint id"}},
		{"disable a word", []string{"disable", "x"}, true, []string{"not an endpoint id"}},
		{"remove without id", []string{"remove"}, true, []string{"one endpoint id"}},
		{"rotate negative overlap", []string{"rotate-secret", id, "--overlap", "-1s"}, true, []string{"--overlap", "negative"}},
		{"rotate bad overlap", []string{"rotate-secret", id, "--overlap", "soon"}, true, []string{"overlap"}},
		{"rotate empty secret", []string{"rotate-secret", id, "--secret", ""}, true, []string{"--secret"}},

		{"add ftp url", []string{"add", "--url", "ftp://x.example/"}, false, []string{"url", "nothing was written"}},
		{"add relative url", []string{"add", "--url", "/hooks"}, false, []string{"url"}},
		{"add url with password", []string{"add", "--url", "https://u:hunter2pass@x.example/"}, false, []string{"url", "user info"}},
		{"add long url", []string{"add", "--url", "https://x.example/" + strings.Repeat("p", 2048)}, false, []string{"url", "2048"}},
		{"add bad event", []string{"add", "--url", "https://x.example/", "--events", "CREATE,TRUNCATE"}, false, []string{"events", "TRUNCATE"}},
		{"add no events", []string{"add", "--url", "https://x.example/", "--events", ""}, false, []string{"events"}},
		{"add empty client", []string{"add", "--url", "https://x.example/", "--client", ""}, false, []string{"client_id"}},
		{"add short secret", []string{"add", "--url", "https://x.example/", "--secret", short}, false, []string{"secret", "at least 16"}},
		{"add bad whsec", []string{"add", "--url", "https://x.example/", "--secret", "whsec_???notbase64???"}, false, []string{"secret", "base64"}},
		{"update bad url", []string{"update", id, "--url", "nope"}, false, []string{"url"}},
		{"update bad events", []string{"update", id, "--events", "NONE"}, false, []string{"events"}},
		{"rotate short secret", []string{"rotate-secret", id, "--secret", short}, false, []string{"secret"}},
		{"show missing", []string{"show", "99999"}, false, []string{"endpoint 99999 does not exist"}},
		{"update missing", []string{"update", "99999", "--url", "https://x.example/"}, false, []string{"endpoint 99999 does not exist"}},
		{"enable missing", []string{"enable", "99999"}, false, []string{"endpoint 99999 does not exist"}},
		{"disable missing", []string{"disable", "99999"}, false, []string{"endpoint 99999 does not exist"}},
		{"remove missing", []string{"remove", "99999"}, false, []string{"endpoint 99999 does not exist"}},
		{"rotate missing", []string{"rotate-secret", "99999"}, false, []string{"endpoint 99999 does not exist"}},
	} {
		out, err := cli(t, cfg, c.args...)
		if err == nil {
			t.Errorf("%s: no error; printed:\n%s", c.name, out)
			continue
		}
		var u usageError
		if errors.As(err, &u) != c.usage {
			t.Errorf("%s: usage error %v, want %v: %v", c.name, !c.usage, c.usage, err)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not mention %q", c.name, err, w)
			}
		}
		for _, s := range []string{secret, short, "hunter2pass"} {
			if strings.Contains(err.Error(), s) || strings.Contains(out, s) {
				t.Errorf("%s: a secret is in the output or the error: %v\n%s", c.name, err, out)
			}
		}
	}
	if after := db.queryString(t, "SELECT string_agg(t::text, ';' ORDER BY id) FROM grouphook.endpoints t"); after != before {
		t.Errorf("failed commands changed grouphook.endpoints:\nbefore %s\nafter  %s", before, after)
	}

	// An unmigrated database, and an unreachable one.
	bare := newTestDB(t, groupsDDL)
	if _, err := cli(t, bare.config(t, nil), "list"); err == nil || !strings.Contains(err.Error(), "grouphook migrate") {
		t.Errorf("list on an unmigrated database: %v, want advice to run grouphook migrate", err)
	}
	down := db.config(t, map[string]string{"DATABASE_URL": "postgres://nobody@127.0.0.1:1/x?sslmode=disable&connect_timeout=5"})
	if _, err := cli(t, down, "list"); err == nil || !strings.Contains(err.Error(), "connect to DATABASE_URL") {
		t.Errorf("list against a closed port: %v", err)
	}
}

// Through the real binary: exit codes, the secret on standard output only,
// and errors as one line on standard error.
func TestEndpointsCLIBinary(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, groupsDDL)
	db.migrate(t, nil)
	env := db.env(nil)
	run := func(args ...string) (int, string, string) {
		c := startChild(t, env, append([]string{"endpoints"}, args...)...)
		code := c.wait(t, 60*time.Second)
		return code, c.stdout.String(), c.stderr.String()
	}
	secret := randomSecret(t, true)
	code, stdout, stderr := run("add", "--url", "https://acme.example/h", "--client", "acme", "--secret", secret)
	if code != 0 || !strings.Contains(stdout, "secret: "+secret) || strings.Contains(stderr, secret) {
		t.Fatalf("add: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	code, stdout, stderr = run("list")
	if code != 0 || !strings.Contains(stdout, "acme.example") || strings.Contains(stdout+stderr, secret) {
		t.Errorf("list: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	code, _, stderr = run("show")
	if code != 2 || !strings.HasPrefix(stderr, "grouphook: ") {
		t.Errorf("show without id: exit %d, stderr %q; want exit 2", code, stderr)
	}
	code, _, stderr = run("show", "424242")
	if code != 1 || !strings.Contains(stderr, "endpoint 424242 does not exist") {
		t.Errorf("show missing: exit %d, stderr %q; want exit 1", code, stderr)
	}
	code, _, stderr = run("add", "--url", "https://x.example/", "--secret", "shortButSecret1")
	if code != 1 || strings.Contains(stderr, "shortButSecret1") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("add with a short secret: exit %d, stderr %q; want exit 1, one line, no secret", code, stderr)
	}
	delete(env, "DATABASE_URL")
	code, _, stderr = run("list")
	if code != 1 || !strings.Contains(stderr, "DATABASE_URL") {
		t.Errorf("list without DATABASE_URL: exit %d, stderr %q", code, stderr)
	}
}
