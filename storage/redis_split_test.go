package storage_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
	"github.com/edgelimit/caddy-edgelimit/store/storetest"
)

// splitLimit is a random limit at the edges of what Validate admits, for
// TestRedisSplitDecisionMatchesMemory: windows in microseconds, rates that
// do not divide them (a fractional emission interval), quotas up to
// limiter.MaxQuota, offsets, waits and bans.
func splitLimit(rng *rand.Rand) limiter.Limit {
	quota := []int64{1, 2, 3, 7, 1000, 1 << 20, limiter.MaxQuota - 1, limiter.MaxQuota}[rng.IntN(8)]
	if rng.IntN(2) == 0 {
		quota = int64(1 + rng.IntN(6))
	}
	window := time.Duration(1000+rng.IntN(3_000_000)) * time.Microsecond
	var l limiter.Limit
	switch rng.IntN(6) {
	case 0:
		l = limiter.Limit{Algorithm: limiter.FixedWindow, Quota: quota, Window: window,
			Offset: time.Duration(rng.Int64N(int64(window/time.Microsecond))) * time.Microsecond}
	case 1:
		l = limiter.Limit{Algorithm: limiter.AnchoredWindow, Quota: quota, Window: window}
	case 2:
		l = limiter.Limit{Algorithm: limiter.SlidingWindow, Quota: quota, Window: window,
			Offset: time.Duration(rng.Int64N(int64(window/time.Microsecond))) * time.Microsecond}
	case 3, 4:
		a := limiter.TokenBucket
		if rng.IntN(2) == 0 {
			a = limiter.GCRA
		}
		rate := []int64{1, 3, 7, 13, 1000, 999_983}[rng.IntN(6)]
		l = limiter.Limit{Algorithm: a, Quota: quota, Rate: rate, Window: window}
		for l.Validate() != nil {
			// Too long to refill from empty: a smaller quota.
			l.Quota /= 2
		}
		if rng.IntN(3) == 0 {
			l.Wait = time.Duration(1+rng.IntN(2000)) * time.Millisecond
		}
	default:
		loc := []string{"UTC", "Europe/Berlin", "America/St_Johns", "Asia/Kathmandu", "Australia/Lord_Howe"}[rng.IntN(5)]
		z, err := time.LoadLocation(loc)
		if err != nil {
			z = time.UTC
		}
		l = limiter.Limit{Algorithm: limiter.FixedWindow, Quota: quota,
			Calendar: limiter.CalendarWindow{Period: limiter.Day, At: time.Duration(rng.IntN(24*60)) * time.Minute, Location: z}.Cached()}
	}
	if rng.IntN(4) == 0 {
		l.Ban = time.Duration(1+rng.IntN(3)) * time.Second
	}
	return l
}

// The script decides what it writes and replies with the states it decided
// from; Go decides the results again from those states
// (store.ParseResults). Both must agree with each other and with the
// memory store at the edges: microsecond times and windows, fractional
// emission intervals, quotas near limiter.MaxQuota, costs of a quota and
// more, bans, waits, calendar days in odd time zones, several
// requests of one decision on the same counter. After every step each
// counter is peeked in both stores: the states agree too.
func TestRedisSplitDecisionMatchesMemory(t *testing.T) {
	srv := redistest.Shared(t)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 23))
	ctx := context.Background()
	rounds := 40
	if testing.Short() {
		rounds = 8
	}
	for round := range rounds {
		mem := store.NewMemory(store.MemoryOptions{})
		red := openRedis(t, srv, storage.RedisOptions{LocalClock: true, NoLocalDenials: true, Prefix: storetest.Prefix(t)})
		var limits []limiter.Limit
		for range 3 {
			for {
				l := splitLimit(rng)
				if l.Validate() == nil {
					limits = append(limits, l)
					break
				}
			}
		}
		now := storetest.Base.Add(time.Duration(rng.Int64N(400*24*3600*1e6)) * time.Microsecond)
		for step := range 120 {
			// Fake time: microseconds to a few windows, at most a few
			// seconds (a hash's TTL in Redis, in real time, is at least
			// a second past its last state's expiry).
			now = now.Add(time.Duration(rng.Int64N([]int64{1, 10, 1000, 300_000, 3_000_000}[rng.IntN(5)])) * time.Microsecond)
			n := 1 + rng.IntN(4)
			reqs := make([]store.Request, n)
			for j := range reqs {
				li := rng.IntN(len(limits))
				r := store.Request{
					Counter: fmt.Sprintf("c%d", li),
					Key:     []string{"a", "b"}[rng.IntN(2)],
					Limit:   limits[li],
					Cost:    []int64{1, 1, 1, 2, 3, limits[li].Quota, limits[li].Quota + 1, limiter.MaxQuota}[rng.IntN(8)],
					DryRun:  rng.IntN(7) == 0,
				}
				switch rng.IntN(7) {
				case 0:
					r.Mode = store.ModeCheck
				case 1:
					r.Mode = store.ModeCharge
				}
				if r.Mode == store.ModeCharge && rng.IntN(3) == 0 {
					// A charge of what a response weighed: past any quota.
					r.Cost = 1 << 41
				}
				reqs[j] = r
			}
			if rng.IntN(6) == 0 {
				errM, errR := mem.Refund(ctx, now, reqs), red.Refund(ctx, now, reqs)
				if (errM == nil) != (errR == nil) {
					t.Fatalf("round %d step %d: refund: memory %v, redis %v", round, step, errM, errR)
				}
			} else {
				want := make([]limiter.Result, n)
				got := make([]limiter.Result, n)
				errM, errR := mem.Take(ctx, now, reqs, want), red.Take(ctx, now, reqs, got)
				if (errM == nil) != (errR == nil) {
					t.Fatalf("round %d step %d: memory %v, redis %v", round, step, errM, errR)
				}
				if errM != nil {
					continue
				}
				for j := range want {
					if got[j] != want[j] {
						t.Fatalf("round %d step %d take %d of %d (%+v cost %d mode %d dry %v at %s):\nredis  %+v\nmemory %+v",
							round, step, j, n, reqs[j].Limit, reqs[j].Cost, reqs[j].Mode, reqs[j].DryRun, now.Sub(storetest.Base), got[j], want[j])
					}
				}
			}
			// The states after: every counter and key, peeked.
			var peek []store.Request
			for li, l := range limits {
				for _, k := range []string{"a", "b"} {
					peek = append(peek, store.Request{Counter: fmt.Sprintf("c%d", li), Key: k, Limit: l, Cost: 1})
				}
			}
			want := make([]limiter.Result, len(peek))
			got := make([]limiter.Result, len(peek))
			if err := mem.Peek(ctx, now, peek, want); err != nil {
				t.Fatal(err)
			}
			if err := red.Peek(ctx, now, peek, got); err != nil {
				t.Fatal(err)
			}
			for j := range want {
				if got[j] != want[j] {
					t.Fatalf("round %d step %d: the state of %s/%s (%+v at %s) after:\nredis  %+v\nmemory %+v",
						round, step, peek[j].Counter, peek[j].Key, peek[j].Limit, now.Sub(storetest.Base), got[j], want[j])
				}
			}
		}
		mem.Close()
	}
}
