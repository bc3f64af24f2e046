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

// OnError is what a store on a server does when the server cannot decide
// in time.
type OnError uint8

const (
	// Allow lets the request through unlimited: Take returns an error that
	// is not ErrUnavailable.
	Allow OnError = iota
	// Deny refuses the request: Take returns an error wrapping
	// ErrUnavailable (503 with Retry-After).
	Deny
	// Local decides with an in-process memory store, with the same limits,
	// until the server answers again.
	Local
)

func (o OnError) String() string {
	switch o {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	case Local:
		return "local"
	}
	return fmt.Sprintf("on_error(%d)", int(o))
}

// ParseOnError reads "allow", "deny" or "local".
func ParseOnError(s string) (OnError, error) {
	switch s {
	case "allow":
		return Allow, nil
	case "deny":
		return Deny, nil
	case "local":
		return Local, nil
	}
	return 0, fmt.Errorf("%q: want allow, deny or local", s)
}

// A Server decides at a remote server: Redis, through an edge's client,
// with the scripts and encoding of this package.
type Server interface {
	// Decide decides reqs at the server, all or nothing; an error is the
	// server's failure, or the end of ctx.
	Decide(ctx context.Context, now time.Time, reqs []Request, results []limiter.Result) error
	// GiveBack gives back what an earlier decision of reqs counted.
	GiveBack(ctx context.Context, now time.Time, reqs []Request) error
	// Failed reports that the server failed: warn is set at most once per
	// WarnInterval, for a log line. IsOOM(err) is a server that answers but
	// is full (FullWarning), not down.
	Failed(err error, warn bool)
	// Answered reports that the server answers again after a failure that
	// was warned about.
	Answered()
	// Probe asks the server whether it answers (a PING within the store's
	// timeout), without deciding anything.
	Probe(ctx context.Context) error
}

// ErrBusy is a decision a store did not ask the server for because its
// own connections stayed busy (this instance's load, not the server
// failing): OnError decides that request, and the server is not left
// alone for it.
var ErrBusy = errors.New("the store's connections are all busy")

// WarnInterval is the least time between two warnings of a failing server.
const WarnInterval = 5 * time.Second

// DefaultRetryInterval is how often a failing server is probed.
const DefaultRetryInterval = 50 * time.Millisecond

// Remote is what a store on a server does without the server: its failure
// policy and its memory of denials. After a failure, OnError decides every
// request at once, so that none waits for a server that is down, while one
// goroutine probes the server every retry interval; the first answer puts
// it back in use. Requests do not probe: a request that came after the
// server recovered and met the 1s it used to be left alone was denied
// under Deny (a 503 for nothing), counted nowhere under Allow. A
// client the server denied until T is denied from Denials, without asking,
// until T, while the store hears the server's invalidations (SetLive).
type Remote struct {
	// OnError applies when the server cannot decide.
	OnError OnError
	// Local decides under OnError Local.
	Local *Memory
	// Denials, when set, is the memory of denials.
	Denials *Denials
	// Retry is the time between two probes of a failing server (default
	// DefaultRetryInterval), and between two subscriptions to its
	// invalidations.
	Retry time.Duration

	epoch   time.Time
	down    int32 // 1 from a failure until a probe is answered
	probing int32 // 1 while a goroutine probes the server
	// stop is done once Stop is called: a context, not a channel in a
	// select (Sleep says why).
	stop    context.Context
	stopFn  context.CancelFunc
	stopMu  sync.Mutex // orders the start of a probe and Stop
	stopped bool
	probes  sync.WaitGroup
	// lastFail is the last failure, for the requests decided without the
	// server (a mutex, not an atomic.Value: Yaegi hands a value of an
	// interpreted type through one as an interpreter value).
	failMu   sync.Mutex
	lastFail *failure
	lastWarn int64
	warned   int32
	live     int32 // Denials may be used

	localDenials int64
	onErrors     [3]int64
	fullWarn     Throttle
	carrying     int32 // 1 while a goroutine charges Carry back
	carryAfter   int64 // p.mono() before which it does not try again

	// Carry, under OnError Local, is what the local store counted, charged
	// to the server when it answers again: before a probe puts it back in
	// use, or after a decision it counted (a server that was full).
	Carry *Carry
}

