package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// Synced decides the limits whose requests have a Sync interval in this
// instance's memory, and merges what it counted into the server every
// interval (Kong's sync_rate, Envoy's local-plus-global limits): a limit
// that every request meets on one key (an API-wide limit) is then not one
// server core's decisions per second at most.
//
// Per (counter, key) it keeps a view: the server's state as the last
// merge (or the request that first met it there) reported, plus what this
// instance took since. A request is admitted from the view, with the
// limiter's arithmetic, so the instance admits from the shared total as
// far as it knows it. What it took is recorded in a Carry, and every
// interval the Carry is charged to the server (ModeCharge: counted
// whatever remains, never denied); the reply is the server's total, with
// every instance's merges, and becomes the view again, with what was taken
// here while the reply was on its way. So the instances over-admit at most
// what they admit between two merges: one interval's worth each (and the
// merge's round trip).
//
// A view nobody took from for an interval is forgotten: the next request
// on it is decided by the server, exactly, and its reply is the new view.
// A merge that fails (the server down) keeps its charges for the next one;
// the instance meanwhile counts on, from its view. The requests without
// Sync go to the wrapped store, in the same decision: all or nothing
// holds across both.
type Synced struct {
	inner Store
	srv   Server
	clock SyncClock

	mu     sync.Mutex
	groups map[time.Duration]*syncGroup
	ctx    context.Context
	cancel context.CancelFunc
	closed bool
	wg     sync.WaitGroup

	// nviews and viewBytes are the views of every group and the bytes of
	// their counters and keys: at most MaxCarry and MaxCarryBytes (a flood
	// of made-up keys, each a view until the next merge, must not grow
	// memory without bound; a request that finds no room is decided by
	// the server, exactly).
	nviews    int
	viewBytes int

	merges   int64
	failures int64
	charged  int64
	warn     Throttle
}

// SyncClock is the time a Synced store merges by: the edge's clock (a
// fake one in tests).
type SyncClock interface {
	Now() time.Time
	// Sleep waits d, or until ctx is done (its error then).
	Sleep(ctx context.Context, d time.Duration) error
}

// Sleep waits d, or until ctx is done (its error then): the Sleep of a
// SyncClock on real time, and the Traefik plugin's hold of a request.
// (internal/clock's Sleep, which store's tests import, keeps its own.)
// It waits on a context's Done, not in a select: Yaegi (v0.16.1) runs
// every execution of one select statement on one shared array of cases,
// so that concurrent sleeps could each wait on the other's timer.
func Sleep(ctx context.Context, d time.Duration) error {
	wait, cancel := context.WithTimeout(ctx, d)
	<-wait.Done()
	cancel()
	return ctx.Err()
}

// syncGroup is the views merged on one interval, and what they took since
// the last merge.
type syncGroup struct {
	every   time.Duration
	views   map[syncID]*syncView
	carry   *Carry
	running bool // a goroutine merges the group
	// owed is what was given back here (a refund, a request the server
	// denied after all) of units a merge had charged already: the next
	// merge gives it back at the server, so that the shared count holds
	// only what clients got. At most MaxCarry entries.
	owed map[syncID]*owedUnits
}

// owedUnits is what a group gives back at the server for one (counter,
// key): its request (Cost the units) and the time of the latest give-back.
type owedUnits struct {
	req Request
	at  int64
}

type syncID struct{ counter, key string }

type syncView struct {
	limit limiter.Limit
	st    limiter.State
	used  bool // taken from since the last merge
}

// MinSync and MaxSync bound a Sync interval.
const (
	MinSync = time.Millisecond
	MaxSync = time.Minute
)

// CheckSync reports what is wrong with a limit's sync interval, for the
// limit's algorithm and options.
func CheckSync(every time.Duration, l *limiter.Limit, charged bool) error {
	if every == 0 {
		return nil
	}
	if every < MinSync || every > MaxSync {
		return fmt.Errorf("sync %s: want an interval from %s to %s", every, MinSync, MaxSync)
	}
	switch {
	case charged:
		return errors.New("sync does not go with a limit that counts responses: its charges must reach every instance's view at once")
	case l.Ban != 0:
		return errors.New("sync does not go with ban: a ban is kept with the counter, where every instance sees it")
	case l.Wait != 0:
		return errors.New("sync does not go with wait: a request is held for a turn that only the shared counter knows")
	}
	return nil
}

