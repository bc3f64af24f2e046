package edgelimit

import (
	"errors"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/policy"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// The names of the edge_limit series. The dashboard of docs/grafana uses
// them (a test checks that it uses no other).
const (
	metricDecisions       = "caddy_edge_limit_decisions_total"
	metricStorageErrors   = "caddy_edge_limit_storage_errors_total"
	metricStorageDuration = "caddy_edge_limit_storage_duration_seconds"
	metricRedisErrors     = "caddy_edge_limit_redis_errors_total"
	metricOnError         = "caddy_edge_limit_on_error_total"
	metricMemoryKeys      = "caddy_edge_limit_memory_keys"
	metricMemoryEvictions = "caddy_edge_limit_memory_evictions_total"
	metricLocalDenials    = "caddy_edge_limit_local_denials_total"
	metricRedisCarried    = "caddy_edge_limit_redis_carried_units_total"
)

// storageBuckets resolve a memory decision (a few hundred nanoseconds) and
// a Redis round trip (tens of microseconds to the timeout) alike.
var storageBuckets = []float64{
	100e-9, 250e-9, 500e-9,
	1e-6, 2.5e-6, 5e-6,
	10e-6, 25e-6, 50e-6,
	100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3,
	10e-3, 25e-3, 50e-3,
	100e-3, 250e-3, 500e-3, 1,
}

// metrics are the edge_limit series in Caddy's metrics registry. Labels
// are limit names from the configuration, storage backends, error kinds
// and failure policies, never client keys, so their number is bounded.
type metrics struct {
	decisions       *prometheus.CounterVec
	storageErrors   prometheus.Counter
	storageDuration *prometheus.HistogramVec
	// waits counts the requests held by limits with a wait, served or
	// abandoned (the client left), and waitSeconds their waits.
	waits       *prometheus.CounterVec
	waitSeconds *prometheus.HistogramVec
	// stores are the stores of this configuration, read when the registry
	// is scraped: their counters cost the request path nothing more.
	stores *storeSet
}

func newMetrics(ctx caddy.Context, logger *zap.Logger) *metrics {
	m := buildMetrics()
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return m
	}
	m.decisions = register(reg, m.decisions, logger)
	m.storageErrors = register(reg, m.storageErrors, logger)
	m.storageDuration = register(reg, m.storageDuration, logger)
	m.waits = register(reg, m.waits, logger)
	m.waitSeconds = register(reg, m.waitSeconds, logger)
	for _, c := range m.stores.collectors() {
		register(reg, c, logger)
	}
	return m
}

func buildMetrics() *metrics {
	return &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "caddy",
			Subsystem: "edge_limit",
			Name:      "decisions_total",
			Help:      "Rate-limit decisions per limit: allowed, denied, or would_deny (dry run).",
		}, []string{"limit", "outcome"}),
		storageErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "caddy",
			Subsystem: "edge_limit",
			Name:      "storage_errors_total",
			Help:      "Decisions the rate-limit storage could not make.",
		}),
		storageDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "caddy",
			Subsystem: "edge_limit",
			Name:      "storage_duration_seconds",
			Help:      "Time the storage took to decide one request's limits, by backend (memory, redis, redis_cluster).",
			Buckets:   storageBuckets,
		}, []string{"backend"}),
		waits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "caddy",
			Subsystem: "edge_limit",
			Name:      "waits_total",
			Help:      "Requests a limit with a wait held until their turn, per limit: served, or abandoned (the client left while held).",
		}, []string{"limit", "outcome"}),
		waitSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "caddy",
			Subsystem: "edge_limit",
			Name:      "wait_seconds",
			Help:      "How long a limit with a wait held each request it held, per limit.",
			Buckets:   []float64{1e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 8},
		}, []string{"limit"}),
		stores: new(storeSet),
	}
}

// waited counts the requests of d held by limits with a wait.
func (m *metrics) waited(d *policy.Decision, served bool) {
	if m == nil {
		return
	}
	outcome := "served"
	if !served {
		outcome = "abandoned"
	}
	for i := range d.Reqs {
		// Held: allowed with a time to wait, which only a wait gives an
		// allowed request (the hold has given its place back: its
		// Limit.Wait is 0 again).
		if res := &d.Res[i]; res.Allowed && res.RetryAfter > 0 {
			name := d.Meta[i].Limit.Name
			m.waits.WithLabelValues(name, outcome).Inc()
			m.waitSeconds.WithLabelValues(name).Observe(d.Res[i].RetryAfter.Seconds())
		}
	}
}

// register adds c to reg, or returns the collector already there.
func register[C prometheus.Collector](reg *prometheus.Registry, c C, logger *zap.Logger) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		logger.Warn("registering metrics", zap.Error(err))
	}
	return c
}

// outcomes are one limit's decision counters, looked up once at provision
// so that counting costs one atomic add.
type outcomes struct {
	allowed, denied, wouldDeny prometheus.Counter
}

func (m *metrics) outcomesFor(limit string) *outcomes {
	if m == nil {
		return nil
	}
	return &outcomes{
		allowed:   m.decisions.WithLabelValues(limit, "allowed"),
		denied:    m.decisions.WithLabelValues(limit, "denied"),
		wouldDeny: m.decisions.WithLabelValues(limit, "would_deny"),
	}
}

