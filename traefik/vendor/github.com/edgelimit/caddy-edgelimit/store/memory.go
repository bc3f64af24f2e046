package store

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
	// the key of the sample that carries the least evidence is forgotten:
	// the one that counted the fewest units (limiter.State.Weight; a
	// denying key the most), then the one that expires soonest. Memory
	// stays bounded, and a flood of made-up keys cannot make the store
	// forget the clients it is denying. Evictions are counted.
	MaxKeys int
	// SweepInterval is how often each shard drops its expired keys
	// (default DefaultSweepInterval). A shard is swept by the first
	// decision that locks it once the interval has passed, by the time
	// that decision is made at: the store has no clock and no goroutine of
	// its own, so the clock that decides is the one that expires (and a
	// Traefik plugin, which is never told it is unloaded, leaves nothing
	// running).
	SweepInterval time.Duration
}

// Defaults for MemoryOptions.
const (
	DefaultMaxKeys       = 1 << 20
	DefaultSweepInterval = 10 * time.Second
)

// A store has up to 2^maxShardBits shards, a power of two; the top bits of
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
	shift    uint // 64 - the shard bits: a hash's top bits pick its shard
	maxKeys  int64
	perShard int   // a shard's bound: twice its share of MaxKeys
	sweep    int64 // microseconds between two sweeps of a shard
	shards   []shard

	// Counted with sync/atomic's functions: Yaegi runs them, and not
	// always the methods of atomic.Int64.
	keys      int64
	evictions int64
}

type shard struct {
	mu        sync.Mutex
	m         map[uint64]limiter.State
	nextSweep int64    // microseconds since the epoch
	_         [32]byte // keep neighbouring locks on separate cache lines
}

// NewMemory returns a Memory store.
func NewMemory(o MemoryOptions) *Memory {
	if o.MaxKeys <= 0 {
		o.MaxKeys = DefaultMaxKeys
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = DefaultSweepInterval
	}
	bits := uint(0)
	for bits < maxShardBits && o.MaxKeys>>(bits+1) >= minShardKeys {
		bits++
	}
	share := (o.MaxKeys + 1<<bits - 1) >> bits
	m := &Memory{
		seed:    maphash.MakeSeed(),
		shift:   64 - bits,
		maxKeys: int64(o.MaxKeys),
		// The count of every key decides when the store is full; a shard
		// is full only at twice its share (at 64 keys a shard, 8 standard
		// deviations above it): shards fill unevenly, and the store must
		// evict when it holds MaxKeys, not when its fullest shard does.
		perShard: 2*share + 16,
		sweep:    o.SweepInterval.Microseconds(),
		shards:   make([]shard, 1<<bits),
	}
	for i := range m.shards {
		m.shards[i].m = make(map[uint64]limiter.State)
	}
	return m
}

// HashRequest is the seeded hash of (counter, key) of the memory store and
// of the local denials. The seed is random per store, so nobody can choose
// keys that collide; with 64 bits, a million keys collide by chance about
// once in 3*10^7 stores.
func HashRequest(seed maphash.Seed, r *Request) uint64 {
	// Two seeded hashes, mixed: under Yaegi, two calls of the standard
	// library where a maphash.Hash takes five.
	return hashPair(maphash.String(seed, r.Counter), maphash.String(seed, r.Key))
}

// hashPair mixes the hashes of a counter and a key.
func hashPair(a, b uint64) uint64 { return (a ^ b>>29 ^ b<<35) * 0x9e3779b97f4a7c15 }

func (m *Memory) shardOf(h uint64) *shard {
	return &m.shards[h>>m.shift]
}

// maxBatch is the number of limits per request handled without allocating.
const maxBatch = 16

// Take implements Store.
func (m *Memory) Take(_ context.Context, now time.Time, reqs []Request, results []limiter.Result) error {
	return takeMemory(m, now, reqs, results)
}

// Take is s.Take, as a function: the memory store's Take is decided by
// functions (takeMemory), which under Yaegi cost a quarter of a method
// call (the Traefik plugin calls it on every request it keeps in memory).
func Take(s Store, ctx context.Context, now time.Time, reqs []Request, results []limiter.Result) error {
	if m, ok := s.(*Memory); ok {
		return takeMemory(m, now, reqs, results)
	}
	return s.Take(ctx, now, reqs, results)
}

// takeMemory is m.Take: one request that takes (the usual case) is
// decided by TakeOne, another one by takeSingle, several by takeAll.
func takeMemory(m *Memory, now time.Time, reqs []Request, results []limiter.Result) error {
	if len(results) < len(reqs) {
		return ErrTooFewResults
	}
	t := now.UnixMicro()
	if len(reqs) != 1 {
		takeAll(m, reqs, results, t)
	} else if r := &reqs[0]; r.Mode == ModeTake && r.Limit.Ban == 0 { // Alone(r)
		TakeOne(m, r, &results[0], t)
	} else {
		takeSingle(m, r, &results[0], t)
	}
	return nil
}

