// Shaping: a limit with a wait (a bucket's, limiter.Limit.Wait) admits a
// request that would pass within the wait, counted now, and the edge holds
// it until its turn before it serves it. What is held is bounded: per
// client by the limit (its backlog past the bucket is at most the wait, or
// WaitMax requests' worth), per limit and instance by MaxWaiting.

package policy

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// MaxWaiting bounds the requests one limit holds at once on an instance:
// a request that finds them all held is answered as without a wait
// (denied when it would have waited).
const MaxWaiting = 1024

// DefaultWaitMax is the requests of one client a limit holds at once, by
// default.
const DefaultWaitMax = 8

// compileWait gives the limit's numbers, and its tiers', their wait: the
// Spec's, or the backlog of WaitMax requests (of the limit's cost) if that
// is shorter, in whole milliseconds.
func (l *Limit) compileWait(s *Spec) error {
	if s.Wait == 0 {
		if s.WaitMax != 0 {
			return errors.New("wait max needs a wait")
		}
		return nil
	}
	if err := CheckWait(s.Wait); err != nil {
		return err
	}
	if l.Charged {
		return errors.New("wait goes with limits that count requests, not responses: a response is charged once it is known, too late to hold the request")
	}
	most := s.WaitMax
	if most == 0 {
		most = DefaultWaitMax
	}
	if err := CheckWaitMax(int64(most)); err != nil {
		return err
	}
	l.WaitMax = most
	if err := setWait(&l.Base, s.Wait, most, l.Cost); err != nil {
		return err
	}
	for _, t := range l.Tiers {
		if err := setWait(&t.Limit, s.Wait, most, l.Cost); err != nil {
			return fmt.Errorf("tier %q: %w", t.Name, err)
		}
	}
	return nil
}

// CheckWait checks a wait as an edge reads it: more than 0 (a wait of 0
// is written by mistake), whole milliseconds up to limiter.MaxWait.
func CheckWait(wait time.Duration) error {
	if wait <= 0 {
		return fmt.Errorf("wait must be more than 0, got %s", wait)
	}
	if wait%time.Millisecond != 0 || wait > limiter.MaxWait {
		return fmt.Errorf("wait must be whole milliseconds from 1ms to %s, got %s", limiter.MaxWait, wait)
	}
	return nil
}

// CheckWaitMax checks the requests of one client a wait holds at once.
func CheckWaitMax(n int64) error {
	if n < 1 || n > MaxWaiting {
		return fmt.Errorf("wait max must be from 1 to %d, got %d", MaxWaiting, n)
	}
	return nil
}

// setWait sets one set of numbers' wait: at most the backlog of most
// requests of cost units, in whole milliseconds.
func setWait(lim *limiter.Limit, wait time.Duration, most int, cost int64) error {
	if lim.Algorithm != limiter.TokenBucket && lim.Algorithm != limiter.GCRA {
		return fmt.Errorf("wait needs token_bucket or gcra, not %s: a window has room again only when it ends, for every waiting request at once", lim.Algorithm)
	}
	held := time.Duration(float64(lim.Window) / float64(lim.Rate) * float64(cost) * float64(most))
	if held < wait {
		wait = held.Truncate(time.Millisecond)
		if wait == 0 {
			return fmt.Errorf("wait max %d holds less than a millisecond of a bucket refilled %d per %s: give a larger max", most, lim.Rate, lim.Window)
		}
	}
	lim.Wait = wait
	return lim.Validate()
}

// HoldWaits, before a decision of a policy with waits (Waits), takes a
// place among its limit's held requests for each request that may wait; a
// request that finds none (MaxWaiting), or of a dry run (which never
// holds a request), is decided as without a wait.
func HoldWaits(d *Decision) {
	for i := range d.Reqs {
		r := &d.Reqs[i]
		if r.Limit.Wait == 0 {
			continue
		}
		l := d.Meta[i].Limit
		if r.DryRun || atomic.AddInt64(&l.waiting, 1) > MaxWaiting {
			if !r.DryRun {
				atomic.AddInt64(&l.waiting, -1)
			}
			r.Limit.Wait = 0
		}
	}
}

// WaitFor, after the decision and Judge (denied is its first value),
// returns how long to hold the request before serving it: the longest
// wait of its requests (0 when it is denied or none waits). It gives back
// the places of the requests that do not wait; ReleaseWaits gives back the
// others once the wait is over.
func WaitFor(d *Decision, denied int) time.Duration {
	var longest time.Duration
	for i := range d.Reqs {
		r := &d.Reqs[i]
		if r.Limit.Wait == 0 {
			continue
		}
		if w := d.Res[i].RetryAfter; denied < 0 && d.Res[i].Allowed && w > 0 {
			if w > longest {
				longest = w
			}
			continue
		}
		atomic.AddInt64(&d.Meta[i].Limit.waiting, -1)
		r.Limit.Wait = 0
	}
	return longest
}

// ReleaseWaits gives back the places WaitFor left held.
func ReleaseWaits(d *Decision) {
	for i := range d.Reqs {
		if d.Reqs[i].Limit.Wait != 0 {
			atomic.AddInt64(&d.Meta[i].Limit.waiting, -1)
			d.Reqs[i].Limit.Wait = 0
		}
	}
}

// Waiting is the requests a limit holds now.
func Waiting(l *Limit) int64 { return atomic.LoadInt64(&l.waiting) }

// Taken returns what a decision that passed counted: its requests but the
// checks (which count nothing), for a refund when the client leaves while
// held.
func Taken(d *Decision) []store.Request {
	d.counted = d.counted[:0]
	for j := range d.Reqs {
		if d.Res[j].Allowed && d.Reqs[j].Mode == store.ModeTake {
			d.counted = append(d.counted, d.Reqs[j])
		}
	}
	return d.counted
}

// Held ends the hold of a request (WaitFor), once its turn came or its
// client left (left): it gives back the places the request held and, when
// its client left, what it counted in s and what the handlers before this
// one counted (ledger, nil for none), at now(). It returns the refunds'
// error, for the edge to log.
func Held(ctx context.Context, s store.Store, now func() time.Time, d *Decision, left bool, ledger *Ledger) error {
	ReleaseWaits(d)
	if !left {
		return nil
	}
	t := now()
	ctx = context.WithoutCancel(ctx)
	err := s.Refund(ctx, t, Taken(d))
	if ledger != nil {
		err = errors.Join(err, ledger.Refund(ctx, t))
	}
	return err
}
