package cache

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMemoryLRUEviction(t *testing.T) {
	ctx := context.Background()
	probe := entryFor(req("GET", "http://a/"), strings.Repeat("x", 1000), time.Hour, 0, t0, "bucket")
	size := probe.Size()
	// Room for exactly four entries, in one part (too small to split).
	m := NewMemory(MemoryOptions{MaxMemory: 4 * size, MaxEntry: size})
	if len(m.parts) != 1 {
		t.Fatalf("%d parts", len(m.parts))
	}
	keys := make([]Key, 6)
	put := func(i int) {
		r := req("GET", fmt.Sprintf("http://a/%d", i))
		keys[i] = KeyOf(r, "z", nil)
		if err := m.Set(ctx, keys[i], entryFor(r, strings.Repeat("x", 1000), time.Hour, 0, t0, "bucket"), t0); err != nil {
			t.Fatal(err)
		}
	}
	// has looks without using: a Get would change the order.
	has := func(i int) bool {
		p := m.part(keys[i].ID)
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.m[keys[i].ID] != nil
	}
	for i := range 4 {
		put(i)
	}
	// Using 0 makes 1 the least recently used.
	if e, _ := m.Get(ctx, keys[0], t0); e == nil {
		t.Fatal("0 missing")
	}
	put(4)
	if has(1) || !has(0) || !has(2) || !has(3) || !has(4) {
		t.Fatal("evicted the wrong entry")
	}
	put(5) // evicts 2, the least recently used now
	if has(2) || !has(5) {
		t.Fatal("evicted the wrong entry")
	}
	st := m.Stats()
	if st.Entries != 4 || st.Used > m.MaxMemory() || st.Evictions != 2 || st.Indexes != 1 {
		t.Fatalf("stats %+v, max %d", st, m.MaxMemory())
	}
	// The bucket index followed the evictions.
	m.idxMu.Lock()
	n := len(m.index[indexKey{'b', 0, bucketHash("bucket")}])
	m.idxMu.Unlock()
	if n != 4 {
		t.Fatalf("bucket index holds %d entries", n)
	}
	if removed, _ := m.Purge(ctx, Purge{Buckets: []string{"bucket"}}); removed != 4 {
		t.Fatalf("purged %d", removed)
	}
	if st := m.Stats(); st.Entries != 0 || st.Used != 0 || st.Indexes != 0 {
		t.Fatalf("after purge: %+v", st)
	}
}

func TestMemoryTooLargeAndExpired(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(MemoryOptions{MaxMemory: 10_000, MaxEntry: 1000})
	r := req("GET", "http://a/big")
	k := KeyOf(r, "z", nil)
	if err := m.Set(ctx, k, entryFor(r, strings.Repeat("x", 20_000), time.Hour, 0, t0), t0); err != ErrTooLarge {
		t.Fatalf("too large: %v", err)
	}
	if err := m.Set(ctx, k, entryFor(r, "x", time.Minute, time.Minute, t0), t0); err != nil {
		t.Fatal(err)
	}
	if e, _ := m.Get(ctx, k, t0.Add(119*time.Second)); e == nil {
		t.Fatal("stale entry dropped early")
	}
	if e, _ := m.Get(ctx, k, t0.Add(2*time.Minute)); e != nil {
		t.Fatal("expired entry served")
	}
	if st := m.Stats(); st.Entries != 0 || st.Used != 0 {
		t.Fatalf("expired entry kept: %+v", st)
	}
	// An entry already past its expiry is not stored at all.
	if err := m.Set(ctx, k, entryFor(r, "x", time.Minute, 0, t0), t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if m.Stats().Entries != 0 {
		t.Fatal("expired entry stored")
	}
}

func TestMemoryParts(t *testing.T) {
	for _, c := range []struct {
		mem, entry int64
		parts      int
	}{
		{DefaultMaxMemory, DefaultMaxSize, 16},
		{1 << 20, 256_000, 1},
		{8 << 20, 256_000, 8},
		{0, 0, 16},
	} {
		m := NewMemory(MemoryOptions{MaxMemory: c.mem, MaxEntry: c.entry})
		if len(m.parts) != c.parts {
			t.Errorf("max %d entry %d: %d parts, want %d", c.mem, c.entry, len(m.parts), c.parts)
		}
	}
}

// TestMemoryConcurrent runs readers, writers and purges at once; with
// -race it checks the locking, and the bound holds throughout.
func TestMemoryConcurrent(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(MemoryOptions{MaxMemory: 200_000, MaxEntry: 5000})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				r := req("GET", fmt.Sprintf("http://a/%d", (g*31+i)%97), "Authorization", fmt.Sprint("u", i%3))
				k := KeyOf(r, "z", nil)
				switch i % 5 {
				case 0, 1:
					_ = m.Set(ctx, k, entryFor(r, strings.Repeat("y", i%2000), time.Hour, 0, t0, fmt.Sprint("b", i%7)), t0)
				case 4:
					_, _ = m.Purge(ctx, Purge{Buckets: []string{fmt.Sprint("b", i%7)}, Auths: []Hash{AuthHash(fmt.Sprint("u", i%3))}})
				default:
					if e, _ := m.Get(ctx, k, t0); e != nil && e.Status != 200 {
						t.Error("bad entry")
					}
				}
			}
		}()
	}
	wg.Wait()
	if st := m.Stats(); st.Used > m.MaxMemory() || st.Used < 0 {
		t.Fatalf("used %d of %d", st.Used, m.MaxMemory())
	}
	_, _ = m.Purge(ctx, Purge{Buckets: []string{"b0", "b1", "b2", "b3", "b4", "b5", "b6"}, Auths: []Hash{AuthHash("u0"), AuthHash("u1"), AuthHash("u2")}})
	if st := m.Stats(); st.Entries != 0 || st.Indexes != 0 || st.Used != 0 {
		t.Fatalf("after purging everything: %+v", st)
	}
}

func BenchmarkMemoryGet(b *testing.B) {
	ctx := context.Background()
	m := NewMemory(MemoryOptions{})
	r := req("GET", "http://a/x")
	k := KeyOf(r, "z", nil)
	_ = m.Set(ctx, k, entryFor(r, "hello", time.Hour, 0, t0), t0)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if e, _ := m.Get(ctx, k, t0); e == nil {
				b.Fatal("miss")
			}
		}
	})
}