// takeSingle decides at t a request alone that Alone does not accept (a
// check, a charge, a limit with a ban): takeAll's decision, for one (which
// passes, or denies nothing else).
func takeSingle(m *Memory, r *Request, res *limiter.Result, t int64) {
	b := maphash.String(m.seed, r.Key)
	h := (maphash.String(m.seed, r.Counter) ^ b>>29 ^ b<<35) * 0x9e3779b97f4a7c15
	sh := &m.shards[h>>m.shift]
	sh.mu.Lock()
	if t >= sh.nextSweep {
		sweepShard(m, sh, t)
	}
	st, ok := sh.m[h]
	if !ok || st.Expires <= t {
		st = zeroState
	}
	decideMode(r, &st, res, t)
	// A key only checked is never stored (see takeAll).
	if ok {
		sh.m[h] = st
	} else if st.Expires != 0 {
		add(m, sh, h, &st, t)
	}
	sh.mu.Unlock()
}

// Alone tells whether TakeOne may decide request r: one that takes, of a
// limit without a ban.
func Alone(r *Request) bool { return r.Mode == ModeTake && r.Limit.Ban == 0 }

// zeroState is a new key's state (under Yaegi a variable costs TakeOne
// less than a composite literal).
var zeroState limiter.State

// TakeOne decides a request alone at t, one that Alone accepts (the
// usual case), in one function (under Yaegi every call costs for every
// value of its function, run or not). An edge whose requests are one may
// call it instead of Take, a call less.
func TakeOne(m *Memory, r *Request, res *limiter.Result, t int64) {
	// HashRequest, written out (in two statements: Yaegi assigns a tuple
	// with a call in it only in part).
	b := maphash.String(m.seed, r.Key)
	h := (maphash.String(m.seed, r.Counter) ^ b>>29 ^ b<<35) * 0x9e3779b97f4a7c15
	sh := &m.shards[h>>m.shift]
	sh.mu.Lock()
	if t >= sh.nextSweep {
		sweepShard(m, sh, t)
	}
	st, ok := sh.m[h]
	if ok && st.Expires <= t {
		st = zeroState
	}
	// limiter.Decide's usual case, written out (a call less): a window
	// aligned to the clock (fixed_window, no calendar) that passes. The
	// rest, a denial too, is Decide's (what this did to st, it would do
	// the same).
	l := &r.Limit
	var end int64
	pass := false
	if l.Algorithm == limiter.FixedWindow && l.Calendar == nil {
		w := int64(l.Window) / 1e3
		end = t - (t-int64(l.Offset)/1e3)%w + w
		if end > t+w {
			end -= w // before the epoch: % rounds towards zero
		}
		if st.Start != end-w {
			st = zeroState
			st.Start = end - w
		}
		pass = st.Count+r.Cost <= l.Quota
	}
	if pass {
		st.Expires = end
		st.Count += r.Cost
		st.Denied = false
		*res = limiter.Result{Allowed: true, Limit: l.Quota, Remaining: l.Quota - st.Count, Window: l.Window, Reset: time.Duration((end - t) * 1e3), ResetAt: end}
		st.Weight = 254
		if st.Count < 254 {
			st.Weight = uint8(st.Count)
		}
	} else {
		limiter.Decide(l, &st, res, t, r.Cost)
	}
	if ok {
		sh.m[h] = st
	} else {
		add(m, sh, h, &st, t)
	}
	sh.mu.Unlock()
}