// NewSynced returns a store that decides the requests with a Sync
// interval from views merged into srv, and the others at inner. inner
// is not closed by Close: it is the caller's.
func NewSynced(inner Store, srv Server, clock SyncClock) *Synced {
	ctx, cancel := context.WithCancel(context.Background())
	return &Synced{inner: inner, srv: srv, clock: clock, groups: make(map[time.Duration]*syncGroup), ctx: ctx, cancel: cancel}
}

// WithSync returns st wrapped in a Synced store when st decides at a
// server (a store in memory is exact already, and is returned as it is).
func WithSync(st Store, clock SyncClock) Store {
	srv, ok := st.(Server)
	if !ok {
		return st
	}
	return NewSynced(st, srv, clock)
}

// Inner is the wrapped store.
func (s *Synced) Inner() Store { return s.inner }

// Take implements Store.
func (s *Synced) Take(ctx context.Context, now time.Time, reqs []Request, results []limiter.Result) error {
	if len(results) < len(reqs) {
		return ErrTooFewResults
	}
	n := 0
	for i := range reqs {
		if reqs[i].Sync > 0 {
			n++
		}
	}
	if n == 0 || len(reqs) > maxBatch {
		return s.inner.Take(ctx, now, reqs, results)
	}
	t := now.UnixMicro()
	var localBuf, restBuf [maxBatch]int
	var saved [maxBatch]limiter.State
	local, rest := localBuf[:0], restBuf[:0]
	s.mu.Lock()
	for i := range reqs {
		r := &reqs[i]
		var v *syncView
		if r.Sync > 0 && r.Mode == ModeTake && !s.closed {
			if g := s.groups[r.Sync]; g != nil {
				v = g.views[syncID{r.Counter, r.Key}]
			}
		}
		if v == nil {
			rest = append(rest, i)
			continue
		}
		saved[len(local)] = v.st
		local = append(local, i)
		v.limit = r.Limit
		limiter.Decide(&v.limit, &v.st, &results[i], t, r.Cost)
	}
	if !Passes(reqs, results, local) {
		// Denied here: nothing is counted, and the server is not asked.
		for j, i := range local {
			if results[i].Allowed {
				v := s.groups[reqs[i].Sync].views[syncID{reqs[i].Counter, reqs[i].Key}]
				v.st = saved[j]
				Uncounted(&results[i], reqs[i].Cost)
			}
		}
		s.mu.Unlock()
		for _, i := range rest {
			l := &reqs[i].Limit
			results[i] = limiter.Result{Allowed: true, Limit: l.Quota, Remaining: l.Quota, Window: l.ResultWindow(0, 0), ResetAt: t}
		}
		return nil
	}
	for _, i := range local {
		r := &reqs[i]
		if results[i].Allowed {
			g := s.groups[r.Sync]
			g.views[syncID{r.Counter, r.Key}].used = true
			g.carry.Add(now, reqs[i:i+1], nil)
		}
	}
	s.mu.Unlock()
	if len(rest) == 0 {
		return nil
	}
	var subReqs [maxBatch]Request
	var subRes [maxBatch]limiter.Result
	for j, i := range rest {
		subReqs[j] = reqs[i]
	}
	err := s.inner.Take(ctx, now, subReqs[:len(rest)], subRes[:len(rest)])
	for j, i := range rest {
		results[i] = subRes[j]
	}
	passed := err == nil && Passes(subReqs[:len(rest)], subRes[:len(rest)], nil)
	if err == nil && passed {
		s.seed(now, reqs, results, rest)
		return nil
	}
	if err == nil || errors.Is(err, ErrUnavailable) {
		// Denied by the server (or by its failure policy): what was taken
		// here is given back.
		s.giveBack(t, reqs, results, local)
		if err == nil {
			s.seed(now, reqs, results, rest)
		}
	}
	return err
}

