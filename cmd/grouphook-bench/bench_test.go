package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// testWriter sends the benchmark's progress lines (one per Write) to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestSmokeCore runs the smoke mode's core against the real daemon: a
// small backlog drain (with pg_recvlogical) and two seconds of steady load.
// Every callback must arrive and verify; the figures are only logged, as
// timing targets belong to the benchmark, not to tests.
func TestSmokeCore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and the daemon; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	opts, err := parseOptions([]string{"-smoke", "-events", "300", "-duration", "2s", "-rate", "200", "-only", "drain,steady", "-json", ""}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	b, err := newBench(ctx, opts, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	res := b.runAll(ctx)
	var table strings.Builder
	printTable(&table, res)
	t.Log(table.String())

	if res.Drain == nil || res.Steady == nil {
		t.Fatalf("missing results: drain %v, steady %v; failures: %v", res.Drain != nil, res.Steady != nil, res.Failures)
	}
	if err := res.verdict(); err != nil {
		t.Fatal(err)
	}
	if got := res.Drain.Daemon.Events; got != 300 {
		t.Errorf("drain backlog has %d events, want 300", got)
	}
	if res.Drain.RecvlogicalEventsPerSecond <= 0 || res.Drain.Daemon.EventsPerSecond <= 0 {
		t.Errorf("drain rates not measured: %+v", res.Drain)
	}
	if res.Drain.Daemon.PeakRSS == 0 {
		t.Error("peak RSS not measured")
	}
	if res.Steady.Latency.Samples != res.Steady.Commits {
		t.Errorf("latency for %d of %d commits", res.Steady.Latency.Samples, res.Steady.Commits)
	}
	if res.Totals.Unique != res.Totals.Expected || res.Totals.Expected == 0 {
		t.Errorf("verified %d distinct callbacks of %d expected", res.Totals.Unique, res.Totals.Expected)
	}
}

func TestGroupID(t *testing.T) {
	for _, tc := range []struct {
		body string
		want int64
		ok   bool
	}{
		{`{"id":"evt_1","event":"CREATE","group":{"id":42,"name":"x"}}`, 42, true},
		{`{"group":{"name":"x","id":7}}`, 7, true},
		{`{"group":{"name":"x"}}`, 0, false},
		{`not json`, 0, false},
	} {
		got, ok := groupID([]byte(tc.body))
		if got != tc.want || ok != tc.ok {
			t.Errorf("groupID(%s) = %d, %v; want %d, %v", tc.body, got, ok, tc.want, tc.ok)
		}
	}
}

func TestVerifyHashedKey(t *testing.T) {
	// The plain hex HMAC test vector from issue 2.
	key, body := []byte("It's a Secret to Everybody"), []byte("Hello, World!")
	const want = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
	if !verifyHashedKey(key, body, want) {
		t.Error("the test vector does not verify")
	}
	for _, bad := range []string{"", want[:63], "757107EA0EB2509FC211221CCE984B8A37570B6D7586C22C46F4379C8B043E17", want[:63] + "0"} {
		if verifyHashedKey(key, body, bad) {
			t.Errorf("%q verifies", bad)
		}
	}
}

func TestDecodeProcAddr(t *testing.T) {
	got, err := decodeProcAddr("0100007F:1F90")
	if err != nil || got != "127.0.0.1:8080" {
		t.Fatalf("decodeProcAddr = %q, %v", got, err)
	}
}

// TestReceiverCounts checks the receiver's bookkeeping and that the verdict
// fails a run with a bad signature or a lost callback.
func TestReceiverCounts(t *testing.T) {
	eps := []endpointSpec{{path: "/a", tenant: "tenant-000", secret: "s3cret"}}
	recv, err := startReceiver(eps, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	defer recv.close()
	post := func(id, body, sig string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, recv.base+"/a", strings.NewReader(body))
		req.Header.Set("webhook-id", id)
		req.Header.Set("x-hashed-key", sig)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	good := `{"id":"evt_1","group":{"id":7,"client_id":"tenant-000"}}`
	other := `{"id":"evt_2","group":{"id":8,"client_id":"tenant-001"}}`
	for _, c := range []struct {
		id, body, sig string
		want          int
	}{
		{"evt_1", good, hashedKeyHex("s3cret", good), http.StatusNoContent},
		{"evt_1", good, hashedKeyHex("s3cret", good), http.StatusNoContent}, // duplicate
		{"evt_1", good, hashedKeyHex("wrong", good), http.StatusUnauthorized},
		{"evt_2", other, hashedKeyHex("s3cret", other), http.StatusNoContent}, // another tenant's group
	} {
		if got := post(c.id, c.body, c.sig); got != c.want {
			t.Errorf("POST %s: status %d, want %d", c.id, got, c.want)
		}
	}
	got := recv.counts()
	want := tally{Requests: 4, Verified: 3, Failed: 1, Duplicates: 1, Misrouted: 1}
	if got != want {
		t.Errorf("counts = %+v, want %+v", got, want)
	}
	if _, ok := recv.receivedAt(7); !ok {
		t.Error("no receipt time for group 7")
	}
	res := &results{Drain: &drainResult{Daemon: backlogResult{Verification: verification{Expected: 3, Unique: 2, Lost: 1, tally: got}}}}
	res.total()
	if err := res.verdict(); err == nil {
		t.Error("verdict passes a run with a lost, a failed and a misrouted callback")
	}
}

func hashedKeyHex(secret, body string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(body))
	return hex.EncodeToString(m.Sum(nil))
}
