package storage

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// Undoing a take on a key others changed since: the units come out of the
// current state when it is still the same window, and never more than the
// take added.
func TestUndoOfATouchedKey(t *testing.T) {
	srv := redistest.Shared(t)
	opt, err := redis.ParseURL(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewRedis(NewRedisClient(&redis.UniversalOptions{Addrs: []string{opt.Addr}, DB: opt.DB}, 5*time.Second),
		RedisOptions{LocalClock: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := srv.Client(t)
	ctx := context.Background()
	const t0 = int64(1_800_000_000_000_000) // microseconds
	minute := time.Minute.Microseconds()
	bucket := limiter.Limit{Algorithm: limiter.TokenBucket, Quota: 10, Rate: 1, Window: time.Second} // 1s per unit
	cases := []struct {
		name                 string
		limit                limiter.Limit
		after, current, want string
		cost                 int64
		nowOffset            int64
	}{
		{
			name:    "fixed: others counted since",
			limit:   limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 10, Window: time.Minute},
			after:   st(t0, 1, 0, 0, t0+minute, 0),
			current: st(t0, 4, 0, 0, t0+minute, 0),
			want:    st(t0, 3, 0, 0, t0+minute, 0),
			cost:    1,
		},
		{
			name:    "fixed: another window began, nothing to give back",
			limit:   limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 10, Window: time.Minute},
			after:   st(t0, 1, 0, 0, t0+minute, 0),
			current: st(t0+minute, 2, 0, 0, t0+2*minute, 0),
			want:    st(t0+minute, 2, 0, 0, t0+2*minute, 0),
			cost:    1, nowOffset: minute,
		},
		{
			name:    "anchored: the count falls to zero, the window is free again",
			limit:   limiter.Limit{Algorithm: limiter.AnchoredWindow, Quota: 10, Window: time.Minute},
			after:   st(t0, 2, 0, 0, t0+minute, 0),
			current: st(t0, 2, 0, 0, t0+minute, 1),
			want:    st(t0, 0, 0, 0, t0+minute, 1),
			cost:    2,
		},
		{
			name:    "sliding: the window moved on, the units are in the previous count",
			limit:   limiter.Limit{Algorithm: limiter.SlidingWindow, Quota: 10, Window: time.Minute},
			after:   st(t0, 3, 1, 0, t0+2*minute, 0),
			current: st(t0+minute, 1, 5, 0, t0+3*minute, 0),
			want:    st(t0+minute, 1, 4, 0, t0+3*minute, 0),
			cost:    1, nowOffset: minute + 1,
		},
		{
			name:  "token bucket: ours still in the backlog",
			limit: bucket,
			// We left 3s of backlog at t0; someone added 2s at t0+0.5s.
			after:   st(t0, 0, 0, 3e6, t0+3e6, 0),
			current: st(t0+5e5, 0, 0, 4.5e6, t0+5e6, 0),
			// At t0+1s: backlog 4s, of which ours is min(3-1, 1) = 1s.
			want: st(t0+1e6, 0, 0, 3e6, t0+5e6, 0),
			cost: 1, nowOffset: 1e6,
		},
		{
			name:  "token bucket: ours partly drained",
			limit: bucket,
			// We added 2s on top of 1s at t0: backlog 3s; others added 1s at
			// t0+2.5s (backlog 0.5+1 = 1.5s).
			after:   st(t0, 0, 0, 3e6, t0+3e6, 0),
			current: st(t0+2.5e6, 0, 0, 1.5e6, t0+4e6, 0),
			// At t0+2.5s ours is 0.5s (the first 1s drained before ours,
			// then 1.5s of ours): 1.5 - 0.5 = 1s left.
			want: st(t0+2.5e6, 0, 0, 1e6, t0+4e6, 0),
			cost: 2, nowOffset: 2.5e6,
		},
		{
			name:    "token bucket: drained and refilled, nothing of ours left",
			limit:   bucket,
			after:   st(t0, 0, 0, 1e6, t0+1e6, 0),
			current: st(t0+5e6, 0, 0, 1e6, t0+6e6, 0),
			want:    st(t0+5e6, 0, 0, 1e6, t0+6e6, 0),
			cost:    1, nowOffset: 5e6,
		},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := fmt.Sprintf("undo-test:{%d}", i)
			if err := c.HSet(ctx, key, "counter", tc.current).Err(); err != nil {
				t.Fatal(err)
			}
			now := t0 + tc.nowOffset
			head := store.AppendLimit(store.AppendInt(nil, now), 1, &tc.limit, tc.cost, false, 0, 0)
			runs := []slotRun{{keys: []string{key}, argv: []string{string(head), "counter", "", tc.after}}}
			s.pipeline(ctx, runs, undoScript)
			if runs[0].err != nil {
				t.Fatal(runs[0].err)
			}
			got, err := c.HGet(ctx, key, "counter").Result()
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("state %s, want %s", unpackState(got), unpackState(tc.want))
			}
		})
	}
}

// st writes a state as the scripts do (struct '<i8i8i8di8B').
func st(start, count, prev int64, debt float64, expires, denied int64) string {
	b := binary.LittleEndian.AppendUint64(nil, uint64(start))
	b = binary.LittleEndian.AppendUint64(b, uint64(count))
	b = binary.LittleEndian.AppendUint64(b, uint64(prev))
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(debt))
	b = binary.LittleEndian.AppendUint64(b, uint64(expires))
	return string(append(b, byte(denied)))
}

// unpackState shows a state for a failure message.
func unpackState(v string) string {
	if len(v) != store.StateLen {
		return fmt.Sprintf("%q", v)
	}
	b := []byte(v)
	n := func(i int) uint64 { return binary.LittleEndian.Uint64(b[8*i:]) }
	return fmt.Sprintf("start=%d count=%d prev=%d debt=%g expires=%d denied=%d",
		int64(n(0)), int64(n(1)), int64(n(2)), math.Float64frombits(n(3)), int64(n(4)), b[40])
}
