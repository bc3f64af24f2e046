package store

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// Denials remembers, on this instance, the keys Redis denied and until
// when, so that a client over its limit costs no round trip until its
// Retry-After has passed: a flood from one client is answered here.
//
// It errs on the side of denying: a denial is remembered only for the same
// numbers and at least the same cost (a cheaper request may fit sooner), a
// refund on this instance forgets the keys it gives back to, and what
// could let a key pass sooner elsewhere (a refund on another instance)
// leaves this instance denying it until the Retry-After it was told, at
// most one window, never admitting more than Redis would. An admin reset
// or credit on any instance publishes an invalidation that drops every
// local denial of every instance (ClearAll), and a store uses its denials
// only while its subscription to those is confirmed.
type Denials struct {
	// gen counts the invalidations: a decision records its denials only
	// if none came since it asked Redis. Starts at 1 (0 means "do not
	// record").
	gen    uint64 // atomic
	seed   maphash.Seed
	shards []denialShard
	max    int // per shard
}

const (
	denialShards = 64
	// DefaultLocalDenials bounds the keys remembered (about 200 bytes
	// each).
	DefaultLocalDenials = 1 << 16
)

type denialShard struct {
	mu sync.Mutex
	m  map[uint64]denial
}

// denial is what Redis said of one (counter, key) in a decision that it
// denied: until is when the key may pass again (0 for a key that did not
// deny: its result is kept to report the decision's other limits).
type denial struct {
	until int64 // unix microseconds, the caller's clock
	at    int64 // when Redis decided, the caller's clock
	limit limiter.Limit
	cost  int64
	res   limiter.Result
}

// NewDenials returns an empty memory of denials of at most max keys
// (DefaultLocalDenials when max is 0).
func NewDenials(max int) *Denials {
	if max <= 0 {
		max = DefaultLocalDenials
	}
	d := &Denials{seed: maphash.MakeSeed(), max: max/denialShards + 1, gen: 1, shards: make([]denialShard, denialShards)}
	for i := range d.shards {
		d.shards[i].m = make(map[uint64]denial)
	}
	return d
}

func (d *Denials) shard(h uint64) *denialShard { return &d.shards[h%denialShards] }

// Check decides reqs here when one of them is remembered as denying, with
// the same numbers and no smaller cost, until after now: it fills results
// as Redis would have (nothing counted; the denial's Retry-After and reset
// counted down; the other limits as last reported) and reports true.
func (d *Denials) Check(now time.Time, reqs []Request, results []limiter.Result) bool {
	return checkDenials(d, now, reqs, results)
}

// checkDenials is d.Check as a function, which Remote.Take calls (under
// Yaegi a method call costs about four function calls).
func checkDenials(d *Denials, now time.Time, reqs []Request, results []limiter.Result) bool {
	t := now.UnixMicro()
	if len(reqs) > maxBatch {
		return false
	}
	// Each entry is read once: the decision and the results come from the
	// same reads, so that an entry forgotten in between (a refund, an
	// invalidation) cannot turn a denial into an uncounted "allowed".
	var ents [maxBatch]denial
	var oks [maxBatch]bool
	denied := false
	for i := range reqs {
		h := HashRequest(d.seed, &reqs[i])
		sh := &d.shards[h%denialShards] // d.shard(h), a method call less
		sh.mu.Lock()
		ents[i], oks[i] = sh.m[h]
		sh.mu.Unlock()
		e := &ents[i]
		// A charge is never denied: the units were spent.
		if oks[i] && !reqs[i].DryRun && reqs[i].Mode != ModeCharge && e.until > t && sameLimit(&e.limit, &reqs[i].Limit) && reqs[i].Cost >= e.cost {
			denied = true
		}
	}
	if !denied {
		return false
	}
	deniedHere(t, reqs, results, ents[:], oks[:])
	return true
}

