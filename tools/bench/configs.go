package main

import (
	"fmt"
	"strings"
)

// ports are the loopback ports of one Caddy and of what it talks to.
type ports struct {
	site, admin, redis, upstream int
}

// config is one configuration measured against plain Caddy.
type config struct {
	Name  string // for -only, the table and the JSON
	Title string // what it is, in a few words
	// Keys is the number of distinct client keys wrk spreads its requests
	// over (X-Api-Key).
	Keys int
	// Expect is what every response under load must be: "200" (any
	// non-2xx fails the run), "deny" (mostly 429) or "429" (every
	// response, from the first).
	Expect   string
	Redis    bool // needs the bench's Redis
	Upstream bool // needs the upstream
	Cache    bool // warm the cache entry first, probe for Bloom-Status: HIT
	// Instances is the number of Caddy instances (default 1), all on
	// Caddy's CPU, each loaded by its own wrk with its share of the
	// connections.
	Instances int
	// Site is the site block's body; Global the edge_limit global option's
	// body ("" for none).
	Site, Global func(p ports) string
}

// commonGlobals: plain HTTP/1.1 (what wrk speaks), nothing written to
// disk, a short shutdown.
const commonGlobals = "\tpersist_config off\n\tauto_https off\n\tgrace_period 1s\n\tservers {\n\t\tprotocols h1\n\t}\n"

// The Caddyfiles share one frame: admin on a loopback port (for
// /debug/vars), no access log, no HTTPS, no persisted config.
func caddyfile(c *config, p ports) string {
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin 127.0.0.1:%d\n%s", p.admin, commonGlobals)
	if c.Global != nil {
		fmt.Fprintf(&b, "\tedge_limit {\n%s\t}\n", indent(c.Global(p), 2))
	}
	fmt.Fprintf(&b, "}\n\nhttp://:%d {\n\tbind 127.0.0.1\n%s}\n", p.site, indent(c.Site(p), 1))
	return b.String()
}

