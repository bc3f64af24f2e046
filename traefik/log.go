package edgelimit

import (
	"fmt"
	"log"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/policy"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// logger writes what an operator needs to know. Yaegi hands what a plugin
// prints with fmt.Print* to Traefik's log at debug level, and what it logs
// with the log package at error level (os.Stdout and os.Stderr are the
// process's own). Warnings are throttled to one per store.WarnInterval of
// the real clock, however many requests meet the same trouble at once, so
// that an outage of Redis is a line every few seconds, not one per
// request.
type logger struct {
	name string
	warn store.Throttle
}

func newLogger(name string) *logger { return &logger{name: name} }

// warnf writes a warning unless one was written less than
// store.WarnInterval ago.
func (l *logger) warnf(format string, args ...interface{}) {
	if l.warn.Allow(time.Now(), store.WarnInterval) {
		log.Printf("edgelimit %s: "+format, append([]interface{}{l.name}, args...)...)
	}
}

// ChargeFailed warns of a store that failed to charge a response
// (policy.ChargeLog).
func (l *logger) ChargeFailed(err error) { l.warnf("%s: %v", policy.ChargeFailed, err) }

// BadCost warns of a cost header that is not a whole number of units.
func (l *logger) BadCost(issue policy.CostIssue) { l.warnf("%s", issue.String()) }

// Print writes an error, unthrottled (policy.EventLog).
func (l *logger) Print(msg string) { log.Printf("edgelimit %s: %s", l.name, msg) }

// info writes a note, unthrottled.
func (l *logger) info(msg string) {
	fmt.Printf("edgelimit %s: %s\n", l.name, msg)
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
