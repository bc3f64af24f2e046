// Command rediscost counts what one rate-limit decision costs Redis, in
// instructions: it runs a private redis-server under valgrind's callgrind
// (which counts instructions, whatever else the machine is doing), makes
// decisions through the Redis store as Caddy would, and divides the
// instructions Redis executed by the decisions. Wall-clock timings on a
// shared machine move by half from run to run; these counts do not.
//
// From the tools module (cd tools):
//
//	go run ./bench/rediscost             # 1 and 3 limits, 2,000 decisions each
//	go run ./bench/rediscost -n 5000 -clients 10000
//
// Needs valgrind and redis-server. Loopback only.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
	"github.com/edgelimit/caddy-edgelimit/tools/bench/callgrind"
)

var keep string

func main() {
	n := flag.Int("n", 2000, "decisions measured per shape")
	clients := flag.Int("clients", 1000, "distinct client keys")
	parallel := flag.Int("parallel", 16, "concurrent decisions (they share pipelines, as under load)")
	flag.StringVar(&keep, "keep", "", "copy each shape's callgrind dump into this directory (for callgrind_annotate)")
	flag.Parse()
	// go-redis logs each failed dial while redis-server starts under
	// valgrind (seconds); the wait below is the check that matters.
	redis.SetLogger(quiet{})
	if err := run(*n, *clients, *parallel); err != nil {
		fmt.Fprintln(os.Stderr, "rediscost:", err)
		os.Exit(1)
	}
}

// shapes are the decisions measured: the limits of one request, on one
// client key per request, or on two (other: the limits from that index on
// are keyed on a second client, as an API key and an IP), over the -clients
// keys or over as many as the shape says (1: every decision on one key).
var shapes = []struct {
	name    string
	limits  []limiter.Limit
	other   int
	clients int
}{
	{name: "1 limit (fixed window)", limits: fixed(1)},
	{name: "3 limits (fixed window, token bucket, daily quota)", limits: []limiter.Limit{
		{Algorithm: limiter.FixedWindow, Quota: 1 << 40, Window: time.Minute},
		{Algorithm: limiter.TokenBucket, Quota: 1 << 30, Rate: 1000, Window: time.Second},
		{Algorithm: limiter.FixedWindow, Quota: 1 << 40, Calendar: limiter.CalendarWindow{Period: limiter.Day}.Cached()},
	}},
	{name: "3 limits, as the bench's redis-3 (2 fixed windows, daily quota)", limits: []limiter.Limit{
		{Algorithm: limiter.FixedWindow, Quota: 1 << 40, Window: time.Minute},
		{Algorithm: limiter.FixedWindow, Quota: 1 << 40, Calendar: limiter.CalendarWindow{Period: limiter.Day}.Cached()},
		{Algorithm: limiter.FixedWindow, Quota: 1 << 40, Window: time.Minute},
	}},
	{name: "2 limits, as redis-3 with its API-wide limit made local (route limit, daily quota)", limits: []limiter.Limit{
		{Algorithm: limiter.FixedWindow, Quota: 1 << 40, Calendar: limiter.CalendarWindow{Period: limiter.Day}.Cached()},
		{Algorithm: limiter.FixedWindow, Quota: 1 << 40, Window: time.Minute},
	}},
	{name: "5 limits (fixed windows)", limits: fixed(5)},
	{name: "3 limits on 2 client keys (2 + 1)", limits: fixed(3), other: 2},
	{name: "1 limit, one key for every decision (hot key)", limits: fixed(1), clients: 1},
}

// fixed is n fixed-window limits that never deny.
func fixed(n int) []limiter.Limit {
	ls := make([]limiter.Limit, n)
	for i := range ls {
		ls[i] = limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 1 << 40, Window: time.Minute}
	}
	return ls
}

