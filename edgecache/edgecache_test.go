package edgecache

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/cache"
	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
)

// failingStore fails every operation, as a store whose server is down.
type failingStore struct{ calls atomic.Int32 }

var errStoreDown = errors.New("store down")

func (f *failingStore) Get(context.Context, cache.Key, time.Time) (*cache.Entry, error) {
	f.calls.Add(1)
	return nil, errStoreDown
}

func (f *failingStore) Set(context.Context, cache.Key, *cache.Entry, time.Time) error {
	f.calls.Add(1)
	return errStoreDown
}

func (f *failingStore) Purge(context.Context, cache.Purge) (int, error) { return 0, errStoreDown }
func (f *failingStore) Close() error                                    { return nil }

// newTestCache provisions a handler outside a server.
func newTestCache(t testing.TB, c *Handler) *Handler {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := c.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Cleanup() })
	c.logger = zap.NewNop()
	return c
}

// serveCache runs one request through c and next.
// The Cache-Status it answers with must be valid (CheckCacheStatus).
func serveCache(t testing.TB, c *Handler, next caddyhttp.Handler, method, target string, headers ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Set(headers[i], headers[i+1])
	}
	w := httptest.NewRecorder()
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
	if err := c.ServeHTTP(w, r, next); err != nil {
		var he caddyhttp.HandlerError
		if errors.As(err, &he) {
			w.Code = he.StatusCode
		} else {
			w.Code = 500
		}
	}
	if err := CheckCacheStatus(w.Header()); err != nil {
		t.Errorf("%s %s: %v", method, target, err)
	}
	return w
}

func TestCacheStoreFailureIsDirect(t *testing.T) {
	e2e.FakeClock(t)
	c := newTestCache(t, &Handler{Zone: "failing"})
	fs := new(failingStore)
	c.store = fs
	var calls atomic.Int32
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		calls.Add(1)
		w.Header().Set("Bloom-Response-Buckets", "x")
		_, _ = io.WriteString(w, "fresh")
		return nil
	})
	for range 3 {
		w := serveCache(t, c, next, "GET", "http://example/fail")
		if w.Code != 200 || w.Header().Get("Bloom-Status") != "DIRECT" || w.Body.String() != "fresh" || w.Header().Get("Bloom-Response-Buckets") != "" {
			t.Fatalf("%d %v %q", w.Code, w.Header(), w.Body)
		}
	}
	if calls.Load() != 3 || fs.calls.Load() != 3 {
		t.Fatalf("upstream %d, store %d calls", calls.Load(), fs.calls.Load())
	}
}

// TestCacheCoalescesConcurrentMisses: many concurrent requests for one
// URL make one upstream request; the others are HITs.
func TestCacheCoalescesConcurrentMisses(t *testing.T) {
	e2e.FakeClock(t)
	c := newTestCache(t, &Handler{Zone: "coalesce"})
	const n = 32
	key := cache.KeyOf(httptest.NewRequest("GET", "http://example/hot", nil), c.Zone, nil)
	var calls atomic.Int32
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		calls.Add(1)
		deadline := time.Now().Add(10 * time.Second)
		for c.flights.Waiting(key.ID) < n-1 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		_, _ = io.WriteString(w, "hot")
		return nil
	})
	var wg sync.WaitGroup
	statuses := make([]string, n)
	coalesced := counterValue(t, coalescedTotal)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := serveCache(t, c, next, "GET", "http://example/hot")
			if w.Code != 200 || w.Body.String() != "hot" {
				t.Errorf("%d %q", w.Code, w.Body)
			}
			statuses[i] = w.Header().Get("Bloom-Status") + " " + w.Header().Get("Cache-Status")
		}()
	}
	wg.Wait()
	if calls.Load() != 1 {
		t.Fatalf("%d upstream requests", calls.Load())
	}
	count := map[string]int{}
	for _, s := range statuses {
		count[s]++
	}
	// The waiters went forward with the leader, and were served what it
	// stored (RFC 9211 collapsed).
	if count["MISS edgelimit; fwd=uri-miss; stored"] != 1 || count["HIT edgelimit; fwd=uri-miss; collapsed; ttl=600"] != n-1 {
		t.Fatalf("statuses %v", count)
	}
	if d := counterValue(t, coalescedTotal) - coalesced; d != n-1 {
		t.Fatalf("coalesced_total grew by %v, want %d", d, n-1)
	}
}

