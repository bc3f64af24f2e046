package edgelimit

import (
	"context"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// syncClock is the handler's clock as held requests and the merges of
// limits with sync (store.Synced) wait on it: a fake clock in tests moves
// them.
type syncClock struct{ c clock.Clock }

func (s syncClock) Now() time.Time { return s.c.Now() }

func (s syncClock) Sleep(ctx context.Context, d time.Duration) error {
	return clock.Sleep(ctx, s.c, d)
}

// withSync wraps the handler's store in a store.Synced when one of its
// limits has sync and the store decides in Redis.
func (h *Handler) withSync() {
	for _, cl := range h.limits {
		if cl.Sync > 0 {
			h.store = store.WithSync(h.store, h.waits)
			if s, ok := h.store.(*store.Synced); ok {
				h.synced = s
			}
			return
		}
	}
}

// Cleanup stops the merges of the limits with sync, after a last one.
func (h *Handler) Cleanup() error {
	if h.synced != nil {
		return h.synced.Close()
	}
	return nil
}

var _ caddy.CleanerUpper = (*Handler)(nil)