func run(n, clients, parallel int) error {
	dir, err := os.MkdirTemp("", "rediscost-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	port, err := redistest.FreePort()
	if err != nil {
		return err
	}
	out := filepath.Join(dir, "callgrind.out")
	argv := append(callgrind.Args(out), "redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("valgrind: %w", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ctx := context.Background()
	client := storage.NewRedisClient(&redis.UniversalOptions{Addrs: []string{addr}}, 30*time.Second)
	s, err := storage.NewRedis(client, storage.RedisOptions{Timeout: 30 * time.Second, OnError: store.Deny})
	if err != nil {
		return err
	}
	defer s.Close()
	deadline := time.Now().Add(60 * time.Second)
	for s.Ping(ctx) != nil {
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server under valgrind did not answer on %s", addr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ver, _ := rdb.Info(ctx, "server").Result()
	fmt.Printf("redis-server %s under callgrind; %d decisions per shape, %d clients, %d at once\n\n",
		field(ver, "redis_version"), n, clients, parallel)
	seen := map[string]bool{}
	for si, sh := range shapes {
		reqs := func(key string) []store.Request {
			var rs []store.Request
			for i, l := range sh.limits {
				k := key
				if sh.other > 0 && i >= sh.other {
					k = "ip-" + key
				}
				rs = append(rs, store.Request{Counter: fmt.Sprintf("rediscost:%d", i), Key: fmt.Sprintf("s%d-%s", si, k), Limit: l, Cost: 1})
			}
			return rs
		}
		nclients := clients
		if sh.clients > 0 {
			nclients = sh.clients
		}
		// Warm every key (and the script), outside the count.
		if err := decide(ctx, s, nclients, nclients, parallel, reqs); err != nil {
			return err
		}
		perClient := keyBytes(ctx, rdb, seen)
		before := commandCalls(ctx, rdb)
		if err := callgrind.Zero(cmd.Process.Pid); err != nil {
			return err
		}
		if err := decide(ctx, s, n, nclients, parallel, reqs); err != nil {
			return err
		}
		ir, err := callgrind.Dump(cmd.Process.Pid, out, keep)
		if err != nil {
			return err
		}
		after := commandCalls(ctx, rdb)
		fmt.Printf("%-84s %9.0f instructions/decision  (evalsha/decision %.3f, fcall/decision %.3f; %.0f bytes per Redis key)\n",
			sh.name, float64(ir)/float64(n),
			float64(after["evalsha"]-before["evalsha"])/float64(n), float64(after["fcall"]-before["fcall"])/float64(n), perClient)
	}
	return nil
}

// decide makes n decisions, parallel at once, over clients keys.
func decide(ctx context.Context, s *storage.Redis, n, clients, parallel int, reqs func(string) []store.Request) error {
	errs := make(chan error, parallel)
	for w := range parallel {
		go func() {
			var err error
			for i := w; i < n && err == nil; i += parallel {
				rs := reqs("client-" + strconv.Itoa(i%clients))
				err = s.Take(ctx, time.Now(), rs, make([]limiter.Result, len(rs)))
			}
			errs <- err
		}()
	}
	var first error
	for range parallel {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func commandCalls(ctx context.Context, rdb *redis.Client) map[string]int64 {
	info, _ := rdb.Info(ctx, "commandstats").Result()
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		cmd, found := strings.CutPrefix(name, "cmdstat_")
		if !ok || !found {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				out[cmd], _ = strconv.ParseInt(v, 10, 64)
			}
		}
	}
	return out
}

// keyBytes is the mean MEMORY USAGE of the keys not in seen (at most 200
// of them, all samples of their values), and adds them to seen: Redis's
// memory per client of the shape just warmed.
func keyBytes(ctx context.Context, rdb *redis.Client, seen map[string]bool) float64 {
	var sum, n int64
	iter := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		if seen[k] {
			continue
		}
		seen[k] = true
		if n < 200 {
			if v, err := rdb.MemoryUsage(ctx, k, 0).Result(); err == nil {
				sum += v
				n++
			}
		}
	}
	if n == 0 {
		return 0
	}
	return float64(sum) / float64(n)
}

func field(info, name string) string {
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), name+":"); ok {
			return v
		}
	}
	return ""
}

// quiet is a go-redis logger that drops its lines.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...interface{}) {}
