package storage

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// MemoryOptions configures a Memory store. The zero value is usable.
type MemoryOptions struct {
	// MaxKeys bounds the number of keys kept (default DefaultMaxKeys).
	// When a new key arrives and the store holds MaxKeys, expired keys of
	// a sample of the new key's shard are dropped; if none has expired,
	// the key of the sample that carries the least evidence is forgotten: the one that counted
	// the fewest units (limiter.State.Weight; a denying key the most), then
	// the one that expires soonest. Memory stays bounded, and a flood of
	// made-up keys cannot make the store forget the clients it is denying.
	// Evictions are counted.
	MaxKeys int
	// SweepInterval is how often expired keys are removed in the
	// background (default DefaultSweepInterval).
	SweepInterval time.Duration
	// Now is the clock of the background sweeper (default time.Now). It
	// must be the clock whose time the callers pass to Take: a sweeper on
	// another clock would drop the counters that clock calls expired.
	Now func() time.Time
}

// Defaults for MemoryOptions.
const (
	DefaultMaxKeys       = 1 << 20
	DefaultSweepInterval = 10 * time.Second
)

// A store has up to maxShardBits^2 shards, a power of two; the top bits of
// a key's hash pick its shard, so contention on one lock is about 1/256 of
// the traffic. A store of few keys has fewer shards, each with a share of
// at least minShardKeys: MaxKeys is kept by a count of every key, and the
// key that makes room is taken from the shard of the key that needs it,
// which must have some to give.
const (
	maxShardBits   = 8
	minShardKeys   = 64
	evictionSample = 16
)