// counterValue reads a counter of the metrics.
func counterValue(t testing.TB, c prometheus.Counter) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || len(mfs[0].GetMetric()) != 1 {
		t.Fatalf("gathering %v: %v", mfs, err)
	}
	return mfs[0].GetMetric()[0].GetCounter().GetValue()
}

// TestCacheCoalescedUncacheable: waiters on a response that is not stored
// ask the upstream themselves, never reuse it.
func TestCacheCoalescedUncacheable(t *testing.T) {
	e2e.FakeClock(t)
	c := newTestCache(t, &Handler{Zone: "private"})
	key := cache.KeyOf(httptest.NewRequest("GET", "http://example/private", nil), c.Zone, nil)
	var calls atomic.Int32
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if calls.Add(1) == 1 {
			deadline := time.Now().Add(10 * time.Second)
			for c.flights.Waiting(key.ID) < 1 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
		w.Header().Set("Cache-Control", "private")
		_, _ = io.WriteString(w, r.Header.Get("X-User"))
		return nil
	})
	var wg sync.WaitGroup
	bodies := make([]string, 2)
	statuses := make([]string, 2)
	for i, cookie := range []string{"a", "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i == 1 {
				deadline := time.Now().Add(10 * time.Second)
				for calls.Load() == 0 && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
			}
			w := serveCache(t, c, next, "GET", "http://example/private", "X-User", cookie)
			bodies[i], statuses[i] = w.Body.String(), w.Header().Get("Cache-Status")
		}()
	}
	wg.Wait()
	if bodies[0] != "a" || bodies[1] != "b" || calls.Load() != 2 {
		t.Fatalf("bodies %q, %d calls", bodies, calls.Load())
	}
	// The waiter could not reuse the leader's response (collapsed=?0).
	if statuses[0] != "edgelimit; fwd=uri-miss; detail=private" || statuses[1] != "edgelimit; fwd=uri-miss; collapsed=?0; detail=private" {
		t.Fatalf("Cache-Status %q", statuses)
	}
}

func TestCacheLargeBodyStreamsThrough(t *testing.T) {
	e2e.FakeClock(t)
	c := newTestCache(t, &Handler{Zone: "large", MaxSize: 1000})
	big := strings.Repeat("z", 5000)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		for i := 0; i < len(big); i += 700 {
			_, _ = io.WriteString(w, big[i:min(i+700, len(big))])
		}
		return nil
	})
	for range 2 {
		w := serveCache(t, c, next, "GET", "http://example/large")
		if w.Code != 200 || w.Body.String() != big || w.Header().Get("Bloom-Status") != "DIRECT" {
			t.Fatalf("%d %v %d bytes", w.Code, w.Header(), w.Body.Len())
		}
	}
}

func BenchmarkCacheHit(b *testing.B) {
	e2e.FakeClock(b)
	body := `{"id":1,"name":"a cached answer","tags":["x","y"]}`
	b.Run("edge_cache", func(b *testing.B) {
		c := newTestCache(b, &Handler{Zone: "bench"})
		next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, body)
			return nil
		})
		benchCacheHandler(b, func(w http.ResponseWriter, r *http.Request) error { return c.ServeHTTP(w, r, next) }, "HIT")
	})
	b.Run("respond", func(b *testing.B) {
		sr := caddyhttp.StaticResponse{Body: body, Headers: http.Header{"Content-Type": {"application/json"}}}
		benchCacheHandler(b, func(w http.ResponseWriter, r *http.Request) error { return sr.ServeHTTP(w, r, nil) }, "")
	})
}

