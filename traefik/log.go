package edgelimit

import (
	"fmt"
	"log"
	"sync"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// logger writes what an operator needs to know. Yaegi hands what a plugin
// prints with fmt.Print* to Traefik's log at debug level, and what it logs
// with the log package at error level (os.Stdout and os.Stderr are the
// process's own); warnings are throttled to one per warnInterval, so that
// an outage of Redis is a line every few seconds, not one per request.
type logger struct {
	name string

	mu       sync.Mutex
	lastWarn time.Time
}

const warnInterval = 5 * time.Second

func newLogger(name string) *logger { return &logger{name: name} }

// warnf writes a warning unless one was written less than warnInterval ago
// (by the clock of now).
func (l *logger) warnf(now time.Time, format string, args ...interface{}) {
	l.mu.Lock()
	if !l.lastWarn.IsZero() && now.Sub(l.lastWarn) < warnInterval && now.Sub(l.lastWarn) >= 0 {
		l.mu.Unlock()
		return
	}
	l.lastWarn = now
	l.mu.Unlock()
	log.Printf("edgelimit %s: "+format, append([]interface{}{l.name}, args...)...)
}

// firstDenial notes the first denial of a client in a window (the moment
// the Caddy module emits its edge_limit.exceeded event).
func (l *logger) firstDenial(limit, key, tier string, res *limiter.Result, dryRun bool) {
	what := "rate limit exceeded"
	if dryRun {
		what = "dry run: rate limit would deny"
	}
	fmt.Printf("edgelimit %s: %s: limit=%s key=%s tier=%q remaining=%d retry_after=%s\n",
		l.name, what, limit, key, tier, res.Remaining, res.RetryAfter)
}
