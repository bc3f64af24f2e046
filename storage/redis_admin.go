package storage

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// The admin side of the Redis store: Peek, Reset and Credit on the same
// hash per client and field per counter as the take script (see luaCommon),
// and the invalidation of local denials across instances.
//
// Peek reads the client's fields and the server's time in one small script
// and decides in Go with limiter.Limit.Peek; Credit does the same, computes
// the new states with limiter.Limit.Credit and writes them with a
// compare-and-set script (only if no request changed them meanwhile; else
// it reads again, a few times at most); Reset is HDEL. Every script touches
// one client's hash, so a Cluster runs it in that client's slot. The stored
// format and the take script are unchanged.

// luaPeek returns the time (ARGV[1], or the server's when it is 0) and the
// values of the fields ARGV[2...] of KEYS[1] ("" for none).
var peekScript = newScript(`
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local out = {string.format('%.0f', now)}
for i = 2, #ARGV do
  local v = redis.pcall('HGET', KEYS[1], ARGV[i])
  if type(v) ~= 'string' then v = '' end
  out[i] = v
end
return out
`)

// casScript writes states ARGV[3i] to fields ARGV[3i-2] of KEYS[1] when
// every field still holds ARGV[3i-1] ("" for none), and returns 1; else it
// writes nothing and returns 0. The hash keeps its TTL: a credit never
// makes a state outlive it.
var casScript = newScript(`
for i = 1, #ARGV, 3 do
  local v = redis.pcall('HGET', KEYS[1], ARGV[i])
  if type(v) ~= 'string' then v = '' end
  if v ~= ARGV[i + 1] then return 0 end
end
for i = 1, #ARGV, 3 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
end
return 1
`)

// adminTimeout bounds one admin operation: an operator waits longer than
// a request does.
func (s *Redis) adminTimeout() time.Duration {
	return max(10*s.timeout, 2*time.Second)
}

// InvalidateChannel is the pub/sub channel on which Reset and Credit tell
// every store on the same Redis and prefix to drop its local denials.
func (s *Redis) InvalidateChannel() string { return store.InvalidateChannel(s.prefix) }

// clientGroups returns, per client hash key, the indexes of reqs on it.
func (s *Redis) clientGroups(reqs []store.Request) (keys []string, groups [][]int) {
	sc := new(redisScratch)
	s.prepare(sc, reqs)
	for i := range reqs {
		k := 0
		for k < len(keys) && keys[k] != sc.keys[i] {
			k++
		}
		if k == len(keys) {
			keys = append(keys, sc.keys[i])
			groups = append(groups, nil)
		}
		groups[k] = append(groups[k], i)
	}
	return keys, groups
}

func checkAdmin(reqs []store.Request) error {
	for i := range reqs {
		r := reqs[i]
		if r.Cost < 1 {
			r.Cost = 1
		}
		if err := checkRequest(&r); err != nil {
			return err
		}
	}
	return nil
}

// peekKey reads the time and the fields of reqs at idx on one client.
func (s *Redis) peekKey(ctx context.Context, now time.Time, key string, reqs []store.Request, idx []int) (int64, []string, error) {
	argv := make([]string, 0, 1+len(idx))
	argv = append(argv, strconv.FormatInt(s.scriptNow(now), 10))
	for _, i := range idx {
		argv = append(argv, reqs[i].Counter)
	}
	reply, err := s.runScript(ctx, peekScript, []string{key}, argv...)
	if err != nil {
		return 0, nil, err
	}
	vals, ok := stringSlice(reply)
	if !ok || len(vals) != 1+len(idx) {
		return 0, nil, store.ErrBadReply
	}
	at, err := strconv.ParseInt(vals[0], 10, 64)
	if err != nil {
		return 0, nil, store.ErrBadReply
	}
	return at, vals[1:], nil
}

// stringSlice reads an array of strings.
func stringSlice(reply any) ([]string, bool) {
	parts, ok := reply.([]any)
	out := make([]string, len(parts))
	for i, p := range parts {
		if out[i], ok = p.(string); !ok {
			return nil, false
		}
	}
	return out, ok
}

// Peek implements Admin: it reads Redis (never the local denials), with
// the server's clock unless the store decides with the local one.
func (s *Redis) Peek(ctx context.Context, now time.Time, reqs []store.Request, results []limiter.Result) error {
	if len(results) < len(reqs) {
		return store.ErrTooFewResults
	}
	if err := checkAdmin(reqs); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.adminTimeout())
	defer cancel()
	keys, groups := s.clientGroups(reqs)
	for k, key := range keys {
		at, vals, err := s.peekKey(ctx, now, key, reqs, groups[k])
		if err != nil {
			return fmt.Errorf("redis rate-limit storage: %w", err)
		}
		for j, i := range groups[k] {
			st := store.DecodeState(vals[j], at)
			results[i] = reqs[i].Limit.Peek(st, at, reqs[i].Cost)
		}
	}
	return nil
}

