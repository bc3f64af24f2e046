package edgelimit

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The Caddyfile of the foundation issue, as written there.
const issueCaddyfile = `
%ADDR% {
	edge_limit {
		limit per_client {
			key {header.X-Api-Key} {client_ip}   # first non-empty placeholder is the client
			rate 5/1m                              # fixed window, aligned to the clock
		}
		limit burst {
			key {client_ip}
			token_bucket 3 1/1s                    # capacity 3, refill 1 token per second
		}
	}
	respond "ok"
}
`

func TestIssueCaddyfile(t *testing.T) {
	clk := fakeClock(t)
	s := startSite(t, issueCaddyfile)
	now := clk.Now()

	// The burst bucket is the tighter limit for three requests.
	for want := 2; want >= 0; want-- {
		r := s.get("/")
		expect(t, r, 200, "body", "ok", "X-RateLimit-Limit", "3", "X-RateLimit-Remaining", strconv.Itoa(want))
	}
	r := s.get("/")
	expect(t, r, 429,
		"Retry-After", "1",
		"Content-Type", "application/json",
		"X-RateLimit-Limit", "3",
		"X-RateLimit-Remaining", "0",
		"X-RateLimit-Reset", strconv.FormatInt(now.Add(3*time.Second).Unix(), 10),
		"body", `{"status":429,"error":"Rate limit exceeded, try again in 1 second"}`)

	// The denied request consumed nothing from per_client: after a refill
	// of one token, per_client has 5-3 = 2 left, and reports 1 after this.
	clk.Add(time.Second)
	r = s.get("/")
	expect(t, r, 200, "X-RateLimit-Remaining", "0", "X-RateLimit-Limit", "3")
	clk.Add(3 * time.Second)
	r = s.get("/")
	expect(t, r, 200, "X-RateLimit-Limit", "5", "X-RateLimit-Remaining", "0",
		"X-RateLimit-Reset", strconv.FormatInt(now.Add(time.Minute).Unix(), 10))
	r = s.get("/")
	expect(t, r, 429, "X-RateLimit-Limit", "5", "Retry-After", "56",
		"body", `{"status":429,"error":"Rate limit exceeded, try again in 56 seconds"}`)

	// Another API key is another per_client counter, but the same IP's
	// burst bucket.
	r = s.get("/", "X-Api-Key", "k1")
	expect(t, r, 200, "X-RateLimit-Limit", "3", "X-RateLimit-Remaining", "1")

	// The next clock minute resets the window.
	clk.Set(now.Add(time.Minute))
	expect(t, s.get("/"), 200)
}

func TestStatusHeadersAndDryRun(t *testing.T) {
	clk := fakeClock(t)
	s := startSite(t, `
%ADDR% {
	handle /enhance {
		edge_limit {
			limit calm {
				rate 1/1h
			}
			status 420
		}
	}
	handle /bad {
		edge_limit {
			limit hourly {
				rate 1/1h
			}
			status 400
			headers x-ratelimit time
		}
	}
	handle /ietf {
		edge_limit {
			limit per_client {
				key {header.X-Api-Key} {client_ip}
				rate 5/1m
			}
			limit burst {
				token_bucket 3 1/1s
			}
			headers ratelimit
		}
	}
	handle /both {
		edge_limit {
			limit b {
				rate 2/10s
			}
			headers both
		}
	}
	handle /none {
		edge_limit {
			limit n {
				rate 1/1m
			}
			headers none
		}
	}
	handle /dry {
		edge_limit {
			limit d {
				rate 1/1m
			}
			dry_run
		}
	}
	respond "ok"
}`)
	expect(t, s.get("/enhance"), 200)
	expect(t, s.get("/enhance"), 420, "Retry-After", "3600",
		"body", `{"status":420,"error":"Rate limit exceeded, try again in 3600 seconds"}`)

	expect(t, s.get("/bad"), 200, "X-RateLimit-Time", "3600", "X-RateLimit-Remaining", "0")
	expect(t, s.get("/bad"), 400, "X-RateLimit-Time", "3600")

	r := s.get("/ietf")
	expect(t, r, 200,
		"RateLimit-Policy", `"per_client";q=5;w=60, "burst";q=3;w=3`,
		"RateLimit", `"per_client";r=4;t=60, "burst";r=2;t=1`,
		"X-RateLimit-Limit", "")
	clk.Add(18 * time.Second)
	r = s.get("/ietf")
	expect(t, r, 200, "RateLimit", `"per_client";r=3;t=42, "burst";r=2;t=1`)

	r = s.get("/both")
	expect(t, r, 200, "X-RateLimit-Limit", "2", "RateLimit-Policy", `"b";q=2;w=10`)

	r = s.get("/none")
	expect(t, r, 200, "X-RateLimit-Limit", "", "RateLimit", "")
	r = s.get("/none")
	expect(t, r, 429, "X-RateLimit-Limit", "", "Retry-After", "42")

	for i := range 3 {
		r = s.get("/dry")
		expect(t, r, 200, "X-RateLimit-Remaining", "0")
		_ = i
	}
}