// giveBack gives back the local takes at idx, which the server's decision
// denied after all.
func (s *Synced) giveBack(t int64, reqs []Request, results []limiter.Result, idx []int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, i := range idx {
		r := &reqs[i]
		if !results[i].Allowed {
			continue
		}
		Uncounted(&results[i], r.Cost)
		g := s.groups[r.Sync]
		if g == nil {
			continue
		}
		if v := g.views[syncID{r.Counter, r.Key}]; v != nil {
			v.limit.Refund(&v.st, t, r.Cost)
		}
		s.removeTake(g, t, r)
	}
}

// removeTake takes a local take of r back out of g's charges, and owes
// the server what a merge charged of it already. s.mu is held.
func (s *Synced) removeTake(g *syncGroup, t int64, r *Request) {
	left := r.Cost - g.carry.removeUnits(time.UnixMicro(t), r)
	if left <= 0 {
		return
	}
	id := syncID{r.Counter, r.Key}
	o := g.owed[id]
	if o == nil {
		if len(g.owed) >= MaxCarry {
			return
		}
		if g.owed == nil {
			g.owed = make(map[syncID]*owedUnits)
		}
		o = &owedUnits{req: Request{Counter: r.Counter, Key: r.Key, Limit: r.Limit}}
		g.owed[id] = o
	}
	o.req.Cost += left
	o.at = t
}

// giveBackOwed gives back at the server what g owes it, at now: a
// window's units only while it is still the window they were given back
// in (the server's count of a later window holds none of them). It
// returns what it could not give back, and the server's error.
func (s *Synced) giveBackOwed(owed map[syncID]*owedUnits, now time.Time) (map[syncID]*owedUnits, error) {
	t := now.UnixMicro()
	var reqs []Request
	for id, o := range owed {
		l := &o.req.Limit
		if l.Algorithm == limiter.FixedWindow || l.Algorithm == limiter.SlidingWindow {
			then, _ := l.Bounds(o.at)
			if start, _ := l.Bounds(t); start != then {
				delete(owed, id)
				continue
			}
		}
		reqs = append(reqs, o.req)
	}
	for done := 0; done < len(reqs); {
		n := len(reqs) - done
		if n > carryChunk {
			n = carryChunk
		}
		ctx, cancel := context.WithTimeout(context.Background(), carryTimeout)
		err := s.srv.GiveBack(ctx, now, reqs[done:done+n])
		cancel()
		if err != nil {
			return owed, err
		}
		for _, r := range reqs[done : done+n] {
			delete(owed, syncID{r.Counter, r.Key})
		}
		done += n
	}
	return nil, nil
}

// seed makes the views of the requests at idx with a Sync interval and no
// view yet from the server's decision of them, and starts their group's
// merges.
func (s *Synced) seed(now time.Time, reqs []Request, results []limiter.Result, idx []int) {
	t := now.UnixMicro()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	for _, i := range idx {
		r := &reqs[i]
		if r.Sync <= 0 || r.Mode != ModeTake {
			continue
		}
		g := s.groups[r.Sync]
		if g == nil {
			g = &syncGroup{every: r.Sync, views: make(map[syncID]*syncView), carry: &Carry{m: make(map[string]*carried), merge: true}}
			s.groups[r.Sync] = g
		}
		id := syncID{r.Counter, r.Key}
		size := len(r.Counter) + len(r.Key)
		if g.views[id] != nil || s.nviews >= MaxCarry || s.viewBytes+size > MaxCarryBytes {
			continue
		}
		v := &syncView{limit: r.Limit}
		v.st = viewState(&v.limit, &results[i], t)
		g.views[id] = v
		s.nviews++
		s.viewBytes += size
		if !g.running {
			g.running = true
			s.wg.Add(1)
			go s.run(g)
		}
	}
}

