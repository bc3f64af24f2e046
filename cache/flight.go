package cache

import (
	"context"
	"sync"
)

// Outcome is how a coalesced upstream request ended, for the requests that
// waited on it.
type Outcome uint8

const (
	// Stored: the response was stored; waiters serve the entry.
	Stored Outcome = iota + 1
	// Uncacheable: the response was not stored (its status or headers, a
	// failing store, an error that is not the upstream's); it may have
	// been meant for the leader only, so each waiter asks the upstream
	// itself.
	Uncacheable
	// Unreachable: the upstream could not be reached; waiters answer
	// OFFLINE without trying again.
	Unreachable
)

// Group coalesces concurrent misses: the first request for a key (the
// leader) goes upstream; the others wait for its outcome instead of
// stampeding the upstream.
type Group struct {
	mu sync.Mutex
	m  map[Hash]*Flight
}

// Flight is one upstream request that others may wait on.
type Flight struct {
	done    chan struct{}
	entry   *Entry
	outcome Outcome
	waiters int // guarded by the group's lock
	// prev is the flight this one relieves (Relieve): its outcome, if it
	// comes first, serves this one's waiters too.
	prev *Flight
	// relief is the flight started when this one's waiters gave up on it;
	// guarded by the group's lock.
	relief *Flight
}

// Join returns the flight for id and whether the caller leads it. A leader
// must call Land exactly once, whatever happens (use defer).
func (g *Group) Join(id Hash) (f *Flight, leader bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f = g.m[id]; f != nil {
		f.waiters++
		return f, false
	}
	if g.m == nil {
		g.m = make(map[Hash]*Flight)
	}
	f = &Flight{done: make(chan struct{})}
	g.m[id] = f
	return f, true
}

// Land ends the flight: later requests for id start a new one, and the
// waiters get the outcome (and the entry, when Stored).
func (g *Group) Land(id Hash, f *Flight, outcome Outcome, e *Entry) {
	g.mu.Lock()
	if g.m[id] == f {
		delete(g.m, id)
	}
	g.mu.Unlock()
	f.entry, f.outcome = e, outcome
	close(f.done)
}

// Relieve is called by a waiter of f that gave up on it (the leader is
// slow, or never answers). The first waiter to give up leads a new flight
// for id, the relief, which the requests that come later join; every other
// waiter that gives up waits for the relief or for f, whichever lands
// first. So however many give up, f costs the upstream one more request,
// not one per waiter. When f has landed meanwhile, Relieve returns f, whose
// outcome Wait then returns at once. A leader must Land the relief.
func (g *Group) Relieve(id Hash, f *Flight) (relief *Flight, leader bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r := f.relief; r != nil {
		r.waiters++
		return r, false
	}
	select {
	case <-f.done:
		return f, false
	default:
	}
	// f has not landed, so it is still the flight of id.
	r := &Flight{done: make(chan struct{}), prev: f}
	f.relief = r
	g.m[id] = r
	return r, true
}

// Wait blocks until the flight (or the one it relieves) lands, or ctx ends
// (the waiting client went away, or will not wait longer).
func (f *Flight) Wait(ctx context.Context) (Outcome, *Entry, error) {
	var prev <-chan struct{} // nil, never ready, when f relieves nothing
	if f.prev != nil {
		prev = f.prev.done
	}
	select {
	case <-f.done:
		return f.outcome, f.entry, nil
	case <-prev:
		return f.prev.outcome, f.prev.entry, nil
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	}
}

// Landed returns how the flight ended, and false while it has not landed.
func (f *Flight) Landed() (Outcome, bool) {
	select {
	case <-f.done:
		return f.outcome, true
	default:
		return 0, false
	}
}

// Lead starts a flight for id when none is in the air, and tells whether
// it did: unlike Join, it never makes the caller a waiter.
func (g *Group) Lead(id Hash) (*Flight, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m[id] != nil {
		return nil, false
	}
	if g.m == nil {
		g.m = make(map[Hash]*Flight)
	}
	f := &Flight{done: make(chan struct{})}
	g.m[id] = f
	return f, true
}

// Waiting returns how many requests wait on the flight for id (0 when
// there is none), for tests and introspection.
func (g *Group) Waiting(id Hash) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f := g.m[id]; f != nil {
		return f.waiters
	}
	return 0
}
