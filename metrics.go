package edgelimit

import (
	"errors"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// metrics are the edge_limit counters in Caddy's metrics registry. Labels
// are limit names from the configuration, never client keys, so their
// number is bounded.
type metrics struct {
	decisions     *prometheus.CounterVec
	storageErrors prometheus.Counter
}

func newMetrics(ctx caddy.Context, logger *zap.Logger) *metrics {
	m := &metrics{
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
	}
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return m
	}
	m.decisions = register(reg, m.decisions, logger)
	m.storageErrors = register(reg, m.storageErrors, logger)
	return m
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
