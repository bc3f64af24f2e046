package policy

import (
	"sync"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// reports lets through one report (the log line and the event of a first
// denial) per client, limit and interval on this instance. The limiter
// marks a first denial each time a client goes from allowed to denied: once
// a window for a window, but for a token bucket, GCRA or a sliding window
// that a client drives hard, at every unit that frees up (hundreds of lines
// a minute for a few abusive clients). A client reported is not reported
// again until its quota would be whole again (the window's end, the bucket
// refilled; for a bucket, at least its rate's period).
type reports struct {
	mu  sync.Mutex
	due map[uint64]int64 // hash of counter and key: when it may be reported again (µs)
}

// maxReports bounds the clients remembered. When it is reached and no
// interval has ended, a first denial is reported and not remembered: more
// lines, never a silenced client.
const maxReports = 16384

// Quiet clears the first denials of d that this policy reported for the
// same client and limit less than an interval ago, and remembers the
// others; it sets d.FirstDenials to what remains. An edge calls it when
// Judge found first denials, before it reports them.
func Quiet(p *Policy, d *Decision, now time.Time) {
	at := now.UnixMicro()
	rs := &p.reports
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.due == nil {
		rs.due = make(map[uint64]int64)
	}
	d.FirstDenials = false
	for i := range d.Res {
		r := &d.Res[i]
		if !r.FirstDenial {
			continue
		}
		h := reportHash(d.Reqs[i].Counter, d.Reqs[i].Key)
		if due, ok := rs.due[h]; ok && at < due {
			r.FirstDenial = false
			continue
		}
		d.FirstDenials = true
		// Until the quota is whole again: a window's end, or a bucket
		// refilled. A bucket driven hard refills as fast as it empties:
		// at least the period of its rate, then.
		interval := int64(r.Reset / time.Microsecond)
		if l := &d.Reqs[i].Limit; l.Algorithm == limiter.TokenBucket || l.Algorithm == limiter.GCRA {
			if w := int64(l.Window / time.Microsecond); w > interval {
				interval = w
			}
		}
		if len(rs.due) >= maxReports {
			sweepReports(rs.due, at)
		}
		if len(rs.due) < maxReports {
			rs.due[h] = at + interval
		}
	}
}

// sweepReports forgets the clients whose interval has ended.
func sweepReports(due map[uint64]int64, at int64) {
	for h, t := range due {
		if t <= at {
			delete(due, h)
		}
	}
}

// reportHash is FNV-1a of counter, a zero byte and key: a collision at
// worst keeps one line of another client's from the log for an interval.
func reportHash(counter, key string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(counter); i++ {
		h = (h ^ uint64(counter[i])) * 1099511628211
	}
	h *= 1099511628211
	for i := 0; i < len(key); i++ {
		h = (h ^ uint64(key[i])) * 1099511628211
	}
	return h
}