// viewState is the state that the server's reply r, read at now, says a
// counter is in: for windows the count (Limit - Remaining) in the window
// that holds now (none when the server's window is another one: clocks
// apart at a boundary), for buckets the backlog (Reset: the time until
// full). A sliding window's estimate is kept as the current window's
// count, which only overstates what is used until the next merge.
func viewState(l *limiter.Limit, r *limiter.Result, now int64) limiter.State {
	count := l.Quota - r.Remaining
	if count < 0 {
		count = 0
	}
	reset := int64(r.Reset / time.Microsecond)
	// The reply speaks of the time the server decided at (ResetAt -
	// Reset): earlier than now by the round trip, or by more when the
	// charge was made at the time of the last take here (a server on the
	// instance's clock). Counted down to now, unless the clocks are
	// plainly apart.
	if at := r.ResetAt - reset; at < now && now-at < int64(MaxSync/time.Microsecond) {
		if reset -= now - at; reset < 0 {
			reset = 0
		}
	}
	switch l.Algorithm {
	case limiter.TokenBucket, limiter.GCRA:
		if reset <= 0 {
			return limiter.State{}
		}
		return limiter.State{Start: now, Debt: float64(reset), Expires: now + reset}
	case limiter.AnchoredWindow:
		if reset <= 0 || count == 0 {
			return limiter.State{}
		}
		end := now + reset
		return limiter.State{Start: end - int64(l.Window/time.Microsecond), Count: count, Expires: end}
	}
	start, end := l.Bounds(now)
	if l.Algorithm == limiter.SlidingWindow {
		// Reset runs to the end of the next window: the count weighs in
		// it.
		return limiter.State{Start: start, Count: count, Expires: end + (end - start)}
	}
	if d := now + reset - end; d > (end-start)/2 || -d > (end-start)/2 {
		count = 0
	}
	return limiter.State{Start: start, Count: count, Expires: end}
}

// run merges g every interval, until it has nothing left to merge or the
// store closes (then it merges once more, so that what was counted here
// reaches the server).
func (s *Synced) run(g *syncGroup) {
	defer s.wg.Done()
	for {
		if err := s.clock.Sleep(s.ctx, g.every); err != nil {
			s.merge(g, true)
			return
		}
		if !s.merge(g, false) {
			return
		}
	}
}

// merge charges what g took since the last merge to the server, and makes
// the views from its replies. It drops the views nobody took from since
// the last merge, and reports false (the goroutine ends) when the group
// has nothing left.
func (s *Synced) merge(g *syncGroup, last bool) bool {
	s.mu.Lock()
	reqs, at := g.carry.take()
	owed := g.owed
	g.owed = nil
	for id, v := range g.views {
		if !v.used {
			delete(g.views, id)
			s.nviews--
			s.viewBytes -= len(id.counter) + len(id.key)
		}
		v.used = false
	}
	if len(reqs) == 0 && len(owed) == 0 && (len(g.views) == 0 || last) {
		g.running = false
		s.mu.Unlock()
		return false
	}
	s.mu.Unlock()
	if len(owed) > 0 {
		// Given back first, so that the reply of the charges below
		// holds it.
		var err error
		if owed, err = s.giveBackOwed(owed, s.clock.Now()); err != nil {
			// Kept for the next merge, as charges are.
			s.mu.Lock()
			s.keepOwed(g, owed)
			s.mu.Unlock()
			atomic.AddInt64(&s.failures, 1)
			s.srv.Failed(err, s.warn.Allow(time.Now(), WarnInterval))
		}
	}
	if len(reqs) == 0 {
		return true
	}
	results := make([]limiter.Result, len(reqs))
	done := 0
	var err error
	for done < len(reqs) && err == nil {
		n := len(reqs) - done
		if n > carryChunk {
			n = carryChunk
		}
		ctx, cancel := context.WithTimeout(context.Background(), carryTimeout)
		err = s.srv.Decide(ctx, at, reqs[done:done+n], results[done:done+n])
		cancel()
		if err == nil {
			done += n
		}
	}
	t := s.clock.Now().UnixMicro()
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := 0; k < done; k++ {
		r := &reqs[k]
		atomic.AddInt64(&s.charged, r.Cost)
		v := g.views[syncID{r.Counter, r.Key}]
		if v == nil {
			continue
		}
		st := viewState(&v.limit, &results[k], t)
		// What was taken here while the reply was on its way, and what
		// was given back here of what the reply counts.
		if u := g.carry.units(r.Counter, r.Key, t); u > 0 {
			var res limiter.Result
			limiter.Charge(&v.limit, &st, &res, t, u)
		}
		if o := g.owed[syncID{r.Counter, r.Key}]; o != nil {
			v.limit.Refund(&st, t, o.req.Cost)
		}
		st.Denied = v.st.Denied
		v.st = st
	}
	if err != nil {
		// Kept for the next merge; the views count on meanwhile. The
		// server counts the error, and logs it at most once per
		// WarnInterval.
		atomic.AddInt64(&s.failures, 1)
		g.carry.putBack(at, reqs[done:])
		s.srv.Failed(err, s.warn.Allow(time.Now(), WarnInterval))
	} else {
		atomic.AddInt64(&s.merges, 1)
	}
	if last || (len(g.views) == 0 && g.carry.Len() == 0 && len(g.owed) == 0) {
		g.running = false
		return false
	}
	return true
}

