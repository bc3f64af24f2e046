package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// client is a simulated API client: X-Client is its key.
type client struct {
	name  string
	path  func(i int) string
	every time.Duration
}

// clientPrefixes are the names of the clients: no label of a series may
// carry one (a client key in a label would be a series per client).
var clientPrefixes = []string{"reader-", "heavy-", "searcher-", "shared-"}

func clients() []client {
	var cs []client
	for i := range 20 { // well within their limits; GETs the cache can answer
		cs = append(cs, client{fmt.Sprint("reader-", i), func(n int) string { return fmt.Sprintf("/api/items?id=%d", n%10) }, 500 * time.Millisecond})
	}
	for i := range 3 { // 10 req/s against 40/10s: most denied
		cs = append(cs, client{fmt.Sprint("heavy-", i), func(n int) string { return fmt.Sprintf("/api/items?id=%d&n=%d", i, n) }, 100 * time.Millisecond})
	}
	for i := range 5 { // 3 req/s against 20/10s
		cs = append(cs, client{fmt.Sprint("searcher-", i), func(int) string { return "/search" }, 333 * time.Millisecond})
	}
	for i := range 10 { // 3 req/s against 20/10s, on Redis
		cs = append(cs, client{fmt.Sprint("shared-", i), func(int) string { return "/shared" }, 333 * time.Millisecond})
	}
	return cs
}

// traffic is the load the clients send, until stop or its time is up.
type traffic struct {
	start    time.Time
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	sent     atomic.Int64
	failed   atomic.Int64
	mu       sync.Mutex
	statuses map[int]int64
	clients  int
}

// drive starts the clients against base for at most d: bounded in time,
// and each client in requests too (d over its period).
func drive(ctx context.Context, base string, d time.Duration) *traffic {
	ctx, cancel := context.WithTimeout(ctx, d)
	tr := &traffic{start: time.Now(), cancel: cancel, statuses: map[int]int64{}}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	cs := clients()
	tr.clients = len(cs)
	for _, c := range cs {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			tick := time.NewTicker(c.every)
			defer tick.Stop()
			for i := 0; i < int(d/c.every)+1; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+c.path(i), nil)
				req.Header.Set("X-Client", c.name)
				resp, err := hc.Do(req)
				if ctx.Err() != nil {
					return // the run is over: not a request
				}
				tr.sent.Add(1)
				if err != nil {
					tr.failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				tr.mu.Lock()
				tr.statuses[resp.StatusCode]++
				tr.mu.Unlock()
			}
		}()
	}
	return tr
}

// stop ends the load and waits for the clients.
func (tr *traffic) stop() {
	tr.cancel()
	tr.wg.Wait()
}

// status is how many responses had the status code.
func (tr *traffic) status(code int) int64 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.statuses[code]
}

// String tells the requests sent and their statuses, as "123 x 200".
func (tr *traffic) String() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var parts []string
	for _, code := range slices.Sorted(maps.Keys(tr.statuses)) {
		parts = append(parts, fmt.Sprintf("%d x %d", tr.statuses[code], code))
	}
	if n := tr.failed.Load(); n > 0 {
		parts = append(parts, fmt.Sprintf("%d failed", n))
	}
	return fmt.Sprintf("%d requests: %s", tr.sent.Load(), strings.Join(parts, ", "))
}
