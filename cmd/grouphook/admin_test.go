package main

// The admin API against the running daemon and a real database: every
// route, its error paths, authentication, and agreement with openapi.json.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// testAdminToken is GROUPHOOK_ADMIN_TOKEN in these tests.
const testAdminToken = "test-admin-token-0123456789abcdef0123456789"

// openAPI is openapi.json, parsed.
type openAPI struct {
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		Schemas map[string]any `json:"schemas"`
	} `json:"components"`
}

func loadOpenAPI(t testing.TB) openAPI {
	t.Helper()
	var doc openAPI
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatalf("openapi.json does not parse: %v", err)
	}
	return doc
}

type operation struct {
	Responses map[string]struct {
		Content map[string]struct {
			Schema map[string]any `json:"schema"`
		} `json:"content"`
	} `json:"responses"`
	RequestBody *struct {
		Content map[string]struct {
			Schema map[string]any `json:"schema"`
		} `json:"content"`
	} `json:"requestBody"`
}

func (doc openAPI) operation(t testing.TB, method, path string) operation {
	t.Helper()
	raw, ok := doc.Paths[path][strings.ToLower(method)]
	if !ok {
		t.Fatalf("openapi.json has no %s %s", method, path)
	}
	var op operation
	if err := json.Unmarshal(raw, &op); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return op
}

// resolve follows a "$ref" into components.schemas.
func (doc openAPI) resolve(t testing.TB, s map[string]any) map[string]any {
	t.Helper()
	for {
		ref, ok := s["$ref"].(string)
		if !ok {
			return s
		}
		name, found := strings.CutPrefix(ref, "#/components/schemas/")
		next, ok2 := doc.Components.Schemas[name].(map[string]any)
		if !found || !ok2 {
			t.Fatalf("openapi.json: unresolvable $ref %q", ref)
		}
		s = next
	}
}

// validate checks v (decoded JSON) against the subset of JSON Schema that
// openapi.json uses: type (one or a list), required, properties,
// additionalProperties false, items, enum and format date-time.
func (doc openAPI) validate(t testing.TB, schema map[string]any, v any, at string) []string {
	t.Helper()
	s := doc.resolve(t, schema)
	var problems []string
	types := map[string]bool{}
	switch ty := s["type"].(type) {
	case string:
		types[ty] = true
	case []any:
		for _, x := range ty {
			types[x.(string)] = true
		}
	}
	kind := ""
	switch x := v.(type) {
	case nil:
		kind = "null"
	case bool:
		kind = "boolean"
	case string:
		kind = "string"
	case float64:
		kind = "number"
		if x == float64(int64(x)) {
			kind = "integer"
		}
	case []any:
		kind = "array"
	case map[string]any:
		kind = "object"
	}
	if len(types) > 0 && !types[kind] && !(kind == "integer" && types["number"]) {
		return []string{fmt.Sprintf("%s: %s, want %v", at, kind, s["type"])}
	}
	if enum, ok := s["enum"].([]any); ok && !slices.Contains(enum, v) {
		problems = append(problems, fmt.Sprintf("%s: %v is not one of %v", at, v, enum))
	}
	if s["format"] == "date-time" && kind == "string" {
		if _, err := time.Parse(time.RFC3339Nano, v.(string)); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %q is not a date-time", at, v))
		}
	}
	switch x := v.(type) {
	case map[string]any:
		props, _ := s["properties"].(map[string]any)
		if req, ok := s["required"].([]any); ok {
			for _, r := range req {
				if _, ok := x[r.(string)]; !ok {
					problems = append(problems, fmt.Sprintf("%s: required field %q is missing", at, r))
				}
			}
		}
		for k, fv := range x {
			ps, ok := props[k].(map[string]any)
			if !ok {
				if s["additionalProperties"] == false {
					problems = append(problems, fmt.Sprintf("%s: field %q is not documented", at, k))
				}
				continue
			}
			problems = append(problems, doc.validate(t, ps, fv, at+"."+k)...)
		}
	case []any:
		if items, ok := s["items"].(map[string]any); ok {
			for i, e := range x {
				problems = append(problems, doc.validate(t, items, e, fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	}
	return problems
}

// Every route the daemon mounts is documented, and every documented route
// is mounted; every operation documents 401 and its schemas resolve.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	doc := loadOpenAPI(t)
	var mounted, documented []string
	for _, r := range adminRoutes {
		mounted = append(mounted, r.method+" "+r.path)
	}
	for path, ops := range doc.Paths {
		for method, raw := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+path)
			var op operation
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
			if _, ok := op.Responses["401"]; !ok {
				t.Errorf("%s %s does not document 401", method, path)
			}
			for code, r := range op.Responses {
				for _, c := range r.Content {
					doc.resolve(t, c.Schema)
				}
				if code != "204" && len(r.Content) == 0 {
					t.Errorf("%s %s %s has no schema", method, path, code)
				}
			}
		}
	}
	sort.Strings(mounted)
	sort.Strings(documented)
	if !slices.Equal(mounted, documented) {
		t.Errorf("routes and openapi.json differ\nmounted:    %q\ndocumented: %q", mounted, documented)
	}
	for name, s := range doc.Components.Schemas {
		m := s.(map[string]any)
		props, _ := m["properties"].(map[string]any)
		req, _ := m["required"].([]any)
		for _, r := range req {
			if _, ok := props[r.(string)]; !ok {
				t.Errorf("schema %s requires %q but does not define it", name, r)
			}
		}
	}
}