// keepOwed puts back what a merge could not give back, with what was
// owed since. s.mu is held.
func (s *Synced) keepOwed(g *syncGroup, owed map[syncID]*owedUnits) {
	if g.owed == nil {
		g.owed = owed
		return
	}
	for id, o := range owed {
		if p := g.owed[id]; p != nil {
			p.req.Cost += o.req.Cost
		} else if len(g.owed) < MaxCarry {
			g.owed[id] = o
		}
	}
}

// units is what the Carry holds of (counter, key) at now.
func (c *Carry) units(counter, key string, now int64) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[counter+"\x00"+key]
	if e == nil {
		return 0
	}
	return c.unitsOf(e, now)
}

// Refund implements Store: the requests decided from a view give back to
// it (and to what the next merge charges), the others at the wrapped
// store. Once the store is closed (its last merge charged what the views
// took), every request is decided and given back at the wrapped store.
func (s *Synced) Refund(ctx context.Context, now time.Time, reqs []Request) error {
	if len(reqs) > maxBatch {
		return s.inner.Refund(ctx, now, reqs)
	}
	t := now.UnixMicro()
	var restBuf [maxBatch]Request
	rest := restBuf[:0]
	s.mu.Lock()
	for i := range reqs {
		r := &reqs[i]
		var v *syncView
		var g *syncGroup
		if r.Sync > 0 && !s.closed {
			if g = s.groups[r.Sync]; g != nil {
				v = g.views[syncID{r.Counter, r.Key}]
			}
		}
		if v == nil {
			rest = append(rest, *r)
			continue
		}
		v.limit.Refund(&v.st, t, r.Cost)
		s.removeTake(g, t, r)
	}
	s.mu.Unlock()
	if len(rest) == 0 {
		return nil
	}
	return s.inner.Refund(ctx, now, rest)
}

// Close stops the merges, after a last one of what was counted here (each
// bounded by the server's timeout). The wrapped store stays open.
func (s *Synced) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

// Running is the number of goroutines that merge (one per interval that
// has views or charges to merge).
func (s *Synced) Running() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, g := range s.groups {
		if g.running {
			n++
		}
	}
	return n
}

// Merges is the number of merges that reached the server, Failures those
// that did not (their charges wait for the next), Charged the units
// charged to the server.
func (s *Synced) Merges() uint64   { return uint64(atomic.LoadInt64(&s.merges)) }
func (s *Synced) Failures() uint64 { return uint64(atomic.LoadInt64(&s.failures)) }
func (s *Synced) Charged() uint64  { return uint64(atomic.LoadInt64(&s.charged)) }
