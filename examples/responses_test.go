package examples_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
)

// TestLoginBruteForce: 5 failed logins per user and per IP in 15 minutes
// from the first, then 429 for every request of that user or IP, the
// right password too, until the 15 minutes are over; right passwords count
// nothing.
func TestLoginBruteForce(t *testing.T) {
	clk := e2e.FakeClock(t)
	x := load(t, "login-brute-force.Caddyfile")
	alice, guess := basic("alice", "alice-secret"), basic("alice", "guess")
	x.times(t, 30, 200, "/account", "Authorization", alice)
	first := clk.Now()
	for i := 4; i >= 0; i-- {
		r := x.Get("/account", "Authorization", guess)
		e2e.Expect(t, r, 401, "X-RateLimit-Limit", "5", "X-RateLimit-Remaining", strconv.Itoa(i),
			"X-RateLimit-Reset", unix(first.Add(15*time.Minute)), "WWW-Authenticate", `Basic realm="restricted"`)
		clk.Add(2 * time.Minute)
	}
	hits := x.upstreamHits.Load()
	// 10 minutes after the first failure: 5 minutes to go.
	r := x.Get("/account", "Authorization", alice)
	e2e.Expect(t, r, 429, "Retry-After", "300", "Content-Type", "application/json")
	var body struct{ Error, Message string }
	if err := json.Unmarshal([]byte(r.Body), &body); err != nil || body.Error != "too_many_failed_logins" ||
		body.Message != "Too many failed logins, try again in 5 minutes" {
		t.Fatalf("body %q: %v", r.Body, err)
	}
	// Every request of this client: bob's, and none at all.
	e2e.Expect(t, x.Get("/account", "Authorization", basic("bob", "bob-secret")), 429)
	e2e.Expect(t, x.Get("/"), 429)
	if x.upstreamHits.Load() != hits {
		t.Fatal("a denied client reached the upstream")
	}
	clk.Set(first.Add(15*time.Minute - time.Second))
	e2e.Expect(t, x.Get("/account", "Authorization", alice), 429, "Retry-After", "1")
	clk.Set(first.Add(15 * time.Minute))
	e2e.Expect(t, x.Get("/account", "Authorization", alice), 200, "X-RateLimit-Remaining", "5")

	// Per user: bob's password guessed with a different spelling of the
	// scheme each time counts as bob's, and the fifth denies bob.
	for i, scheme := range []string{"Basic", "basic", "BASIC", "bAsIc", "Basic"} {
		v := basic("bob", "guess"+strconv.Itoa(i))
		e2e.Expect(t, x.Get("/account", "Authorization", scheme+v[len("Basic"):]), 401)
	}
	e2e.Expect(t, x.Get("/account", "Authorization", basic("bob", "bob-secret")), 429)
}

// TestLLMTokenQuota: a million tokens a month per account, charged with
// the usage the upstream reports, accepted while any remain, the last
// answer delivered in full, then insufficient_quota until the month ends.
func TestLLMTokenQuota(t *testing.T) {
	clk := e2e.FakeClock(t)
	x := loadWith(t, "llm-token-quota.Caddyfile", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Usage-Tokens", r.Header.Get("X-Test-Usage"))
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"choices":[{"message":{"content":"ok"}}]}`)
	})
	alpha := func(usage int) e2e.Reply {
		t.Helper()
		return x.Do("POST", "/v1/chat/completions", "Authorization", "Bearer sk-alpha-0001", "X-Test-Usage", strconv.Itoa(usage))
	}
	e2e.Expect(t, alpha(400000), 200, "X-RateLimit-Limit", "1000000", "X-RateLimit-Remaining", "600000", "X-Usage-Tokens", "")
	e2e.Expect(t, alpha(599999), 200, "X-RateLimit-Remaining", "1")
	// One token left: accepted, and its answer uses 2500.
	r := alpha(2500)
	e2e.Expect(t, r, 200, "X-RateLimit-Remaining", "0", "body", `{"choices":[{"message":{"content":"ok"}}]}`)
	hits := x.upstreamHits.Load()
	y, m, _ := clk.Now().UTC().Date()
	next := time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC)
	r = alpha(1)
	e2e.Expect(t, r, 429, "X-RateLimit-Reset", unix(next), "Retry-After", strconv.FormatInt(int64((next.Sub(clk.Now())+time.Second-1)/time.Second), 10),
		"body", `{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}`)
	if x.upstreamHits.Load() != hits {
		t.Fatal("a request was served with no tokens left")
	}
	// Another account has its own quota; an unknown key none.
	e2e.Expect(t, x.Do("POST", "/v1/chat/completions", "Authorization", "Bearer sk-beta-0002", "X-Test-Usage", "10"), 200, "X-RateLimit-Remaining", "999990")
	r = x.Do("POST", "/v1/chat/completions", "Authorization", "Bearer sk-made-up", "X-Test-Usage", "10")
	e2e.Expect(t, r, 401, "X-RateLimit-Limit", "")
	clk.Set(next)
	e2e.Expect(t, alpha(1000), 200, "X-RateLimit-Remaining", "999000")
}
