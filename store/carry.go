package store

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// Carry remembers what OnError Local counted while the server could not
// decide, per (counter, key), so that it is charged to the server when the
// server answers again. Without it, each instance counted alone during an
// outage, and then the server's state was what it had been before (a
// bucket full again): a client driven hard through an outage got each
// instance's share, and a fresh bucket after it (issue 21: 134 to 162
// times what one shared bucket admits). Charged back, an outage costs at
// most the instances' split: the server's count holds what every instance
// let through, and the client is denied until that is spent.
//
// Each entry keeps its own limiter state, charged as the local store
// counted (limiter.Charge), so that what is carried is what those takes
// still weigh when the server answers: the count of a window still
// current, a bucket's backlog not yet drained. Memory is bounded: at most
// MaxCarry entries and MaxCarryBytes of counters and keys; when full, the
// entry that weighs least among a sample gives way (a flood of made-up
// keys, one request each, does not push out the clients that used their
// limits), or the new one is not remembered.
type Carry struct {
	mu      sync.Mutex
	m       map[string]*carried
	bytes   int
	last    int64 // the time of the latest local take, in microseconds
	n       int32 // len(m), read without the lock
	dropped int64
	charged int64
	// merge makes a bucket's charge every unit taken since the last
	// charge, not the backlog a bucket of this instance's own would still
	// hold (Synced: the shared bucket refills once, at the server).
	merge bool
}

// carried is one (counter, key): its request and what it counted.
type carried struct {
	req Request
	st  limiter.State
	sum int64 // the units added, less those removed
}

// Bounds of a Carry.
const (
	MaxCarry      = 1 << 16
	MaxCarryBytes = 16 << 20
	carrySample   = 16
	// carryChunk is the number of charges sent in one decision.
	carryChunk = 32
	// carryTimeout bounds one decision of charges beyond the server's own
	// timeout.
	carryTimeout = 10 * time.Second
)

// NewCarry returns an empty Carry.
func NewCarry() *Carry { return &Carry{m: make(map[string]*carried)} }

// Add remembers what a local decision of reqs counted: call it when the
// whole was allowed (all or nothing: a denied decision counted nothing),
// with its results (a dry run that was denied counted nothing either), or
// nil results for requests all counted.
func (c *Carry) Add(now time.Time, reqs []Request, results []limiter.Result) {
	t := now.UnixMicro()
	c.mu.Lock()
	defer c.mu.Unlock()
	if t > c.last {
		c.last = t
	}
	for i := range reqs {
		r := &reqs[i]
		if r.Mode == ModeCheck || results != nil && !results[i].Allowed {
			continue
		}
		id := r.Counter + "\x00" + r.Key
		e := c.m[id]
		if e == nil {
			if !c.room(len(id), r.Cost) {
				c.dropped++
				continue
			}
			e = &carried{req: Request{Counter: r.Counter, Key: r.Key, Mode: ModeCharge}}
			c.m[id] = e
			c.bytes += len(id)
		}
		e.req.Limit = r.Limit
		e.sum += r.Cost
		var res limiter.Result
		limiter.Charge(&e.req.Limit, &e.st, &res, t, r.Cost)
	}
	atomic.StoreInt32(&c.n, int32(len(c.m)))
}

// room makes room for an entry of size bytes and cost: true when there is
// room, or when an entry of no more weight was dropped for it.
func (c *Carry) room(size int, cost int64) bool {
	if len(c.m) < MaxCarry && c.bytes+size <= MaxCarryBytes {
		return true
	}
	var victim string
	least := -1
	n := 0
	for id, e := range c.m {
		if least < 0 || int(e.st.Weight) < least {
			victim = id
			least = int(e.st.Weight)
		}
		n++
		if n == carrySample {
			break
		}
	}
	if least < 0 || int64(least) > cost {
		return false
	}
	c.bytes -= len(victim)
	delete(c.m, victim)
	c.dropped++
	return c.bytes+size <= MaxCarryBytes
}