func indent(s string, n int) string {
	tabs := strings.Repeat("\t", n)
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = tabs + l
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

// never is a rate no benchmark reaches.
const never = "1000000000/1m"

// threeLimitsGlobal declares the API-wide limit and the daily quota of
// configurations 3 and 4 in the global option.
func threeLimitsGlobal(storage string) func(p ports) string {
	return func(p ports) string {
		return storage + `limit api_global {
	key {header.X-Api-Key} {client_ip}
	rate ` + never + `
}
quota api_daily {
	key {header.X-Api-Key} {client_ip}
	limit 1000000000 per day
}
`
	}
}

// threeLimitsSite uses both and adds a route limit: three limits per
// request, decided at once.
func threeLimitsSite(routeRate string) func(p ports) string {
	return func(p ports) string {
		return `edge_limit {
	use api_global api_daily
	limit api_route {
		key {header.X-Api-Key} {client_ip}
		rate ` + routeRate + `
	}
}
respond "ok"
`
	}
}

// redisStorage is the edge_limit storage of the Redis configurations. The
// timeout is raised from the default 100ms and on_error set to deny so
// that a slow answer under load shows as a 503 instead of a request let
// through without Redis (which would flatter the throughput).
func redisStorage(p ports) string {
	return fmt.Sprintf(`storage redis {
	url redis://127.0.0.1:%d/0
	timeout 2s
	on_error deny
}
`, p.redis)
}

const (
	distinctKeys = 10_000
	denyKeys     = 16
)

var configs = []*config{
	{
		Name: "plain", Title: `respond "ok" only: the ceiling`,
		Keys: distinctKeys, Expect: "200",
		Site: func(ports) string { return "respond \"ok\"\n" },
	},
	{
		Name: "memory-1", Title: "edge_limit, memory, 1 limit",
		Keys: distinctKeys, Expect: "200",
		Site: func(ports) string {
			return `edge_limit {
	limit per_client {
		rate ` + never + `
	}
}
respond "ok"
`
		},
	},
	{
		Name: "memory-3", Title: "memory, 3 limits, 10k keys",
		Keys: distinctKeys, Expect: "200",
		Global: threeLimitsGlobal(""),
		Site:   threeLimitsSite(never),
	},
	{
		Name: "redis-3", Title: "Redis, 3 limits, 10k keys",
		Keys: distinctKeys, Expect: "200", Redis: true,
		Global: func(p ports) string { return threeLimitsGlobal(redisStorage(p))(p) },
		Site:   threeLimitsSite(never),
	},
	{
		Name: "redis-deny", Title: "Redis, 1 limit, mostly 429",
		Keys: denyKeys, Expect: "deny", Redis: true,
		Global: redisStorage,
		Site:   denySite,
	},
	{
		// The one key counted in each instance's memory, merged into
		// Redis every 100ms (sync): Redis is no longer the cap.
		Name: "redis-hot", Title: "Redis, 1 key for all, 2 Caddys, sync 100ms",
		Keys: distinctKeys, Expect: "200", Redis: true, Instances: 2,
		Global: redisStorage,
		Site:   hotSite("\t\tsync 100ms\n"),
	},
	{
		// The same without sync: every decision on the one Redis hash.
		Name: "redis-hot-exact", Title: "Redis, 1 key for all, 2 Caddys, exact",
		Keys: distinctKeys, Expect: "200", Redis: true, Instances: 2,
		Global: redisStorage,
		Site:   hotSite(""),
	},
	{
		Name: "static-hdrs", Title: `respond "ok" + 3 fixed X-RateLimit headers`,
		Keys: distinctKeys, Expect: "200",
		Site: func(ports) string {
			return "header {\n\tX-RateLimit-Limit 1000000000\n\tX-RateLimit-Remaining 999999999\n\tX-RateLimit-Reset 1800000000\n}\nrespond \"ok\"\n"
		},
	},
	{
		Name: "static-429", Title: "respond: deny's answer, fixed",
		Keys: denyKeys, Expect: "429",
		Site: func(ports) string {
			return "header {\n\tX-RateLimit-Limit 1\n\tX-RateLimit-Remaining 0\n\tX-RateLimit-Reset 1800000000\n\tRetry-After 3599\n\tContent-Type application/json\n}\n" +
				"respond `{\"status\":429,\"error\":\"Rate limit exceeded, try again in 3599 seconds\"}` 429\n"
		},
	},
	{
		Name: "cache-hit", Title: "edge_cache HIT + reverse_proxy",
		// One client key: X-Api-Key is a credential header, so each key
		// has cache entries of its own (docs/security.md), and 10,000
		// keys would measure 10,000 first misses, not hits.
		Keys: 1, Expect: "200", Upstream: true, Cache: true,
		Site: func(p ports) string {
			return fmt.Sprintf(`edge_cache {
	ttl 1h
}
reverse_proxy 127.0.0.1:%d
`, p.upstream)
		},
	},
	{
		Name: "proxy", Title: "reverse_proxy alone",
		Keys: distinctKeys, Expect: "200", Upstream: true,
		Site: func(p ports) string { return fmt.Sprintf("reverse_proxy 127.0.0.1:%d\n", p.upstream) },
	},
	{
		Name: "deny", Title: "memory, 1 limit, mostly 429",
		Keys: denyKeys, Expect: "deny",
		Site: denySite,
	},
}

// denySite denies every client but its first request an hour.
func denySite(ports) string {
	return `edge_limit {
	limit per_client {
		key {header.X-Api-Key} {client_ip}
		rate 1/1h
	}
}
respond "ok"
`
}

// hotSite is one limit whose key is the same for every request, with
// more of its options (sync).
func hotSite(more string) func(ports) string {
	return func(ports) string {
		return "edge_limit {\n\tlimit api_wide {\n\t\tkey api\n\t\trate " + never + "\n" + more + "\t}\n}\nrespond \"ok\"\n"
	}
}

// instances is the number of Caddy instances c runs.
func (c *config) instances() int { return max(c.Instances, 1) }

// upstreamCaddyfile is the upstream of cache-hit and proxy: another Caddy
// answering "ok", without admin.
func upstreamCaddyfile(port int) string {
	return fmt.Sprintf("{\n\tadmin off\n%s}\n\nhttp://:%d {\n\tbind 127.0.0.1\n\trespond \"ok\"\n}\n", commonGlobals, port)
}

// exactConfig is the correctness check's configuration: redis-3 with a
// route limit that does deny, limit requests per window.
func exactConfig(limit int, window string) *config {
	return &config{
		Name: "exact", Redis: true,
		Global: func(p ports) string { return threeLimitsGlobal(redisStorage(p))(p) },
		Site:   threeLimitsSite(fmt.Sprintf("%d/%s", limit, window)),
	}
}