// takeAll decides requests at t, all or nothing (Take). HashRequest, a
// sorted insert, get, put and AllOrNothing's usual case are written out:
// under Yaegi a call costs more than what they do.
func takeAll(m *Memory, reqs []Request, results []limiter.Result, t int64) {
	var (
		hbuf [maxBatch]uint64
		sbuf [maxBatch]limiter.State
		lbuf [maxBatch]uint16
	)
	hs := hbuf[:0]
	next := sbuf[:0]
	locks := lbuf[:0]
	if len(reqs) > maxBatch {
		hs = make([]uint64, 0, len(reqs))
		next = make([]limiter.State, 0, len(reqs))
		locks = make([]uint16, 0, len(reqs))
	}
	for i := range reqs {
		a := maphash.String(m.seed, reqs[i].Counter)
		b := maphash.String(m.seed, reqs[i].Key)
		h := (a ^ b>>29 ^ b<<35) * 0x9e3779b97f4a7c15
		hs = append(hs, h)
		// The shards to lock, sorted, each once.
		v := uint16(h >> m.shift)
		k := len(locks)
		for k > 0 && locks[k-1] > v {
			k--
		}
		if k == 0 || locks[k-1] != v {
			locks = append(locks, 0)
			copy(locks[k+1:], locks[k:])
			locks[k] = v
		}
	}
	// Lock every shard involved, in index order so that two requests never
	// wait on each other.
	for _, s := range locks {
		sh := &m.shards[s]
		sh.mu.Lock()
		if t >= sh.nextSweep {
			sweepShard(m, sh, t)
		}
	}
	pass := true
	for i := range reqs {
		r := &reqs[i]
		h := hs[i]
		// A key not stored reads as a state that has expired.
		next = append(next, m.shards[h>>m.shift].m[h])
		st := &next[i]
		if st.Expires <= t {
			*st = zeroState
		}
		// The same counter and key twice in one request: the later sees
		// the earlier's result.
		for j := i - 1; j >= 0; j-- {
			if hs[j] == h {
				*st = next[j]
				break
			}
		}
		// Decide's fixed window aligned to the clock is Decide's,
		// the others DecideAny's: Decide's values less.
		l := &r.Limit
		if r.Mode != ModeTake || l.Ban != 0 {
			decideMode(r, st, &results[i], t)
		} else if l.Algorithm == limiter.FixedWindow && l.Calendar == nil {
			limiter.Decide(l, st, &results[i], t, r.Cost)
		} else {
			limiter.DecideAny(l, st, &results[i], t, r.Cost)
		}
		pass = pass && (results[i].Allowed || r.DryRun)
	}
	if !pass {
		AllOrNothing(reqs, results)
	}
	for i := range reqs {
		// A denial keeps its mark (for FirstDenial), even when nothing is
		// counted. A state that never expires is a key never seen that a
		// check left as it was: a key only checked is never stored.
		if (pass || !results[i].Allowed) && next[i].Expires != 0 {
			h := hs[i]
			sh := &m.shards[h>>m.shift]
			if _, ok := sh.m[h]; ok {
				sh.m[h] = next[i]
			} else {
				add(m, sh, h, &next[i], t)
			}
		}
	}
	for _, s := range locks {
		m.shards[s].mu.Unlock()
	}
}

// decideMode decides a check or a charge on *st, or any request of a
// limit with a ban. Every decision leaves a state that expires (Expires is
// set), but a check that passes, which leaves the state as it was: a fresh
// one for a key never seen.
func decideMode(r *Request, st *limiter.State, res *limiter.Result, t int64) {
	if r.Limit.Ban != 0 {
		limiter.DecideBan(&r.Limit, st, res, t, r.Cost, uint8(r.Mode))
		return
	}
	if r.Mode == ModeCharge {
		limiter.Charge(&r.Limit, st, res, t, r.Cost)
		return
	}
	limiter.Check(&r.Limit, st, res, t, r.Cost)
}

// Refund implements Store.
func (m *Memory) Refund(_ context.Context, now time.Time, reqs []Request) error {
	t := now.UnixMicro()
	for i := range reqs {
		r := &reqs[i]
		h := HashRequest(m.seed, r)
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

// Close implements Store; a Memory holds nothing to release.
func (m *Memory) Close() error { return nil }

// get returns the live state of h; its shard must be locked.
func (m *Memory) get(h uint64, t int64) (limiter.State, bool) {
	st, ok := m.shardOf(h).m[h]
	if !ok || st.Expires <= t {
		return limiter.State{}, false
	}
	return st, true
}

// add stores the state of a new key in its locked shard. In a full store
// (or a full shard) it takes the place of the shard's key that carries the
// least (see makeRoom).
func add(m *Memory, sh *shard, h uint64, st *limiter.State, t int64) {
	if atomic.LoadInt64(&m.keys) >= m.maxKeys || len(sh.m) >= m.perShard {
		m.makeRoom(sh, t)
	}
	atomic.AddInt64(&m.keys, 1)
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
		freed  int64
	)
	for h, e := range sh.m {
		if e.Expires <= t {
			delete(sh.m, h)
			freed++
		} else if !found || e.Weight < worst.Weight || e.Weight == worst.Weight && e.Expires < worst.Expires {
			victim, worst, found = h, e, true
		}
		if seen++; seen >= evictionSample {
			break
		}
	}
	if freed == 0 && found {
		delete(sh.m, victim)
		freed = 1
		atomic.AddInt64(&m.evictions, 1)
	}
	atomic.AddInt64(&m.keys, -freed)
}

// sweepShard drops a locked shard's expired keys, and sets its next sweep.
func sweepShard(m *Memory, sh *shard, t int64) int {
	sh.nextSweep = t + m.sweep
	n := 0
	for h, e := range sh.m {
		if e.Expires <= t {
			delete(sh.m, h)
			n++
		}
	}
	atomic.AddInt64(&m.keys, -int64(n))
	return n
}

// Sweep removes every expired key at now, in every shard.
func (m *Memory) Sweep(now time.Time) (removed int) {
	t := now.UnixMicro()
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		removed += sweepShard(m, sh, t)
		sh.mu.Unlock()
	}
	return removed
}

// Len returns the number of keys held, expired or not.
func (m *Memory) Len() int { return int(atomic.LoadInt64(&m.keys)) }

// Evictions returns the number of live keys evicted to respect MaxKeys.
func (m *Memory) Evictions() uint64 { return uint64(atomic.LoadInt64(&m.evictions)) }

var _ Store = (*Memory)(nil)
