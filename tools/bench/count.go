package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgelimit/caddy-edgelimit/tools/bench/callgrind"
)

// counted is one configuration counted under callgrind, which counts the
// instructions a process executes whatever else the machine does: the
// figure the targets are checked on, where req/s ratios move by a quarter
// on a shared machine.
type counted struct {
	// Requests counted (after the warm-up), over Conns keep-alive
	// connections.
	Requests int `json:"requests"`
	Conns    int `json:"connections"`
	// Caddy's instructions per request, every instance's, the whole
	// process (net/http, the runtime and the garbage collector included).
	CaddyInstr float64 `json:"caddy_instructions_per_request"`
	// Caddy's allocations per request (runtime.MemStats.Mallocs), the
	// bytes they took (TotalAlloc), and the garbage collections of the
	// count (NumGC): fewer bytes, or a larger live heap, mean fewer.
	Allocs     float64 `json:"allocs_per_request"`
	AllocBytes float64 `json:"alloc_bytes_per_request"`
	GCs        uint64  `json:"gcs"`
	// Redis's instructions per request, for the Redis configurations:
	// what one decision costs Redis, its share of the batch's EVALSHA
	// included.
	RedisInstr *float64 `json:"redis_instructions_per_request,omitempty"`
	// EVALSHA per request while Redis was counted: how many decisions
	// each script call batched (fewer than under wrk's 64 connections).
	RedisEvalsha *float64 `json:"redis_evalsha_per_request,omitempty"`
	// How long the count took, start to stop.
	Seconds float64 `json:"seconds"`
}

// countConns is the number of keep-alive connections of the counted load,
// as the issue measured: enough for the Redis store to batch decisions,
// few enough for one Caddy under valgrind.
const countConns = 8

// countAll counts every selected configuration under callgrind: first
// Caddy (GOMAXPROCS and GOGC as under wrk) under valgrind, with the
// bench's own Redis; then, for the Redis configurations, a redis-server of
// its own under valgrind, with Caddy running as usual. Each count is
// warm-up requests first (every client key once, and at least warm), then
// the counters zeroed and n requests over countConns connections, each
// with one of the configuration's client keys in turn. Only one of the two
// runs under valgrind at a time, so that neither waits on the other's
// slowness (a Caddy waiting longer for Redis would count more of the
// scheduler's idle loop).
func (e *env) countAll(ctx context.Context, selected []*config, warm, n int) (map[string]*counted, error) {
	if err := callgrind.Available(); err != nil {
		return nil, err
	}
	var cgRedis *benchRedis
	out := map[string]*counted{}
	for _, c := range selected {
		k, err := e.count(ctx, c, e.redis, true, warm, n)
		if err != nil {
			return nil, fmt.Errorf("callgrind %s: %w", c.Name, err)
		}
		if c.Redis {
			if cgRedis == nil {
				fmt.Println("callgrind: starting redis-server under valgrind...")
				cgRedis, err = startRedisWith(ctx, e.dir, "", "redis-callgrind",
					callgrind.Args(filepath.Join(e.dir, "redis.callgrind")), 120*time.Second)
				if err != nil {
					return nil, err
				}
				defer cgRedis.stop()
			}
			r, err := e.count(ctx, c, cgRedis, false, warm, n)
			if err != nil {
				return nil, fmt.Errorf("callgrind %s, Redis: %w", c.Name, err)
			}
			k.RedisInstr, k.RedisEvalsha = r.RedisInstr, r.RedisEvalsha
			k.Seconds += r.Seconds
		}
		out[c.Name] = k
		line := fmt.Sprintf("callgrind  %-11s %9s instructions/request  %6.1f allocs/request (%.0f bytes; %d GCs)", c.Name, thousands(k.CaddyInstr), k.Allocs, k.AllocBytes, k.GCs)
		if k.RedisInstr != nil {
			line += fmt.Sprintf("  Redis %s instructions/request, %.3f EVALSHA/request", thousands(*k.RedisInstr), *k.RedisEvalsha)
		}
		line += fmt.Sprintf("  (%.0fs)", k.Seconds)
		fmt.Println(line)
	}
	return out, nil
}

