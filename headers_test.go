package edgelimit

import (
	"strconv"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
)

func unixString(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }

// TestResetTimesAreExact: every time a client is told (X-RateLimit-Reset,
// RateLimit t=, Retry-After, {edge_limit.reset}, the event's window_end
// and reset) is the window's own end, to the second, when the request
// comes at a fraction of a second; never a second late.
func TestResetTimesAreExact(t *testing.T) {
	clk := fakeClock(t)
	resetRecorded()
	s := startSite(t, `
{
	events {
		on edge_limit.exceeded edge_limit_test_recorder
	}
}
%ADDR% {
	handle /aligned {
		edge_limit {
			limit aligned {
				rate 2/1m
			}
			headers both
			body "{\"reset\":{edge_limit.reset},\"retry\":{edge_limit.retry_after}}"
		}
	}
	handle /split {
		edge_limit {
			limit split {
				rate 60/1m
				split 10s
			}
		}
	}
	handle /anchored {
		edge_limit {
			quota anchored {
				limit 1 per 1m
			}
		}
	}
	handle /daily {
		edge_limit {
			quota daily {
				limit 1 per day
			}
		}
	}
	handle /bucket {
		edge_limit {
			limit bucket {
				token_bucket 2 1/1s
			}
		}
	}
	respond "ok"
}`)
	base := clk.Now()
	// 10:00:00.3, and a fraction of a microsecond: a clock reads
	// nanoseconds, the stores count microseconds.
	frac := 300*time.Millisecond + 700*time.Nanosecond
	clk.Set(base.Add(frac))
	minute := unixString(base.Add(time.Minute))

	expect(t, s.get("/aligned"), 200, "X-RateLimit-Reset", minute, "RateLimit", `"aligned";r=1;t=60`)
	expect(t, s.get("/aligned"), 200, "X-RateLimit-Reset", minute, "X-RateLimit-Remaining", "0")
	r := s.get("/aligned")
	expect(t, r, 429, "X-RateLimit-Reset", minute, "Retry-After", "60", "RateLimit", `"aligned";r=0;t=60`,
		"body", `{"reset":`+minute+`,"retry":60}`)
	ev := eventsFor(t, "aligned", 1)
	if len(ev) != 1 || ev[0].Data["window_end"] != base.Add(time.Minute).UTC().Format(time.RFC3339) ||
		ev[0].Data["reset"] != base.Add(time.Minute).Unix() || ev[0].Data["retry_after"] != int64(60) {
		t.Fatalf("event %v", ev)
	}

	// 60/1m split 10s: windows of 10 s that end at :10, :20...
	expect(t, s.get("/split"), 200, "X-RateLimit-Limit", "10", "X-RateLimit-Reset", unixString(base.Add(10*time.Second)))
	clk.Set(base.Add(12*time.Second + frac))
	for range 9 {
		expect(t, s.get("/split"), 200, "X-RateLimit-Reset", unixString(base.Add(20*time.Second)))
	}
	expect(t, s.get("/split"), 200, "X-RateLimit-Remaining", "0")
	expect(t, s.get("/split"), 429, "Retry-After", "8", "X-RateLimit-Reset", unixString(base.Add(20*time.Second)))

	// An anchored window ends one window after its first request, at a
	// fraction of a second: the reset is the first whole second after it.
	clk.Set(base.Add(frac))
	expect(t, s.get("/anchored"), 200, "X-RateLimit-Reset", unixString(base.Add(61*time.Second)))
	expect(t, s.get("/anchored"), 429, "Retry-After", "60", "X-RateLimit-Reset", unixString(base.Add(61*time.Second)))

	// A calendar quota resets at midnight UTC, exactly.
	y, m, d := base.UTC().Date()
	midnight := time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC)
	expect(t, s.get("/daily"), 200, "X-RateLimit-Reset", unixString(midnight))
	retry := strconv.FormatInt(int64((midnight.Sub(clk.Now())+time.Second-1)/time.Second), 10)
	expect(t, s.get("/daily"), 429, "X-RateLimit-Reset", unixString(midnight), "Retry-After", retry)

	// A bucket is full again once its backlog drains: 1 s after 10:00:00.3
	// is 10:00:01.3, said as 10:00:02.
	expect(t, s.get("/bucket"), 200, "X-RateLimit-Reset", unixString(base.Add(2*time.Second)))
}

