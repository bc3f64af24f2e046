package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// memServer is a Memory as the server of a Synced store.
type memServer struct{ *Memory }

func (m memServer) Decide(ctx context.Context, now time.Time, reqs []Request, results []limiter.Result) error {
	return m.Take(ctx, now, reqs, results)
}
func (m memServer) GiveBack(ctx context.Context, now time.Time, reqs []Request) error {
	return m.Refund(ctx, now, reqs)
}
func (memServer) Failed(error, bool)          {}
func (memServer) Answered()                   {}
func (memServer) Probe(context.Context) error { return nil }

// stillClock never wakes a merge: it sleeps until the store closes.
type stillClock struct{ now time.Time }

func (c stillClock) Now() time.Time { return c.now }
func (stillClock) Sleep(ctx context.Context, _ time.Duration) error {
	<-ctx.Done()
	return ctx.Err()
}

// A flood of made-up keys, long ones, on a limit with sync: each key is a
// view until the next merge, and the views hold at most MaxCarryBytes of
// counters and keys (and MaxCarry views); the keys past that are decided
// by the server, exactly.
func TestSyncedViewsBounded(t *testing.T) {
	mem := NewMemory(MemoryOptions{})
	defer mem.Close()
	now := time.Unix(1_800_000_000, 0)
	s := NewSynced(mem, memServer{mem}, stillClock{now})
	defer s.Close()
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 2, Window: time.Minute}
	pad := strings.Repeat("k", 2048)
	res := make([]limiter.Result, 1)
	keys := MaxCarryBytes/len(pad) + 1000
	for i := range keys {
		req := []Request{{Counter: "api", Key: pad + string(rune('a'+i%26)) + string(rune(i)), Limit: l, Cost: 1, Sync: time.Second}}
		if err := s.Take(context.Background(), now, req, res); err != nil || !res[0].Allowed {
			t.Fatalf("key %d: %+v %v", i, res[0], err)
		}
	}
	s.mu.Lock()
	n, bytes := 0, 0
	for _, g := range s.groups {
		for id := range g.views {
			n++
			bytes += len(id.counter) + len(id.key)
		}
	}
	s.mu.Unlock()
	if n == 0 || n > MaxCarry || bytes > MaxCarryBytes {
		t.Fatalf("%d keys of %d bytes: %d views of %d bytes, want at most %d bytes", keys, len(pad), n, bytes, MaxCarryBytes)
	}
	// A key past the bound is decided by the server, exactly.
	last := []Request{{Counter: "api", Key: "past the bound" + pad, Limit: l, Cost: 1, Sync: time.Second}}
	for i := range 3 {
		if err := s.Take(context.Background(), now, last, res); err != nil || res[0].Allowed != (i < 2) {
			t.Fatalf("take %d past the bound: %+v %v", i, res[0], err)
		}
	}
}