// count counts c once: Caddy under valgrind (caddy) with redis as it is, or
// Caddy as usual with redis under valgrind (!caddy: only the Redis figures
// are set).
func (e *env) count(ctx context.Context, c *config, redis *benchRedis, caddy bool, warm, n int) (*counted, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	if !c.Redis {
		redis = nil
	}
	t := time.Now()
	var insts []*caddyInstance
	defer func() {
		for _, inst := range insts {
			inst.p.stop()
		}
	}()
	var urls []string
	for i := 0; i < c.instances(); i++ {
		var inst *caddyInstance
		var err error
		if caddy {
			wrap := func(base string) []string { return callgrind.Args(base + ".callgrind") }
			inst, err = e.startCaddyWith(ctx, c, redis, "", wrap, callgrind.GoEnv, 3*time.Minute)
		} else {
			inst, err = e.startCaddyWith(ctx, c, redis, e.opt.caddyCPU, nil, nil, 20*time.Second)
		}
		if err != nil {
			return nil, err
		}
		insts = append(insts, inst)
		urls = append(urls, fmt.Sprintf("http://127.0.0.1:%d/", inst.ports.site))
	}
	if err := drive(ctx, c, urls, 0, max(warm, c.Keys)); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	m0, err := sumMallocs(ctx, insts)
	if err != nil {
		return nil, err
	}
	if caddy {
		for _, inst := range insts {
			if err := callgrind.Zero(inst.p.pid()); err != nil {
				return nil, err
			}
		}
	}
	var r0 redisStats
	if redis != nil {
		if !caddy {
			if err := callgrind.Zero(redis.p.pid()); err != nil {
				return nil, err
			}
		}
		if r0, err = redis.stats(ctx); err != nil {
			return nil, err
		}
	}
	if err := drive(ctx, c, urls, max(warm, c.Keys), n); err != nil {
		return nil, err
	}
	k := &counted{Requests: n, Conns: countConns}
	if caddy {
		var ir int64
		for _, inst := range insts {
			v, err := callgrind.Dump(inst.p.pid(), inst.base+".callgrind", "")
			if err != nil {
				return nil, err
			}
			ir += v
		}
		k.CaddyInstr = float64(ir) / float64(n)
	}
	if redis != nil {
		if !caddy {
			v, err := callgrind.Dump(redis.p.pid(), filepath.Join(e.dir, "redis.callgrind"), "")
			if err != nil {
				return nil, err
			}
			k.RedisInstr = ptr(float64(v) / float64(n))
		}
		r1, err := redis.stats(ctx)
		if err != nil {
			return nil, err
		}
		_, evalsha := commands(r0, r1)
		k.RedisEvalsha = ptr(float64(evalsha) / float64(n))
	}
	m1, err := sumMallocs(ctx, insts)
	if err != nil {
		return nil, err
	}
	k.Allocs = float64(m1.Mallocs-m0.Mallocs) / float64(n)
	k.AllocBytes = float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n)
	k.GCs = m1.NumGC - m0.NumGC
	k.Seconds = time.Since(t).Seconds()
	return k, nil
}

// drive sends n requests to urls over countConns keep-alive connections
// (spread over the instances), request i with client key from+i of c's
// keys (as the wrk script names them), and checks each status as c
// expects it.
func drive(ctx context.Context, c *config, urls []string, from, n int) error {
	return callgrind.Drive(countConns, n, func(cl *http.Client, g, i int) error {
		return send(ctx, cl, c, urls[g%len(urls)], fmt.Sprintf("client-%05d", (from+i)%c.Keys+1))
	})
}

func send(ctx context.Context, cl *http.Client, c *config, url, key string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Api-Key", key)
	resp, err := cl.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	ok := resp.StatusCode == 200
	switch c.Expect {
	case "deny":
		ok = ok || resp.StatusCode == 429
	case "429":
		ok = resp.StatusCode == 429
	}
	if !ok {
		return fmt.Errorf("%s: status %d for client %s", c.Name, resp.StatusCode, key)
	}
	return nil
}