// TestResetTimesInRealTime: with the real clock (requests at whatever
// fraction of a second they come), X-RateLimit-Reset of an aligned window
// is the window's end, and Retry-After of an exhausted one is the whole
// seconds to that end, rounded up, never 0. With Redis, whose clock
// decides, too.
func TestResetTimesInRealTime(t *testing.T) {
	srv := redistest.Start(t)
	redis := `
			storage redis ` + srv.URL + ` {
				timeout 5s
			}`
	s := startSite(t, `
%ADDR% {
	handle /memory/minute {
		edge_limit {
			limit minute {
				rate 1/1m
			}
		}
	}
	handle /redis/minute {
		edge_limit {
			limit minute {
				rate 1/1m
			}`+redis+`
		}
	}
	handle /memory/tens {
		edge_limit {
			limit tens {
				rate 60/1m
				split 10s
			}
		}
	}
	handle /redis/tens {
		edge_limit {
			limit tens {
				rate 60/1m
				split 10s
			}`+redis+`
		}
	}
	respond "ok"
}`)
	for _, store := range []string{"memory", "redis"} {
		t.Run(store, func(t *testing.T) {
			// Up to four tries: a minute boundary between the two requests
			// starts a new window, and the second passes.
			for try := 0; ; try++ {
				before := time.Now()
				first := s.get("/" + store + "/minute")
				second := s.get("/" + store + "/minute")
				after := time.Now()
				if second.status == 200 && try < 3 {
					continue
				}
				expect(t, first, 200)
				expect(t, second, 429)
				checkAlignedReset(t, first, time.Minute, before, after)
				reset := checkAlignedReset(t, second, time.Minute, before, after)
				retry, err := strconv.ParseInt(second.get("Retry-After"), 10, 64)
				lo, hi := ceilSeconds(reset.Sub(after)), ceilSeconds(reset.Sub(before))
				if err != nil || retry < 1 || retry < lo || retry > hi {
					t.Fatalf("Retry-After %q with the window ending %s, asked between %s and %s (want %d..%d, at least 1)",
						second.get("Retry-After"), reset.UTC().Format(time.RFC3339), before.UTC().Format(time.StampMicro),
						after.UTC().Format(time.StampMicro), lo, hi)
				}
				break
			}
			// 60/1m split 10s: the reset is the next multiple of 10 s.
			for range 5 {
				before := time.Now()
				r := s.get("/" + store + "/tens")
				after := time.Now()
				expect(t, r, 200)
				checkAlignedReset(t, r, 10*time.Second, before, after)
			}
		})
	}
}

// checkAlignedReset checks that r's X-RateLimit-Reset is the end of the
// window of length w that held the decision, made between before and after.
func checkAlignedReset(t *testing.T, r reply, w time.Duration, before, after time.Time) time.Time {
	t.Helper()
	got, err := strconv.ParseInt(r.get("X-RateLimit-Reset"), 10, 64)
	if err != nil {
		t.Fatalf("X-RateLimit-Reset %q", r.get("X-RateLimit-Reset"))
	}
	reset := time.Unix(got, 0)
	if reset != before.Truncate(w).Add(w) && reset != after.Truncate(w).Add(w) {
		t.Fatalf("X-RateLimit-Reset %s, want the end of the %s window of the request (asked between %s and %s)",
			reset.UTC().Format(time.RFC3339), w, before.UTC().Format(time.StampMicro), after.UTC().Format(time.StampMicro))
	}
	return reset
}

func ceilSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
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
