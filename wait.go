package edgelimit

import (
	"context"
	"net/http"
	"time"

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
	policy.ReleaseWaits(d)
	if err == nil {
		return nil
	}
	now := h.clock.Now()
	if rerr := h.store.Refund(context.WithoutCancel(r.Context()), now, policy.Taken(d)); rerr != nil && h.warn.Allow(now, 5*time.Second) {
		h.logger.Warn("giving back the counts of a request that left while held", zap.Error(rerr))
	}
	h.refundEarlier(r, now)
	return err
}
