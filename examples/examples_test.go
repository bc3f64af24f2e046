// Package examples_test loads each example Caddyfile, as it is, into a real
// Caddy in front of a test upstream, and checks the promises of the
// provider's document it reproduces.
package examples_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/edgelimit/caddy-edgelimit"
	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
)

// example is a Caddy running one example file, and its upstream.
type example struct {
	*e2e.Site
	upstreamHits *atomic.Int64
}

// load runs examples/<file> with the upstream, the site address and the
// admin endpoint given through its environment placeholders.
func load(t *testing.T, file string, env ...string) *example {
	t.Helper()
	return loadWith(t, file, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"path":%q}`, r.URL.Path)
	}, env...)
}

// loadWith is load with an upstream of the test's.
func loadWith(t *testing.T, file string, h http.HandlerFunc, env ...string) *example {
	t.Helper()
	var hits atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		h(w, r)
	}))
	t.Cleanup(upstream.Close)
	port := e2e.FreePort(t)
	t.Setenv("ADMIN_ADDR", "localhost:"+strconv.Itoa(e2e.AdminPort()))
	t.Setenv("SITE_ADDR", "http://127.0.0.1:"+strconv.Itoa(port))
	t.Setenv("BIND_ADDR", "127.0.0.1")
	t.Setenv("UPSTREAM", upstream.Listener.Addr().String())
	for i := 0; i+1 < len(env); i += 2 {
		t.Setenv(env[i], env[i+1])
	}
	body, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s := e2e.Load(t, string(body))
	s.Base, s.Port = "http://127.0.0.1:"+strconv.Itoa(port), port
	return &example{Site: s, upstreamHits: &hits}
}

// times sends n identical GETs and fails unless all get status.
func (x *example) times(t *testing.T, n, status int, path string, headers ...string) e2e.Reply {
	t.Helper()
	return x.timesDo(t, http.MethodGet, n, status, path, headers...)
}

// timesDo sends n identical requests and fails unless all get status.
func (x *example) timesDo(t *testing.T, method string, n, status int, path string, headers ...string) e2e.Reply {
	t.Helper()
	var r e2e.Reply
	for i := range n {
		r = x.Do(method, path, headers...)
		if r.Status != status {
			t.Fatalf("request %d of %d to %s: status %d, want %d (%v %q)", i+1, n, path, r.Status, status, r.Header, r.Body)
		}
	}
	return r
}

// TestExamplesFormatted: every example is as `caddy fmt` writes it, so
// that Caddy prints no "Caddyfile input is not formatted" when a user runs
// one.
func TestExamplesFormatted(t *testing.T) {
	files, err := filepath.Glob("*.Caddyfile")
	if err != nil || len(files) == 0 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := e2e.Unformatted("examples/"+f, 1, string(body)); err != nil {
			t.Error(err)
		}
	}
}

func unix(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// TestCrisp: four levels, plugin tokens exempt from API Global and API
// Route but held to their daily quota, 420 from the route limiter, cached
// GET and HEAD hits not counted by the API limiters.
func TestCrisp(t *testing.T) {
	clk := e2e.FakeClock(t)
	day := clk.Now().Truncate(24 * time.Hour)
	clk.Set(day.Add(23*time.Hour + 50*time.Minute))
	x := load(t, "crisp.Caddyfile")
	user := []string{"Authorization", basic("user-1", "user-secret")}
	plugin := []string{"Authorization", basic("plugin-7", "plugin-secret")}
	// A user who claims to be a plugin is still a user.
	claims := append(slices.Clone(user), "X-Crisp-Tier", "plugin", "X-Plugin-Id", "7")
	post := func(n, status int, path string, headers ...string) e2e.Reply {
		t.Helper()
		return x.timesDo(t, http.MethodPost, n, status, path, headers...)
	}

	// API Route: 20 per minute on conversations, denied with 420; a user
	// who says it is a plugin is not exempt.
	post(10, 200, "/v1/website/w1/conversations", user...)
	post(10, 200, "/v1/website/w1/conversations", claims...)
	e2e.Expect(t, x.Do(http.MethodPost, "/v1/website/w1/conversations", claims...), 420)
	r := x.Do(http.MethodPost, "/v1/website/w1/conversations", user...)
	e2e.Expect(t, r, 420, "Retry-After", "60", "X-RateLimit-Limit", "20", "Bloom-Status", "DIRECT")
	// Another route has its own counter...
	post(30, 200, "/v1/website/w1/people", user...)
	// ...but API Global (50 per minute for the user) counts every route;
	// the denied request above did not count.
	r = x.Do(http.MethodPost, "/v1/website/w1/people", user...)
	e2e.Expect(t, r, 429, "X-RateLimit-Limit", "50", "X-RateLimit-Remaining", "0")

	// Cached GETs are served although the user is limited: one MISS, then
	// HITs the API limiters never see.
	e2e.Expect(t, x.Get("/v1/website/w1/conversations/c1", user...), 429)
	clk.Add(time.Minute)
	before := x.upstreamHits.Load()
	e2e.Expect(t, x.Get("/v1/website/w1/operators", user...), 200, "Bloom-Status", "MISS")
	for range 60 {
		e2e.Expect(t, x.Get("/v1/website/w1/operators", user...), 200, "Bloom-Status", "HIT")
	}
	e2e.Expect(t, x.Do(http.MethodHead, "/v1/website/w1/operators", user...), 200, "Bloom-Status", "HIT")
	if got := x.upstreamHits.Load() - before; got != 1 {
		t.Fatalf("upstream saw %d requests for one cached URL", got)
	}
	// Another credential does not get the user's cached response.
	e2e.Expect(t, x.Get("/v1/website/w1/operators", plugin...), 200, "Bloom-Status", "MISS")
	// The API limiters counted 2 requests this minute, not 63.
	r = x.Do(http.MethodPost, "/v1/website/w1/people", user...)
	e2e.Expect(t, r, 200, "X-RateLimit-Limit", "40", "X-RateLimit-Remaining", "38")

	// A plugin token skips API Global and API Route (in a fresh minute for
	// the load balancer level, which counted the cached hits too)...
	clk.Add(time.Minute)
	post(90, 200, "/v1/website/w1/conversations", plugin...)
	clk.Add(time.Minute)
	// ...but its daily quota of 200 holds, until midnight UTC.
	post(109, 200, "/v1/website/w1/conversations", plugin...)
	r = x.Do(http.MethodPost, "/v1/website/w1/conversations", plugin...)
	e2e.Expect(t, r, 429, "Retry-After", strconv.Itoa(7*60), "X-RateLimit-Limit", "200")

	// The load balancer level: 150 per minute per IP, for plugins too.
	clk.Set(day.Add(24 * time.Hour))
	r = post(150, 200, "/v1/website/w1/conversations", plugin...)
	if r.Header.Get("X-RateLimit-Limit") != "150" {
		t.Fatalf("after midnight the quota restarted: the tightest limit is the load balancer's, got %v", r.Header)
	}
	r = x.Do(http.MethodPost, "/v1/website/w1/conversations", plugin...)
	e2e.Expect(t, r, 429, "X-RateLimit-Limit", "150", "Retry-After", "60")

	// Unauthenticated public routes are limited by IP.
	clk.Add(time.Minute)
	post(40, 200, "/v1/public/status")
	e2e.Expect(t, x.Do(http.MethodPost, "/v1/public/status"), 420)
	e2e.Expect(t, x.Get("/v1/website/w1/people"), 401)
}

// TestTieredTokenBucket: the identity cascade, the twelve tier x type pairs
// with exact capacity and refill, 429 with Retry-After and the JSON body.
func TestTieredTokenBucket(t *testing.T) {
	clk := e2e.FakeClock(t)
	x := load(t, "tiered-token-bucket.Caddyfile")

	pairs := []struct {
		key, tier, typ, path string
		capacity, refill     int
	}{
		{"key-base-1", "BASE", "DEFAULT", "/v1/products", 50, 5},
		{"key-base-1", "BASE", "PAYMENTS", "/v1/payments", 10, 1},
		{"key-base-1", "BASE", "AUTH", "/v1/sessions", 5, 1},
		{"key-t1", "TIER_1", "DEFAULT", "/v1/invoices/42", 150, 15},
		{"key-t1", "TIER_1", "PAYMENTS", "/v1/payments/p1", 50, 5},
		{"key-t1", "TIER_1", "AUTH", "/v1/oauth/token", 5, 1},
		{"key-t2", "TIER_2", "DEFAULT", "/v1/webhooks", 450, 45},
		{"key-t2", "TIER_2", "PAYMENTS", "/v1/payments", 250, 50},
		{"key-t2", "TIER_2", "AUTH", "/v1/auth/exchange", 5, 1},
		{"key-t3", "TIER_3", "DEFAULT", "/v1/products/9", 1000, 100},
		{"key-t3", "TIER_3", "PAYMENTS", "/v1/payments", 500, 100},
		{"key-t3", "TIER_3", "AUTH", "/v1/sessions/s1", 5, 1},
	}
	for _, p := range pairs {
		h := []string{"X-Api-Key", p.key}
		x.times(t, p.capacity, 200, p.path, h...)
		r := x.Get(p.path, h...)
		if r.Status != 429 || r.Header.Get("Retry-After") != "1" {
			t.Fatalf("%s %s: after %d requests got %d %v", p.tier, p.typ, p.capacity, r.Status, r.Header)
		}
		var body struct {
			Status int
			Error  string
			Log    struct {
				Support   string
				RateLimit struct{ Resource, Tier, Type string } `json:"rate_limit"`
			}
		}
		if err := json.Unmarshal([]byte(r.Body), &body); err != nil {
			t.Fatalf("body %q: %v", r.Body, err)
		}
		if body.Status != 429 || body.Error != "Rate limit exceeded, try again in 1 second" ||
			body.Log.RateLimit.Tier != p.tier || body.Log.RateLimit.Type != p.typ || body.Log.Support == "" {
			t.Fatalf("%s %s: body %q", p.tier, p.typ, r.Body)
		}
	}
	// One second later, each bucket has exactly its refill.
	clk.Add(time.Second)
	for _, p := range pairs {
		h := []string{"X-Api-Key", p.key}
		x.times(t, p.refill, 200, p.path, h...)
		if r := x.Get(p.path, h...); r.Status != 429 {
			t.Fatalf("%s %s: more than %d tokens after one second", p.tier, p.typ, p.refill)
		}
	}

	// Cascade: the two keys of org-base share the org's bucket.
	clk.Add(time.Hour)
	x.times(t, 30, 200, "/v1/products", "X-Api-Key", "key-base-1")
	x.times(t, 20, 200, "/v1/products", "X-Api-Key", "key-base-2")
	e2e.Expect(t, x.Get("/v1/products", "X-Api-Key", "key-base-2"), 429)
	// A made-up API key or user id is no client of its own: it counts
	// against the IP (50 in BASE), whatever it says.
	x.times(t, 20, 200, "/v1/products", "X-Api-Key", "key-unknown")
	x.times(t, 20, 200, "/v1/products", "X-User-Id", "u1")
	x.times(t, 10, 200, "/v1/products", "X-Api-Key", "made-up", "X-User-Id", "u2")
	e2e.Expect(t, x.Get("/v1/products", "X-Api-Key", "another-made-up"), 429, "X-RateLimit-Limit", "50")
	// The token endpoint: five tries per second per IP, however many
	// made-up identities (it was unlimited).
	clk.Add(time.Hour)
	for i := range 5 {
		e2e.Expect(t, x.Get("/v1/oauth/token", "X-User-Id", fmt.Sprint("u", i), "X-Api-Key", fmt.Sprint("k", i)), 200)
	}
	e2e.Expect(t, x.Get("/v1/oauth/token", "X-User-Id", "u9", "X-Api-Key", "k9"), 429)
	// A key sent twice is refused, not given a second bucket.
	req, _ := http.NewRequest(http.MethodGet, x.Base+"/v1/products", nil)
	req.Header.Add("X-Api-Key", "key-t3")
	req.Header.Add("X-Api-Key", "key-t3")
	resp, err := x.Tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("a repeated X-Api-Key: %d", resp.StatusCode)
	}
}

// TestClarabridge: 150/h per IP, 350/h per OAuth token, 20/h per console
// token, the four headers, denial 400 rate_limit_reached.
func TestClarabridge(t *testing.T) {
	clk := e2e.FakeClock(t)
	hour := clk.Now().Truncate(time.Hour)
	x := load(t, "clarabridge.Caddyfile")

	r := x.Get("/v1/messages")
	e2e.Expect(t, r, 200, "X-RateLimit-Limit", "150", "X-RateLimit-Time", "3600",
		"X-RateLimit-Remaining", "149", "X-RateLimit-Reset", unix(hour.Add(time.Hour)))
	x.times(t, 149, 200, "/v1/messages")
	e2e.Expect(t, x.Get("/v1/messages"), 400, "body", `{"error":"rate_limit_reached"}`, "X-RateLimit-Remaining", "0")

	// OAuth tokens count per token, in the header or the query.
	x.times(t, 350, 200, "/v1/messages", "Authorization", "Bearer oauth-a")
	e2e.Expect(t, x.Get("/v1/messages?oauth_token=x", "Authorization", "Bearer oauth-a"), 400)
	r = x.times(t, 350, 200, "/v1/messages?oauth_token=oauth-b")
	e2e.Expect(t, r, 200, "X-RateLimit-Limit", "350", "X-RateLimit-Remaining", "0")
	e2e.Expect(t, x.Get("/v1/messages?oauth_token=oauth-b"), 400, "body", `{"error":"rate_limit_reached"}`)

	// API Console tokens get 20 per hour.
	x.times(t, 20, 200, "/v1/messages", "Authorization", "Bearer console_abc")
	e2e.Expect(t, x.Get("/v1/messages", "Authorization", "Bearer console_abc"), 400, "X-RateLimit-Limit", "20")
	x.times(t, 20, 200, "/v1/messages?oauth_token=console_q")
	e2e.Expect(t, x.Get("/v1/messages?oauth_token=console_q"), 400)

	// The next hour starts afresh.
	clk.Set(hour.Add(time.Hour))
	e2e.Expect(t, x.Get("/v1/messages"), 200, "X-RateLimit-Remaining", "149")
}

// TestIntercom: app and workspace limits at once, the workspace shared by
// the apps in it, per-minute limits enforced in 10-second windows.
func TestIntercom(t *testing.T) {
	clk := e2e.FakeClock(t)
	start := clk.Now() // a round minute
	x := load(t, "intercom.Caddyfile")
	app := func(n int) []string { return []string{"Authorization", fmt.Sprintf("Bearer tok_app%d", n)} }

	r := x.Get("/contacts", app(1)...)
	e2e.Expect(t, r, 200, "X-RateLimit-Limit", "1666", "X-RateLimit-Remaining", "1665",
		"X-RateLimit-Reset", unix(start.Add(10*time.Second)))
	x.times(t, 1665, 200, "/contacts", app(1)...)
	r = x.Get("/contacts", app(1)...)
	e2e.Expect(t, r, 429, "X-RateLimit-Limit", "1666", "X-RateLimit-Remaining", "0",
		"X-RateLimit-Reset", unix(start.Add(10*time.Second)), "Retry-After", "10")

	// The other apps of the workspace count towards its 4166 per 10 s.
	x.times(t, 1666, 200, "/contacts", app(2)...)
	x.times(t, 834, 200, "/contacts", app(3)...)
	r = x.Get("/contacts", app(3)...)
	e2e.Expect(t, r, 429, "X-RateLimit-Limit", "4166", "X-RateLimit-Remaining", "0")
	// An app of another workspace is not affected.
	x.times(t, 10, 200, "/contacts", app(4)...)

	// Every 10 seconds the permitted requests reset.
	clk.Add(10 * time.Second)
	e2e.Expect(t, x.Get("/contacts", app(3)...), 200, "X-RateLimit-Reset", unix(start.Add(20*time.Second)))
	if x.upstreamHits.Load() != 1+1665+1666+834+10+1 {
		t.Fatalf("upstream saw %d requests: a denied one went through", x.upstreamHits.Load())
	}
}

// TestClickwrap: anchored windows per token, site access id and IP,
// Retry-After, the document's error object, one notification per window.
func TestClickwrap(t *testing.T) {
	clk := e2e.FakeClock(t)
	var mu sync.Mutex
	var alerts []map[string]any
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev struct{ Data map[string]any }
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &ev)
		mu.Lock()
		alerts = append(alerts, ev.Data)
		mu.Unlock()
	}))
	defer hook.Close()
	x := load(t, "clickwrap.Caddyfile", "ALERT_WEBHOOK", hook.URL+"/alerts")
	alertCount := func(want int) []map[string]any {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			mu.Lock()
			got := append([]map[string]any(nil), alerts...)
			mu.Unlock()
			if len(got) >= want || time.Now().After(deadline) {
				time.Sleep(50 * time.Millisecond) // a late extra alert would show here
				mu.Lock()
				got = append([]map[string]any(nil), alerts...)
				mu.Unlock()
				return got
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	token := []string{"Authorization", "Bearer api-token-1"}

	// The timer starts at the first request, 17 s past the minute.
	clk.Add(17 * time.Second)
	first := clk.Now()
	r := x.Get("/v1.1/sites", token...)
	e2e.Expect(t, r, 200, "X-RateLimit-Limit", "2000", "X-RateLimit-Remaining", "1999",
		"X-RateLimit-Reset", unix(first.Add(time.Minute)))
	x.times(t, 1999, 200, "/v1.1/sites", token...)
	clk.Add(33 * time.Second)
	r = x.Get("/v1.1/sites", token...)
	e2e.Expect(t, r, 429, "Retry-After", "27", "X-RateLimit-Reset", unix(first.Add(time.Minute)))
	var body struct {
		Error struct {
			Message, Name, Code, URL string
			Status                   int
		}
	}
	if err := json.Unmarshal([]byte(r.Body), &body); err != nil {
		t.Fatalf("body %q: %v", r.Body, err)
	}
	if body.Error.Status != 429 || body.Error.Code != "rate_limit_exceeded" || body.Error.Name != "RateLimitExceededError" ||
		body.Error.URL != "/v1.1/sites" || body.Error.Message != "Request limit has been reached for the current rate limit period." {
		t.Fatalf("error object %q", r.Body)
	}
	x.times(t, 5, 429, "/v1.1/sites", token...)
	if got := alertCount(1); len(got) != 1 || got[0]["limit"] != "rest_api" || got[0]["tier"] != "authenticated" {
		t.Fatalf("alerts after the first window: %v", got)
	}

	// At the end of the window the quota is whole again; the next window
	// starts with the next request, and its first denial alerts again.
	clk.Set(first.Add(time.Minute + 5*time.Second))
	second := clk.Now()
	e2e.Expect(t, x.Get("/v1.1/sites", token...), 200, "X-RateLimit-Remaining", "1999",
		"X-RateLimit-Reset", unix(second.Add(time.Minute)))
	x.times(t, 1999, 200, "/v1.1/sites", token...)
	x.times(t, 2, 429, "/v1.1/sites", token...)
	if got := alertCount(2); len(got) != 2 {
		t.Fatalf("alerts after the second window: %d", len(got))
	}

	// Unauthenticated: 60 per minute per IP.
	x.times(t, 60, 200, "/v1.1/sites")
	e2e.Expect(t, x.Get("/v1.1/sites"), 429, "X-RateLimit-Limit", "60")

	// Activity API: 10000 per 5 minutes per Site Access ID, anchored.
	clk.Add(10 * time.Second)
	act := clk.Now()
	r = x.Get("/activity/send?sid=site-1")
	e2e.Expect(t, r, 200, "X-RateLimit-Limit", "10000", "X-RateLimit-Reset", unix(act.Add(5*time.Minute)))
	x.times(t, 9999, 200, "/activity/send?sid=site-1")
	clk.Add(4 * time.Minute)
	e2e.Expect(t, x.Get("/activity/send?sid=site-1"), 429, "Retry-After", "60")
	x.times(t, 60, 200, "/activity/send")
	e2e.Expect(t, x.Get("/activity/send"), 429, "X-RateLimit-Limit", "60")
}
