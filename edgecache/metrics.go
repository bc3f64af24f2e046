package edgecache

import (
	"errors"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/cache"
)

// The edge_cache metrics live for the process, as Caddy's own do: every
// configuration registers the same collectors in its registry, so the
// counters keep counting across reloads. Labels are Bloom-Status values,
// never URLs or keys, so the number of series is fixed.
var (
	responsesVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "edge_cache",
		Name:      "responses_total",
		Help:      "Responses that passed edge_cache, by Bloom-Status (MISS, HIT, DIRECT, OFFLINE), counted whether the header is sent or not.",
	}, []string{"status"})

	// responses are responsesVec's counters by cache.Status, looked up
	// once so that counting a hit is one atomic add.
	responses = func() (out [cache.Offline + 1]prometheus.Counter) {
		for _, st := range []cache.Status{cache.Miss, cache.Hit, cache.Direct, cache.Offline} {
			out[st] = responsesVec.WithLabelValues(st.String())
		}
		return out
	}()

	coalescedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "edge_cache",
		Name:      "coalesced_total",
		Help:      "Requests that waited for another request's upstream fetch of the same key (a MISS in flight).",
	})
	revalidationsVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "edge_cache",
		Name:      "revalidations_total",
		Help:      "Background refreshes of entries served stale (stale-while-revalidate), by result: stored, not-stored (the response may not be stored), unreachable (the upstream could not be reached; the entry stays), busy (none started: too many background fetches running).",
	}, []string{"result"})

	// revalidations are revalidationsVec's counters by result, every
	// series there from the start.
	revalidations = func() (out [4]prometheus.Counter) {
		for i, r := range []string{"stored", "not-stored", "unreachable", "busy"} {
			out[i] = revalidationsVec.WithLabelValues(r)
		}
		return out
	}()

	coalesceTimeoutsTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "edge_cache",
		Name:      "coalesce_timeouts_total",
		Help:      "Waits on another request's upstream fetch that outlasted coalesce_wait (the first of a flight's waiters to give up fetches again for all of them).",
	})
	staleServedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "edge_cache",
		Name:      "stale_served_total",
		Help:      "Stale copies served (stale_if_error) because the upstream could not be reached.",
	})
	purgedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "edge_cache",
		Name:      "purged_total",
		Help:      "Entries removed through the purge endpoint of the admin API.",
	})
	entriesGauge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "caddy",
		Subsystem: "edge_cache",
		Name:      "entries",
		Help:      "Entries stored now in the memory stores of the running edge_cache handlers (Redis stores are not counted).",
	}, func() float64 { return float64(memoryTotals().Entries) })
	bytesGauge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "caddy",
		Subsystem: "edge_cache",
		Name:      "bytes",
		Help:      "Bytes (as max_memory counts them) stored now in the memory stores of the running edge_cache handlers (Redis stores are not counted).",
	}, func() float64 { return float64(memoryTotals().Used) })
	evictionsCounter = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "edge_cache",
		Name:      "evictions_total",
		Help:      "Entries the memory stores evicted to stay within max_memory.",
	}, func() float64 { return float64(evictions()) })

	collectors = []prometheus.Collector{responsesVec, revalidationsVec, coalescedTotal, coalesceTimeoutsTotal, staleServedTotal, purgedTotal, entriesGauge, bytesGauge, evictionsCounter}
)

// The results of a revalidation, indexes of revalidations.
const (
	revalidateStored = iota
	revalidateNotStored
	revalidateUnreachable
	revalidateBusy
)

// registerMetrics adds the edge_cache collectors to the registry of the
// configuration being provisioned; the handlers of one configuration, and
// reloads, find them there already.
func registerMetrics(ctx caddy.Context, logger *zap.Logger) {
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) && are.ExistingCollector == c {
				continue
			}
			logger.Warn("registering edge_cache metrics", zap.Error(err))
		}
	}
}

func countResponse(st cache.Status) {
	if int(st) < len(responses) && responses[st] != nil {
		responses[st].Inc()
	}
}

// memoryStats is what a store that can count its entries cheaply offers.
type memoryStats interface {
	Stats() cache.MemoryStats
}

// memoryTotals sums the stats of the live memory stores.
func memoryTotals() cache.MemoryStats {
	var t cache.MemoryStats
	for _, s := range liveStores() {
		if ms, ok := s.(memoryStats); ok {
			st := ms.Stats()
			t.Entries += st.Entries
			t.Used += st.Used
		}
	}
	return t
}

// storeUse is a live store's count of handlers and the evictions it had
// made when it was first registered.
type storeUse struct {
	handlers  int
	baseEvict uint64
}

// stores are the stores of the running edge_cache handlers, counted by
// handler, for purges through the admin API and for the metrics.
// retiredEvictions are the evictions of the stores no handler uses any
// more, so that evictions_total never goes down.
var stores = struct {
	sync.Mutex
	m                map[cache.Store]*storeUse
	retiredEvictions uint64
}{m: make(map[cache.Store]*storeUse)}

func evictionsOf(s cache.Store) uint64 {
	if ms, ok := s.(memoryStats); ok {
		return ms.Stats().Evictions
	}
	return 0
}

func registerStore(s cache.Store) {
	stores.Lock()
	defer stores.Unlock()
	if u := stores.m[s]; u != nil {
		u.handlers++
		return
	}
	stores.m[s] = &storeUse{handlers: 1, baseEvict: evictionsOf(s)}
}

func unregisterStore(s cache.Store) {
	stores.Lock()
	defer stores.Unlock()
	u := stores.m[s]
	if u == nil {
		return
	}
	if u.handlers--; u.handlers <= 0 {
		stores.retiredEvictions += evictionsOf(s) - u.baseEvict
		delete(stores.m, s)
	}
}

// liveStores returns the stores of the running handlers.
func liveStores() []cache.Store {
	stores.Lock()
	defer stores.Unlock()
	out := make([]cache.Store, 0, len(stores.m))
	for s := range stores.m {
		out = append(out, s)
	}
	return out
}

// evictions is the number of entries the memory stores evicted while
// handlers used them.
func evictions() uint64 {
	stores.Lock()
	defer stores.Unlock()
	n := stores.retiredEvictions
	for s, u := range stores.m {
		n += evictionsOf(s) - u.baseEvict
	}
	return n
}
