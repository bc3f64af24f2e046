package edgelimit

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// The per-request cost of the middleware, compiled. The harness module
// has the same benchmarks under Yaegi (harness/bench_test.go), on the same
// configurations: docs/traefik.md quotes both.

// benchConfigs are the benchmarked configurations, as in the harness.
func benchConfigs(redisAddr string) map[string]*Config {
	one := func() map[string]*Limit {
		return map[string]*Limit{"per_client": {Key: []string{"header:X-Api-Key", "ip"}, Limit: 1 << 30, Window: "1h"}}
	}
	three := func() map[string]*Limit {
		return map[string]*Limit{
			"per_client": {Key: []string{"header:X-Api-Key", "ip"}, Limit: 1 << 30, Window: "1h"},
			"burst":      {Key: []string{"ip"}, Algorithm: "token_bucket", Limit: 1 << 30, Refill: 1 << 20, Window: "1s"},
			"daily":      {Key: []string{"header:X-Api-Key"}, Limit: 1 << 30, Calendar: &Calendar{Period: "day"}},
		}
	}
	out := map[string]*Config{
		"memory-1-limit":  {Limits: one()},
		"memory-3-limits": {Limits: three(), Headers: "both"},
	}
	if redisAddr != "" {
		out["redis-1-limit"] = &Config{Limits: one(), Storage: &Storage{Redis: &RedisConfig{Address: redisAddr, Timeout: "1s"}}}
		out["redis-3-limits"] = &Config{Limits: three(), Headers: "both", Storage: &Storage{Redis: &RedisConfig{Address: redisAddr, Timeout: "1s"}}}
		// Clients over their limit (one request an hour): denied here, or
		// by Redis on every request.
		denied := func() map[string]*Limit {
			return map[string]*Limit{"per_client": {Key: []string{"header:X-Api-Key", "ip"}, Limit: 1, Window: "1h"}}
		}
		out["redis-denied"] = &Config{Limits: denied(), Storage: &Storage{Redis: &RedisConfig{Address: redisAddr, Timeout: "1s", KeyPrefix: "bench-denied:"}}}
		out["redis-denied-no-local"] = &Config{Limits: denied(), Storage: &Storage{Redis: &RedisConfig{Address: redisAddr, Timeout: "1s",
			KeyPrefix: "bench-denied:", DisableLocalDenials: true}}}
	}
	return out
}

// benchWriter is a ResponseWriter that forgets.
type benchWriter struct{ h http.Header }

func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *benchWriter) WriteHeader(int)             {}

// benchRequests are 1000 clients' requests.
func benchRequests() []*http.Request {
	reqs := make([]*http.Request, 1000)
	for i := range reqs {
		r := httptest.NewRequest("GET", "/v1/items", nil)
		r.RemoteAddr = "198.51.100." + strconv.Itoa(i%250) + ":1234"
		r.Header.Set("X-Api-Key", "key-"+strconv.Itoa(i))
		reqs[i] = r
	}
	return reqs
}

// warm sends each client's request twice: over a limit of one, the
// second is denied by Redis (and remembered, with local denials), and so
// is every timed request.
func warm(h http.Handler) {
	w := &benchWriter{h: http.Header{}}
	reqs := benchRequests()
	for i := 0; i < 2; i++ {
		for _, r := range reqs {
			h.ServeHTTP(w, r)
		}
	}
}

func runBench(b *testing.B, h http.Handler) {
	reqs := benchRequests()
	w := &benchWriter{h: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := range w.h {
			delete(w.h, k)
		}
		h.ServeHTTP(w, reqs[i%len(reqs)])
	}
}

func BenchmarkMiddleware(b *testing.B) {
	noop := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	b.Run("plain", func(b *testing.B) { runBench(b, noop) })
	addr := ""
	if !testing.Short() {
		addr = startRedis(b)
	}
	for _, name := range []string{"memory-1-limit", "memory-3-limits", "redis-1-limit", "redis-3-limits", "redis-denied", "redis-denied-no-local"} {
		c := benchConfigs(addr)[name]
		if c == nil {
			continue
		}
		h, err := New(context.Background(), noop, c, name)
		if err != nil {
			b.Fatal(err)
		}
		if strings.HasPrefix(name, "redis-denied") {
			warm(h)
		}
		b.Run(name, func(b *testing.B) { runBench(b, h) })
	}
}
