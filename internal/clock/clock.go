// Package clock is the time source of the edge_limit handler, replaceable
// by tests so that no test sleeps to cross a window boundary.
package clock

import (
	"sync"
	"sync/atomic"
	"time"
)

var now atomic.Pointer[func() time.Time]

// Now returns the current time, or the fake time a test has set.
func Now() time.Time {
	if f := now.Load(); f != nil {
		return (*f)()
	}
	return time.Now()
}

// Fake is a settable clock for tests.
type Fake struct {
	mu sync.Mutex
	t  time.Time
}

// Install makes Now return the fake clock's time until the returned function
// is called.
func Install(t time.Time) (*Fake, func()) {
	f := &Fake{t: t}
	fn := f.Now
	now.Store(&fn)
	return f, func() { now.Store(nil) }
}

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
	f.mu.Unlock()
}

// Set moves the fake time to t.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	f.t = t
	f.mu.Unlock()
}
