package storage

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/store"
)

// go-redis logs its connection troubles (a failed dial, a pool that gives
// up) with a logger of its own that writes raw lines to stderr, past the
// structured log of the program that uses it. Its logger is one for the
// whole process: redisLog sends its lines to the logger of the newest Redis
// store (or client) instead, as warnings, and at most one per
// redisLogEvery, with the count of those left out, as the store's own
// warnings during an outage.
type redisLog struct {
	logger  atomic.Pointer[zap.Logger]
	limit   store.Throttle
	dropped atomic.Int64
}

const redisLogEvery = 5 * time.Second

var (
	goRedisLog     redisLog
	goRedisLogOnce sync.Once
)

// routeRedisLogs makes go-redis log through l (nil keeps the logger set
// before; the first call replaces go-redis's own).
func routeRedisLogs(l *zap.Logger) {
	goRedisLogOnce.Do(func() {
		goRedisLog.logger.Store(zap.NewNop())
		redis.SetLogger(&goRedisLog)
	})
	if l != nil {
		goRedisLog.logger.Store(l.Named("go-redis"))
	}
}

// Printf implements go-redis's logging interface.
func (g *redisLog) Printf(_ context.Context, format string, v ...any) {
	if !g.limit.Allow(time.Now(), redisLogEvery) {
		g.dropped.Add(1)
		return
	}
	fields := []zap.Field{}
	if n := g.dropped.Swap(0); n > 0 {
		fields = append(fields, zap.Int64("similar_lines_left_out", n))
	}
	g.logger.Load().Warn(fmt.Sprintf(format, v...), fields...)
}