// Memory is an in-process Store: a sharded hash map from (counter, key)
// hashes to limiter states, each with an expiry.
type Memory struct {
	seed     maphash.Seed
	shift    uint8 // 64 - the shard bits: a hash's top bits pick its shard
	maxKeys  int64
	perShard int // a shard's bound: its share of MaxKeys, and a margin
	keys     atomic.Int64
	shards   []shard
	now      func() time.Time

	evictions atomic.Uint64
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

type shard struct {
	mu sync.Mutex
	m  map[uint64]limiter.State
	_  [40]byte // keep neighbouring locks on separate cache lines
}

// NewMemory returns a Memory store and starts its sweeper; Close stops it.
func NewMemory(o MemoryOptions) *Memory {
	if o.MaxKeys <= 0 {
		o.MaxKeys = DefaultMaxKeys
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = DefaultSweepInterval
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	bits := 0
	for bits < maxShardBits && o.MaxKeys>>(bits+1) >= minShardKeys {
		bits++
	}
	share := (o.MaxKeys + 1<<bits - 1) >> bits
	m := &Memory{
		seed:    maphash.MakeSeed(),
		shift:   uint8(64 - bits),
		maxKeys: int64(o.MaxKeys),
		// Shards fill unevenly: one may hold a quarter more than its share
		// before the whole store is full (at 64 keys a shard, 3 standard
		// deviations), so that the store evicts when it holds MaxKeys.
		perShard: share + share/4 + 8,
		shards:   make([]shard, 1<<bits),
		now:      o.Now,
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	for i := range m.shards {
		m.shards[i].m = make(map[uint64]limiter.State)
	}
	go m.sweepLoop(o.SweepInterval)
	return m
}

// hash identifies (counter, key). The seed is random per store, so nobody
// can choose keys that collide; with 64 bits, a million keys collide by
// chance about once in 3*10^7 stores.
func (m *Memory) hash(r *Request) uint64 { return hashRequest(m.seed, r) }

// hashRequest is the seeded hash of (counter, key) of the memory store and
// of the Redis store's local denials.
func hashRequest(seed maphash.Seed, r *Request) uint64 {
	var h maphash.Hash
	h.SetSeed(seed)
	h.WriteString(r.Counter)
	h.WriteByte(0)
	h.WriteString(r.Key)
	return h.Sum64()
}

func (m *Memory) shardOf(h uint64) *shard {
	return &m.shards[h>>m.shift]
}

// maxBatch is the number of limits per request handled without allocating.
const maxBatch = 16

// Take implements Store.
func (m *Memory) Take(_ context.Context, now time.Time, reqs []Request, results []limiter.Result) error {
	if len(results) < len(reqs) {
		return ErrTooFewResults
	}
	t := now.UnixMicro()
	switch len(reqs) {
	case 0:
		return nil
	case 1:
		m.takeOne(&reqs[0], &results[0], t)
		return nil
	}
	var (
		hbuf  [maxBatch]uint64
		sbuf  [maxBatch]limiter.State
		lbuf  [maxBatch]uint8
		hs    = hbuf[:0]
		next  = sbuf[:0]
		locks = lbuf[:0]
	)
	if len(reqs) > maxBatch {
		hs = make([]uint64, 0, len(reqs))
		next = make([]limiter.State, 0, len(reqs))
		locks = make([]uint8, 0, len(reqs))
	}
	for i := range reqs {
		h := m.hash(&reqs[i])
		hs = append(hs, h)
		locks = insertSorted(locks, uint8(h>>m.shift))
	}
	// Lock every shard involved, in index order so that two requests never
	// wait on each other.
	for _, s := range locks {
		m.shards[s].mu.Lock()
	}
	for i := range reqs {
		r := &reqs[i]
		st, _ := m.get(hs[i], t)
		// The same counter and key twice in one request: the later sees
		// the earlier's result.
		for j := i - 1; j >= 0; j-- {
			if hs[j] == hs[i] {
				st = next[j]
				break
			}
		}
		next = append(next, st)
		r.Limit.Take(&next[i], &results[i], t, r.Cost)
	}
	pass := allOrNothing(reqs, results)
	for i := range reqs {
		// A denial keeps its mark (for FirstDenial), even when nothing is
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

// Refund implements Store.
func (m *Memory) Refund(_ context.Context, now time.Time, reqs []Request) error {
	t := now.UnixMicro()
	for i := range reqs {
		r := &reqs[i]
		h := m.hash(r)
		sh := m.shardOf(h)
		sh.mu.Lock()
		if st, ok := m.get(h, t); ok {
			r.Limit.Refund(&st, t, r.Cost)
			sh.m[h] = st
		}
		sh.mu.Unlock()
	}
	return nil
}

func (m *Memory) takeOne(r *Request, res *limiter.Result, t int64) {
	h := m.hash(r)
	sh := m.shardOf(h)
	sh.mu.Lock()
	st, _ := m.get(h, t)
	r.Limit.Take(&st, res, t, r.Cost)
	m.put(h, &st, t)
	sh.mu.Unlock()
}

// get returns the live state of h; its shard must be locked.
func (m *Memory) get(h uint64, t int64) (limiter.State, bool) {
	st, ok := m.shardOf(h).m[h]
	if !ok || st.Expires <= t {
		return limiter.State{}, false
	}
	return st, true
}

// put stores a state; its shard must be locked. A new key in a full store
// (or a full shard) takes the place of the shard's key that carries the
// least (see makeRoom).
func (m *Memory) put(h uint64, st *limiter.State, t int64) {
	sh := m.shardOf(h)
	if _, ok := sh.m[h]; !ok {
		if m.keys.Load() >= m.maxKeys || len(sh.m) >= m.perShard {
			m.makeRoom(sh, t)
		}
		m.keys.Add(1)
	}
	sh.m[h] = *st
}

// makeRoom drops the expired keys of a sample of the shard; if none has
// expired, it evicts the key that carries the least evidence (the fewest
// units counted; a denying key the most, limiter.State.Weight), then the
// one that expires soonest: a flood of made-up keys, one request each,
// evicts its own keys, not the clients it is denying. A new key is always
// stored: its count must hold.
func (m *Memory) makeRoom(sh *shard, t int64) {
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
			m.keys.Add(-1)
			freed = true
		} else if !found || e.Weight < worst.Weight || e.Weight == worst.Weight && e.Expires < worst.Expires {
			victim, worst, found = h, e, true
		}
		if seen++; seen >= evictionSample {
			break
		}
	}
	if !freed && found {
		delete(sh.m, victim)
		m.keys.Add(-1)
		m.evictions.Add(1)
	}
}

func insertSorted(s []uint8, v uint8) []uint8 {
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

func (m *Memory) sweepLoop(every time.Duration) {
	defer close(m.done)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-tick.C:
			m.Sweep()
		}
	}
}

// Sweep removes every expired key now. The sweeper calls it periodically.
func (m *Memory) Sweep() (removed int) {
	t := m.now().UnixMicro()
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		n := 0
		for h, e := range sh.m {
			if e.Expires <= t {
				delete(sh.m, h)
				n++
			}
		}
		m.keys.Add(-int64(n))
		sh.mu.Unlock()
		removed += n
	}
	return removed
}

// Len returns the number of keys held, expired or not.
func (m *Memory) Len() int {
	n := 0
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// Evictions returns the number of live keys evicted to respect MaxKeys.
func (m *Memory) Evictions() uint64 { return m.evictions.Load() }

// Close stops the sweeper. The store still answers afterwards.
func (m *Memory) Close() error {
	m.closeOnce.Do(func() {
		close(m.stop)
		<-m.done
	})
	return nil
}

var _ Store = (*Memory)(nil)
