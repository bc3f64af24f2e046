// Package clock is the one time source of edgelimit. Every module takes its
// Clock when it is provisioned (the real clock, unless a test installed a
// fake one before loading the configuration) and hands that same Clock to
// everything it builds: the handler decides with it, the memory store
// expires and sweeps with it, the cache judges freshness with it. Nothing
// that decides, expires or sweeps reads time.Now on its own, so no two parts
// of the plugin can disagree about "now".
//
// Network deadlines (a Redis timeout, the pause after Redis failed) are the
// exception: they measure real waiting, which a fake clock cannot shorten.
package clock

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Clock tells the time.
type Clock interface {
	Now() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Real is the system clock.
var Real Clock = realClock{}

// ID names a clock, so that state kept across configurations (a pooled
// memory store) is shared only by modules on the same clock.
func ID(c Clock) string {
	if f, ok := c.(*Fake); ok {
		return fmt.Sprintf("fake-%p", f)
	}
	return "real"
}

var installed atomic.Pointer[Fake]

// ForProvision returns the clock a module being provisioned now must use:
// the fake clock a test installed, or Real.
func ForProvision() Clock {
	if f := installed.Load(); f != nil {
		return f
	}
	return Real
}

// Install makes the modules provisioned from now on (until the returned
// function is called) use f. It is for tests; a module provisioned earlier
// keeps its clock.
func Install(f *Fake) (restore func()) {
	installed.Store(f)
	return func() { installed.CompareAndSwap(f, nil) }
}

// Fake is a settable clock for tests.
type Fake struct {
	mu       sync.Mutex
	t        time.Time
	sleepers []*sleeper
}

// NewFake returns a fake clock at t.
func NewFake(t time.Time) *Fake { return &Fake{t: t} }

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

// Add moves the fake time forward.
func (f *Fake) Add(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.wake()
	f.mu.Unlock()
}

// Set moves the fake time to t.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	f.t = t
	f.wake()
	f.mu.Unlock()
}

// TestBaseEnv names the environment variable that moves the fake clocks of
// the test suite: an RFC 3339 time ("2027-03-31T23:59:58Z"), or a signed
// offset ("-8760h", "+8760h") from the default base.
const TestBaseEnv = "EDGELIMIT_TEST_TIME"

// TestBase is where the test suite's fake clocks start: tomorrow at 10:00
// UTC on the real calendar, or what EDGELIMIT_TEST_TIME says. Tests add
// their own offsets to it; none may assume a date. It is always a whole
// hour (tests place requests on windows of up to an hour from it): a time
// off the hour is rounded up to the next, so 2027-03-31T23:59:58Z runs the
// suite from midnight into April.
func TestBase() time.Time {
	base, err := ParseTestBase(os.Getenv(TestBaseEnv), time.Now())
	if err != nil {
		panic(err)
	}
	return base
}

// ParseTestBase reads a value of EDGELIMIT_TEST_TIME against the real now.
// The default base is the next day's 10:00 UTC; an offset moves it.
func ParseTestBase(v string, now time.Time) (time.Time, error) {
	y, m, d := now.UTC().Date()
	def := time.Date(y, m, d+1, 10, 0, 0, 0, time.UTC)
	if v == "" {
		return def, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return hourUp(t.UTC()), nil
	}
	if off, err := time.ParseDuration(v); err == nil {
		return hourUp(def.Add(off)), nil
	}
	return time.Time{}, fmt.Errorf("%s=%q: want an RFC 3339 time (2027-03-31T23:59:58Z) or an offset (-8760h)", TestBaseEnv, v)
}

func hourUp(t time.Time) time.Time {
	if h := t.Truncate(time.Hour); h.Before(t) {
		return h.Add(time.Hour)
	}
	return t
}

// Sleep waits d on c, or until ctx is done (its error then). On a Fake it
// returns once the fake time has moved d past the time it was called at
// (Add, Set); Sleepers counts the sleeps under way.
func Sleep(ctx context.Context, c Clock, d time.Duration) error {
	if f, ok := c.(*Fake); ok {
		return f.sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sleeper is a Sleep on a Fake: done is closed when the fake time
// reaches until.
type sleeper struct {
	until time.Time
	done  chan struct{}
}

func (f *Fake) sleep(ctx context.Context, d time.Duration) error {
	f.mu.Lock()
	s := &sleeper{until: f.t.Add(d), done: make(chan struct{})}
	if !f.t.Before(s.until) {
		f.mu.Unlock()
		return nil
	}
	f.sleepers = append(f.sleepers, s)
	f.mu.Unlock()
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		f.mu.Lock()
		for i, o := range f.sleepers {
			if o == s {
				f.sleepers = append(f.sleepers[:i], f.sleepers[i+1:]...)
				break
			}
		}
		f.mu.Unlock()
		return ctx.Err()
	}
}

// wake ends the sleeps that are over; f.mu is held.
func (f *Fake) wake() {
	kept := f.sleepers[:0]
	for _, s := range f.sleepers {
		if f.t.Before(s.until) {
			kept = append(kept, s)
		} else {
			close(s.done)
		}
	}
	f.sleepers = kept
}

// Sleepers is the number of Sleeps on f under way: a test waits for the
// requests it holds to be held before it moves the time.
func (f *Fake) Sleepers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sleepers)
}
