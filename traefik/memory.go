package edgelimit

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// memoryStore is the Caddy module's memory store (storage/memory.go there)
// without its sweeper goroutine, which nothing could stop: a Traefik plugin
// is never told it is unloaded. Each shard is swept of expired keys by the
// requests that lock it, at most once per sweepInterval of their clock, so
// the store needs no clock of its own and memory stays bounded by maxKeys.
type memoryStore struct {
	seed      maphash.Seed
	perShard  int
	shards    []memoryShard
	evictions uint64 // atomic
}

type memoryShard struct {
	mu        sync.Mutex
	m         map[uint64]limiter.State
	nextSweep int64 // microseconds since the epoch
}

const (
	memoryShardBits  = 8
	memoryShards     = 1 << memoryShardBits
	evictionSample   = 16
	defaultMaxKeys   = 1 << 20
	sweepInterval    = 10 * time.Second
	sweepIntervalUsc = int64(sweepInterval / time.Microsecond)
)

func newMemoryStore(maxKeys int) *memoryStore {
	if maxKeys <= 0 {
		maxKeys = defaultMaxKeys
	}
	per := (maxKeys + memoryShards - 1) / memoryShards
	if per < 1 {
		per = 1
	}
	m := &memoryStore{seed: maphash.MakeSeed(), perShard: per, shards: make([]memoryShard, memoryShards)}
	for i := 0; i < memoryShards; i++ {
		m.shards[i].m = make(map[uint64]limiter.State)
	}
	return m
}

// hash identifies (counter, key); the seed is random per store, so nobody
// can choose keys that collide.
func (m *memoryStore) hash(r *request) uint64 {
	var h maphash.Hash
	h.SetSeed(m.seed)
	h.WriteString(r.Counter)
	h.WriteByte(0)
	h.WriteString(r.Key)
	return h.Sum64()
}

func shardIndex(h uint64) int { return int(h >> (64 - memoryShardBits)) }

// Take implements store.
func (m *memoryStore) Take(_ context.Context, now time.Time, reqs []request, results []limiter.Result) error {
	t := now.UnixMicro()
	n := len(reqs)
	if n == 0 {
		return nil
	}
	if n == 1 {
		// The usual case, in fewer calls: under Yaegi each costs about a
		// microsecond.
		r := &reqs[0]
		h := m.hash(r)
		sh := &m.shards[h>>(64-memoryShardBits)]
		sh.mu.Lock()
		if t >= sh.nextSweep {
			m.maybeSweep(sh, t)
		}
		st, ok := sh.m[h]
		if !ok || st.Expires <= t {
			st = limiter.State{}
		}
		r.Limit.Take(&st, &results[0], t, r.Cost)
		if _, ok := sh.m[h]; ok || len(sh.m) < m.perShard {
			sh.m[h] = st
		} else {
			m.put(h, &st, t)
		}
		sh.mu.Unlock()
		return nil
	}
	hs := make([]uint64, n)
	var locks []int
	for i := range reqs {
		hs[i] = m.hash(&reqs[i])
		locks = insertSorted(locks, shardIndex(hs[i]))
	}
	// Lock every shard involved, in index order so that two requests never
	// wait on each other.
	for _, s := range locks {
		m.shards[s].mu.Lock()
		m.maybeSweep(&m.shards[s], t)
	}
	next := make([]limiter.State, n)
	for i := range reqs {
		st, _ := m.get(hs[i], t)
		// The same counter and key twice in one request: the later sees
		// the earlier's result.
		for j := i - 1; j >= 0; j-- {
			if hs[j] == hs[i] {
				st = next[j]
				break
			}
		}
		next[i] = st
		reqs[i].Limit.Take(&next[i], &results[i], t, reqs[i].Cost)
	}
	pass := allOrNothing(reqs, results[:n])
	for i := range reqs {
		// A denial keeps its mark (for FirstDenial) even when nothing is
		// counted.
		if pass || !results[i].Allowed {
			m.put(hs[i], &next[i], t)
		}
	}
	for _, s := range locks {
		m.shards[s].mu.Unlock()
	}
	return nil
}

// Refund implements store.
func (m *memoryStore) Refund(_ context.Context, now time.Time, reqs []request) error {
	t := now.UnixMicro()
	for i := range reqs {
		r := &reqs[i]
		h := m.hash(r)
		sh := &m.shards[shardIndex(h)]
		sh.mu.Lock()
		if st, ok := m.get(h, t); ok {
			r.Limit.Refund(&st, t, r.Cost)
			sh.m[h] = st
		}
		sh.mu.Unlock()
	}
	return nil
}

// get returns the live state of h; its shard must be locked.
func (m *memoryStore) get(h uint64, t int64) (limiter.State, bool) {
	st, ok := m.shards[shardIndex(h)].m[h]
	if !ok || st.Expires <= t {
		return limiter.State{}, false
	}
	return st, true
}

// put stores a state; its shard must be locked.
func (m *memoryStore) put(h uint64, st *limiter.State, t int64) {
	sh := &m.shards[shardIndex(h)]
	if len(sh.m) >= m.perShard {
		if _, ok := sh.m[h]; !ok {
			m.makeRoom(sh, t)
		}
	}
	sh.m[h] = *st
}

// makeRoom drops the expired keys of a sample of the shard; if none has
// expired, it evicts the key that carries the least evidence (the fewest
// units counted; a denying key the most, limiter.State.Weight), then the
// one that expires soonest, as the Caddy module's memory store: a flood of
// made-up keys, one request each, evicts its own keys, not the clients it
// is denying.
func (m *memoryStore) makeRoom(sh *memoryShard, t int64) {
	var (
		victim uint64
		worst  limiter.State
		found  bool
		seen   int
		freed  bool
	)
	for h, e := range sh.m {
		if e.Expires <= t {
			delete(sh.m, h)
			freed = true
		} else if !found || e.Weight < worst.Weight || e.Weight == worst.Weight && e.Expires < worst.Expires {
			victim, worst, found = h, e, true
		}
		seen++
		if seen >= evictionSample {
			break
		}
	}
	if !freed && found {
		delete(sh.m, victim)
		atomic.AddUint64(&m.evictions, 1)
	}
}

// maybeSweep removes a locked shard's expired keys when its sweep is due.
func (m *memoryStore) maybeSweep(sh *memoryShard, t int64) {
	if t < sh.nextSweep {
		return
	}
	sh.nextSweep = t + sweepIntervalUsc
	for h, e := range sh.m {
		if e.Expires <= t {
			delete(sh.m, h)
		}
	}
}

// len returns the number of keys held, expired or not.
func (m *memoryStore) len() int {
	n := 0
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

func insertSorted(s []int, v int) []int {
	i := len(s)
	for i > 0 && s[i-1] >= v {
		if s[i-1] == v {
			return s
		}
		i--
	}
	s = append(s, 0)
	copy(s[i+1:], s[i:])
	s[i] = v
	return s
}
