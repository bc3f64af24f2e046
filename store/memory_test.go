package store_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
	"github.com/edgelimit/caddy-edgelimit/store/storetest"
)

func openMemory(t *testing.T, _ func() time.Time) store.Store {
	return store.NewMemory(store.MemoryOptions{})
}

func TestMemoryConformance(t *testing.T) {
	storetest.Run(t, openMemory)
}

func TestMemoryExactUnderConcurrency(t *testing.T) {
	m := openMemory(t, func() time.Time { return storetest.Base })
	storetest.Exact(t, []store.Store{m}, 4*runtime.GOMAXPROCS(0), 200)
}

func TestMemoryExpiryAndSweep(t *testing.T) {
	now := storetest.Base
	m := store.NewMemory(store.MemoryOptions{SweepInterval: time.Hour})
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 1, Window: time.Minute}
	res := make([]limiter.Result, 1)
	for i := range 100 {
		req := []store.Request{{Counter: "c", Key: fmt.Sprint(i), Limit: l, Cost: 1}}
		if err := m.Take(context.Background(), now, req, res); err != nil || !res[0].Allowed {
			t.Fatal(err, res[0])
		}
	}
	if m.Len() != 100 {
		t.Fatalf("len %d", m.Len())
	}
	if n := m.Sweep(now); n != 0 {
		t.Fatalf("swept %d live keys", n)
	}
	now = now.Add(time.Minute)
	if n := m.Sweep(now); n != 100 || m.Len() != 0 {
		t.Fatalf("swept %d, %d left", n, m.Len())
	}
}

func TestMemoryBoundedKeys(t *testing.T) {
	const maxKeys = 4096
	m := store.NewMemory(store.MemoryOptions{MaxKeys: maxKeys})
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 5, Window: time.Hour}
	res := make([]limiter.Result, 1)
	now := storetest.Base
	for i := range 50 * maxKeys {
		req := []store.Request{{Counter: "flood", Key: fmt.Sprint("client-", i), Limit: l, Cost: 1}}
		if err := m.Take(context.Background(), now, req, res); err != nil || !res[0].Allowed {
			t.Fatal(err, res[0])
		}
	}
	if n := m.Len(); n > maxKeys {
		t.Fatalf("%d keys held, bound %d", n, maxKeys)
	}
	if m.Evictions() == 0 {
		t.Fatal("no evictions counted")
	}
}

// TestMemoryKeepsMaxKeys: MaxKeys is the number of keys kept, whatever
// the shards: no eviction up to 97% of it, and at most MaxKeys held after
// a flood. (max_keys 64 once evicted at 25 keys: 256 shards of one key.)
func TestMemoryKeepsMaxKeys(t *testing.T) {
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 5, Window: time.Hour}
	res := make([]limiter.Result, 1)
	for _, maxKeys := range []int{1, 64, 100, 1000, 4096, 100_000} {
		m := store.NewMemory(store.MemoryOptions{MaxKeys: maxKeys, SweepInterval: time.Hour})
		take := func(i int) {
			req := []store.Request{{Counter: "c", Key: fmt.Sprint("client-", i), Limit: l, Cost: 1}}
			if err := m.Take(context.Background(), storetest.Base, req, res); err != nil || !res[0].Allowed {
				t.Fatal(err, res[0])
			}
		}
		below := maxKeys * 97 / 100
		for i := range below {
			take(i)
		}
		if ev := m.Evictions(); ev != 0 || m.Len() != below {
			t.Errorf("max_keys %d: %d keys held and %d evicted after %d keys", maxKeys, m.Len(), ev, below)
		}
		for i := below; i < 3*maxKeys; i++ {
			take(i)
		}
		if n := m.Len(); n != maxKeys {
			t.Errorf("max_keys %d: %d keys held after %d keys", maxKeys, n, 3*maxKeys)
		}
	}
}

// A full store prefers dropping expired keys to evicting live ones.
func TestMemoryFullDropsExpiredFirst(t *testing.T) {
	m := store.NewMemory(store.MemoryOptions{MaxKeys: 256 * 4, SweepInterval: time.Hour})
	short := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 5, Window: time.Second}
	res := make([]limiter.Result, 1)
	now := storetest.Base
	for i := range 20000 {
		req := []store.Request{{Counter: "s", Key: fmt.Sprint(i), Limit: short, Cost: 1}}
		if err := m.Take(context.Background(), now.Add(time.Duration(i)*time.Second), req, res); err != nil {
			t.Fatal(err)
		}
	}
	if ev := m.Evictions(); ev > 200 {
		t.Fatalf("%d live keys evicted while expired ones could go", ev)
	}
}

