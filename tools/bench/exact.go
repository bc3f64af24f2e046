package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// exactResult is the correctness check: two Caddy instances share one
// Redis and a limit of Limit requests per Window; concurrent clients send
// one client's requests to both, more than the limit allows, and the 200s
// are counted per window (the X-RateLimit-Reset of each response).
type exactResult struct {
	Instances int           `json:"instances"`
	Clients   int           `json:"clients"`
	Limit     int           `json:"limit"`
	Window    string        `json:"window"`
	Requests  int           `json:"requests"`
	Other     int           `json:"other_statuses"` // neither 200 nor 429
	Windows   []windowCount `json:"windows"`
	// Full windows (neither the first nor the last, which the run only
	// partly covered) where admitted == limit, of all full windows.
	FullWindows  int `json:"full_windows"`
	ExactWindows int `json:"exact_windows"`
	// EVALSHA per request during the check.
	RedisEvalsha float64 `json:"redis_evalsha_per_request"`
	// EXACT, MISMATCH, or INCONCLUSIVE (no full window, or a full window
	// the clients did not push past the limit).
	Verdict string `json:"verdict"`
}

type windowCount struct {
	Reset    int64 `json:"reset"` // X-RateLimit-Reset: the window's end, unix seconds
	Admitted int   `json:"admitted"`
	Denied   int   `json:"denied"`
	PerInst  []int `json:"admitted_per_instance"`
	Full     bool  `json:"full"`
}

func (x *exactResult) String() string {
	s := fmt.Sprintf("%d instances, %d clients, one client key, limit %d per %s: %d requests, ",
		x.Instances, x.Clients, x.Limit, x.Window, x.Requests)
	for i, w := range x.Windows {
		if i > 0 {
			s += ", "
		}
		tag := ""
		if !w.Full {
			tag = " (partial)"
		}
		s += fmt.Sprintf("%d%s", w.Admitted, tag)
	}
	return fmt.Sprintf("%sadmitted per window; %d of %d full windows exact; %.3f EVALSHA/request: %s",
		s+" ", x.ExactWindows, x.FullWindows, x.RedisEvalsha, x.Verdict)
}

// exactCheck runs the check for about 3 windows plus a margin, bounded in
// requests too.
func (e *env) exactCheck(ctx context.Context, limit int, window time.Duration, clients int) (*exactResult, error) {
	c := exactConfig(limit, window.String())
	var insts []*caddyInstance
	defer func() {
		for _, in := range insts {
			in.p.stop()
		}
	}()
	for i := 0; i < 2; i++ {
		in, err := e.startCaddy(ctx, c)
		if err != nil {
			return nil, err
		}
		insts = append(insts, in)
	}
	// A key of its own, so that nothing counted before interferes.
	key := fmt.Sprintf("exact-%d", time.Now().UnixNano())
	tr := &http.Transport{MaxIdleConnsPerHost: clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}

	type obs struct {
		inst   int
		status int
		reset  int64
	}
	const maxRequests = 2_000_000
	var total atomic.Int64
	r0, err := e.redis.stats(ctx)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(3*window + window/4)
	var wg sync.WaitGroup
	results := make([][]obs, clients)
	errs := make([]error, clients)
	for g := 0; g < clients; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := g; time.Now().Before(deadline) && total.Add(1) <= maxRequests && ctx.Err() == nil; i++ {
				in := i % len(insts) // alternate between the instances
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet,
					fmt.Sprintf("http://127.0.0.1:%d/", insts[in].ports.site), nil)
				req.Header.Set("X-Api-Key", key)
				resp, err := hc.Do(req)
				if err != nil {
					errs[g] = err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				reset, _ := strconv.ParseInt(resp.Header.Get("X-RateLimit-Reset"), 10, 64)
				results[g] = append(results[g], obs{in, resp.StatusCode, reset})
			}
		}(g)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("exactness check: %w", err)
		}
	}
	r1, err := e.redis.stats(ctx)
	if err != nil {
		return nil, err
	}

	x := &exactResult{Instances: len(insts), Clients: clients, Limit: limit, Window: window.String()}
	byReset := map[int64]*windowCount{}
	for _, rs := range results {
		for _, o := range rs {
			x.Requests++
			if o.status != 200 && o.status != 429 {
				x.Other++
				continue
			}
			w := byReset[o.reset]
			if w == nil {
				w = &windowCount{Reset: o.reset, PerInst: make([]int, len(insts))}
				byReset[o.reset] = w
			}
			if o.status == 200 {
				w.Admitted++
				w.PerInst[o.inst]++
			} else {
				w.Denied++
			}
		}
	}
	for _, w := range byReset {
		x.Windows = append(x.Windows, *w)
	}
	sort.Slice(x.Windows, func(i, j int) bool { return x.Windows[i].Reset < x.Windows[j].Reset })
	_, evalsha := commands(r0, r1)
	if x.Requests > 0 {
		x.RedisEvalsha = float64(evalsha) / float64(x.Requests)
	}
	over, pushed := false, true
	for i := range x.Windows {
		w := &x.Windows[i]
		if w.Admitted > limit {
			over = true
		}
		if i == 0 || i == len(x.Windows)-1 {
			continue
		}
		w.Full = true
		x.FullWindows++
		if w.Admitted == limit {
			x.ExactWindows++
		}
		if w.Denied == 0 {
			pushed = false
		}
	}
	switch {
	case over || x.Other > 0 || x.ExactWindows < x.FullWindows:
		x.Verdict = "MISMATCH"
	case x.FullWindows == 0 || !pushed:
		x.Verdict = "INCONCLUSIVE"
	default:
		x.Verdict = "EXACT"
	}
	return x, nil
}