// benchCacheWriter is a ResponseWriter that keeps nothing, reset per request as
// a server's would be.
type benchCacheWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *benchCacheWriter) Header() http.Header         { return w.h }
func (w *benchCacheWriter) WriteHeader(code int)        { w.status = code }
func (w *benchCacheWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

func benchCacheHandler(b *testing.B, h func(http.ResponseWriter, *http.Request) error, wantStatus string) {
	w := &benchCacheWriter{h: make(http.Header)}
	r := httptest.NewRequest("GET", "http://example/bench?page=1", nil)
	r.Header.Set("Authorization", "Bearer benchmark-token")
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
	if err := h(w, r); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(w.h)
		if err := h(w, r); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if got := w.h.Get("Bloom-Status"); got != wantStatus || w.status != 200 {
		b.Fatalf("Bloom-Status %q, status %d", got, w.status)
	}
}

func TestCacheEventStreamPassesThrough(t *testing.T) {
	e2e.FakeClock(t)
	c := newTestCache(t, &Handler{Zone: "sse"})
	var flushed atomic.Int32
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		for range 3 {
			_, _ = io.WriteString(w, "data: x\n\n")
			if err := http.NewResponseController(w).Flush(); err == nil {
				flushed.Add(1)
			}
		}
		return nil
	})
	for range 2 {
		w := serveCache(t, c, next, "GET", "http://example/events")
		if w.Header().Get("Bloom-Status") != "DIRECT" || !w.Flushed || w.Body.String() != strings.Repeat("data: x\n\n", 3) {
			t.Fatalf("%v flushed %v %q", w.Header(), w.Flushed, w.Body)
		}
	}
	if flushed.Load() != 6 {
		t.Fatalf("%d flushes", flushed.Load())
	}
}

// TestStorageJSONReadsEarlierForms: the storage field of earlier versions,
// a backend's name with redis_prefix beside it, loads as the module form.
func TestStorageJSONReadsEarlierForms(t *testing.T) {
	for _, c := range []struct {
		raw, prefix, want string
	}{
		{"", "", `{"backend":"memory"}`},
		{`"memory"`, "", `{"backend":"memory"}`},
		{`"redis"`, "", `{"backend":"redis"}`},
		{`"redis"`, "api:", `{"backend":"redis","prefix":"api:"}`},
		{`{"backend":"redis","prefix":"x:"}`, "", `{"backend":"redis","prefix":"x:"}`},
	} {
		got, err := storageJSON(json.RawMessage(c.raw), c.prefix)
		if err != nil || string(got) != c.want {
			t.Errorf("%s with prefix %q: %s, %v; want %s", c.raw, c.prefix, got, err, c.want)
		}
	}
	if _, err := storageJSON(json.RawMessage(`"disk"`), ""); err == nil {
		t.Error(`"disk" is accepted`)
	}
	// A handler configured the old way provisions with the memory module.
	c := newTestCache(t, &Handler{Zone: "old", StorageRaw: json.RawMessage(`"memory"`)})
	if _, ok := c.store.(*cache.Memory); !ok {
		t.Fatalf("store %T", c.store)
	}
}

// TestCacheWaiterFetchesAfterCoalesceWait: a request that waits on a
// flight whose leader never finishes asks the upstream itself after
// coalesce_wait, instead of waiting as long as the leader likes.
func TestCacheWaiterFetchesAfterCoalesceWait(t *testing.T) {
	e2e.FakeClock(t)
	c := newTestCache(t, &Handler{Zone: "stuck", CoalesceWait: caddy.Duration(50 * time.Millisecond)})
	release := make(chan struct{})
	var calls atomic.Int32
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if calls.Add(1) == 1 {
			<-release // the leader's upstream never answers
		}
		_, _ = io.WriteString(w, "answer")
		return nil
	})
	leader := make(chan string, 1)
	go func() { leader <- serveCache(t, c, next, "GET", "http://example/stuck").Body.String() }()
	deadline := time.Now().Add(10 * time.Second)
	for calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	waiter := make(chan *httptest.ResponseRecorder, 1)
	go func() { waiter <- serveCache(t, c, next, "GET", "http://example/stuck") }()
	select {
	case w := <-waiter:
		if w.Code != 200 || w.Body.String() != "answer" || calls.Load() != 2 {
			t.Fatalf("waiter: %d %q after %d upstream calls", w.Code, w.Body, calls.Load())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiter still waits for a leader that never finishes")
	}
	close(release)
	if got := <-leader; got != "answer" {
		t.Fatalf("leader: %q", got)
	}
}