func (o *outcomes) count(r *limiter.Result, dryRun bool) {
	switch {
	case o == nil:
	case r.Allowed:
		o.allowed.Inc()
	case dryRun:
		o.wouldDeny.Inc()
	default:
		o.denied.Inc()
	}
}

func (m *metrics) storageError() {
	if m != nil {
		m.storageErrors.Inc()
	}
}

// backendOf names the backend of a store for the storage_duration_seconds
// label.
func backendOf(s store.Store) string {
	switch s := s.(type) {
	case *store.Memory:
		return "memory"
	case *storage.Redis:
		if s.Cluster() {
			return "redis_cluster"
		}
		return "redis"
	}
	return "other"
}

// storeTimer observes how long a handler's store takes to decide; nil when
// there are no metrics.
type storeTimer struct{ obs prometheus.Observer }

// timerFor returns the timer of store and counts the store in the
// configuration's store metrics.
func (m *metrics) timerFor(store store.Store) storeTimer {
	if m == nil {
		return storeTimer{}
	}
	m.stores.add(store)
	return storeTimer{obs: m.storageDuration.WithLabelValues(backendOf(store))}
}

// observe records the time since start. It measures real waiting (as the
// Redis timeouts do), not decision time: the module's clock, which tests
// may stop, is not for it.
func (t storeTimer) observe(start time.Time) {
	if t.obs != nil {
		t.obs.Observe(time.Since(start).Seconds())
	}
}

// storeSet holds the distinct stores of one configuration, for the series
// that read their counters when scraped.
type storeSet struct {
	mu     sync.Mutex
	memory []*store.Memory
	redis  []*storage.Redis
}

func (s *storeSet) add(st store.Store) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch st := st.(type) {
	case *store.Memory:
		for _, m := range s.memory {
			if m == st {
				return
			}
		}
		s.memory = append(s.memory, st)
	case *storage.Redis:
		for _, r := range s.redis {
			if r == st {
				return
			}
		}
		s.redis = append(s.redis, st)
	}
}

// snapshot sums the counters of the stores: the memory stores' keys and
// evictions (with those of the Redis stores' on_error local memory) and the
// Redis stores' counts.
func (s *storeSet) snapshot() (keys int, evictions uint64, rs storage.RedisStats) {
	s.mu.Lock()
	memory, redis := s.memory, s.redis
	s.mu.Unlock()
	for _, m := range memory {
		keys += m.Len()
		evictions += m.Evictions()
	}
	for _, r := range redis {
		st := r.Stats()
		for i, n := range st.Errors {
			rs.Errors[i] += n
		}
		for i, n := range st.OnError {
			rs.OnError[i] += n
		}
		rs.LocalDenials += st.LocalDenials
		rs.Carried += st.Carried
		keys += st.LocalKeys
		evictions += st.LocalEvictions
	}
	return keys, evictions, rs
}

// collectors are the series read from the stores when scraped.
func (s *storeSet) collectors() []prometheus.Collector {
	opts := func(name, help string, labels prometheus.Labels) prometheus.Opts {
		return prometheus.Opts{Namespace: "caddy", Subsystem: "edge_limit", Name: name, Help: help, ConstLabels: labels}
	}
	var cs []prometheus.Collector
	for k := range storage.NumRedisErrorKinds {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts(opts("redis_errors_total",
			"Failed exchanges with Redis, by kind: timeout, connection, script, oom or other.",
			prometheus.Labels{"kind": k.String()})),
			func() float64 { _, _, rs := s.snapshot(); return float64(rs.Errors[k]) }))
	}
	for _, p := range []store.OnError{store.Allow, store.Deny, store.Local} {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts(opts("on_error_total",
			"Decisions made by the Redis storage's on_error policy (allow, deny or local) while Redis could not decide.",
			prometheus.Labels{"action": p.String()})),
			func() float64 { _, _, rs := s.snapshot(); return float64(rs.OnError[p]) }))
	}
	cs = append(cs,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts("memory_keys",
			"Keys (limit and client) held by the memory stores, including the Redis storage's on_error local memory.", nil)),
			func() float64 { k, _, _ := s.snapshot(); return float64(k) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts(opts("memory_evictions_total",
			"Live keys the memory stores evicted to stay within max_keys.", nil)),
			func() float64 { _, e, _ := s.snapshot(); return float64(e) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts(opts("local_denials_total",
			"Decisions the Redis storage denied from its memory of denials, without a round trip.", nil)),
			func() float64 { _, _, rs := s.snapshot(); return float64(rs.LocalDenials) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts(opts("redis_carried_units_total",
			"Units that on_error local counted while Redis could not decide, charged to Redis when it answered again.", nil)),
			func() float64 { _, _, rs := s.snapshot(); return float64(rs.Carried) }),
	)
	return cs
}

// metricNames lists every series name edge_limit registers.
var metricNames = []string{
	metricDecisions, metricStorageErrors, metricStorageDuration, metricRedisErrors,
	metricOnError, metricMemoryKeys, metricMemoryEvictions, metricLocalDenials, metricRedisCarried,
}
