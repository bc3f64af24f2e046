package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// env holds what every measurement shares.
type env struct {
	opt      *options
	dir      string // temporary files
	caddy    string // the Caddy binary
	redis    *benchRedis
	upstream *proc
	upPort   int
	seq      int // numbers the Caddy logs
}

// caddyEnv is the environment of every Caddy: the same GOGC and
// GOMAXPROCS, and Caddy's data and config directories in the temporary
// directory.
func (e *env) caddyEnv() []string {
	return []string{
		"GOMAXPROCS=" + fmt.Sprint(e.opt.gomaxprocs),
		"GOGC=" + fmt.Sprint(e.opt.gogc),
		"XDG_DATA_HOME=" + filepath.Join(e.dir, "data"),
		"XDG_CONFIG_HOME=" + filepath.Join(e.dir, "config"),
	}
}

// caddyInstance is one running Caddy.
type caddyInstance struct {
	p     *proc
	ports ports
	base  string // its files' path, less the ending
}

// startCaddy writes c's Caddyfile on fresh ports and starts Caddy with it,
// pinned to the Caddy CPU, and waits until it listens.
func (e *env) startCaddy(ctx context.Context, c *config) (*caddyInstance, error) {
	return e.startCaddyWith(ctx, c, e.redis, e.opt.caddyCPU, nil, nil, 20*time.Second)
}

// startCaddyWith starts Caddy as startCaddy does, with its Redis (nil for
// none), pinned to cpus ("" for none), wrap before its command line (as
// callgrind.Args), env added to caddyEnv's, and as long as wait to listen.
// Its log is <name>.log; wrap's files may use <name> (returned in the
// instance) as their prefix.
func (e *env) startCaddyWith(ctx context.Context, c *config, redis *benchRedis, cpus string, wrap func(base string) []string, env []string, wait time.Duration) (*caddyInstance, error) {
	var ps ports
	var err error
	if ps.site, err = freePort(); err != nil {
		return nil, err
	}
	if ps.admin, err = freePort(); err != nil {
		return nil, err
	}
	if c.Redis {
		if redis == nil {
			return nil, fmt.Errorf("%s needs Redis", c.Name)
		}
		ps.redis = redis.port
	}
	if c.Upstream {
		ps.upstream = e.upPort
	}
	e.seq++
	base := filepath.Join(e.dir, fmt.Sprintf("%03d-%s", e.seq, c.Name))
	if err := os.WriteFile(base+".Caddyfile", []byte(caddyfile(c, ps)), 0o644); err != nil {
		return nil, err
	}
	argv := []string{e.caddy, "run", "--config", base + ".Caddyfile", "--adapter", "caddyfile"}
	if wrap != nil {
		argv = append(wrap(base), argv...)
	}
	p, err := start("caddy "+c.Name, cpus, append(e.caddyEnv(), env...), base+".log", argv...)
	if err != nil {
		return nil, err
	}
	if err := waitPort(ctx, p, ps.site, wait); err != nil {
		p.stop()
		return nil, err
	}
	return &caddyInstance{p: p, ports: ps, base: base}, nil
}

var client = &http.Client{Timeout: 10 * time.Second}

type probeResult struct {
	status int
	header http.Header
	body   string
}