func TestAlgorithmsThroughCaddy(t *testing.T) {
	clk := fakeClock(t)
	s := startSite(t, `
%ADDR% {
	edge_limit /anchored {
		limit a {
			rate 2/1m
			window anchored
		}
	}
	edge_limit /sliding {
		limit s {
			rate 4/1m
			window sliding
		}
	}
	edge_limit /gcra {
		limit g {
			gcra 10/1s
			burst 2
		}
	}
	edge_limit /cost {
		limit c {
			rate 10/1m
			cost 4
		}
	}
	respond "ok"
}`)
	// Anchored: the window starts at the first request, 30s past the minute.
	clk.Add(30 * time.Second)
	expect(t, s.get("/anchored"), 200)
	clk.Add(29 * time.Second)
	expect(t, s.get("/anchored"), 200)
	clk.Add(2 * time.Second) // past the clock minute, inside the anchored window
	expect(t, s.get("/anchored"), 429, "Retry-After", "29")
	clk.Add(29 * time.Second)
	expect(t, s.get("/anchored"), 200)

	// Sliding: four at the end of a minute leave no room right after it.
	clk.Set(clk.Now().Truncate(time.Minute).Add(2*time.Minute - time.Second))
	for range 4 {
		expect(t, s.get("/sliding"), 200)
	}
	clk.Add(2 * time.Second)
	expect(t, s.get("/sliding"), 429)

	expect(t, s.get("/gcra"), 200)
	expect(t, s.get("/gcra"), 200)
	expect(t, s.get("/gcra"), 429, "Retry-After", "1")
	clk.Add(100 * time.Millisecond)
	expect(t, s.get("/gcra"), 200)

	expect(t, s.get("/cost"), 200, "X-RateLimit-Remaining", "6")
	expect(t, s.get("/cost"), 200, "X-RateLimit-Remaining", "2")
	expect(t, s.get("/cost"), 429, "X-RateLimit-Remaining", "2")
}

func TestHandleErrorsRendersDenial(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit tight {
			rate 1/1m
		}
		handle_errors
	}
	respond "ok"
	handle_errors 429 {
		respond "slow down: {edge_limit.name} for {edge_limit.retry_after}s ({err.status_code})" 429
	}
}`)
	expect(t, s.get("/"), 200)
	r := s.get("/")
	expect(t, r, 429, "Retry-After", "60", "X-RateLimit-Remaining", "0", "body", "slow down: tight for 60s (429)")
}

func TestCustomBodyEscapesPlaceholders(t *testing.T) {
	fakeClock(t)
	s := startSite(t, "%ADDR% {\n\tedge_limit {\n\t\tlimit x {\n\t\t\trate 1/1m\n\t\t}\n\t\tbody `{\"error\":\"rate_limit_reached\",\"path\":\"{http.request.uri.path}\",\"ua\":\"{http.request.header.User-Agent}\"}`\n\t}\n\trespond \"ok\"\n}")
	expect(t, s.get("/p"), 200)
	r := s.get("/p", "User-Agent", `evil","admin":true,"x":"`)
	if r.status != 429 {
		t.Fatalf("status %d", r.status)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(r.body), &v); err != nil {
		t.Fatalf("body %q is not JSON: %v", r.body, err)
	}
	if v["error"] != "rate_limit_reached" || v["path"] != "/p" || v["ua"] != `evil","admin":true,"x":"` || v["admin"] != nil {
		t.Fatalf("body %q decoded as %v", r.body, v)
	}
}

