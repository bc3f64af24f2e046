// Package throttle keeps repeated warnings quiet: a storage outage is
// reported once per interval, not once per request.
package throttle

import (
	"sync/atomic"
	"time"
)

// Log lets a message through at most once per period. The zero value is
// ready to use.
type Log struct{ last atomic.Int64 }

// Allow reports whether a message may be written at now.
func (l *Log) Allow(now time.Time, every time.Duration) bool {
	t := now.UnixNano()
	last := l.last.Load()
	return t-last >= int64(every) && l.last.CompareAndSwap(last, t)
}