// Reset implements Admin: it deletes the client's fields, drops this
// store's local denials and tells the other stores to drop theirs.
func (s *Redis) Reset(ctx context.Context, now time.Time, reqs []store.Request) error {
	ctx, cancel := context.WithTimeout(ctx, s.adminTimeout())
	defer cancel()
	keys, groups := s.clientGroups(reqs)
	var errs []error
	for k, key := range keys {
		fields := make([]string, 0, len(groups[k]))
		for _, i := range groups[k] {
			fields = append(fields, reqs[i].Counter)
		}
		if err := s.client.HDel(ctx, key, fields...).Err(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.policy.Local != nil {
		_ = s.policy.Local.Reset(ctx, now, reqs)
	}
	published := s.invalidate(ctx)
	if err := errors.Join(errs...); err != nil {
		// A reset is idempotent: the operator may try again.
		return fmt.Errorf("redis rate-limit storage: %w", err)
	}
	return published
}

// casAttempts bounds the reads and writes of one Credit when requests keep
// changing the client's state in between.
const casAttempts = 8

// Credit implements Admin.
func (s *Redis) Credit(ctx context.Context, now time.Time, reqs []store.Request, units int64, given []int64) error {
	if len(given) < len(reqs) {
		return store.ErrTooFewResults
	}
	if err := checkAdmin(reqs); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.adminTimeout())
	defer cancel()
	keys, groups := s.clientGroups(reqs)
	for k, key := range keys {
		if err := s.creditKey(ctx, now, key, reqs, groups[k], units, given); err != nil {
			// What an earlier hash was given stays given, and so may
			// this one's if Redis ran the write before the error: crediting
			// again blindly could give twice.
			_ = s.invalidate(ctx)
			return fmt.Errorf("redis rate-limit storage: %w (units may have been given before the failure: inspect before crediting again)", err)
		}
	}
	if s.policy.Local != nil {
		scratch := make([]int64, len(reqs))
		_ = s.policy.Local.Credit(ctx, now, reqs, units, scratch)
	}
	return s.invalidate(ctx)
}

var errCreditBusy = errors.New("the client's state kept changing while it was credited; try again")

func (s *Redis) creditKey(ctx context.Context, now time.Time, key string, reqs []store.Request, idx []int, units int64, given []int64) error {
	for range casAttempts {
		at, vals, err := s.peekKey(ctx, now, key, reqs, idx)
		if err != nil {
			return err
		}
		argv := make([]string, 0, 3*len(idx))
		for j, i := range idx {
			given[i] = 0
			st := store.DecodeState(vals[j], at) // none: the zero state, given nothing
			if g := reqs[i].Limit.Credit(&st, at, units); g > 0 {
				given[i] = g
				argv = append(argv, reqs[i].Counter, vals[j], store.EncodeState(st))
			}
		}
		if len(argv) == 0 {
			return nil
		}
		ok, err := s.runScript(ctx, casScript, []string{key}, argv...)
		if err != nil {
			return err
		}
		if ok == int64(1) {
			return nil
		}
	}
	return errCreditBusy
}

// NotPublishedError is returned by Reset and Credit when the change was
// made but its invalidation could not be published: other instances may
// deny the client from their local denials until the time Redis gave them
// (never longer). The change stands; doing it again would repeat it.
type NotPublishedError struct{ Err error }

func (e *NotPublishedError) Error() string {
	return "done, but the invalidation of other instances' local denials was not published (they may deny this client until its Retry-After): " + e.Err.Error()
}

func (e *NotPublishedError) Unwrap() error { return e.Err }

// invalidate drops this store's local denials and publishes on
// InvalidateChannel so that every store on the same Redis drops its own.
func (s *Redis) invalidate(ctx context.Context) error {
	if s.policy.Denials != nil {
		s.policy.Denials.ClearAll()
	}
	if err := s.client.Publish(ctx, s.InvalidateChannel(), "reset").Err(); err != nil {
		return &NotPublishedError{Err: err}
	}
	return nil
}

var _ store.Admin = (*Redis)(nil)

// LocalDenialsActive tells whether the store answers from its local
// denials now: only while its subscription to InvalidateChannel is
// confirmed and healthy.
func (s *Redis) LocalDenialsActive() bool { return s.policy.Live() }

// watchInvalidations keeps the subscription to InvalidateChannel that
// keeps the local denials honest (store.RedisServer), until Close.
func (s *Redis) watchInvalidations() {
	defer close(s.watchDone)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.watchStop:
			cancel()
		case <-ctx.Done():
		}
	}()
	s.server.WatchInvalidations(s.prefix, subscriber{ctx: ctx, client: s.client}, s.watchStop)
}

// subscriber subscribes on go-redis (store.Subscriber).
type subscriber struct {
	ctx    context.Context
	client redis.UniversalClient
}

func (g subscriber) Subscribe(channel string) (store.Subscription, error) {
	return &subscription{ctx: g.ctx, ps: g.client.Subscribe(g.ctx, channel), channel: channel}, nil
}

// subscription is a go-redis subscription as store.Watch reads it.
type subscription struct {
	ctx     context.Context
	ps      *redis.PubSub
	channel string
}

func (g *subscription) Receive(timeout time.Duration) (store.Received, error) {
	msg, err := g.ps.ReceiveTimeout(g.ctx, timeout)
	if err != nil {
		return store.Other, err
	}
	switch m := msg.(type) {
	case *redis.Subscription:
		return store.ReceivedOf(m.Kind, m.Channel, g.channel), nil
	case *redis.Message:
		return store.ReceivedOf("message", m.Channel, g.channel), nil
	}
	return store.Other, nil
}

func (g *subscription) Ping() error  { return g.ps.Ping(g.ctx) }
func (g *subscription) Close() error { return g.ps.Close() }