// NewRemote returns the policy of a store on a server.
func NewRemote(onError OnError, retry time.Duration, denials bool, maxDenials int) *Remote {
	if retry <= 0 {
		retry = DefaultRetryInterval
	}
	p := &Remote{OnError: onError, Retry: retry, epoch: time.Now()}
	stop, stopFn := context.WithCancel(context.Background())
	p.stop = stop
	p.stopFn = stopFn
	if onError == Local {
		p.Local = NewMemory(MemoryOptions{})
		p.Carry = NewCarry()
	}
	if denials {
		p.Denials = NewDenials(maxDenials)
	}
	return p
}

// SetLive says whether the store hears the invalidations of local
// denials (its subscription is confirmed and healthy): they are used only
// then, and dropped at every change, so that none recorded before a gap
// (when an invalidation may have been missed) survives it.
func (p *Remote) SetLive(v bool) {
	if p.Denials == nil {
		return
	}
	n := int32(0)
	if v {
		n = 1
	}
	if atomic.SwapInt32(&p.live, n) != n {
		p.Denials.ClearAll()
	}
}

// Live tells whether local denials are in use.
func (p *Remote) Live() bool { return p.Denials != nil && atomic.LoadInt32(&p.live) == 1 }

func (p *Remote) mono() int64 { return int64(time.Since(p.epoch)) }

// Take decides reqs: from the local denials when one of them is
// remembered as denying, else at srv, else by OnError. (Live and up's
// load written out, the failures apart in decideFailed: under Yaegi a
// method call costs about four function calls, and every call a slot per
// value of its function, run or not.)
func (p *Remote) Take(ctx context.Context, now time.Time, reqs []Request, results []limiter.Result, srv Server) error {
	return TakeRemote(p, ctx, now, reqs, results, srv)
}

// TakeRemote is p.Take as a function, which the plugin calls on every
// request.
func TakeRemote(p *Remote, ctx context.Context, now time.Time, reqs []Request, results []limiter.Result, srv Server) error {
	var gen uint64
	if p.Denials != nil && atomic.LoadInt32(&p.live) == 1 {
		if checkDenials(p.Denials, now, reqs, results) {
			atomic.AddInt64(&p.localDenials, 1)
			return nil
		}
		gen = atomic.LoadUint64(&p.Denials.gen) // Generation written out
	}
	if atomic.LoadInt32(&p.down) == 1 {
		return p.Fallback(ctx, now, reqs, results, nil)
	}
	err := srv.Decide(ctx, now, reqs, results)
	if err != nil {
		return p.decideFailed(ctx, now, reqs, results, srv, gen, err)
	}
	if atomic.LoadInt32(&p.down) == 1 {
		p.up(srv)
	}
	if gen != 0 && !Passes(reqs, results, nil) {
		// Not when an invalidation came meanwhile: the server may have
		// decided before the reset it announces.
		p.Denials.Record(gen, now, reqs, results)
	}
	if p.Carry != nil && p.Carry.Len() > 0 {
		p.carryBack(srv)
	}
	return nil
}

// decideFailed is Take after srv failed to decide with err; gen is the
// local denials' generation before (0 without them).
func (p *Remote) decideFailed(ctx context.Context, now time.Time, reqs []Request, results []limiter.Result, srv Server, gen uint64, err error) error {
	switch {
	case err == ErrFull:
		// Redis answered, from the counts it holds, but could not count:
		// a client it holds as exhausted is denied as exactly as ever
		// (a flood of made-up keys that fills Redis does not free it);
		// the others are decided by OnError.
		p.up(srv)
		p.full(err, srv)
		if !Passes(reqs, results, nil) {
			if gen != 0 {
				p.Denials.Record(gen, now, reqs, results)
			}
			return nil
		}
		return p.Fallback(ctx, now, reqs, results, err)
	case IsOOM(err):
		// A write refused elsewhere (an undo): Redis is not down.
		p.full(err, srv)
	case ctx.Err() != nil || errors.Is(err, ErrBusy):
		// The caller gave up (the client went away), or the store is
		// busy: the server is not to blame.
	default:
		p.Down(err, srv)
	}
	if ctx.Err() != nil {
		return err
	}
	return p.Fallback(ctx, now, reqs, results, err)
}

