package edgelimit

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/policy"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// benchHandler builds a handler around a memory store without a running
// Caddy: the request path only, with its metrics (decision counters and
// the storage latency histogram) as Caddy would have them.
func benchHandler(b *testing.B, limits ...*Limit) *Handler {
	b.Helper()
	mem := store.NewMemory(store.MemoryOptions{})
	b.Cleanup(func() { mem.Close() })
	return benchHandlerOn(b, mem, limits...)
}

// benchHandlerOn is benchHandler on st.
func benchHandlerOn(b *testing.B, st store.Store, limits ...*Limit) *Handler {
	b.Helper()
	h := &Handler{Status: DefaultStatus, ContentType: DefaultContentType, store: st,
		logger: zap.NewNop(), warn: new(store.Throttle), clock: clock.Real, metrics: buildMetrics(), proxies: new(proxyCheck)}
	h.timer = h.metrics.timerFor(st)
	for _, l := range limits {
		cl, err := compileLimit(l, "bench")
		if err != nil {
			b.Fatal(err)
		}
		cl.outcomes = h.metrics.outcomesFor(cl.Name)
		h.limits = append(h.limits, cl)
		h.templated = h.templated || cl.templated()
	}
	if err := h.provisionResponses(); err != nil {
		b.Fatal(err)
	}
	h.charging = newCharging(h.pol)
	h.scratch = &sync.Pool{New: func() any { return &scratch{Decision: policy.NewDecision(h.pol)} }}
	return h
}

// benchRequest is a request as Caddy's server prepares it.
func benchRequest(ip string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://example.com/v1/items", nil)
	r.RemoteAddr = ip + ":40000"
	r.Header.Set("X-Api-Key", "key-"+ip)
	repl := caddy.NewReplacer()
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: ip})
	return r.WithContext(ctx)
}

type nopWriter struct{ h http.Header }

func (w *nopWriter) Header() http.Header         { return w.h }
func (w *nopWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *nopWriter) WriteHeader(int)             {}

var okHandler = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	w.WriteHeader(http.StatusOK)
	return nil
})

func runHandlerBench(b *testing.B, h *Handler, clients int) {
	var seq atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		// Requests of its own for each goroutine: their vars are written.
		reqs := make([]*http.Request, clients)
		for i := range reqs {
			reqs[i] = benchRequest("10.0." + strconv.Itoa(i/256%256) + "." + strconv.Itoa(i%256))
		}
		w := &nopWriter{h: make(http.Header, 8)}
		i := int(seq.Add(7919))
		for pb.Next() {
			clear(w.h)
			if err := h.ServeHTTP(w, reqs[i%len(reqs)], okHandler); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkHandler measures the edge_limit request path: keys, the memory
// decision and the headers, in parallel, against a handler that does
// nothing.
func BenchmarkHandler(b *testing.B) {
	never := func(name string) *Limit {
		return &Limit{Name: name, Numbers: Numbers{Limit: 1 << 40, Window: caddy.Duration(time.Hour)}}
	}
	b.Run("none", func(b *testing.B) {
		r := benchRequest("10.0.0.1")
		w := &nopWriter{h: make(http.Header)}
		b.ReportAllocs()
		for b.Loop() {
			_ = okHandler.ServeHTTP(w, r)
		}
	})
	b.Run("one_limit", func(b *testing.B) {
		runHandlerBench(b, benchHandler(b, never("per_ip")), 1)
	})
	three := func() []*Limit {
		global := never("global")
		global.Scope = "global"
		route := never("route")
		route.Key = []string{"{http.request.header.X-Api-Key}", "{http.vars.client_ip}"}
		quota := &Limit{Name: "quota", Numbers: Numbers{Limit: 1 << 40, Calendar: &CalendarConfig{Period: "day"}}}
		return []*Limit{global, route, quota}
	}
	b.Run("three_limits_10k_clients", func(b *testing.B) {
		runHandlerBench(b, benchHandler(b, three()...), 10000)
	})
	// The same on Redis: what the distributed mode adds per request on
	// Caddy's side (the round trip's waiting aside, its allocations and
	// instructions). The package's Redis, or EDGELIMIT_REDIS_URL's: under
	// callgrind, a redis-server of the process's own would stop it with
	// its signals.
	b.Run("three_limits_10k_clients_redis", func(b *testing.B) {
		srv := redistest.Shared(b)
		client := storage.NewRedisClient(&redis.UniversalOptions{Addrs: []string{srv.Addr}}, time.Second)
		rs, err := storage.NewRedis(client, storage.RedisOptions{Timeout: time.Second})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { rs.Close() })
		runHandlerBench(b, benchHandlerOn(b, rs, three()...), 10000)
	})
	b.Run("count_responses", func(b *testing.B) {
		// Checked, then charged at WriteHeader: the response path of a
		// limit on failed logins, for a response it counts.
		l := never("failed_logins")
		l.CountResponses = &caddyhttp.ResponseMatcher{StatusCode: []int{2}}
		runHandlerBench(b, benchHandler(b, l), 100)
	})
	b.Run("denied", func(b *testing.B) {
		runHandlerBench(b, benchHandler(b, &Limit{Name: "tight", Numbers: Numbers{Limit: 1, Window: caddy.Duration(time.Hour)}}), 100)
	})
}

// BenchmarkKeys measures reading a limit's key: a header, the client's
// address (the header absent; IPv4 and IPv6), the remote host. Counted
// under callgrind (--toggle-collect='*BenchmarkKeys.func1'), as the
// instructions of one read.
func BenchmarkKeys(b *testing.B) {
	for _, c := range []struct {
		name string
		key  []string
		ip   string
		hdr  bool
	}{
		{"header", []string{"{header.X-Api-Key}", "{client_ip}"}, "10.0.0.1", true},
		{"client_ip", []string{"{header.X-Api-Key}", "{client_ip}"}, "10.0.0.1", false},
		{"client_ip_v6", []string{"{client_ip}"}, "2001:db8::1", false},
		{"remote_host", []string{"{remote_host}"}, "10.0.0.1", false},
	} {
		cl, err := compileLimit(&Limit{Name: "k", Key: c.key, Numbers: Numbers{Limit: 10, Window: caddy.Duration(60e9)}}, "bench")
		if err != nil {
			b.Fatal(err)
		}
		r := benchRequest(c.ip)
		if c.ip[0] == '2' {
			r.RemoteAddr = "[" + c.ip + "]:40000"
		}
		if !c.hdr {
			r.Header.Del("X-Api-Key")
		}
		ctx := r.Context()
		repl, _ := ctx.Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		vars, _ := ctx.Value(caddyhttp.VarsCtxKey).(map[string]any)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if v, _ := cl.key(r, repl, vars); v == "" {
					b.Fatal("no key")
				}
			}
		})
	}
}
