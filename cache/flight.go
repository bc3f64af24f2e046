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

// Wait blocks until the flight lands or ctx ends (the waiting client went
// away).
func (f *Flight) Wait(ctx context.Context) (Outcome, *Entry, error) {
	select {
	case <-f.done:
		return f.outcome, f.entry, nil
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	}
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
