package edgelimit

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
)

// recorder is an events handler for tests: it keeps every event it gets.
type recorder struct{}

var (
	recordedMu sync.Mutex
	recorded   []caddy.Event
)

func init() { caddy.RegisterModule(recorder{}) }

func (recorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.edge_limit_test_recorder", New: func() caddy.Module { return new(recorder) }}
}

func (recorder) Handle(_ context.Context, e caddy.Event) error {
	recordedMu.Lock()
	recorded = append(recorded, e)
	recordedMu.Unlock()
	return nil
}

func (*recorder) UnmarshalCaddyfile(d *caddyfile.Dispenser) error { d.Next(); return nil }

func resetRecorded() {
	recordedMu.Lock()
	recorded = nil
	recordedMu.Unlock()
}

// eventsFor waits (bounded) until n events for limit arrived, and returns
// what arrived.
func eventsFor(t *testing.T, limit string, n int) []caddy.Event {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		recordedMu.Lock()
		var got []caddy.Event
		for _, e := range recorded {
			if e.Data["limit"] == limit {
				got = append(got, e)
			}
		}
		recordedMu.Unlock()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEventsOncePerWindowAndKeyDisplay(t *testing.T) {
	clk := fakeClock(t)
	resetRecorded()
	s := startSite(t, `
{
	events {
		on edge_limit.exceeded edge_limit_test_recorder
	}
}
%ADDR% {
	edge_limit /raw* {
		limit rawkey {
			key {header.X-Token}
			rate 1/1m
		}
		show_key raw
		body "{edge_limit.key}"
		content_type text/plain
	}
	edge_limit /hashed* {
		limit hashedkey {
			key {header.X-Token}
			rate 1/1m
			window anchored
		}
		body "{edge_limit.key}"
		content_type text/plain
	}
	edge_limit /dry* {
		limit drykey {
			key {header.X-Token}
			rate 1/1m
			dry_run
		}
	}
	respond "ok"
}`)
	expect(t, s.get("/raw", "X-Token", "secret-1"), 200)
	for range 3 {
		expect(t, s.get("/raw", "X-Token", "secret-1"), 429, "body", "secret-1")
	}
	got := eventsFor(t, "rawkey", 1)
	if len(got) != 1 {
		t.Fatalf("%d events for the first window, want 1", len(got))
	}
	e := got[0]
	if e.Name() != "edge_limit.exceeded" || e.Data["key"] != "secret-1" || e.Data["dry_run"] != false || e.Data["retry_after"] != int64(60) {
		t.Fatalf("event %s %v", e.Name(), e.Data)
	}
	// The next window's first denial is reported again.
	clk.Add(time.Minute)
	expect(t, s.get("/raw", "X-Token", "secret-1"), 200)
	expect(t, s.get("/raw", "X-Token", "secret-1"), 429)
	if got := eventsFor(t, "rawkey", 2); len(got) != 2 {
		t.Fatalf("%d events after two windows, want 2", len(got))
	}

	expect(t, s.get("/hashed", "X-Token", "secret-2"), 200)
	r := s.get("/hashed", "X-Token", "secret-2")
	if r.status != 429 || len(r.body) != 16 || strings.Contains(r.body, "secret") {
		t.Fatalf("hashed key shown as %q", r.body)
	}
	if got := eventsFor(t, "hashedkey", 1); len(got) != 1 || got[0].Data["key"] != r.body {
		t.Fatalf("hashed events %v", got)
	}

	expect(t, s.get("/dry", "X-Token", "t"), 200)
	expect(t, s.get("/dry", "X-Token", "t"), 200)
	expect(t, s.get("/dry", "X-Token", "t"), 200)
	if got := eventsFor(t, "drykey", 1); len(got) != 1 || got[0].Data["dry_run"] != true {
		t.Fatalf("dry-run events %v", got)
	}
}

func TestWebhookDeliversEvents(t *testing.T) {
	fakeClock(t)
	var mu sync.Mutex
	var bodies []map[string]any
	var auth []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var v map[string]any
		_ = json.Unmarshal(b, &v)
		mu.Lock()
		bodies = append(bodies, v)
		auth = append(auth, r.Header.Get("Authorization"))
		mu.Unlock()
	}))
	defer hook.Close()
	t.Setenv("EDGE_HOOK_TOKEN", "Bearer s3cret")
	s := startSite(t, `
{
	events {
		on edge_limit.exceeded edge_limit_webhook `+hook.URL+` {
			header Authorization {env.EDGE_HOOK_TOKEN}
			timeout 2s
		}
	}
}
%ADDR% {
	edge_limit {
		limit hooked {
			rate 1/1m
		}
	}
	respond "ok"
}`)
	expect(t, s.get("/"), 200)
	expect(t, s.get("/"), 429)
	expect(t, s.get("/"), 429)
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(bodies)
		mu.Unlock()
		if n >= 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bodies) != 1 {
		t.Fatalf("%d deliveries, want 1", len(bodies))
	}
	data, _ := bodies[0]["data"].(map[string]any)
	if bodies[0]["type"] != "edge_limit.exceeded" || data["limit"] != "hooked" || auth[0] != "Bearer s3cret" {
		t.Fatalf("delivery %v, auth %q", bodies[0], auth[0])
	}
}