// deniedHere fills the results of a decision that Check denies, from the
// entries it read (ents, and oks for those found): in a function of its
// own, as under Yaegi a call costs for every value of its function, run
// or not, and a denial here is the rarer case.
func deniedHere(t int64, reqs []Request, results []limiter.Result, ents []denial, oks []bool) {
	for i := range reqs {
		e, r := &ents[i], &results[i]
		if !oks[i] || !sameLimit(&e.limit, &reqs[i].Limit) {
			// Not known here: report the limit whole, uncounted.
			*r = limiter.Result{Allowed: true, Limit: reqs[i].Limit.Quota, Remaining: reqs[i].Limit.Quota,
				Window: reqs[i].Limit.ResultWindow(0, 0), ResetAt: t}
			continue
		}
		elapsed := time.Duration(t-e.at) * time.Microsecond
		*r = e.res
		r.FirstDenial = false
		if r.Reset -= elapsed; r.Reset < 0 {
			r.Reset = 0
		}
		if e.until > t && !reqs[i].DryRun && reqs[i].Mode != ModeCharge && reqs[i].Cost >= e.cost {
			r.Allowed = false
			r.RetryAfter = time.Duration(e.until-t) * time.Microsecond
		} else if !r.Allowed {
			r.Allowed, r.RetryAfter = true, 0
		}
	}
}

// Record remembers the requests of a decision Redis denied: the denying
// ones until their Retry-After, the others to report with them.
func (d *Denials) Record(gen uint64, now time.Time, reqs []Request, results []limiter.Result) {
	t := now.UnixMicro()
	for i := range reqs {
		r := &reqs[i]
		e := denial{at: t, limit: r.Limit, cost: r.Cost, res: results[i]}
		if !results[i].Allowed && !r.DryRun {
			e.until = t + results[i].RetryAfter.Microseconds()
		}
		h := HashRequest(d.seed, r)
		sh := d.shard(h)
		sh.mu.Lock()
		if atomic.LoadUint64(&d.gen) != gen {
			// An invalidation came since Redis decided: clearAll
			// raises gen before it locks the shards, so what is not
			// written here is either dropped by it or never written.
			sh.mu.Unlock()
			return
		}
		if _, ok := sh.m[h]; !ok && len(sh.m) >= d.max {
			d.makeRoom(sh, t)
		}
		sh.m[h] = e
		sh.mu.Unlock()
	}
}

// Forget drops what is remembered of reqs' keys (a refund gave units back:
// they may pass sooner).
func (d *Denials) Forget(reqs []Request) {
	for i := range reqs {
		h := HashRequest(d.seed, &reqs[i])
		sh := d.shard(h)
		sh.mu.Lock()
		delete(sh.m, h)
		sh.mu.Unlock()
	}
}

// sameLimit compares two limits field by field: == on structs with an
// interface field is not something Yaegi is known to get right.
func sameLimit(a, b *limiter.Limit) bool {
	return a.Algorithm == b.Algorithm && a.Quota == b.Quota && a.Window == b.Window &&
		a.Rate == b.Rate && a.Offset == b.Offset && a.Calendar == b.Calendar && a.Ban == b.Ban && a.Wait == b.Wait
}

// Generation is the count of invalidations so far: a decision records its
// denials with the generation read before it asked the server.
func (d *Denials) Generation() uint64 { return atomic.LoadUint64(&d.gen) }

// ClearAll drops every remembered denial (an invalidation).
func (d *Denials) ClearAll() {
	atomic.AddUint64(&d.gen, 1)
	for i := range d.shards {
		sh := &d.shards[i]
		sh.mu.Lock()
		for h := range sh.m {
			delete(sh.m, h)
		}
		sh.mu.Unlock()
	}
}

// makeRoom drops the entries over among a sample of the shard, or else
// one of the sample: the shard's lock is held, and Take's check waits on
// it, so the scan is bounded as the memory store's is.
func (d *Denials) makeRoom(sh *denialShard, t int64) {
	var victim uint64
	dropped, seen := false, 0
	for h, e := range sh.m {
		if e.until <= t {
			delete(sh.m, h)
			dropped = true
		} else if seen == 0 {
			victim = h
		}
		if seen++; seen >= evictionSample {
			break
		}
	}
	if !dropped {
		delete(sh.m, victim)
	}
}
