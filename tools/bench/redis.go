package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// benchRedis is a private redis-server on a free loopback port, without
// persistence: never the system's Redis.
type benchRedis struct {
	port int
	p    *proc
	rdb  *redis.Client
}

func startRedis(ctx context.Context, dir, cpus string) (*benchRedis, error) {
	return startRedisWith(ctx, dir, cpus, "redis", nil, 10*time.Second)
}

// startRedisWith starts a redis-server as startRedis does, its log
// <name>.log in dir, wrap (as callgrind.Args) before its command line, and
// as long as wait to listen.
func startRedisWith(ctx context.Context, dir, cpus, name string, wrap []string, wait time.Duration) (*benchRedis, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	argv := append(append([]string(nil), wrap...), "redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no")
	p, err := start(name, cpus, nil, filepath.Join(dir, name+".log"), argv...)
	if err != nil {
		return nil, err
	}
	if err := waitPort(ctx, p, port, wait); err != nil {
		p.stop()
		return nil, err
	}
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), PoolSize: 1})
	if err := rdb.Ping(ctx).Err(); err != nil {
		p.stop()
		return nil, fmt.Errorf("redis-server: %w", err)
	}
	return &benchRedis{port: port, p: p, rdb: rdb}, nil
}

func (r *benchRedis) stop() {
	r.rdb.Close()
	r.p.stop()
}

func (r *benchRedis) version(ctx context.Context) string {
	s, err := r.rdb.Info(ctx, "server").Result()
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "redis_version:"); ok {
			return v
		}
	}
	return ""
}

// redisStats is what INFO commandstats and INFO cpu say.
type redisStats struct {
	calls map[string]int64 // per command: cmdstat_<name> calls
	cpu   float64          // used_cpu_user + used_cpu_sys, seconds
}

func (r *benchRedis) stats(ctx context.Context) (redisStats, error) {
	s, err := r.rdb.Info(ctx, "commandstats", "cpu").Result()
	if err != nil {
		return redisStats{}, err
	}
	return parseRedisInfo(s), nil
}

func parseRedisInfo(s string) redisStats {
	st := redisStats{calls: make(map[string]int64)}
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if name, rest, ok := strings.Cut(l, ":"); ok {
			if cmd, ok := strings.CutPrefix(name, "cmdstat_"); ok {
				for _, kv := range strings.Split(rest, ",") {
					if v, ok := strings.CutPrefix(kv, "calls="); ok {
						st.calls[cmd], _ = strconv.ParseInt(v, 10, 64)
					}
				}
				continue
			}
			if name == "used_cpu_user" || name == "used_cpu_sys" {
				f, _ := strconv.ParseFloat(rest, 64)
				st.cpu += f
			}
		}
	}
	return st
}

// commands is the number of commands run between two snapshots, the
// bench's own INFO left out, and the EVALSHA (and EVAL) among them.
func commands(before, after redisStats) (all, evalsha int64) {
	for cmd, n := range after.calls {
		d := n - before.calls[cmd]
		if cmd == "info" {
			continue
		}
		all += d
		if cmd == "evalsha" || cmd == "eval" || cmd == "evalsha_ro" || cmd == "eval_ro" {
			evalsha += d
		}
	}
	return all, evalsha
}

// roundTrips counts, with MONITOR, the commands Caddy sends Redis for n
// requests sent one after the other by send: top-level commands only,
// not those the scripts run (INFO commandstats counts both), nor the
// pings of the invalidation subscription (in byCommand, not in perRequest). MONITOR slows
// Redis down, so this runs before the load, never during it.
func (r *benchRedis) roundTrips(ctx context.Context, n int, send func(i int) error) (perRequest float64, byCommand map[string]int, err error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", r.port))
	if err != nil {
		return 0, nil, err
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		return 0, nil, err
	}
	br := bufio.NewReader(conn)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if l, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(l, "+OK") {
		return 0, nil, fmt.Errorf("MONITOR: %q %v", l, err)
	}
	for i := 0; i < n; i++ {
		if err := send(i); err != nil {
			return 0, nil, err
		}
	}
	// A marker from another connection ends what Caddy sent.
	marker := fmt.Sprintf("bench-marker-%d", time.Now().UnixNano())
	if err := r.rdb.Echo(ctx, marker).Err(); err != nil {
		return 0, nil, err
	}
	byCommand = map[string]int{}
	total := 0
	for {
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		l, err := br.ReadString('\n')
		if err != nil {
			return 0, nil, fmt.Errorf("MONITOR: %w", err)
		}
		if strings.Contains(l, marker) {
			break
		}
		// +1700000000.123456 [0 127.0.0.1:55718] "evalsha" "..." ...
		// +1700000000.123457 [0 lua] "GET" "..."
		_, rest, ok := strings.Cut(l, "[")
		if !ok {
			continue
		}
		src, rest, _ := strings.Cut(rest, "]")
		if strings.HasSuffix(src, " lua") {
			continue
		}
		cmd := strings.ToLower(strings.Trim(strings.Fields(rest + " ?")[0], `"`))
		byCommand[cmd]++
		// The store's invalidation subscription pings its connection
		// when it has been quiet for a second: not part of a decision.
		if cmd != "ping" && cmd != "subscribe" {
			total++
		}
	}
	return float64(total) / float64(n), byCommand, nil
}
