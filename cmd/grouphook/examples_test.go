package main

// The example receivers in examples/ (Node and Go), run as real processes
// against a real daemon and PostgreSQL.

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// repoRoot is the module root, seen from this package's directory.
const repoRoot = "../.."

// startProcess starts cmd with its output captured, as a child that the
// test's cleanup kills if it still runs.
func startProcess(t testing.TB, cmd *exec.Cmd) *child {
	t.Helper()
	c := &child{cmd: cmd, stderr: &syncBuffer{}, stdout: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = c.stdout, c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() {
		_ = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		if !c.exited() {
			_ = cmd.Process.Kill()
			<-c.done
		}
		if t.Failed() {
			t.Logf("%s stdout:\n%s\nstderr:\n%s", cmd.Path, tail(c.stdout.String(), 5000), tail(c.stderr.String(), 5000))
		}
	})
	return c
}

var listeningLine = regexp.MustCompile(`(?m)^listening on (http://\S+)$`)

// listenURL waits for the receiver's "listening on <url>" line.
func (c *child) listenURL(t testing.TB) string {
	t.Helper()
	var u string
	eventually(t, 60*time.Second, func() bool {
		if m := listeningLine.FindStringSubmatch(c.stdout.String()); m != nil {
			u = m[1]
			return true
		}
		if c.exited() {
			t.Fatalf("%s exited with %d:\n%s\n%s", c.cmd.Path, c.cmd.ProcessState.ExitCode(), c.stdout.String(), c.stderr.String())
		}
		return false
	}, func() string { return "the receiver to listen:\n" + c.stdout.String() + c.stderr.String() })
	return u
}

// nodeModulesOrSkip returns the node binary; without examples/node's
// dependencies it skips, except in CI, where .ci/run installs them.
func nodeModulesOrSkip(t *testing.T) string {
	t.Helper()
	node, nodeErr := exec.LookPath("node")
	_, modErr := os.Stat(filepath.Join(repoRoot, "examples/node/node_modules/standardwebhooks"))
	if nodeErr == nil && modErr == nil {
		return node
	}
	msg := "the Node example needs node and its dependencies: run npm ci --prefix examples/node"
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (in CI, .ci/run must do it): node: %v, node_modules: %v", msg, nodeErr, modErr)
	}
	t.Skip(msg)
	return ""
}

// goExampleBinary builds examples/go into the test's temporary directory.
func goExampleBinary(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "receiver")
	cmd := exec.Command("go", "build", "-o", path, "./examples/go")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/go: %v\n%s", err, out)
	}
	return path
}

// signedRequest builds a callback signed the way grouphook signs it, with
// this file's own HMAC code.
func signedRequest(t testing.TB, url, secret, id string, ts time.Time, body []byte) *http.Request {
	t.Helper()
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	hashed := hex.EncodeToString(mac.Sum(nil))
	key := []byte(secret)
	if rest, ok := strings.CutPrefix(secret, "whsec_"); ok {
		var err error
		if key, err = base64.StdEncoding.DecodeString(rest); err != nil {
			t.Fatal(err)
		}
	}
	sec := strconv.FormatInt(ts.Unix(), 10)
	mac = hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + sec + "."))
	mac.Write(body)
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("x-hashed-key", hashed)
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", sec)
	req.Header.Set("webhook-signature", "v1,"+base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	return req
}

