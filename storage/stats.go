package storage

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/redis/go-redis/v9"

	"github.com/edgelimit/caddy-edgelimit/store"
)

// RedisErrorKind classifies the errors of a Redis store for its metrics: a
// small fixed set, so that a metric labelled with it has bounded series.
type RedisErrorKind uint8

// The kinds of Redis errors.
const (
	// RedisTimeout: Redis did not answer within the timeout (or the pool
	// had no connection free in time).
	RedisTimeout RedisErrorKind = iota
	// RedisConnection: no connection could be made or kept (refused,
	// reset, closed, end of stream).
	RedisConnection
	// RedisScript: the script failed on the server or its reply could not
	// be read.
	RedisScript
	// RedisOOM: Redis refused a write, at its maxmemory with the
	// noeviction policy (a key flood, or too small a maxmemory).
	RedisOOM
	// RedisOther: anything else (authentication, a Redis loading its
	// data...).
	RedisOther
	// NumRedisErrorKinds is the number of kinds.
	NumRedisErrorKinds
)

var redisErrorKindNames = [NumRedisErrorKinds]string{"timeout", "connection", "script", "oom", "other"}

func (k RedisErrorKind) String() string {
	if k < NumRedisErrorKinds {
		return redisErrorKindNames[k]
	}
	return "other"
}

// ClassifyRedisError tells the kind of a Redis error, and false for what
// is not one: nil, a NOSCRIPT reply (the script is loaded again, not a
// failure), or a caller that gave up (context.Canceled).
func ClassifyRedisError(err error) (RedisErrorKind, bool) {
	if err == nil || isNoScript(err) || errors.Is(err, context.Canceled) {
		return 0, false
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, redis.ErrPoolTimeout), errors.As(err, &ne) && ne.Timeout():
		return RedisTimeout, true
	case errors.Is(err, store.ErrBadReply), errors.Is(err, store.ErrCalendarMoving):
		return RedisScript, true
	case errors.Is(err, redis.ErrClosed), errors.Is(err, net.ErrClosed),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.As(err, &ne):
		return RedisConnection, true
	}
	if store.IsOOM(err) {
		return RedisOOM, true
	}
	var re redis.Error
	if errors.As(err, &re) {
		msg := strings.ToLower(re.Error())
		if strings.Contains(msg, "script") {
			return RedisScript, true
		}
	}
	return RedisOther, true
}

// RedisStats are the counts a Redis store keeps for its metrics, since it
// was created (a store kept across Caddy reloads keeps its counts).
type RedisStats struct {
	// Errors counts the failed exchanges with Redis, by RedisErrorKind.
	Errors [NumRedisErrorKinds]uint64
	// OnError counts the decisions (Takes) made by the failure policy while
	// Redis could not decide, by OnError (Allow, Deny, Local).
	OnError [store.Local + 1]uint64
	// LocalDenials counts the decisions denied from the memory of denials,
	// without a round trip.
	LocalDenials uint64
	// LocalKeys and LocalEvictions are those of the memory store of
	// OnError Local (0 with the other policies).
	LocalKeys      int
	LocalEvictions uint64
	// Carried counts the units that OnError Local counted while Redis
	// could not, charged to Redis when it answered again; CarryDropped the
	// (limit, client) pairs not remembered for that, for room.
	Carried      uint64
	CarryDropped uint64
}

// redisStats are the atomic counters behind RedisStats: one add on the
// paths that count, nothing on the others.
type redisStats struct {
	errors [NumRedisErrorKinds]atomic.Uint64
}

func (st *redisStats) countError(err error) {
	if k, ok := ClassifyRedisError(err); ok {
		st.errors[k].Add(1)
	}
}

// Stats returns the store's counts; it locks nothing on the request path.
func (s *Redis) Stats() RedisStats {
	var out RedisStats
	for i := range out.Errors {
		out.Errors[i] = s.stats.errors[i].Load()
	}
	out.OnError = s.policy.OnErrors()
	out.LocalDenials = s.policy.LocalDenials()
	if s.policy.Local != nil {
		out.LocalKeys = s.policy.Local.Len()
		out.LocalEvictions = s.policy.Local.Evictions()
	}
	if s.policy.Carry != nil {
		out.Carried = s.policy.Carry.Charged()
		out.CarryDropped = s.policy.Carry.Dropped()
	}
	return out
}

// Cluster tells whether the store's client is a Redis Cluster client.
func (s *Redis) Cluster() bool { return s.cluster }