// Refund gives back what an earlier Take counted, at srv; while the
// server is known to be down, OnError local gives back to the memory
// store, and with the other policies nothing was counted meanwhile.
func (p *Remote) Refund(ctx context.Context, now time.Time, reqs []Request, srv Server) error {
	if p.Denials != nil {
		p.Denials.Forget(reqs)
	}
	if atomic.LoadInt32(&p.down) == 1 {
		return p.refundFallback(ctx, now, reqs, nil)
	}
	err := srv.GiveBack(ctx, now, reqs)
	switch {
	case err == nil:
		p.up(srv)
		return nil
	case ctx.Err() != nil:
		return err
	case IsOOM(err):
		// Redis is full and refuses even the writes that would shrink a
		// count: what was counted stays counted (the safe side).
		p.full(err, srv)
		return fmt.Errorf("rate-limit storage full, nothing given back: %w", err)
	}
	p.Down(err, srv)
	return p.refundFallback(ctx, now, reqs, err)
}

func (p *Remote) refundFallback(ctx context.Context, now time.Time, reqs []Request, cause error) error {
	if p.OnError == Local {
		p.Carry.Remove(now, reqs)
		return p.Local.Refund(ctx, now, reqs)
	}
	if cause == nil {
		cause = errDown
		if f := p.lastFailure(); f != nil {
			cause = f.cause
		}
	}
	return fmt.Errorf("rate-limit storage unavailable, nothing given back: %w", cause)
}

// Down marks the server as failing: OnError decides until a probe finds
// it answering again.
func (p *Remote) Down(err error, srv Server) {
	p.failed(err, srv)
	if atomic.LoadInt32(&p.probing) == 1 {
		return
	}
	p.stopMu.Lock()
	defer p.stopMu.Unlock()
	if !p.stopped && atomic.CompareAndSwapInt32(&p.probing, 0, 1) {
		p.probes.Add(1)
		go p.recover(srv)
	}
}

// full reports a server that answers but refuses writes (OOM): counted
// as its failure, warned about at most once per WarnInterval, but not
// down: the next request asks it again, and its answers still deny.
func (p *Remote) full(err error, srv Server) {
	srv.Failed(err, p.fullWarn.Allow(time.Now(), WarnInterval))
}

// failure is a failure of the server as the requests decided without it
// report it, made once per failure.
type failure struct{ cause, allow, deny error }

// failed records a failure, warns at most once per WarnInterval, and
// tells the server.
func (p *Remote) failed(err error, srv Server) {
	cause := fmt.Errorf("the server failed, and is probed until it answers: %w", err)
	f := &failure{cause: cause, allow: allowError(cause), deny: denyError(cause)}
	p.failMu.Lock()
	p.lastFail = f
	p.failMu.Unlock()
	now := p.mono()
	atomic.StoreInt32(&p.down, 1)
	last := atomic.LoadInt64(&p.lastWarn)
	warn := (last == 0 || now-last >= int64(WarnInterval)) && atomic.CompareAndSwapInt64(&p.lastWarn, last, now)
	if warn {
		atomic.StoreInt32(&p.warned, 1)
	}
	srv.Failed(err, warn)
}

// recover probes the server every Retry until it answers (or the store
// stops). A failure that comes as it gives up finds it still probing: it
// looks again once it has said so, so that a failing server is always
// probed.
func (p *Remote) recover(srv Server) {
	defer p.probes.Done()
	for {
		p.probe(srv)
		atomic.StoreInt32(&p.probing, 0)
		if atomic.LoadInt32(&p.down) == 0 || p.isStopped() || !atomic.CompareAndSwapInt32(&p.probing, 0, 1) {
			return
		}
	}
}

