package edgelimit

import (
	"testing"
	"time"
)

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

func TestQuotaExemptsAcrossHandlers(t *testing.T) {
	clk := fakeClock(t)
	clk.Set(clk.Now().Truncate(24 * time.Hour).Add(23*time.Hour + 59*time.Minute))
	s := startSite(t, `
{
	edge_limit {
		limit api_global {
			key {header.X-User} {client_ip}
			rate 3/1h
		}
	}
}
%ADDR% {
	edge_limit {
		quota plugin_daily {
			key {header.X-Plugin-Id}
			limit 5 per day
			reset 00:00 UTC
			exempt api_global api_route
			status 420
		}
		use api_global
	}
	handle /route {
		edge_limit {
			limit api_route {
				key {header.X-User} {client_ip}
				rate 2/1h
			}
		}
	}
	respond "ok"
}`)
	// A user is held to the route limit...
	expect(t, s.get("/route", "X-User", "u"), 200)
	expect(t, s.get("/route", "X-User", "u"), 200)
	expect(t, s.get("/route", "X-User", "u"), 429)
	// ...a plugin is not, in this handler nor in the nested one, but its
	// daily quota holds, with 420.
	for range 5 {
		expect(t, s.get("/route", "X-User", "u", "X-Plugin-Id", "p1"), 200)
	}
	r := s.get("/route", "X-User", "u", "X-Plugin-Id", "p1")
	expect(t, r, 420, "Retry-After", "60")
	// Midnight UTC resets the quota.
	clk.Add(time.Minute)
	expect(t, s.get("/route", "X-User", "u", "X-Plugin-Id", "p1"), 200, "X-RateLimit-Limit", "5", "X-RateLimit-Remaining", "4")
}
