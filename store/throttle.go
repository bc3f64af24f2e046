package store

import (
	"sync/atomic"
	"time"
)

// Throttle lets a message through at most once per period: a storage
// outage is reported once per interval, not once per request, however
// many requests report it at once. The zero value is ready to use.
type Throttle struct{ last int64 }

// Allow reports whether a message may be written at now. Concurrent
// callers with times out of order are refused as well as later ones: only
// the caller that moves the last time forward by the period writes.
func (t *Throttle) Allow(now time.Time, every time.Duration) bool {
	n := now.UnixNano()
	last := atomic.LoadInt64(&t.last)
	return n-last >= int64(every) && atomic.CompareAndSwapInt64(&t.last, last, n)
}