// Remove forgets units given back locally (a refund of a local take).
func (c *Carry) Remove(now time.Time, reqs []Request) {
	t := now.UnixMicro()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range reqs {
		c.remove(t, &reqs[i])
	}
}

// removeUnits is Remove of one request, and returns the units the Carry
// holds less for it (fewer than its cost when they were charged already).
func (c *Carry) removeUnits(now time.Time, r *Request) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.remove(now.UnixMicro(), r)
}

func (c *Carry) remove(t int64, r *Request) int64 {
	e := c.m[r.Counter+"\x00"+r.Key]
	if e == nil {
		return 0
	}
	before := c.unitsOf(e, t)
	e.req.Limit.Refund(&e.st, t, r.Cost)
	if e.sum -= r.Cost; e.sum < 0 {
		e.sum = 0
	}
	return before - c.unitsOf(e, t)
}

// Len is the number of entries, without the lock.
func (c *Carry) Len() int { return int(atomic.LoadInt32(&c.n)) }

// take empties the Carry and returns the charges to make, at the time of
// the latest local take: for each entry, the units its state still holds.
func (c *Carry) take() ([]Request, time.Time) {
	c.mu.Lock()
	m, t := c.m, c.last
	c.m = make(map[string]*carried)
	c.bytes, c.last = 0, 0
	atomic.StoreInt32(&c.n, 0)
	c.mu.Unlock()
	var out []Request
	for _, e := range m {
		if u := c.unitsOf(e, t); u > 0 {
			r := e.req
			r.Cost = u
			out = append(out, r)
		}
	}
	return out, time.UnixMicro(t)
}

// putBack remembers charges that could not be made, as they were.
func (c *Carry) putBack(now time.Time, reqs []Request) {
	c.Add(now, reqs, nil)
}

// unitsOf is what an entry charges at now.
func (c *Carry) unitsOf(e *carried, now int64) int64 {
	if c.merge && (e.req.Limit.Algorithm == limiter.TokenBucket || e.req.Limit.Algorithm == limiter.GCRA) {
		return e.sum
	}
	return carriedUnits(&e.req.Limit, &e.st, now)
}

// carriedUnits is what a state charged with local takes still holds at
// now: the count of a window still current, or a bucket's backlog in
// whole units.
func carriedUnits(l *limiter.Limit, s *limiter.State, now int64) int64 {
	switch l.Algorithm {
	case limiter.TokenBucket, limiter.GCRA:
		interval := float64(l.Window/time.Microsecond) / float64(l.Rate)
		debt := s.Debt - float64(now-s.Start)
		if debt <= 0 {
			return 0
		}
		return int64(math.Ceil(debt/interval - 1e-9))
	case limiter.AnchoredWindow:
		if now >= s.Start+int64(l.Window/time.Microsecond) {
			return 0
		}
		return s.Count
	}
	start, _ := l.Bounds(now)
	if s.Start != start {
		return 0
	}
	return s.Count
}

// Charged is the number of units charged to the server so far.
func (c *Carry) Charged() uint64 { return uint64(atomic.LoadInt64(&c.charged)) }

// Dropped is the number of entries not remembered, or forgotten, for
// room.
func (c *Carry) Dropped() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return uint64(c.dropped)
}

// chargeBack charges what the Carry holds to srv, a few requests per
// decision: each decision's charges are counted whatever remains (they
// never deny). It stops at the first failure and keeps what it did not
// charge, for the next time; a server too full to count (ErrFull) keeps
// them too.
func (c *Carry) chargeBack(srv Server) error {
	reqs, at := c.take()
	results := make([]limiter.Result, carryChunk)
	for len(reqs) > 0 {
		n := len(reqs)
		if n > carryChunk {
			n = carryChunk
		}
		ctx, cancel := context.WithTimeout(context.Background(), carryTimeout)
		err := srv.Decide(ctx, at, reqs[:n], results)
		cancel()
		if err != nil {
			c.putBack(at, reqs)
			return err
		}
		for i := 0; i < n; i++ {
			atomic.AddInt64(&c.charged, reqs[i].Cost)
		}
		reqs = reqs[n:]
	}
	return nil
}