func send(t testing.TB, req *http.Request) int {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", req.URL, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestExampleReceivers runs examples/node/webhook_example.js and
// examples/go, each once with a whsec_ secret and once with a plain
// (non-ASCII) one, as endpoints of a real daemon. A row inserted with psql
// reaches all four, which accept it. Then requests sent straight to each
// receiver: a genuine one is accepted (and its repeat recognised as a
// duplicate), while a tampered body, a wrong secret and a stale timestamp
// are rejected with 401.
func TestExampleReceivers(t *testing.T) {
	t.Parallel()
	node := nodeModulesOrSkip(t)
	goBin := goExampleBinary(t)

	db := newTestDB(t, groupsDDL)
	db.migrate(t, nil)
	type rx struct {
		name, secret, url string
		proc              *child
	}
	plain := "sk_ünïcødé_" + randomSecret(t, false) // UTF-8 bytes are the key
	var rxs []*rx
	for _, c := range []struct{ name, secret string }{
		{"node-whsec", randomSecret(t, true)},
		{"node-plain", plain},
		{"go-whsec", randomSecret(t, true)},
		{"go-plain", plain},
	} {
		var cmd *exec.Cmd
		if strings.HasPrefix(c.name, "node") {
			cmd = exec.Command(node, "webhook_example.js")
			cmd.Dir = filepath.Join(repoRoot, "examples/node")
			cmd.Env = append(os.Environ(), "WEBHOOK_SECRET="+c.secret, "PORT=0", "HOST=127.0.0.1", "WEBHOOK_PATH=/hooks/"+c.name)
		} else {
			cmd = exec.Command(goBin)
			cmd.Env = append(os.Environ(), "WEBHOOK_SECRET="+c.secret, "ADDR=127.0.0.1:0", "WEBHOOK_PATH=/hooks/"+c.name)
		}
		r := &rx{name: c.name, secret: c.secret, proc: startProcess(t, cmd)}
		r.url = r.proc.listenURL(t)
		db.addEndpoint(t, endpoint{URL: r.url, Secret: r.secret})
		rxs = append(rxs, r)
	}
	startDaemon(t, db, nil)

	psql(t, db.URL, `INSERT INTO groups (id, client_id, name) VALUES (7, 'acme', 'Book club')`)
	accepted := regexp.MustCompile(`(?m)^accepted CREATE (evt_[0-9A-F]{16}_0) (\{.*\})$`)
	for _, r := range rxs {
		var m []string
		eventually(t, waitLong, func() bool {
			m = accepted.FindStringSubmatch(r.proc.stdout.String())
			return m != nil
		}, func() string { return r.name + " to accept the callback; its output:\n" + r.proc.stdout.String() })
		if want := `{"id":7,"client_id":"acme","name":"Book club","description":null,"member_count":0}`; m[2] != want {
			t.Errorf("%s printed group %s, want %s", r.name, m[2], want)
		}
		if strings.Contains(r.proc.stdout.String(), "rejected") {
			t.Errorf("%s rejected a genuine callback:\n%s", r.name, r.proc.stdout.String())
		}
	}

	now := time.Now()
	for _, r := range rxs {
		t.Run(r.name, func(t *testing.T) {
			body := func(id string) []byte {
				return []byte(`{"id":"` + id + `","event":"UPDATE","table":"public.groups","occurred_at":"2026-01-02T03:04:05Z","group":{"id":8,"name":"ok"}}`)
			}
			id := "evt_00000000000000FF_1"
			if code := send(t, signedRequest(t, r.url, r.secret, id, now, body(id))); code/100 != 2 {
				t.Errorf("genuine request: %d, want 2xx", code)
			}
			if code := send(t, signedRequest(t, r.url, r.secret, id, now, body(id))); code/100 != 2 {
				t.Errorf("repeated genuine request: %d, want 2xx", code)
			}

			type forged struct {
				name string
				req  *http.Request
			}
			var cases []forged
			// Tampered: signed for one body, another is sent.
			id = "evt_00000000000000FF_2"
			req := signedRequest(t, r.url, r.secret, id, now, body(id))
			tampered := bytes.Replace(body(id), []byte(`"name":"ok"`), []byte(`"name":"evil"`), 1)
			req.Body = io.NopCloser(bytes.NewReader(tampered))
			req.ContentLength = int64(len(tampered))
			cases = append(cases, forged{"tampered body", req})
			id = "evt_00000000000000FF_3"
			wrong := randomSecret(t, strings.HasPrefix(r.secret, "whsec_"))
			cases = append(cases, forged{"wrong secret", signedRequest(t, r.url, wrong, id, now, body(id))})
			id = "evt_00000000000000FF_4"
			cases = append(cases, forged{"stale timestamp", signedRequest(t, r.url, r.secret, id, now.Add(-10*time.Minute), body(id))})
			for _, c := range cases {
				if code := send(t, c.req); code != http.StatusUnauthorized {
					t.Errorf("%s: %d, want 401", c.name, code)
				}
			}

			// The output reaches the test through a pipe, a moment later.
			var out string
			eventually(t, waitLong, func() bool {
				out = r.proc.stdout.String()
				return strings.Count(out, "\nrejected ") >= len(cases) && strings.Contains(out, "duplicate UPDATE evt_00000000000000FF_1")
			}, func() string {
				return fmt.Sprintf("%d rejections, the genuine request and its repeat printed:\n%s", len(cases), out)
			})
			time.Sleep(200 * time.Millisecond) // anything more would be printed by now
			out = r.proc.stdout.String()
			if n := strings.Count(out, "\nrejected "); n != len(cases) {
				t.Errorf("%d rejections printed, want %d:\n%s", n, len(cases), out)
			}
			if !strings.Contains(out, "accepted UPDATE evt_00000000000000FF_1 ") {
				t.Errorf("the genuine request was not printed as accepted:\n%s", out)
			}
			if strings.Contains(out, "evt_00000000000000FF_2 ") || strings.Contains(out, "evil") {
				t.Errorf("a forged request was processed:\n%s", out)
			}
		})
	}
}
