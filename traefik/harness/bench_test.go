package harness

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// The per-request cost of the middleware under Yaegi, on the
// configurations of the compiled benchmark (../bench_test.go).

var benchYAML = map[string]string{
	"memory-1-limit": `
limits:
  per_client: {key: [header:X-Api-Key, ip], limit: 1073741824, window: 1h}
`,
	"memory-3-limits": `
limits:
  per_client: {key: [header:X-Api-Key, ip], limit: 1073741824, window: 1h}
  burst: {key: [ip], algorithm: token_bucket, limit: 1073741824, refill: 1048576, window: 1s}
  daily: {key: [header:X-Api-Key], limit: 1073741824, calendar: {period: day}}
headers: both
`,
	// A limit charged what the response reports (costHeader): the writer
	// of the charges on every response (see costly).
	"memory-cost-header": `
limits:
  tokens: {key: [header:X-Api-Key, ip], limit: 1073741824, window: 1h, costHeader: X-Cost}
`,
}

// costly answers as an upstream that reports a cost: the header, the
// status, a body.
var costly = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header()["X-Cost"] = []string{"3"}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte("ok"))
})

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

func BenchmarkYaegiMiddleware(b *testing.B) {
	p := loadPlugin(b)
	noop := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	b.Run("plain", func(b *testing.B) { runBench(b, noop) })
	b.Run("memory-cost-header", func(b *testing.B) { runBench(b, p.middleware(b, benchYAML["memory-cost-header"], nil, costly)) })
	confs := []string{"memory-1-limit", "memory-3-limits"}
	if !testing.Short() {
		r := startRedis(b)
		redis := "storage:\n  redis: {address: " + r.Addr + ", timeout: 1s}\n"
		benchYAML["redis-1-limit"] = benchYAML["memory-1-limit"] + redis
		benchYAML["redis-3-limits"] = benchYAML["memory-3-limits"] + redis
		// Clients over their limit (one request an hour): denied here, or
		// by Redis on every request.
		denied := "limits:\n  per_client: {key: [header:X-Api-Key, ip], limit: 1, window: 1h}\nstorage:\n  redis: {address: " + r.Addr + ", timeout: 1s, keyPrefix: \"bench-denied:\""
		benchYAML["redis-denied"] = denied + "}\n"
		benchYAML["redis-denied-no-local"] = denied + ", disableLocalDenials: true}\n"
		confs = append(confs, "redis-1-limit", "redis-3-limits", "redis-denied", "redis-denied-no-local")
	}
	for _, name := range confs {
		h := p.middleware(b, benchYAML[name], nil, noop)
		if strings.HasPrefix(name, "redis-denied") {
			warm(h)
		}
		b.Run(name, func(b *testing.B) { runBench(b, h) })
	}
}
