package store

import (
	"context"
	"errors"
	"fmt"
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
	// WarnInterval, for a log line.
	Failed(err error, warn bool)
	// Answered reports that the server answers again after a failure that
	// was warned about.
	Answered()
}

// ErrBusy is a decision a store did not ask the server for because its
// own connections stayed busy (this instance's load, not the server
// failing): OnError decides that request, and the server is not left
// alone for it.
var ErrBusy = errors.New("the store's connections are all busy")

// WarnInterval is the least time between two warnings of a failing server.
const WarnInterval = 5 * time.Second

// DefaultRetryInterval is how long a failing server is left alone.
const DefaultRetryInterval = time.Second

// Remote is what a store on a server does without the server: its failure
// policy and its memory of denials. After a failure, OnError decides at
// once until the retry interval has passed, then one request tries the
// server again, so that no request waits for a server that is down. A
// client the server denied until T is denied from Denials, without asking,
// until T, while the store hears the server's invalidations (SetLive).
type Remote struct {
	// OnError applies when the server cannot decide.
	OnError OnError
	// Local decides under OnError Local.
	Local *Memory
	// Denials, when set, is the memory of denials.
	Denials *Denials
	// Retry is how long the server is left alone after a failure (default
	// DefaultRetryInterval).
	Retry time.Duration

	epoch     time.Time
	downUntil int64 // monotonic nanoseconds since epoch; 0 while the server answers
	probing   int32
	lastWarn  int64
	warned    int32
	live      int32 // Denials may be used

	localDenials int64
	onErrors     [3]int64
}

// NewRemote returns the policy of a store on a server.
func NewRemote(onError OnError, retry time.Duration, denials bool, maxDenials int) *Remote {
	if retry <= 0 {
		retry = DefaultRetryInterval
	}
	p := &Remote{OnError: onError, Retry: retry, epoch: time.Now()}
	if onError == Local {
		p.Local = NewMemory(MemoryOptions{})
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
// remembered as denying, else at srv, else by OnError.
func (p *Remote) Take(ctx context.Context, now time.Time, reqs []Request, results []limiter.Result, srv Server) error {
	var gen uint64
	if p.Live() {
		if p.Denials.Check(now, reqs, results) {
			atomic.AddInt64(&p.localDenials, 1)
			return nil
		}
		gen = p.Denials.Generation()
	}
	probe := false
	if until := atomic.LoadInt64(&p.downUntil); until != 0 {
		if p.mono() < until || !atomic.CompareAndSwapInt32(&p.probing, 0, 1) {
			return p.Fallback(ctx, now, reqs, results, nil)
		}
		probe = true
	}
	err := srv.Decide(ctx, now, reqs, results)
	switch {
	case err == nil:
		p.up(srv)
		if gen != 0 && !Passes(reqs, results, nil) {
			// Not when an invalidation came meanwhile: the server may
			// have decided before the reset it announces.
			p.Denials.Record(gen, now, reqs, results)
		}
	case ctx.Err() != nil || errors.Is(err, ErrBusy):
		// The caller gave up (the client went away), or the store is
		// busy: the server is not to blame.
	default:
		p.Down(err, srv)
	}
	if probe {
		atomic.StoreInt32(&p.probing, 0)
	}
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return p.Fallback(ctx, now, reqs, results, err)
	}
	return nil
}

// Refund gives back what an earlier Take counted, at srv; while the
// server is known to be down, OnError local gives back to the memory
// store, and with the other policies nothing was counted meanwhile.
func (p *Remote) Refund(ctx context.Context, now time.Time, reqs []Request, srv Server) error {
	if p.Denials != nil {
		p.Denials.Forget(reqs)
	}
	if until := atomic.LoadInt64(&p.downUntil); until != 0 && p.mono() < until {
		return p.refundFallback(ctx, now, reqs, nil)
	}
	err := srv.GiveBack(ctx, now, reqs)
	switch {
	case err == nil:
		p.up(srv)
		return nil
	case ctx.Err() != nil:
		return err
	}
	p.Down(err, srv)
	return p.refundFallback(ctx, now, reqs, err)
}

func (p *Remote) refundFallback(ctx context.Context, now time.Time, reqs []Request, cause error) error {
	if p.OnError == Local {
		return p.Local.Refund(ctx, now, reqs)
	}
	if cause == nil {
		cause = errDown
	}
	return fmt.Errorf("rate-limit storage unavailable, nothing given back: %w", cause)
}

// Down marks the server as failing: OnError decides until the retry
// interval has passed, then one request tries the server again.
func (p *Remote) Down(err error, srv Server) {
	now := p.mono()
	atomic.StoreInt64(&p.downUntil, now+int64(p.Retry))
	last := atomic.LoadInt64(&p.lastWarn)
	warn := (last == 0 || now-last >= int64(WarnInterval)) && atomic.CompareAndSwapInt64(&p.lastWarn, last, now)
	if warn {
		atomic.StoreInt32(&p.warned, 1)
	}
	srv.Failed(err, warn)
}

// Up marks the server as answering.
func (p *Remote) up(srv Server) {
	if atomic.LoadInt64(&p.downUntil) == 0 {
		return
	}
	atomic.StoreInt64(&p.downUntil, 0)
	if atomic.CompareAndSwapInt32(&p.warned, 1, 0) {
		srv.Answered()
	}
}

// IsDown tells whether the server failed and is left alone now.
func (p *Remote) IsDown() bool {
	until := atomic.LoadInt64(&p.downUntil)
	return until != 0 && p.mono() < until
}

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
		return p.Local.Take(ctx, now, reqs, results)
	case Deny:
		if cause == nil {
			return errDownDeny
		}
		return denyError(cause)
	}
	if cause == nil {
		return errDownAllow
	}
	return allowError(cause)
}

// LocalDenials is the number of decisions made from the local denials.
func (p *Remote) LocalDenials() uint64 { return uint64(atomic.LoadInt64(&p.localDenials)) }

// OnErrors is the number of decisions made by each OnError policy.
func (p *Remote) OnErrors() [3]uint64 {
	return [3]uint64{uint64(atomic.LoadInt64(&p.onErrors[0])), uint64(atomic.LoadInt64(&p.onErrors[1])), uint64(atomic.LoadInt64(&p.onErrors[2]))}
}
