package store

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// Admin is implemented by the stores that let an operator look at and
// change one client's state (the admin API's inspect, reset and credit).
// Requests name counters, keys and numbers as for Take; Cost is the cost of
// the request Peek imagines. None of these counts a request.
type Admin interface {
	// Peek writes to results[i] what a request of reqs[i].Cost would meet
	// at now (limiter.Limit.Peek), counting nothing.
	Peek(ctx context.Context, now time.Time, reqs []Request, results []limiter.Result) error
	// Reset forgets the state of each request's counter and key: the
	// client starts afresh.
	Reset(ctx context.Context, now time.Time, reqs []Request) error
	// Credit gives units back to each request's counter and key
	// (limiter.Limit.Credit: never beyond a full window or bucket), and
	// writes to given[i] the units reqs[i] actually got.
	Credit(ctx context.Context, now time.Time, reqs []Request, units int64, given []int64) error
}

// Peek implements Admin.
func (m *Memory) Peek(_ context.Context, now time.Time, reqs []Request, results []limiter.Result) error {
	if len(results) < len(reqs) {
		return ErrTooFewResults
	}
	t := now.UnixMicro()
	for i := range reqs {
		r := &reqs[i]
		h := HashRequest(m.seed, r)
		sh := m.shardOf(h)
		sh.mu.Lock()
		st, _ := m.get(h, t)
		sh.mu.Unlock()
		results[i] = r.Limit.Peek(st, t, r.Cost)
	}
	return nil
}

// Reset implements Admin.
func (m *Memory) Reset(_ context.Context, _ time.Time, reqs []Request) error {
	for i := range reqs {
		h := HashRequest(m.seed, &reqs[i])
		sh := m.shardOf(h)
		sh.mu.Lock()
		if _, ok := sh.m[h]; ok {
			delete(sh.m, h)
			atomic.AddInt64(&m.keys, -1)
		}
		sh.mu.Unlock()
	}
	return nil
}

// Credit implements Admin.
func (m *Memory) Credit(_ context.Context, now time.Time, reqs []Request, units int64, given []int64) error {
	if len(given) < len(reqs) {
		return ErrTooFewResults
	}
	t := now.UnixMicro()
	for i := range reqs {
		r := &reqs[i]
		h := HashRequest(m.seed, r)
		sh := m.shardOf(h)
		sh.mu.Lock()
		given[i] = 0
		if st, ok := m.get(h, t); ok {
			given[i] = r.Limit.Credit(&st, t, units)
			sh.m[h] = st
		}
		sh.mu.Unlock()
	}
	return nil
}

var _ Admin = (*Memory)(nil)