func TestMissingKeysAndHostileKeys(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit users {
			key {http.auth.user.id} {header.X-User}
			rate 1/1m
		}
	}
	respond "ok"
}`)
	// No key part present: the limit does not apply at all.
	for range 3 {
		expect(t, s.get("/"), 200, "X-RateLimit-Limit", "")
	}
	expect(t, s.get("/", "X-User", "u1"), 200, "X-RateLimit-Remaining", "0")
	expect(t, s.get("/", "X-User", "u1"), 429)
	// A huge header is a key like any other; it costs no more memory.
	huge := strings.Repeat("A", 16<<10)
	expect(t, s.get("/", "X-User", huge), 200)
	expect(t, s.get("/", "X-User", huge), 429)
	expect(t, s.get("/", "X-User", huge[1:]), 200)
}

func TestReloadKeepsUnchangedCounters(t *testing.T) {
	fakeClock(t)
	limit := `
	edge_limit {
		limit keep {
			rate 3/1h
		}
	}
	respond "ok"
`
	s := startSite(t, "%ADDR% {"+limit+"}")
	expect(t, s.get("/"), 200, "X-RateLimit-Remaining", "2")
	expect(t, s.get("/"), 200, "X-RateLimit-Remaining", "1")

	// Reload with another site added: the directive is unchanged, so is
	// its count.
	port := strconv.Itoa(s.port)
	s.tester.InitServer(globalOptions("")+"http://127.0.0.1:"+port+" {"+limit+"}\nhttp://127.0.0.1:"+strconv.Itoa(freePort(t))+" {\n\trespond other\n}\n", "caddyfile")
	expect(t, s.get("/"), 200, "X-RateLimit-Remaining", "0")
	expect(t, s.get("/"), 429)

	// Changing the limit starts it afresh.
	s.tester.InitServer(globalOptions("")+"http://127.0.0.1:"+port+" {"+strings.Replace(limit, "3/1h", "4/1h", 1)+"}", "caddyfile")
	expect(t, s.get("/"), 200, "X-RateLimit-Remaining", "3")
}

func TestGlobalScopeSharesAcrossRoutes(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	handle /a {
		edge_limit {
			limit api {
				rate 3/1m
				scope global
			}
			limit route {
				rate 2/1m
			}
		}
	}
	handle /b {
		edge_limit {
			limit api {
				rate 3/1m
				scope global
			}
			limit route {
				rate 2/1m
			}
		}
	}
	respond "ok"
}`)
	expect(t, s.get("/a"), 200)
	expect(t, s.get("/a"), 200)
	expect(t, s.get("/a"), 429) // route limit of /a
	expect(t, s.get("/b"), 200, "X-RateLimit-Remaining", "0")
	expect(t, s.get("/b"), 429) // API-wide limit, shared with /a
}

// A request denied by a later edge_limit handler consumes nothing from the
// earlier ones, and the headers report the tightest limit of them all.
func TestDenialByLaterHandlerRefundsEarlier(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	route /both {
		edge_limit {
			limit outer {
				rate 5/1m
				scope global
			}
			headers both
		}
		edge_limit {
			limit inner {
				rate 2/1m
			}
			headers both
		}
		respond "ok"
	}
	route /outer {
		edge_limit {
			limit outer {
				rate 5/1m
				scope global
			}
		}
		respond "ok"
	}
}`)
	r := s.get("/both")
	expect(t, r, 200, "X-RateLimit-Limit", "2", "X-RateLimit-Remaining", "1",
		"RateLimit-Policy", `"outer";q=5;w=60, "inner";q=2;w=60`,
		"RateLimit", `"outer";r=4;t=60, "inner";r=1;t=60`)
	expect(t, s.get("/both"), 200, "X-RateLimit-Limit", "2", "X-RateLimit-Remaining", "0")
	for range 3 {
		expect(t, s.get("/both"), 429, "X-RateLimit-Limit", "2")
	}
	// outer counted the two admitted requests only.
	expect(t, s.get("/outer"), 200, "X-RateLimit-Remaining", "2")
	expect(t, s.get("/outer"), 200)
	expect(t, s.get("/outer"), 200, "X-RateLimit-Remaining", "0")
	expect(t, s.get("/outer"), 429)
}