// smokeCount is the count of the smoke run, warm-up and counted requests
// each: enough to see that it works.
const smokeCount = 200

// countTable is the counts under callgrind, as a Markdown table ("" when
// none ran): instructions per request, and over plain's.
func (r *results) countTable() string {
	var plain *counted
	if p := r.config("plain"); p != nil {
		plain = p.Counted
	}
	var b strings.Builder
	for _, s := range r.Configs {
		k := s.Counted
		if k == nil {
			continue
		}
		if b.Len() == 0 {
			fmt.Fprintf(&b, "| config | Caddy instructions/request | over plain | allocs/request | Redis instructions/request | Redis EVALSHA/request |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
		}
		over := "-"
		if plain != nil && s.Name != "plain" {
			over = signedThousands(k.CaddyInstr - plain.CaddyInstr)
		}
		redis, evalsha := "-", "-"
		if k.RedisInstr != nil {
			redis, evalsha = thousands(*k.RedisInstr), fmt.Sprintf("%.3f", *k.RedisEvalsha)
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %.1f | %s | %s |\n", s.Name, thousands(k.CaddyInstr), over, k.Allocs, redis, evalsha)
	}
	if b.Len() == 0 {
		return ""
	}
	k := r.Configs[0].Counted
	for _, s := range r.Configs {
		if s.Counted != nil {
			k = s.Counted
			break
		}
	}
	return fmt.Sprintf("\nCounted with callgrind (instructions, whatever the machine's load): each configuration's Caddy under valgrind, then for the Redis configurations their Redis under valgrind (with Caddy as usual); each time %s requests over %d keep-alive connections after the warm-up, the whole process's instructions divided by the requests (Caddy: the runtime and the garbage collector included; Redis: its share of each batched `EVALSHA` included, the batching of that run in the last column).\n\n",
		thousands(float64(k.Requests)), k.Conns) + b.String()
}

// signedThousands is thousands with a sign.
func signedThousands(f float64) string {
	if f < 0 {
		return "-" + thousands(-f)
	}
	return "+" + thousands(f)
}

// countTargets are issue 23's targets, checked on the counts: a Redis
// decision at most 20,000 instructions and 5 allocations over memory in
// Caddy, at most 90,000 instructions of Redis for three limits, and the
// hot key's limit, synced on an interval, within 10% of one memory limit.
func (r *results) countTargets(add func(name, want, got string, pass bool)) {
	get := func(name string) *counted {
		if s := r.config(name); s != nil {
			return s.Counted
		}
		return nil
	}
	rs, ms := get("redis-3"), get("memory-3")
	if rs != nil && ms != nil {
		d := rs.CaddyInstr - ms.CaddyInstr
		add("Caddy instructions per request, redis-3 over memory-3 (callgrind)", "<= +20,000",
			fmt.Sprintf("%s (%s - %s)", signedThousands(d), thousands(rs.CaddyInstr), thousands(ms.CaddyInstr)), d <= 20000)
		// Compared as shown, to a tenth.
		a := math.Round(10*(rs.Allocs-ms.Allocs)) / 10
		add("Caddy allocations per request, redis-3 over memory-3 (callgrind)", "<= +5",
			fmt.Sprintf("%+.1f (%.1f - %.1f)", a, rs.Allocs, ms.Allocs), a <= 5)
	}
	if rs != nil && rs.RedisInstr != nil {
		add("Redis instructions per three-limit decision (callgrind)", "<= 90,000", thousands(*rs.RedisInstr), *rs.RedisInstr <= 90000)
	}
	if h, m := get("redis-hot"), get("memory-1"); h != nil && m != nil {
		v := h.CaddyInstr / m.CaddyInstr
		add("redis-hot vs memory-1, Caddy instructions per request (callgrind)", "<= 1.10 x",
			fmt.Sprintf("%.3f x (%s / %s)", v, thousands(h.CaddyInstr), thousands(m.CaddyInstr)), v <= 1.10)
	}
}
