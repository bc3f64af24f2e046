package store

import (
	"context"
	"runtime"
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

// A request taken from a view and given back after a merge charged it to
// the server (a later handler denied it, or the server denied the
// request's other limit while the merge was on its way) is given back at
// the server too: otherwise the shared count keeps what no client got (a
// flood that another limit denies would eat a shared limit up for
// everyone, a unit per merge it straddles).
func TestSyncedRefundAfterMerge(t *testing.T) {
	ctx := context.Background()
	for _, l := range []limiter.Limit{
		{Algorithm: limiter.FixedWindow, Quota: 10, Window: time.Minute},
		{Algorithm: limiter.SlidingWindow, Quota: 10, Window: time.Minute},
		{Algorithm: limiter.AnchoredWindow, Quota: 10, Window: time.Minute},
		{Algorithm: limiter.TokenBucket, Quota: 10, Rate: 1, Window: time.Minute},
		{Algorithm: limiter.GCRA, Quota: 10, Rate: 1, Window: time.Minute},
	} {
		t.Run(l.Algorithm.String(), func(t *testing.T) {
			mem := NewMemory(MemoryOptions{})
			defer mem.Close()
			now := time.Unix(1_800_000_000, 0)
			s := NewSynced(mem, memServer{mem}, stillClock{now})
			defer s.Close()
			req := []Request{{Counter: "api", Key: "k", Limit: l, Cost: 1, Sync: time.Second}}
			res := make([]limiter.Result, 1)
			for range 3 {
				// The first seeds the view at the server, the others
				// are counted in it.
				if err := s.Take(ctx, now, req, res); err != nil || !res[0].Allowed {
					t.Fatalf("%+v %v", res[0], err)
				}
			}
			s.merge(s.groups[time.Second], false)
			// The last two given back: after the merge that charged them.
			for range 2 {
				if err := s.Refund(ctx, now, req); err != nil {
					t.Fatal(err)
				}
			}
			s.merge(s.groups[time.Second], false)
			peek := make([]limiter.Result, 1)
			if err := mem.Peek(ctx, now, req, peek); err != nil {
				t.Fatal(err)
			}
			if peek[0].Remaining != 9 {
				t.Fatalf("one unit taken of 10 and two given back: the server has %d left, want 9", peek[0].Remaining)
			}
		})
	}
}

// blockingServer holds each merge (a charge) until released.
type blockingServer struct {
	memServer
	entered chan struct{}
	release chan struct{}
}

func (b blockingServer) Decide(ctx context.Context, now time.Time, reqs []Request, results []limiter.Result) error {
	if reqs[0].Mode == ModeCharge {
		b.entered <- struct{}{}
		select {
		case <-b.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return b.memServer.Decide(ctx, now, reqs, results)
}

// tickClock wakes a merge on each tick.
type tickClock struct {
	now  time.Time
	tick chan struct{}
}

func (c tickClock) Now() time.Time { return c.now }
func (c tickClock) Sleep(ctx context.Context, _ time.Duration) error {
	select {
	case <-c.tick:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close while a merge waits on the server: Close waits for it (what it
// charges reaches the server), and no goroutine is left behind.
func TestSyncedCloseWhileMerging(t *testing.T) {
	ctx := context.Background()
	mem := NewMemory(MemoryOptions{})
	defer mem.Close()
	before := runtime.NumGoroutine()
	now := time.Unix(1_800_000_000, 0)
	srv := blockingServer{memServer{mem}, make(chan struct{}), make(chan struct{})}
	clk := tickClock{now, make(chan struct{})}
	s := NewSynced(mem, srv, clk)
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 10, Window: time.Minute}
	req := []Request{{Counter: "api", Key: "k", Limit: l, Cost: 1, Sync: time.Second}}
	res := make([]limiter.Result, 1)
	for range 2 {
		if err := s.Take(ctx, now, req, res); err != nil || !res[0].Allowed {
			t.Fatalf("%+v %v", res[0], err)
		}
	}
	clk.tick <- struct{}{}
	<-srv.entered
	closed := make(chan struct{})
	go func() {
		_ = s.Close()
		close(closed)
	}()
	select {
	case <-closed:
		t.Fatal("Close returned while a merge was on its way")
	case <-time.After(50 * time.Millisecond):
	}
	close(srv.release)
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return within 20s of the merge's reply")
	}
	peek := make([]limiter.Result, 1)
	if err := mem.Peek(ctx, now, req, peek); err != nil || peek[0].Remaining != 8 {
		t.Fatalf("after Close the server has %+v (%v), want 8 left", peek[0], err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Close, %d before", runtime.NumGoroutine(), before)
		}
		time.Sleep(time.Millisecond)
	}
	if s.Running() != 0 {
		t.Fatalf("%d merge goroutines after Close", s.Running())
	}
}

// A store closed (a reload: the old handler may still finish requests)
// decides at the server: its views would count what no merge charges
// any more.
func TestSyncedClosedDecidesAtTheServer(t *testing.T) {
	ctx := context.Background()
	mem := NewMemory(MemoryOptions{})
	defer mem.Close()
	now := time.Unix(1_800_000_000, 0)
	s := NewSynced(mem, memServer{mem}, stillClock{now})
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 10, Window: time.Minute}
	req := []Request{{Counter: "api", Key: "k", Limit: l, Cost: 1, Sync: time.Second}}
	res := make([]limiter.Result, 1)
	for range 2 {
		// The first seeds the view, the second is taken from it.
		if err := s.Take(ctx, now, req, res); err != nil || !res[0].Allowed {
			t.Fatalf("%+v %v", res[0], err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := s.Take(ctx, now, req, res); err != nil || !res[0].Allowed {
			t.Fatalf("%+v %v", res[0], err)
		}
	}
	peek := make([]limiter.Result, 1)
	if err := mem.Peek(ctx, now, req, peek); err != nil || peek[0].Remaining != 5 {
		t.Fatalf("five taken, three after Close: the server has %+v (%v), want 5 left", peek[0], err)
	}
}