func get(ctx context.Context, url, key string) (probeResult, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return probeResult{}, err
	}
	if key != "" {
		req.Header.Set("X-Api-Key", key)
	}
	resp, err := client.Do(req)
	if err != nil {
		return probeResult{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return probeResult{resp.StatusCode, resp.Header, string(b)}, err
}

// probe checks that c answers as it should before load: "ok", with
// rate-limit headers when limited, from the cache when cached, 429 once a
// client is over the limit of the deny configuration.
func probe(ctx context.Context, c *config, port int) error {
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	fail := func(what string, r probeResult) error {
		return fmt.Errorf("%s: %s: got %d %q, headers %v", c.Name, what, r.status, r.body, r.header)
	}
	key := fmt.Sprintf("probe-%d", time.Now().UnixNano())
	r, err := get(ctx, url, key)
	if err != nil {
		return fmt.Errorf("%s: %w", c.Name, err)
	}
	if c.Expect == "429" {
		if r.status != 429 || r.header.Get("Retry-After") == "" || r.header.Get("X-RateLimit-Limit") == "" {
			return fail("want 429 with Retry-After and X-RateLimit-Limit", r)
		}
		return nil
	}
	if r.status != 200 || r.body != "ok" {
		return fail(`want 200 "ok"`, r)
	}
	limited := c.Global != nil || strings.Contains(c.Site(ports{}), "edge_limit")
	if limited && r.header.Get("X-RateLimit-Limit") == "" {
		return fail("want X-RateLimit-Limit", r)
	}
	switch {
	case c.Cache:
		// The first GET stored the entry (MISS); from now on: HIT.
		for i := 0; i < 2; i++ {
			if r, err = get(ctx, url, key); err != nil {
				return fmt.Errorf("%s: %w", c.Name, err)
			}
			if r.status != 200 || r.body != "ok" || r.header.Get("Bloom-Status") != "HIT" {
				return fail("want 200 \"ok\" with Bloom-Status: HIT", r)
			}
		}
	case c.Expect == "deny":
		if r, err = get(ctx, url, key); err != nil {
			return fmt.Errorf("%s: %w", c.Name, err)
		}
		if r.status != 429 || r.header.Get("Retry-After") == "" {
			return fail("want 429 with Retry-After", r)
		}
	}
	return nil
}

// memStats are the Go runtime's counts that the bench reads from Caddy's
// admin endpoint (expvar's memstats at /debug/vars): allocations, bytes
// allocated, garbage collections.
type memStats struct {
	Mallocs    uint64
	TotalAlloc uint64
	NumGC      uint64
}

// mallocs reads Caddy's memStats.
func mallocs(ctx context.Context, adminPort int) (memStats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/debug/vars", adminPort), nil)
	if err != nil {
		return memStats{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return memStats{}, err
	}
	defer resp.Body.Close()
	var v struct {
		Memstats memStats `json:"memstats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return memStats{}, fmt.Errorf("/debug/vars: %w", err)
	}
	return v.Memstats, nil
}

// sample is one measurement of one configuration.
type sample struct {
	Round int `json:"round"`
	// The measurement's place in the run: plain's on either side are its
	// neighbours.
	Seq          int     `json:"seq"`
	Requests     int64   `json:"requests"`
	Seconds      float64 `json:"seconds"`
	RPS          float64 `json:"rps"`
	P50ms        float64 `json:"p50_ms"`
	P99ms        float64 `json:"p99_ms"`
	Non2xx       int64   `json:"non_2xx"`
	SocketErrors int64   `json:"socket_errors"`
	// CPU time Caddy used per request, user + system, microseconds.
	CaddyCPUus float64 `json:"caddy_cpu_us_per_request"`
	perRequest
	// The commands MONITOR saw (RedisRoundTrips counts them per request).
	RedisMonitor  map[string]int `json:"redis_monitor_commands,omitempty"`
	CaddyLogWarns int            `json:"caddy_log_warnings"`
	// CPU time used on Caddy's CPU by anything but Caddy during the
	// measurement, per second (all CPUs when unpinned), and Caddy's own.
	OtherCores    float64 `json:"other_cpu_on_caddy_cpu"`
	CaddyCPUShare float64 `json:"caddy_cpu_share"`
	OtherLoadCPU  float64 `json:"other_cpu_on_wrk_cpu"`
	// The mean rps of the plain measurements just before and after.
	PlainAround *float64 `json:"plain_rps_around,omitempty"`
	// Measurements of this round and configuration dropped as noisy.
	Retries int `json:"retries,omitempty"`
}

// perRequest holds the figures per request that only some configurations
// have (nil elsewhere), in a sample and, as medians, in a summary.
type perRequest struct {
	// Allocations per request, from Caddy's runtime.MemStats.Mallocs.
	AllocsPerReq *float64 `json:"allocs_per_request,omitempty"`
	// The upstream's CPU time per request, for cache-hit and proxy.
	UpstreamCPUus *float64 `json:"upstream_cpu_us_per_request,omitempty"`
	// Redis's CPU time and commands per request, for redis-3.
	RedisCPUus   *float64 `json:"redis_cpu_us_per_request,omitempty"`
	RedisCmds    *float64 `json:"redis_commands_per_request,omitempty"`
	RedisEvalsha *float64 `json:"redis_evalsha_per_request,omitempty"`
	// Top-level commands per request (script internals left out), counted
	// with MONITOR over 100 requests before the load.
	RedisRoundTrips *float64 `json:"redis_round_trips_per_request,omitempty"`
}

// fields lists p's figures, in a fixed order.
func (p *perRequest) fields() [6]**float64 {
	return [...]**float64{&p.AllocsPerReq, &p.UpstreamCPUus, &p.RedisCPUus, &p.RedisCmds, &p.RedisEvalsha, &p.RedisRoundTrips}
}

func ptr(f float64) *float64 { return &f }

// measure starts c, checks it, warms it up, measures it once and stops it.
func (e *env) measure(ctx context.Context, c *config, round int) (sample, error) {
	s := sample{Round: round}
	var insts []*caddyInstance
	defer func() {
		for _, inst := range insts {
			inst.p.stop()
		}
	}()
	var urls []string
	for i := 0; i < c.instances(); i++ {
		inst, err := e.startCaddy(ctx, c)
		if err != nil {
			return s, err
		}
		insts = append(insts, inst)
		if err := probe(ctx, c, inst.ports.site); err != nil {
			return s, fmt.Errorf("%w\n%s", err, inst.p.tail())
		}
		urls = append(urls, fmt.Sprintf("http://127.0.0.1:%d/", inst.ports.site))
	}
	if c.Redis {
		// Round trips per request, counted with MONITOR over 100
		// requests of new clients (before the load: MONITOR is slow).
		rt, cmds, err := e.redis.roundTrips(ctx, 100, func(i int) error {
			r, err := get(ctx, urls[i%len(urls)], fmt.Sprintf("rt-%d-%d", e.seq, i))
			if err == nil && r.status != 200 {
				err = fmt.Errorf("%s: status %d", c.Name, r.status)
			}
			return err
		})
		if err != nil {
			return s, err
		}
		s.RedisRoundTrips, s.RedisMonitor = ptr(rt), cmds
	}
	script, err := writeScript(e.dir, c.Keys)
	if err != nil {
		return s, err
	}
	if e.opt.warmup > 0 {
		if _, _, err := e.load(ctx, script, urls, e.opt.warmup); err != nil {
			return s, fmt.Errorf("%s warm-up: %w", c.Name, err)
		}
	}

	// Snapshots before.
	m0, merr := sumMallocs(ctx, insts)
	cpu0, err := sumCPU(insts)
	if err != nil {
		return s, err
	}
	var up0 float64
	if c.Upstream {
		up0, _ = cpuSeconds(e.upstream.pid())
	}
	busy0, _ := busyCPU(e.opt.caddyCPU)
	load0, _ := busyCPU(e.opt.loadCPU)
	var r0 redisStats
	if c.Redis {
		if r0, err = e.redis.stats(ctx); err != nil {
			return s, err
		}
	}

	profiled := make(chan error, 1)
	if e.opt.pprof != "" {
		go func() {
			profiled <- e.cpuProfile(ctx, insts[0].ports.admin, filepath.Join(e.opt.pprof, fmt.Sprintf("%s-r%d.pprof", c.Name, round)))
		}()
	} else {
		profiled <- nil
	}
	w, out, err := e.load(ctx, script, urls, e.opt.duration)
	if err != nil {
		return s, fmt.Errorf("%s: %w", c.Name, err)
	}
	if err := <-profiled; err != nil {
		return s, fmt.Errorf("%s: CPU profile: %w", c.Name, err)
	}

	// Snapshots after.
	busy1, _ := busyCPU(e.opt.caddyCPU)
	load1, _ := busyCPU(e.opt.loadCPU)
	cpu1, err := sumCPU(insts)
	if err != nil {
		return s, err
	}
	ours := (cpu1 - cpu0) + w.CPU
	m1, merr2 := sumMallocs(ctx, insts)
	if w.Requests == 0 {
		return s, fmt.Errorf("%s: %w:\n%s", c.Name, errNoResponses, out)
	}
	n := float64(w.Requests)
	s.Requests, s.Seconds, s.RPS = w.Requests, w.Seconds, w.RPS
	s.P50ms, s.P99ms = w.P50ms, w.P99ms
	s.Non2xx, s.SocketErrors = w.Non2xx, w.SocketErrors
	s.CaddyCPUus = (cpu1 - cpu0) / n * 1e6
	if merr == nil && merr2 == nil && m1.Mallocs >= m0.Mallocs {
		s.AllocsPerReq = ptr(float64(m1.Mallocs-m0.Mallocs) / n)
	}
	if c.Upstream {
		up1, _ := cpuSeconds(e.upstream.pid())
		s.UpstreamCPUus = ptr((up1 - up0) / n * 1e6)
		ours += up1 - up0
	}
	if c.Redis {
		r1, err := e.redis.stats(ctx)
		if err != nil {
			return s, err
		}
		all, evalsha := commands(r0, r1)
		s.RedisCmds = ptr(float64(all) / n)
		s.RedisEvalsha = ptr(float64(evalsha) / n)
		s.RedisCPUus = ptr((r1.cpu - r0.cpu) / n * 1e6)
		ours += r1.cpu - r0.cpu
	}
	// What else ran on Caddy's CPU (or, unpinned, on the machine besides
	// Caddy, wrk, the upstream and Redis): another load spoils the figures.
	if e.opt.caddyCPU != "" {
		// And on the other CPU, besides wrk, Redis and the upstream
		// (the kernel's loopback work is partly counted here too).
		s.OtherLoadCPU = math.Max(0, (load1-load0-(ours-(cpu1-cpu0)))/w.Seconds)
		ours = cpu1 - cpu0
	}
	if w.Seconds > 0 && busy1 > busy0 {
		s.OtherCores = math.Max(0, (busy1-busy0-ours)/w.Seconds)
	}
	s.CaddyCPUShare = (cpu1 - cpu0) / w.Seconds

	// Statuses under load: all 2xx, or mostly denials.
	switch c.Expect {
	case "200":
		if w.Non2xx > 0 {
			return s, fmt.Errorf("%s: %d of %d responses under load were not 2xx\n%s", c.Name, w.Non2xx, w.Requests, insts[0].p.tail())
		}
	case "429":
		if w.Non2xx < w.Requests {
			return s, fmt.Errorf("%s: %d of %d responses were not 429", c.Name, w.Requests-w.Non2xx, w.Requests)
		}
	case "deny":
		if w.Non2xx*2 < w.Requests {
			return s, fmt.Errorf("%s: only %d of %d responses were denials", c.Name, w.Non2xx, w.Requests)
		}
		// Still answering 429 after the load.
		r, err := get(ctx, urls[0], "client-00001")
		if err != nil || r.status != 429 {
			return s, fmt.Errorf("%s: after load: %d %v", c.Name, r.status, err)
		}
	}
	for _, inst := range insts {
		if inst.p.exited() {
			return s, fmt.Errorf("%s: Caddy exited during the run: %v\n%s", c.Name, inst.p.err, inst.p.tail())
		}
		inst.p.stop()
		s.CaddyLogWarns += countWarnings(inst.p.log)
	}
	return s, nil
}

// load runs one wrk per URL at once for d, the connections shared out,
// and adds up what they report: requests, rates, statuses and CPU are
// sums, latencies the slowest wrk's.
func (e *env) load(ctx context.Context, script string, urls []string, d time.Duration) (wrkResult, string, error) {
	type run struct {
		w   wrkResult
		out string
		err error
	}
	runs := make([]run, len(urls))
	var wg sync.WaitGroup
	for i, u := range urls {
		conns := e.opt.conns / len(urls)
		if i < e.opt.conns%len(urls) {
			conns++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &runs[i]
			r.w, r.out, r.err = runWrk(ctx, e.opt.loadCPU, script, u, max(conns, 1), d)
		}()
	}
	wg.Wait()
	var sum wrkResult
	var outs []string
	for _, r := range runs {
		if r.err != nil {
			return sum, r.out, r.err
		}
		outs = append(outs, r.out)
		sum.Requests += r.w.Requests
		sum.Seconds = math.Max(sum.Seconds, r.w.Seconds)
		sum.RPS += r.w.RPS
		sum.P50ms = math.Max(sum.P50ms, r.w.P50ms)
		sum.P99ms = math.Max(sum.P99ms, r.w.P99ms)
		sum.Non2xx += r.w.Non2xx
		sum.SocketErrors += r.w.SocketErrors
		sum.Timeouts += r.w.Timeouts
		sum.CPU += r.w.CPU
	}
	return sum, strings.Join(outs, "\n"), nil
}

// sumMallocs adds up the memStats of every instance.
func sumMallocs(ctx context.Context, insts []*caddyInstance) (memStats, error) {
	var n memStats
	for _, inst := range insts {
		m, err := mallocs(ctx, inst.ports.admin)
		if err != nil {
			return memStats{}, err
		}
		n.Mallocs += m.Mallocs
		n.TotalAlloc += m.TotalAlloc
		n.NumGC += m.NumGC
	}
	return n, nil
}

// sumCPU adds up the CPU time of every instance, in seconds.
func sumCPU(insts []*caddyInstance) (float64, error) {
	var t float64
	for _, inst := range insts {
		c, err := cpuSeconds(inst.p.pid())
		if err != nil {
			return 0, err
		}
		t += c
	}
	return t, nil
}

// countWarnings counts the lines of a Caddy log at level warn or worse.
func countWarnings(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "HTTP/2 skipped") || strings.Contains(l, "HTTP/3 skipped") ||
			strings.Contains(l, "exiting; byeee") || strings.Contains(l, `"error":"context canceled"`) {
			continue // start, stop, and wrk closing its connections at the end
		}
		if strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`) ||
			strings.Contains(l, `"level":"fatal"`) || strings.Contains(l, "panic:") {
			n++
		}
	}
	return n
}

// cpuProfile saves a CPU profile of Caddy (its admin's /debug/pprof) over
// the measured time less a second, so that it ends before wrk does.
func (e *env) cpuProfile(ctx context.Context, adminPort int, path string) error {
	secs := int(e.opt.duration/time.Second) - 1
	if secs < 1 {
		secs = 1
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=%d", adminPort, secs), nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Timeout: time.Duration(secs+30) * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