// adminClient calls the admin API of a running daemon and checks every
// answer against openapi.json.
type adminClient struct {
	t     *testing.T
	base  string
	token string
	doc   openAPI
}

type apiAnswer struct {
	Status int
	Header http.Header
	Body   []byte
	JSON   map[string]any
}

// call sends method to the route template path (with {id} replaced by id),
// and checks the answer's status is documented and its body matches the
// documented schema.
func (c *adminClient) call(method, path string, id any, query string, body any) apiAnswer {
	c.t.Helper()
	url := c.base + strings.Replace(path, "{id}", fmt.Sprint(id), 1)
	if query != "" {
		url += "?" + query
	}
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("Content-Type", "application/json")
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	a := apiAnswer{Status: resp.StatusCode, Header: resp.Header, Body: raw}
	op := c.doc.operation(c.t, method, path)
	r, ok := op.Responses[strconv.Itoa(resp.StatusCode)]
	if !ok {
		c.t.Errorf("%s %s answered %d, which openapi.json does not document: %s", method, path, resp.StatusCode, raw)
		return a
	}
	if len(r.Content) == 0 {
		if len(raw) != 0 {
			c.t.Errorf("%s %s %d: documented without a body, got %s", method, path, resp.StatusCode, raw)
		}
		return a
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		c.t.Errorf("%s %s: content-type %q", method, path, ct)
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		c.t.Errorf("%s %s: body is not JSON: %v: %s", method, path, err, raw)
		return a
	}
	a.JSON, _ = v.(map[string]any)
	if problems := c.doc.validate(c.t, r.Content["application/json"].Schema, v, "body"); len(problems) > 0 {
		c.t.Errorf("%s %s %d does not match openapi.json:\n  %s\n%s", method, path, resp.StatusCode, strings.Join(problems, "\n  "), raw)
	}
	return a
}

// expect calls and checks the status, and for errors that the message
// contains want.
func (c *adminClient) expect(status int, want, method, path string, id any, query string, body any) apiAnswer {
	c.t.Helper()
	a := c.call(method, path, id, query, body)
	if a.Status != status {
		c.t.Errorf("%s %s (id %v, %s): status %d, want %d: %s", method, path, id, query, a.Status, status, a.Body)
	}
	if want != "" && !strings.Contains(string(a.Body), want) {
		c.t.Errorf("%s %s (id %v): body does not mention %q: %s", method, path, id, want, a.Body)
	}
	return a
}

func idOf(t *testing.T, a apiAnswer, keys ...string) int64 {
	t.Helper()
	var v any = a.JSON
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("no %v in %s", keys, a.Body)
		}
		v = m[k]
	}
	f, ok := v.(float64)
	if !ok {
		t.Fatalf("no %v in %s", keys, a.Body)
	}
	return int64(f)
}