// TestMemoryFloodKeepsExhaustedClients: a flood of made-up keys past
// MaxKeys evicted the counters of exhausted clients as readily as its own
// one-request counters, and the clients passed again. Eviction takes what
// carries the least first: after 1,000,000 made-up keys into a store of
// 100,000, every exhausted client is still denied, and memory stays bounded.
func TestMemoryFloodKeepsExhaustedClients(t *testing.T) {
	maxKeys, flood := 100_000, 1_000_000
	if raceEnabled {
		maxKeys, flood = 20_000, 200_000
	}
	m := store.NewMemory(store.MemoryOptions{MaxKeys: maxKeys, SweepInterval: time.Hour})
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 10, Window: time.Hour}
	res := make([]limiter.Result, 1)
	take := func(key string, at time.Time) bool {
		req := []store.Request{{Counter: "api", Key: key, Limit: l, Cost: 1}}
		if err := m.Take(context.Background(), at, req, res); err != nil {
			t.Fatal(err)
		}
		return res[0].Allowed
	}
	now := storetest.Base.Add(time.Minute)
	const clients = 200
	for c := range clients {
		for range 10 {
			take(fmt.Sprint("client-", c), now)
		}
		if take(fmt.Sprint("client-", c), now) {
			t.Fatal("an exhausted client passed before the flood")
		}
	}
	// Others stop at 9 of 10: nearly exhausted, not denied.
	for c := range clients {
		for range 9 {
			take(fmt.Sprint("near-", c), now)
		}
	}
	for i := range flood {
		take(fmt.Sprint("made-up-", i), now)
	}
	passed := 0
	for c := range clients {
		if take(fmt.Sprint("client-", c), now) {
			passed++
		}
	}
	if passed != 0 {
		t.Fatalf("%d of %d exhausted clients passed again after a flood of %d made-up keys (evictions %d)", passed, clients, flood, m.Evictions())
	}
	for c := range clients {
		if !take(fmt.Sprint("near-", c), now) || take(fmt.Sprint("near-", c), now) {
			t.Fatalf("a client at 9 of 10 lost its count in the flood")
		}
	}
	if n := m.Len(); n > maxKeys+256 {
		t.Fatalf("%d keys held, bound %d", n, maxKeys)
	}
	t.Logf("%d made-up keys into %d: every exhausted client still denied; %d evictions, %d keys held", flood, maxKeys, m.Evictions(), m.Len())

	// A flood on a limit of 1 (a password reset per e-mail): each made-up
	// key is exhausted by its one request. It must neither evict the
	// denied clients nor keep new clients from being counted.
	once := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 1, Window: 24 * time.Hour}
	for i := range flood {
		req := []store.Request{{Counter: "reset", Key: fmt.Sprint("e-mail-", i), Limit: once, Cost: 1}}
		if err := m.Take(context.Background(), now, req, res); err != nil {
			t.Fatal(err)
		}
	}
	for c := range clients {
		if take(fmt.Sprint("client-", c), now) {
			t.Fatalf("an exhausted client passed again after a flood on a limit of 1")
		}
	}
	for range 10 {
		if !take("newcomer", now) {
			t.Fatal("a new client was denied before its limit")
		}
	}
	if take("newcomer", now) {
		t.Fatal("a new client is not counted after a flood on a limit of 1")
	}
}

// TestMemoryChecksStoreNothing: checks that pass count nothing and store
// nothing (a client whose responses are never charged costs no memory);
// a check that denies keeps its mark.
func TestMemoryChecksStoreNothing(t *testing.T) {
	m := store.NewMemory(store.MemoryOptions{})
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 2, Window: time.Minute}
	res := make([]limiter.Result, 1)
	now := storetest.Base
	for i := range 1000 {
		req := []store.Request{{Counter: "c", Key: fmt.Sprint(i), Limit: l, Cost: 1, Mode: store.ModeCheck}}
		if err := m.Take(context.Background(), now, req, res); err != nil || !res[0].Allowed || res[0].Remaining != 2 {
			t.Fatal(err, res[0])
		}
	}
	if m.Len() != 0 {
		t.Fatalf("checks stored %d keys", m.Len())
	}
	charge := []store.Request{{Counter: "c", Key: "x", Limit: l, Cost: 5, Mode: store.ModeCharge}}
	if err := m.Take(context.Background(), now, charge, res); err != nil || !res[0].Allowed || res[0].Remaining != 0 {
		t.Fatal(err, res[0])
	}
	check := []store.Request{{Counter: "c", Key: "x", Limit: l, Cost: 1, Mode: store.ModeCheck}}
	for i, first := range []bool{true, false} {
		if err := m.Take(context.Background(), now, check, res); err != nil || res[0].Allowed || res[0].FirstDenial != first {
			t.Fatalf("check %d after an overdraw: %v %+v", i, err, res[0])
		}
	}
}

func TestMemoryChargesExact(t *testing.T) {
	m := openMemory(t, func() time.Time { return storetest.Base })
	storetest.ExactCharges(t, []store.Store{m}, 4*runtime.GOMAXPROCS(0), 200)
	// More charges than the quota holds: overdrawn.
	storetest.ExactCharges(t, []store.Store{m}, 8, 800)
}
