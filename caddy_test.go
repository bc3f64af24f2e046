package edgelimit

import (
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

func TestPerClientAndBurstLimitsTogether(t *testing.T) {
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

	// Raising the limit does not forgive the 3 requests counted: the new
	// numbers apply to the count already made.
	s.tester.InitServer(globalOptions("")+"http://127.0.0.1:"+port+" {"+strings.Replace(limit, "3/1h", "4/1h", 1)+"}", "caddyfile")
	expect(t, s.get("/"), 200, "X-RateLimit-Limit", "4", "X-RateLimit-Remaining", "0")
	expect(t, s.get("/"), 429)

	// Renaming the limit is another limit: it starts afresh.
	s.tester.InitServer(globalOptions("")+"http://127.0.0.1:"+port+" {"+strings.Replace(limit, "keep", "renamed", 1)+"}", "caddyfile")
	expect(t, s.get("/"), 200, "X-RateLimit-Remaining", "2")
}

// TestTuningAQuotaKeepsTheDaysUsage: a quota raised from 3 to 5 per day,
// or a rate from 2/1h to 3/1h, on a reload, re-granted every client's
// usage (the zone of the directive was derived from its numbers).
func TestTuningAQuotaKeepsTheDaysUsage(t *testing.T) {
	fakeClock(t)
	cfg := func(quota, rate string) string {
		return `
%ADDR% {
	edge_limit {
		quota daily {
			key {header.X-Key}
			limit ` + quota + ` per day
			scope route
		}
		limit hourly {
			key {header.X-Key}
			rate ` + rate + `
		}
	}
	respond "ok"
}`
	}
	s := startSite(t, cfg("3", "2/1h"))
	expect(t, s.get("/", "X-Key", "k1"), 200)
	expect(t, s.get("/", "X-Key", "k1"), 200)
	expect(t, s.get("/", "X-Key", "k1"), 429, "X-RateLimit-Limit", "2")
	expect(t, s.get("/", "X-Key", "k2"), 200)
	expect(t, s.get("/", "X-Key", "k2"), 200)

	body := strings.ReplaceAll(cfg("5", "3/1h"), "%ADDR%", s.base)
	s.tester.InitServer(globalOptions("")+body, "caddyfile")
	// k1 used 2 of its day and 2 of its hour: one more this hour.
	expect(t, s.get("/", "X-Key", "k1"), 200, "X-RateLimit-Remaining", "0")
	expect(t, s.get("/", "X-Key", "k1"), 429, "X-RateLimit-Limit", "3")
	expect(t, s.get("/", "X-Key", "k2"), 200)
	expect(t, s.get("/", "X-Key", "k2"), 429)
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
