package store

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
)

// EvictionAdvice is the warning for a Redis whose memory policy can forget
// the counts of clients that used up their limits, or "" when it cannot:
// maxmemory is Redis's maxmemory (0: no bound) and policy its
// maxmemory-policy. With a bound and any policy but noeviction, a flood of
// made-up client keys fills Redis, which then evicts other keys to make
// room, exhausted clients' counters among them: those clients get their
// limits whole again. With noeviction Redis refuses the writes instead,
// and the stores still deny, from what Redis holds, the clients it holds
// as denied (Remote: a read-only decision).
func EvictionAdvice(maxmemory int64, policy string) string {
	if maxmemory <= 0 || policy == "" || policy == "noeviction" {
		return ""
	}
	return "Redis evicts keys when full (maxmemory " + strconv.FormatInt(maxmemory, 10) + ", maxmemory-policy " + policy +
		"): a flood of made-up client keys can evict the counters of clients that used up their limits, which then get them whole again; " +
		"set maxmemory-policy noeviction on a Redis that counts limits (when it is full, the clients it holds as denied are still denied)"
}

// InfoField is the value of field in the text of Redis's INFO reply
// ("field:value" lines), or "": for an edge whose client does not read
// INFO (the Traefik plugin's).
func InfoField(info, field string) string {
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSuffix(line, "\r"), ":"); ok && k == field {
			return v
		}
	}
	return ""
}

// IsOOM tells whether err is Redis refusing a write at its maxmemory
// ("OOM command not allowed when used memory > 'maxmemory'", raised by a
// script's first write: the script wrote nothing), or ErrFull.
func IsOOM(err error) bool {
	return err != nil && (err == ErrFull || strings.Contains(err.Error(), "OOM command not allowed"))
}

// ErrFull is the answer of a Redis at its maxmemory that refuses writes
// (maxmemory-policy noeviction): the take script decided from the counts
// Redis holds, and counted nothing. The results hold those decisions: a
// client Redis holds as exhausted is denied exactly; the others are
// decided by the failure policy (Remote). Returned as is, never wrapped.
var ErrFull = errors.New("OOM command not allowed when used memory > 'maxmemory': redis is full, decided from the counts it holds and counted nothing")

// FullReply recognizes the take script's reply when Redis refused its
// writes: "F" and the decisions. It returns the decisions.
func FullReply(reply string) (string, bool) {
	if len(reply) > 0 && reply[0] == 'F' {
		return reply[1:], true
	}
	return reply, false
}

// FullWarning is the log line of a Redis that refuses writes (at most one
// per WarnInterval).
const FullWarning = "redis rate-limit storage is full (OOM at maxmemory): clients it holds as exhausted are still denied, the others are decided by on_error until it has room; " +
	"give Redis more memory (see docs/storage.md, Memory and key floods)"

// A Conn is an edge's Redis client as Health asks it: the Caddy module's
// go-redis client, the Traefik plugin's RESP pool. Not the request path.
type Conn interface {
	// Ping sends PING within the store's timeout.
	Ping(ctx context.Context) error
	// MemoryInfo returns the text of INFO memory ("field:value" lines).
	MemoryInfo(ctx context.Context) (string, error)
}

// Health is what a Redis store checks of its server at both edges: the
// probe of the failure policy (Server.Probe) and, once per store, Redis's
// memory policy (EvictionAdvice). The zero value is ready.
type Health struct {
	// evictionChecked is 1 once Redis's memory policy was read.
	evictionChecked int32
}

// Probe implements Server.Probe on c: a PING, then the memory policy when
// it was not read yet. advice is the warning to log, "" for none.
func (h *Health) Probe(ctx context.Context, c Conn) (advice string, err error) {
	if err := c.Ping(ctx); err != nil {
		return "", err
	}
	return h.CheckEviction(ctx, c), nil
}

// CheckEviction reads Redis's memory policy once it answers (at start-up,
// or when a probe finds it back) and returns EvictionAdvice, once per
// Health: "" when it was read before, when Redis does not answer (or INFO
// is renamed away: not this time), or when the policy is safe.
func (h *Health) CheckEviction(ctx context.Context, c Conn) string {
	if atomic.LoadInt32(&h.evictionChecked) == 1 {
		return ""
	}
	text, err := c.MemoryInfo(ctx)
	if err != nil || !atomic.CompareAndSwapInt32(&h.evictionChecked, 0, 1) {
		return ""
	}
	maxmemory, _ := strconv.ParseInt(InfoField(text, "maxmemory"), 10, 64)
	return EvictionAdvice(maxmemory, InfoField(text, "maxmemory_policy"))
}

// The log lines of a Redis store at both edges (with FullWarning and
// EvictionAdvice); each edge adds the failure policy and the error in its
// logger's way.
const (
	// UnavailableWarning: Redis failed (at most one per WarnInterval).
	UnavailableWarning = "redis rate-limit storage unavailable; on_error applies until it answers"
	// AnsweredNote: Redis answers again after a warning (Server.Answered).
	AnsweredNote = "redis rate-limit storage answers again"
	// NoSubscriptionWarning: the subscription to InvalidateChannel failed
	// (Remote.Watch's warn).
	NoSubscriptionWarning = "redis rate-limit storage: no subscription to the invalidations of local denials; local denials are off until it is back (each denial asks Redis)"
)

// FailureWarning is the warning for a failure of Redis (Server.Failed):
// FullWarning when Redis is full, else UnavailableWarning.
func FailureWarning(err error) string {
	if IsOOM(err) {
		return FullWarning
	}
	return UnavailableWarning
}

// IsNoScript tells whether err is Redis's NOSCRIPT reply to an EVALSHA of
// a script it does not have (after a restart or a SCRIPT FLUSH): the script
// did not run, and EVAL runs it (and caches it again). The edges' clients
// show Redis's error text as is or after "redis: ".
func IsNoScript(err error) bool {
	return err != nil && strings.HasPrefix(strings.TrimPrefix(err.Error(), "redis: "), "NOSCRIPT")
}
