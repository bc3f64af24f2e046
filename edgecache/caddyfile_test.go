package edgecache_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/edgelimit/caddy-edgelimit/edgecache"
	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
)

// cachesOf returns the edge_cache handlers of an adapted config, and the
// handler names of its routes in order.
func cachesOf(t *testing.T, cfg []byte) (found []edgecache.Handler, order []string) {
	t.Helper()
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if name, ok := x["handler"].(string); ok {
				order = append(order, name)
			}
			if x["handler"] == "edge_cache" {
				b, _ := json.Marshal(x)
				var c edgecache.Handler
				if err := json.Unmarshal(b, &c); err != nil {
					t.Fatal(err)
				}
				found = append(found, c)
				return
			}
			for _, k := range []string{"apps", "http", "servers", "srv0", "routes", "handle"} {
				if c, ok := x[k]; ok {
					walk(c)
				}
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	var v any
	if err := json.Unmarshal(cfg, &v); err != nil {
		t.Fatal(err)
	}
	walk(v)
	return found, order
}

func TestCacheCaddyfile(t *testing.T) {
	cfg, err := e2e.Adapt(t, `:8080 {
	reverse_proxy 127.0.0.1:9000
	edge_limit {
		limit l {
			rate 1/1s
		}
	}
	edge_cache {
		ttl 60s
		ttl_max 1h
		max_size 256KB
		max_memory 256MB
		stale_if_error 5m
		stale_while_revalidate 30s
		identity {header.X-Tenant} {http.request.cookie.session}
		storage memory
	}
}`)
	if err != nil {
		t.Fatal(err)
	}
	cs, order := cachesOf(t, cfg)
	if len(cs) != 1 {
		t.Fatalf("%d caches in %s", len(cs), cfg)
	}
	c := cs[0]
	want := edgecache.Handler{
		TTL: caddy.Duration(time.Minute), TTLMax: caddy.Duration(time.Hour),
		MaxSize: 256_000, MaxMemory: 256_000_000, StaleIfError: caddy.Duration(5 * time.Minute),
		StaleWhileRevalidate: caddy.Duration(30 * time.Second),
		Identity:             []string{"{http.request.header.X-Tenant}", "{http.request.cookie.session}"},
		StorageRaw:           json.RawMessage(`{"backend":"memory"}`), Zone: c.Zone,
	}
	if c.Zone == "" || !jsonEqual(t, c, want) {
		t.Fatalf("got %+v\nwant %+v", c, want)
	}
	// Without an order line: edge_cache, then edge_limit, then the proxy.
	if strings.Join(order, " ") != "edge_cache edge_limit reverse_proxy" {
		t.Fatalf("handler order %v", order)
	}

	cfg, err = e2e.Adapt(t, `:8080 {
	edge_cache
	edge_cache /other {
		max_size 1MiB
		storage redis {
			prefix api_cache:
		}
		zone shared
	}
}`)
	if err != nil {
		t.Fatal(err)
	}
	cs, _ = cachesOf(t, cfg)
	if len(cs) != 2 {
		t.Fatalf("caches %+v", cs)
	}
	// The directive with a path matcher sorts first.
	if r, plain := cs[0], cs[1]; r.MaxSize != 1<<20 || string(r.StorageRaw) != `{"backend":"redis","prefix":"api_cache:"}` || r.Zone != "shared" || plain.Zone == "" || len(plain.StorageRaw) != 0 {
		t.Fatalf("caches %+v", cs)
	}
}

func jsonEqual(t *testing.T, a, b any) bool {
	t.Helper()
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

func TestCacheCaddyfileZones(t *testing.T) {
	body := ":8080 {\n\thandle /a {\n\t\tedge_cache\n\t}\n\thandle /b {\n\t\tedge_cache\n\t}\n}\n"
	cfg, err := e2e.Adapt(t, body)
	if err != nil {
		t.Fatal(err)
	}
	cs, _ := cachesOf(t, cfg)
	if len(cs) != 2 || cs[0].Zone == cs[1].Zone {
		t.Fatalf("equal directives share a zone: %+v", cs)
	}
	again, _ := e2e.Adapt(t, body)
	cs2, _ := cachesOf(t, again)
	if cs2[0].Zone != cs[0].Zone || cs2[1].Zone != cs[1].Zone {
		t.Fatal("zones change from one adaptation to the next")
	}
}

// TestCacheStatusCaddyfile: cache_status names the cache or turns
// Cache-Status off, bloom_status off drops Bloom-Status, and neither
// changes the zone (the entries stay across the change).
func TestCacheStatusCaddyfile(t *testing.T) {
	adapt := func(opts string) edgecache.Handler {
		t.Helper()
		cfg, err := e2e.Adapt(t, ":8080 {\n\tedge_cache {\n\t\tttl 1m\n"+opts+"\t}\n}\n")
		if err != nil {
			t.Fatal(err)
		}
		cs, _ := cachesOf(t, cfg)
		if len(cs) != 1 {
			t.Fatalf("caches %+v", cs)
		}
		return cs[0]
	}
	plain := adapt("")
	for opts, want := range map[string]edgecache.Handler{
		"\t\tcache_status off\n":                        {CacheStatus: "off"},
		"\t\tcache_status cdn-3.example.com\n":          {CacheStatus: "cdn-3.example.com"},
		"\t\tcache_status \"Example CDN\"\n":            {CacheStatus: "Example CDN"},
		"\t\tbloom_status off\n":                        {BloomStatusOff: true},
		"\t\tbloom_status off\n\t\tcache_status edge\n": {BloomStatusOff: true, CacheStatus: "edge"},
	} {
		c := adapt(opts)
		if c.CacheStatus != want.CacheStatus || c.BloomStatusOff != want.BloomStatusOff {
			t.Errorf("%q: cache_status %q bloom_status_off %v", opts, c.CacheStatus, c.BloomStatusOff)
		}
		if c.Zone != plain.Zone {
			t.Errorf("%q: zone %s, want %s as without the option", opts, c.Zone, plain.Zone)
		}
	}
}

func TestCacheCaddyfileErrors(t *testing.T) {
	for body, want := range map[string]string{
		"edge_cache foo":                                         `takes a block, not the argument "foo"`,
		"edge_cache {\n\tttl\n}":                                 "wrong argument count",
		"edge_cache {\n\tttl soon\n}":                            `bad duration "soon"`,
		"edge_cache {\n\tttl 0s\n}":                              "ttl must be positive",
		"edge_cache {\n\tttl 1m 2m\n}":                           "wrong argument count",
		"edge_cache {\n\tttl 2h\n\tttl_max 1h\n}":                "ttl 2h0m0s is longer than ttl_max 1h0m0s",
		"edge_cache {\n\tstale_if_error -1s\n}":                  "stale_if_error must be positive",
		"edge_cache {\n\tstale_while_revalidate -1s\n}":          "stale_while_revalidate must be positive",
		"edge_cache {\n\tstale_while_revalidate\n}":              "wrong argument count",
		"edge_cache {\n\tstale_while_revalidate soon\n}":         `bad duration "soon"`,
		"edge_cache {\n\tmax_size lots\n}":                       `size "lots": want bytes or a size`,
		"edge_cache {\n\tmax_size 0\n}":                          "out of range",
		"edge_cache {\n\tmax_size 2MB\n\tmax_memory 1MB\n}":      "max_size 2000000 is larger than max_memory 1000000",
		"edge_cache {\n\tidentity\n}":                            "wrong argument count",
		"edge_cache {\n\tstorage disk\n}":                        `storage "disk": want memory or redis`,
		"edge_cache {\n\tstorage memory {\n\t\tprefix x\n\t}\n}": `unknown memory storage option "prefix"`,
		"edge_cache {\n\tstorage redis {\n\t\tdb 1\n\t}\n}":      `unknown redis storage option "db"`,
		"edge_cache {\n\tttl 1m\n\tttl 2m\n}":                    `option "ttl" given twice`,
		"edge_cache {\n\tcolor blue\n}":                          `unknown edge_cache option "color"`,
		"edge_cache {\n\tcache_status\n}":                        "wrong argument count",
		"edge_cache {\n\tcache_status a b\n}":                    "wrong argument count",
		"edge_cache {\n\tcache_status café\n}":                   `cache_status "café": want printable ASCII`,
		"edge_cache {\n\tbloom_status on\n}":                     `bloom_status "on": want off`,
		"edge_cache {\n\tbloom_status\n}":                        "wrong argument count",
	} {
		_, err := e2e.Adapt(t, ":8080 {\n"+body+"\n}\n")
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "Caddyfile:") {
			t.Errorf("%q: error %v, want %q with its line", body, err, want)
		}
	}
}

func TestCacheJSONValidation(t *testing.T) {
	for _, c := range []struct {
		c    edgecache.Handler
		want string
	}{
		{edgecache.Handler{TTL: -1}, "ttl must be positive"},
		{edgecache.Handler{StaleWhileRevalidate: -1}, "stale_while_revalidate must not be negative"},
		{edgecache.Handler{MaxSize: 10, MaxMemory: 5}, "max_size 10 is larger than max_memory 5"},
		{edgecache.Handler{StorageRaw: json.RawMessage(`"disk"`)}, `storage "disk"`},
		{edgecache.Handler{RedisPrefix: "x"}, `redis_prefix goes with storage "redis"`},
		{edgecache.Handler{Identity: []string{""}}, "identity: empty value"},
		{edgecache.Handler{CacheStatus: "tab\there"}, `cache_status "tab\there": want printable ASCII`},
	} {
		if err := c.c.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.c, err, c.want)
		}
	}
}