// TestKeySecretHashesKeys: show_key hashed with a secret shows an HMAC of
// the key: an IP address cannot be found back from it by trying them all,
// as it can from the plain SHA-256.
func TestKeySecretHashesKeys(t *testing.T) {
	fakeClock(t)
	t.Setenv("EDGELIMIT_TEST_KEY_SECRET", "a-secret-of-32-bytes-or-so-12345")
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit ip {
			key {client_ip}
			rate 1/1m
		}
		show_key hashed {env.EDGELIMIT_TEST_KEY_SECRET}
		body "{edge_limit.key}"
	}
	respond "ok"
}`)
	expect(t, s.get("/"), 200)
	r := s.get("/")
	mac := hmac.New(sha256.New, []byte("a-secret-of-32-bytes-or-so-12345"))
	mac.Write([]byte("127.0.0.1"))
	plain := sha256.Sum256([]byte("127.0.0.1"))
	expect(t, r, 429, "body", hex.EncodeToString(mac.Sum(nil)[:8]))
	if r.body == hex.EncodeToString(plain[:8]) {
		t.Fatal("the key is the plain SHA-256 of the IP")
	}
	for body, want := range map[string]string{
		"show_key raw s3cret-s3cret-s3cret": "takes no secret",
		"show_key hashed a b":               "wrong argument count",
	} {
		_, err := adapt(t, ":8080 {\n\tedge_limit {\n\t\tlimit a {\n\t\t\trate 1/1m\n\t\t}\n\t\t"+body+"\n\t}\n}\n")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", body, err, want)
		}
	}
	if err := validateHandler(t, &Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 1, Window: caddy.Duration(time.Minute)}}}, KeySecret: "short"}); err == nil || !strings.Contains(err.Error(), "at least 16 bytes") {
		t.Errorf("a short secret: %v", err)
	}
}

// TestReportsOncePerInterval: a token bucket driven hard goes from allowed
// to denied at every unit that frees up, and each time was a first denial:
// 180 "rate limit exceeded" lines for three clients in ten minutes. A
// client is reported once per interval (the limit's window: here the 50s
// the bucket takes to refill).
func TestReportsOncePerInterval(t *testing.T) {
	clk := fakeClock(t)
	logOption, logs := e2e.Logs(t)
	s := startSite(t, `{
`+logOption+`}
%ADDR% {
	edge_limit {
		limit hard {
			key {header.X-Api-Key}
			token_bucket 5 1/10s
		}
	}
	respond "ok"
}`)
	clients := []string{"k1", "k2", "k3"}
	for _, c := range clients {
		for range 5 {
			expect(t, s.get("/", "X-Api-Key", c), 200)
		}
	}
	for range 60 {
		clk.Add(10 * time.Second)
		for _, c := range clients {
			expect(t, s.get("/", "X-Api-Key", c), 200) // the unit that freed up
			expect(t, s.get("/", "X-Api-Key", c), 429)
		}
	}
	// 600s: a report at 10s, 60s... 560s for each client.
	if n := e2e.Count(logs(), `"msg":"rate limit exceeded"`, `"limit":"hard"`); n != 3*12 {
		t.Errorf("%d lines for 3 clients in 600s of a 50s interval, want %d", n, 3*12)
	}
}
