package edgelimit

import (
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/policy"
)

// hold holds a request that a limit with a wait admitted for later (the
// decision counted it), on the handler's clock; the places it held are
// given back after. A client that leaves while held gets its units back,
// and its place in the queue goes to the next.
func (h *Handler) hold(r *http.Request, d *policy.Decision, wait time.Duration) error {
	err := clock.Sleep(r.Context(), h.clock, wait)
	h.metrics.waited(d, err == nil)
	var ledger *policy.Ledger
	if err != nil {
		vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
		ledger = ledgerOf(vars)
	}
	if rerr := policy.Held(r.Context(), h.store, h.clock.Now, d, err != nil, ledger); rerr != nil && h.warn.Allow(h.clock.Now(), 5*time.Second) {
		h.logger.Warn("giving back the counts of a request that left while held", zap.Error(rerr))
	}
	return err
}
