package edgelimit

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// denials is the Caddy module's memory of denials (storage/redis_denials.go
// there): the clients Redis denied and until when, so that a client over
// its limit costs no round trip until its Retry-After has passed. Under
// Yaegi a round trip costs the interpreted encoding of the script's
// arguments and reply as well: a flood from one client is answered here
// for a small part of that.
//
// It errs on the side of denying: a denial is remembered only for the same
// numbers and at least the same cost (a cheaper request may fit sooner), a
// refund on this instance forgets the keys it gives back to, and what
// could let a key pass sooner elsewhere (a refund on another instance)
// leaves this instance denying it until the Retry-After it was told, at
// most one window, never admitting more than Redis would.
type denials struct {
	seed   maphash.Seed
	shards []denialShard
	max    int // per shard
}

const (
	denialShards = 64
	// maxDenials bounds the keys remembered (about 200 bytes each), as the
	// Caddy module's default.
	maxDenials = 1 << 16
)

type denialShard struct {
	mu sync.Mutex
	m  map[uint64]deniedKey
}

// deniedKey is what Redis said of one (counter, key) in a decision that it
// denied: until is when the key may pass again (0 for a key that did not
// deny: its result is kept to report the decision's other limits).
type deniedKey struct {
	until int64 // unix microseconds, the caller's clock
	at    int64 // when Redis decided, the caller's clock
	limit limiter.Limit
	cost  int64
	res   limiter.Result
}

func newDenials() *denials {
	d := &denials{seed: maphash.MakeSeed(), max: maxDenials/denialShards + 1, shards: make([]denialShard, denialShards)}
	for i := range d.shards {
		d.shards[i].m = make(map[uint64]deniedKey)
	}
	return d
}

func (d *denials) hash(r *request) uint64 {
	var h maphash.Hash
	h.SetSeed(d.seed)
	h.WriteString(r.Counter)
	h.WriteByte(0)
	h.WriteString(r.Key)
	return h.Sum64()
}

func (d *denials) lookup(h uint64) (deniedKey, bool) {
	sh := &d.shards[h%denialShards]
	sh.mu.Lock()
	e, ok := sh.m[h]
	sh.mu.Unlock()
	return e, ok
}

// sameLimit compares two limits field by field (struct == with an
// interface field is left to the compiler: Yaegi's is not tested here).
func sameLimit(a, b *limiter.Limit) bool {
	return a.Algorithm == b.Algorithm && a.Quota == b.Quota && a.Window == b.Window &&
		a.Rate == b.Rate && a.Offset == b.Offset && a.Calendar == b.Calendar
}

// check decides reqs here when one of them is remembered as denying, with
// the same numbers and no smaller cost, until after now: it fills results
// as Redis would have (nothing counted; the denial's Retry-After and reset
// counted down; the other limits as last reported) and reports true.
func (d *denials) check(now time.Time, reqs []request, results []limiter.Result) bool {
	t := now.UnixMicro()
	// Each entry is read once: the decision and the results come from the
	// same reads, so that an entry forgotten in between (a refund) cannot
	// turn a denial into an uncounted "allowed".
	ents := make([]deniedKey, len(reqs))
	oks := make([]bool, len(reqs))
	denied := false
	for i := range reqs {
		ents[i], oks[i] = d.lookup(d.hash(&reqs[i]))
		e := &ents[i]
		if oks[i] && !reqs[i].DryRun && e.until > t && sameLimit(&e.limit, &reqs[i].Limit) && reqs[i].Cost >= e.cost {
			denied = true
		}
	}
	if !denied {
		return false
	}
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
		r.Reset -= elapsed
		if r.Reset < 0 {
			r.Reset = 0
		}
		if e.until > t && !reqs[i].DryRun && reqs[i].Cost >= e.cost {
			r.Allowed = false
			r.RetryAfter = time.Duration(e.until-t) * time.Microsecond
		} else if !r.Allowed {
			r.Allowed = true
			r.RetryAfter = 0
		}
	}
	return true
}

// record remembers the requests of a decision Redis denied: the denying
// ones until their Retry-After, the others to report with them.
func (d *denials) record(now time.Time, reqs []request, results []limiter.Result) {
	t := now.UnixMicro()
	for i := range reqs {
		r := &reqs[i]
		e := deniedKey{at: t, limit: r.Limit, cost: r.Cost, res: results[i]}
		if !results[i].Allowed && !r.DryRun {
			e.until = t + int64(results[i].RetryAfter/time.Microsecond)
		}
		h := d.hash(r)
		sh := &d.shards[h%denialShards]
		sh.mu.Lock()
		if _, ok := sh.m[h]; !ok && len(sh.m) >= d.max {
			makeDenialRoom(sh, t)
		}
		sh.m[h] = e
		sh.mu.Unlock()
	}
}

// forget drops what is remembered of reqs' keys (a refund gave units back:
// they may pass sooner).
func (d *denials) forget(reqs []request) {
	for i := range reqs {
		h := d.hash(&reqs[i])
		sh := &d.shards[h%denialShards]
		sh.mu.Lock()
		delete(sh.m, h)
		sh.mu.Unlock()
	}
}

// makeDenialRoom drops the entries of a full shard that are over, or else one.
func makeDenialRoom(sh *denialShard, t int64) {
	dropped := false
	for h, e := range sh.m {
		if e.until <= t {
			delete(sh.m, h)
			dropped = true
		}
	}
	if !dropped {
		for h := range sh.m {
			delete(sh.m, h)
			break
		}
	}
}

// denies tells whether a decision's results deny the request.
func denies(reqs []request, results []limiter.Result) bool {
	for i := range reqs {
		if !results[i].Allowed && !reqs[i].DryRun {
			return true
		}
	}
	return false
}