// takeEveryBackgroundSlot takes every background slot, waiting for those
// the fetches of earlier tests still hold (a fetch lands its flight, which
// serves its waiters and ends their test, before its goroutine gives its
// slot back), and returns what gives back the slots it took, no more.
// Taking them at once and failing on a slot still held made this test
// fail, and its release of every slot gave back that fetch's too: the
// count went wrong for every later test of the package.
func takeEveryBackgroundSlot(t *testing.T) (free func()) {
	t.Helper()
	taken := 0
	free = func() {
		for ; taken > 0; taken-- {
			releaseBackground()
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for taken < MaxBackgroundFetches {
		if acquireBackground() {
			taken++
			continue
		}
		if time.Now().After(deadline) {
			free()
			t.Fatal("a background slot is still taken 30s after the tests before this one")
		}
		time.Sleep(time.Millisecond)
	}
	return free
}

// TestCacheReliefInTheForegroundWhenBusy: with every background slot
// taken, the waiter that gives up on a hung leader fetches for all in the
// foreground, as the relief's leader.
func TestCacheReliefInTheForegroundWhenBusy(t *testing.T) {
	e2e.FakeClock(t)
	defer takeEveryBackgroundSlot(t)()
	c := newTestCache(t, &Handler{Zone: "busy", CoalesceWait: caddy.Duration(50 * time.Millisecond)})
	release := make(chan struct{})
	var calls atomic.Int32
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if calls.Add(1) == 1 {
			<-release
		}
		_, _ = io.WriteString(w, "answer")
		return nil
	})
	leader := make(chan string, 1)
	go func() { leader <- serveCache(t, c, next, "GET", "http://example/busy").Body.String() }()
	deadline := time.Now().Add(10 * time.Second)
	for calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	w := serveCache(t, c, next, "GET", "http://example/busy")
	if got := w.Header().Get("Cache-Status"); w.Body.String() != "answer" || got != "edgelimit; fwd=uri-miss; stored; collapsed=?0" {
		t.Fatalf("waiter: %q, Cache-Status %q", w.Body, got)
	}
	close(release)
	if got := <-leader; got != "answer" {
		t.Fatalf("leader: %q", got)
	}
}

// TestCacheRevalidationBounded: with every background slot taken, a stale
// entry within its window is still served at once, and no refresh starts
// (busy); once a slot is free, the next request starts one, and the
// requests meanwhile start no other.
func TestCacheRevalidationBounded(t *testing.T) {
	clk := e2e.FakeClock(t)
	c := newTestCache(t, &Handler{Zone: "swr-busy", TTL: caddy.Duration(10 * time.Second), StaleWhileRevalidate: caddy.Duration(time.Minute)})
	release := make(chan struct{})
	var calls atomic.Int32
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if calls.Add(1) == 2 {
			<-release // the refresh
		}
		_, _ = io.WriteString(w, "answer")
		return nil
	})
	serveCache(t, c, next, "GET", "http://example/swr")
	clk.Add(15 * time.Second)
	free := takeEveryBackgroundSlot(t)
	busy := counterValue(t, revalidations[revalidateBusy])
	w := serveCache(t, c, next, "GET", "http://example/swr")
	free()
	if w.Header().Get("Cache-Status") != "edgelimit; hit; ttl=-5" || calls.Load() != 1 {
		t.Fatalf("busy: %v, %d upstream calls", w.Header(), calls.Load())
	}
	if d := counterValue(t, revalidations[revalidateBusy]) - busy; d != 1 {
		t.Fatalf("busy revalidations grew by %v", d)
	}
	stored := counterValue(t, revalidations[revalidateStored])
	serveCache(t, c, next, "GET", "http://example/swr")
	deadline := time.Now().Add(10 * time.Second)
	for calls.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	for range 5 {
		serveCache(t, c, next, "GET", "http://example/swr")
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d upstream calls, want 2: one refresh at a time", n)
	}
	close(release)
	for counterValue(t, revalidations[revalidateStored]) == stored && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if w := serveCache(t, c, next, "GET", "http://example/swr"); w.Header().Get("Cache-Status") != "edgelimit; hit; ttl=10" {
		t.Fatalf("after the refresh: %v", w.Header())
	}
}