func (p *Remote) probe(srv Server) {
	for atomic.LoadInt32(&p.down) == 1 {
		if Sleep(p.stop, p.Retry) != nil {
			return
		}
		if err := srv.Probe(context.Background()); err != nil {
			p.failed(err, srv)
			continue
		}
		// What was counted here meanwhile goes to the server before it
		// decides again (a server too full to count it gets it later).
		if p.Carry != nil && p.Carry.Len() > 0 {
			if err := p.Carry.chargeBack(srv); err != nil && !IsOOM(err) {
				p.failed(err, srv)
				continue
			}
		}
		p.up(srv)
	}
}

// carryBack charges Carry to the server in a goroutine of its own, one at
// a time: the server counted a decision, and what was counted here while
// it could not (it was full) is still to be charged.
func (p *Remote) carryBack(srv Server) {
	if p.mono() < atomic.LoadInt64(&p.carryAfter) || !atomic.CompareAndSwapInt32(&p.carrying, 0, 1) {
		return
	}
	p.stopMu.Lock()
	defer p.stopMu.Unlock()
	if p.stopped {
		atomic.StoreInt32(&p.carrying, 0)
		return
	}
	p.probes.Add(1)
	go p.charge(srv)
}

func (p *Remote) charge(srv Server) {
	defer p.probes.Done()
	err := p.Carry.chargeBack(srv)
	if err != nil {
		// Still full (or failing): not again before a retry interval.
		atomic.StoreInt64(&p.carryAfter, p.mono()+int64(p.Retry))
	}
	atomic.StoreInt32(&p.carrying, 0)
	if err != nil && !IsOOM(err) {
		p.Down(err, srv)
	}
}

// Stop ends the probes of a failing server, and waits for them: the store
// is closing.
func (p *Remote) Stop() {
	p.stopMu.Lock()
	if !p.stopped {
		p.stopped = true
		p.stopFn()
	}
	p.stopMu.Unlock()
	p.probes.Wait()
}

func (p *Remote) isStopped() bool { return p.stop.Err() != nil }

// Up marks the server as answering.
func (p *Remote) up(srv Server) {
	// A load first: the usual case writes nothing (a store on all cores).
	if atomic.LoadInt32(&p.down) == 0 || atomic.SwapInt32(&p.down, 0) == 0 {
		return
	}
	if atomic.CompareAndSwapInt32(&p.warned, 1, 0) {
		srv.Answered()
	}
}

// IsDown tells whether the server failed and has not answered a probe
// since.
func (p *Remote) IsDown() bool { return atomic.LoadInt32(&p.down) == 1 }

func allowError(cause error) error {
	return fmt.Errorf("rate-limit storage unavailable, not limiting (on error: allow): %w", cause)
}

func denyError(cause error) error {
	return fmt.Errorf("%w, denying (on error: deny): %w", ErrUnavailable, cause)
}

// Fallback applies OnError; cause is nil when the server was not even
// tried.
func (p *Remote) Fallback(ctx context.Context, now time.Time, reqs []Request, results []limiter.Result, cause error) error {
	atomic.AddInt64(&p.onErrors[p.OnError], 1)
	switch p.OnError {
	case Local:
		err := p.Local.Take(ctx, now, reqs, results)
		if err == nil && Passes(reqs, results, nil) {
			p.Carry.Add(now, reqs, results)
		}
		return err
	case Deny:
		if cause != nil {
			return denyError(cause)
		}
		if f := p.lastFailure(); f != nil {
			return f.deny
		}
		return errDownDeny
	}
	if cause != nil {
		return allowError(cause)
	}
	if f := p.lastFailure(); f != nil {
		return f.allow
	}
	return errDownAllow
}

func (p *Remote) lastFailure() *failure {
	p.failMu.Lock()
	defer p.failMu.Unlock()
	return p.lastFail
}

// LocalDenials is the number of decisions made from the local denials.
func (p *Remote) LocalDenials() uint64 { return uint64(atomic.LoadInt64(&p.localDenials)) }

// OnErrors is the number of decisions made by each OnError policy.
func (p *Remote) OnErrors() [3]uint64 {
	return [3]uint64{uint64(atomic.LoadInt64(&p.onErrors[0])), uint64(atomic.LoadInt64(&p.onErrors[1])), uint64(atomic.LoadInt64(&p.onErrors[2]))}
}