// With GROUPHOOK_ADMIN_TOKEN unset nothing is served under /v1, with or
// without a token.
func TestAdminAPIOff(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, groupsDDL)
	db.migrate(t, nil)
	d := startDaemon(t, db, nil)
	for _, path := range []string{"/v1/endpoints", "/v1/openapi.json", "/v1/deliveries", "/v1/"} {
		for _, token := range []string{"", testAdminToken} {
			req, _ := http.NewRequest(http.MethodGet, "http://"+d.HTTPAddr+path, nil)
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET %s (token %v) with the API off: %d, want 404", path, token != "", resp.StatusCode)
			}
		}
	}
	if resp, err := http.Get("http://" + d.HTTPAddr + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Errorf("healthz: %v", err)
	}
}

func TestAdminAPI(t *testing.T) {
	t.Parallel()
	db := newTestDB(t, groupsDDL)
	db.migrate(t, nil)
	d := startDaemon(t, db, map[string]string{
		"GROUPHOOK_ADMIN_TOKEN":         testAdminToken,
		"GROUPHOOK_ROTATION_OVERLAP":    "1h",
		"GROUPHOOK_PARK_AFTER":          "200ms",
		"GROUPHOOK_RETRY_SCHEDULE":      "100ms",
		"GROUPHOOK_QUEUE_POLL_INTERVAL": "100ms",
	})
	doc := loadOpenAPI(t)
	api := &adminClient{t: t, base: "http://" + d.HTTPAddr, token: testAdminToken, doc: doc}
	secrets := []string{testAdminToken}

	// Authentication: no token, a wrong one, another scheme; the token's
	// scheme is case-insensitive.
	for _, token := range []string{"", "wrong-token-wrong-token-wrong-token-x", testAdminToken + "x", testAdminToken[:len(testAdminToken)-1]} {
		bad := &adminClient{t: t, base: api.base, token: token, doc: doc}
		for _, r := range adminRoutes {
			a := bad.expect(http.StatusUnauthorized, "bearer token", r.method, r.path, 1, "", nil)
			if !strings.HasPrefix(a.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("401 without WWW-Authenticate: Bearer")
			}
		}
	}
	for _, h := range []string{"Basic " + testAdminToken, testAdminToken, "Bearer", "bearer " + testAdminToken} {
		req, _ := http.NewRequest(http.MethodGet, api.base+"/v1/endpoints", nil)
		req.Header.Set("Authorization", h)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := http.StatusUnauthorized
		if strings.HasPrefix(h, "bearer ") {
			want = http.StatusOK
		}
		if resp.StatusCode != want {
			t.Errorf("Authorization %q: %d, want %d", strings.Replace(h, testAdminToken, "<token>", 1), resp.StatusCode, want)
		}
	}

	// Every documented route is served (not the mux's 404 or 405).
	for _, r := range adminRoutes {
		a := api.call(r.method, r.path, 999999, "", "{}")
		if a.Status == http.StatusMethodNotAllowed || strings.Contains(string(a.Body), "no such admin API route") {
			t.Errorf("%s %s is not served: %d %s", r.method, r.path, a.Status, a.Body)
		}
	}
	// And nothing else is.
	for _, path := range []string{"/v1/", "/v1/nope", "/v1/endpoints/1/frob"} {
		req, _ := http.NewRequest(http.MethodGet, api.base+path, nil)
		req.Header.Set("Authorization", "Bearer "+testAdminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "no such admin API route") {
			t.Errorf("GET %s: %d %s, want 404", path, resp.StatusCode, body)
		}
	}
	if a := api.call(http.MethodGet, "/v1/openapi.json", nil, "", nil); !bytes.Equal(a.Body, openAPIDocument) {
		t.Error("GET /v1/openapi.json does not serve openapi.json")
	}

	// Add: generated secret; everything given.
	recv := newReceiver(t, "api")
	a := api.expect(http.StatusCreated, "", http.MethodPost, "/v1/endpoints", nil, "", map[string]any{"url": recv.URL()})
	ep1 := idOf(t, a, "endpoint", "id")
	secret1, _ := a.JSON["secret"].(string)
	if !strings.HasPrefix(secret1, "whsec_") || a.Header.Get("Location") != "/v1/endpoints/"+strconv.FormatInt(ep1, 10) {
		t.Errorf("add: secret %q, location %q", secret1, a.Header.Get("Location"))
	}
	if cur, _ := db.secrets(t, ep1); cur != secret1 {
		t.Error("the secret added is not the one returned")
	}
	recv.setSecrets(secret1)
	secrets = append(secrets, secret1)
	given := randomSecret(t, false)
	a = api.expect(http.StatusCreated, "", http.MethodPost, "/v1/endpoints", nil, "", map[string]any{
		"url": "https://acme.example/h", "client_id": "acme", "events": []string{"update", "CREATE"},
		"include_data": false, "enabled": false, "secret": given})
	ep2 := idOf(t, a, "endpoint", "id")
	secrets = append(secrets, given)
	if e := a.JSON["endpoint"].(map[string]any); a.JSON["secret"] != given || e["client_id"] != "acme" || e["include_data"] != false ||
		e["enabled"] != false || fmt.Sprint(e["events"]) != "[CREATE UPDATE]" {
		t.Errorf("add with everything: %s", a.Body)
	}

	// Add: every invalid input is refused naming the field; nothing is written.
	count := func() string { return db.queryString(t, "SELECT count(*)::text FROM grouphook.endpoints") }
	before := count()
	for _, c := range []struct {
		body   any
		status int
		want   string
	}{
		{map[string]any{"url": "ftp://x.example/"}, 400, "url"},
		{map[string]any{"url": "https://u:hunter2pass@x.example/"}, 400, "user info"},
		{map[string]any{"url": "/relative"}, 400, "url"},
		{map[string]any{"url": "https://x.example/" + strings.Repeat("a", 2048)}, 400, "url"},
		{map[string]any{"url": "https://x.example/", "events": []string{}}, 400, "events"},
		{map[string]any{"url": "https://x.example/", "events": []string{"TRUNCATE"}}, 400, "events"},
		{map[string]any{"url": "https://x.example/", "client_id": ""}, 400, "client_id"},
		{map[string]any{"url": "https://x.example/", "secret": "shortSecretAbc"}, 400, "secret"},
		{map[string]any{"url": "https://x.example/", "secret": ""}, 400, "secret"},
		{map[string]any{"url": "https://x.example/", "colour": "blue"}, 400, "colour"},
		{map[string]any{"url": "https://x.example/", "include_data": "yes"}, 400, "include_data"},
		{map[string]any{"client_id": "acme"}, 400, "url is missing"},
		{`{"url": "https://x.example/"} {}`, 400, "after the JSON object"},
		{`{"url": `, 400, "not a valid request"},
		{`[]`, 400, "not a valid request"},
		{"", 400, "JSON object"},
		{`{"url": "https://x.example/", "pad": "` + strings.Repeat("x", 70<<10) + `"}`, 413, "larger than"},
	} {
		a := api.expect(c.status, c.want, http.MethodPost, "/v1/endpoints", nil, "", c.body)
		for _, s := range []string{"hunter2pass", "shortSecretAbc"} {
			if strings.Contains(string(a.Body), s) {
				t.Errorf("an error repeats a secret: %s", a.Body)
			}
		}
	}
	if after := count(); after != before {
		t.Errorf("refused requests wrote endpoints: %s before, %s after", before, after)
	}

	// List and show.
	a = api.expect(http.StatusOK, "", http.MethodGet, "/v1/endpoints", nil, "", nil)
	if n := len(a.JSON["endpoints"].([]any)); n != 2 {
		t.Errorf("list: %d endpoints, want 2", n)
	}
	a = api.expect(http.StatusOK, "", http.MethodGet, "/v1/endpoints", nil, "client_id=acme", nil)
	if l := a.JSON["endpoints"].([]any); len(l) != 1 || int64(l[0].(map[string]any)["id"].(float64)) != ep2 {
		t.Errorf("list client_id=acme: %s", a.Body)
	}
	api.expect(http.StatusOK, "", http.MethodGet, "/v1/endpoints/{id}", ep1, "", nil)
	api.expect(http.StatusNotFound, "does not exist", http.MethodGet, "/v1/endpoints/{id}", 999999, "", nil)
	api.expect(http.StatusBadRequest, "not a positive whole number", http.MethodGet, "/v1/endpoints/{id}", "abc", "", nil)

	// Update.
	a = api.expect(http.StatusOK, "", http.MethodPatch, "/v1/endpoints/{id}", ep2, "", map[string]any{"url": "https://acme2.example/h", "events": []string{"DELETE"}})
	if a.JSON["url"] != "https://acme2.example/h" || fmt.Sprint(a.JSON["events"]) != "[DELETE]" || a.JSON["client_id"] != "acme" {
		t.Errorf("patch: %s", a.Body)
	}
	a = api.expect(http.StatusOK, "", http.MethodPatch, "/v1/endpoints/{id}", ep2, "", `{"client_id": null, "include_data": true}`)
	if a.JSON["client_id"] != nil || a.JSON["include_data"] != true {
		t.Errorf("patch client_id null: %s", a.Body)
	}
	a = api.expect(http.StatusOK, "", http.MethodPatch, "/v1/endpoints/{id}", ep2, "", map[string]any{"client_id": "globex"})
	if a.JSON["client_id"] != "globex" {
		t.Errorf("patch client_id: %s", a.Body)
	}
	api.expect(http.StatusBadRequest, "nothing to update", http.MethodPatch, "/v1/endpoints/{id}", ep2, "", "{}")
	api.expect(http.StatusBadRequest, "url", http.MethodPatch, "/v1/endpoints/{id}", ep2, "", map[string]any{"url": "nope"})
	api.expect(http.StatusBadRequest, "client_id", http.MethodPatch, "/v1/endpoints/{id}", ep2, "", map[string]any{"client_id": 7})
	api.expect(http.StatusBadRequest, "events", http.MethodPatch, "/v1/endpoints/{id}", ep2, "", map[string]any{"events": []string{}})
	api.expect(http.StatusBadRequest, "secret", http.MethodPatch, "/v1/endpoints/{id}", ep2, "", map[string]any{"secret": "abcdefghijklmnopq"})
	api.expect(http.StatusNotFound, "does not exist", http.MethodPatch, "/v1/endpoints/{id}", 999999, "", map[string]any{"url": "https://x.example/"})

	// Disable, enable.
	a = api.expect(http.StatusOK, "", http.MethodPost, "/v1/endpoints/{id}/disable", ep1, "", nil)
	if a.JSON["enabled"] != false || a.JSON["disabled_reason"] == nil {
		t.Errorf("disable: %s", a.Body)
	}
	a = api.expect(http.StatusOK, "", http.MethodPost, "/v1/endpoints/{id}/enable", ep1, "", nil)
	if a.JSON["enabled"] != true || a.JSON["disabled_reason"] != nil {
		t.Errorf("enable: %s", a.Body)
	}
	api.expect(http.StatusNotFound, "does not exist", http.MethodPost, "/v1/endpoints/{id}/enable", 999999, "", nil)
	api.expect(http.StatusNotFound, "does not exist", http.MethodPost, "/v1/endpoints/{id}/disable", 999999, "", nil)

	// Rotate: with the configured overlap (1h); then given, without overlap.
	a = api.expect(http.StatusOK, "", http.MethodPost, "/v1/endpoints/{id}/rotate-secret", ep2, "", nil)
	rotated, _ := a.JSON["secret"].(string)
	secrets = append(secrets, rotated)
	if cur, prev := db.secrets(t, ep2); cur != rotated || prev != given || a.JSON["endpoint"].(map[string]any)["previous_secret_expires_at"] == nil {
		t.Errorf("rotate: %s", a.Body)
	}
	if m := db.queryString(t, "SELECT round(extract(epoch FROM previous_secret_expires_at - now()) / 60)::text FROM grouphook.endpoints WHERE id = $1", ep2); m != "60" {
		t.Errorf("the overlap ends in %s minutes, want 60", m)
	}
	next := randomSecret(t, true)
	secrets = append(secrets, next)
	a = api.expect(http.StatusOK, "", http.MethodPost, "/v1/endpoints/{id}/rotate-secret", ep2, "", map[string]any{"secret": next, "overlap": "0s"})
	if cur, prev := db.secrets(t, ep2); cur != next || prev != "" || a.JSON["secret"] != next {
		t.Errorf("rotate without overlap: %s", a.Body)
	}
	api.expect(http.StatusBadRequest, "overlap", http.MethodPost, "/v1/endpoints/{id}/rotate-secret", ep2, "", map[string]any{"overlap": "soon"})
	api.expect(http.StatusBadRequest, "negative", http.MethodPost, "/v1/endpoints/{id}/rotate-secret", ep2, "", map[string]any{"overlap": "-1h"})
	api.expect(http.StatusBadRequest, "secret", http.MethodPost, "/v1/endpoints/{id}/rotate-secret", ep2, "", map[string]any{"secret": "short"})
	api.expect(http.StatusNotFound, "does not exist", http.MethodPost, "/v1/endpoints/{id}/rotate-secret", 999999, "", nil)
	if cur, _ := db.secrets(t, ep2); cur != next {
		t.Error("a refused rotation changed the secret")
	}

	// Remove.
	api.expect(http.StatusNoContent, "", http.MethodDelete, "/v1/endpoints/{id}", ep2, "", nil)
	api.expect(http.StatusNotFound, "does not exist", http.MethodDelete, "/v1/endpoints/{id}", ep2, "", nil)

	// Deliveries: the receiver fails until told otherwise, so a change
	// parks, fails once more from the queue (GROUPHOOK_RETRY_SCHEDULE=100ms)
	// and is dead.
	var failing atomic.Bool
	failing.Store(true)
	recv.setRespond(func(*delivery) int {
		if failing.Load() {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	// The daemon sees the re-enabled endpoint within a refresh: insert
	// until one change reaches the receiver.
	row := 0
	eventually(t, waitLong, func() bool {
		if len(recv.snapshot()) > 0 {
			return true
		}
		row++
		db.exec(t, `INSERT INTO groups (id, name) VALUES ($1, 'one')`, row)
		time.Sleep(500 * time.Millisecond)
		return false
	}, func() string { return "a change to reach the receiver" })
	var dead []any
	eventually(t, waitLong, func() bool {
		a := api.call(http.MethodGet, "/v1/deliveries", nil, "status=dead&endpoint_id="+strconv.FormatInt(ep1, 10), nil)
		dead, _ = a.JSON["deliveries"].([]any)
		return len(dead) >= 1
	}, func() string { return "a dead delivery" })
	did := int64(dead[0].(map[string]any)["id"].(float64))
	api.expect(http.StatusOK, "", http.MethodGet, "/v1/deliveries", nil, "", nil)
	api.expect(http.StatusOK, "", http.MethodGet, "/v1/deliveries", nil, "status=pending&limit=5", nil)
	api.expect(http.StatusBadRequest, "status", http.MethodGet, "/v1/deliveries", nil, "status=lost", nil)
	api.expect(http.StatusBadRequest, "limit", http.MethodGet, "/v1/deliveries", nil, "limit=0", nil)
	api.expect(http.StatusBadRequest, "endpoint_id", http.MethodGet, "/v1/deliveries", nil, "endpoint_id=x", nil)
	api.expect(http.StatusBadRequest, "does not exist", http.MethodGet, "/v1/deliveries", nil, "endpoint_id=999999", nil)
	a = api.expect(http.StatusOK, "", http.MethodGet, "/v1/deliveries/{id}", did, "", nil)
	if att, _ := a.JSON["attempts"].([]any); len(att) == 0 || !strings.Contains(string(a.Body), `"name":"one"`) {
		t.Errorf("delivery detail has no attempts or no body: %s", a.Body)
	}
	api.expect(http.StatusNotFound, "does not exist", http.MethodGet, "/v1/deliveries/{id}", 999999, "", nil)
	api.expect(http.StatusBadRequest, "", http.MethodGet, "/v1/deliveries/{id}", "x", "", nil)

	// Replay: refused requests first, then the dead delivery, which then
	// reaches the (now healthy) receiver with its original id.
	api.expect(http.StatusBadRequest, "either", http.MethodPost, "/v1/deliveries/replay", nil, "", "{}")
	api.expect(http.StatusBadRequest, "either", http.MethodPost, "/v1/deliveries/replay", nil, "", map[string]any{"ids": []int64{did}, "endpoint_id": ep1})
	api.expect(http.StatusBadRequest, "since", http.MethodPost, "/v1/deliveries/replay", nil, "", map[string]any{"ids": []int64{did}, "since": "2026-01-01T00:00:00Z"})
	api.expect(http.StatusBadRequest, "RFC 3339", http.MethodPost, "/v1/deliveries/replay", nil, "", map[string]any{"endpoint_id": ep1, "since": "yesterday"})
	api.expect(http.StatusBadRequest, "does not exist", http.MethodPost, "/v1/deliveries/replay", nil, "", map[string]any{"ids": []int64{999999}})
	failing.Store(false)
	a = api.expect(http.StatusOK, "", http.MethodPost, "/v1/deliveries/replay", nil, "", map[string]any{"ids": []int64{did}})
	if a.JSON["replayed"] != float64(1) {
		t.Errorf("replay: %s", a.Body)
	}
	deadID := dead[0].(map[string]any)["event_id"].(string)
	eventually(t, waitLong, func() bool {
		for _, d := range recv.ok() {
			if d.Ev.ID == deadID {
				return true
			}
		}
		return false
	}, func() string { return "the replayed delivery at the receiver" })
	api.expect(http.StatusOK, "", http.MethodPost, "/v1/deliveries/replay", nil, "", map[string]any{"endpoint_id": ep1, "since": "2020-01-01T00:00:00Z"})

	// No token or secret in the daemon's log or metrics.
	log, metrics := d.Log.String(), d.metrics(t)
	for _, s := range secrets {
		if strings.Contains(log, s) || strings.Contains(metrics, s) {
			t.Errorf("a secret or the admin token is in the log or /metrics")
		}
	}
	if strings.Contains(metrics, recv.URL()) || strings.Contains(metrics, "acme.example") {
		t.Error("/metrics shows an endpoint URL")
	}
}

// The schema check itself catches what it must: a missing required field,
// a wrong type, an undocumented field, a bad enum value or date-time.
func TestOpenAPIValidator(t *testing.T) {
	doc := loadOpenAPI(t)
	schema := map[string]any{"$ref": "#/components/schemas/Endpoint"}
	good := map[string]any{"id": 1.0, "client_id": nil, "url": "https://x.example/", "events": []any{"CREATE"},
		"include_data": true, "enabled": true, "disabled_reason": nil, "disabled_at": nil, "last_success_at": nil,
		"failing_since": nil, "previous_secret_expires_at": nil, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00.5Z"}
	if p := doc.validate(t, schema, good, "body"); len(p) != 0 {
		t.Fatalf("a valid endpoint fails: %v", p)
	}
	for name, mutate := range map[string]func(m map[string]any){
		"missing required": func(m map[string]any) { delete(m, "enabled") },
		"wrong type":       func(m map[string]any) { m["id"] = "1" },
		"fraction":         func(m map[string]any) { m["id"] = 1.5 },
		"undocumented":     func(m map[string]any) { m["secret"] = "whsec_x" },
		"bad enum":         func(m map[string]any) { m["events"] = []any{"TRUNCATE"} },
		"bad date-time":    func(m map[string]any) { m["created_at"] = "yesterday" },
		"null not allowed": func(m map[string]any) { m["url"] = nil },
	} {
		m := map[string]any{}
		for k, v := range good {
			m[k] = v
		}
		mutate(m)
		if p := doc.validate(t, schema, m, "body"); len(p) == 0 {
			t.Errorf("%s: not caught", name)
		}
	}
}
