package storage

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// RedisOptions configures a Redis store. The zero value is usable.
type RedisOptions struct {
	// Prefix starts every key (default DefaultRedisPrefix). It may not hold
	// '{' or '}', which would change the keys' Cluster hash slots.
	Prefix string
	// Timeout bounds each decision, from waiting for a pooled connection
	// (or connecting) to reading the answer (default DefaultRedisTimeout).
	// A request whose limits span Cluster slots and are denied in one may
	// take one more Timeout to give back what the others counted.
	Timeout time.Duration
	// OnError is what to do when Redis cannot decide in time.
	OnError store.OnError
	// LocalClock decides with the time given to Take instead of Redis's
	// clock (TIME). With the server's clock, instances whose clocks differ
	// still agree; the local clock is for tests with a fake clock.
	LocalClock bool
	// NoLocalDenials turns off the memory of denials: by default, a key
	// Redis denied until T is denied on this instance without a round trip
	// until T (see denials).
	NoLocalDenials bool
	// MaxLocalDenials bounds the keys remembered (default
	// DefaultLocalDenials).
	MaxLocalDenials int
	// RetryInterval is the time between two probes (PING) of a Redis that
	// failed (default DefaultRedisRetryInterval); the first answer puts it
	// back in use. Meanwhile OnError decides at once, so that no request
	// waits for a Redis that is down.
	RetryInterval time.Duration
	// Logger receives a warning when Redis fails (at most one per
	// WarnInterval) and a note when it is back. Default: no logs.
	Logger *zap.Logger
	// Name says where the store keeps its counts (its server, database
	// and key prefix, never a credential), for the admin API.
	Name string
}

// Defaults for RedisOptions.
const (
	DefaultRedisPrefix        = store.DefaultRedisPrefix
	DefaultRedisTimeout       = store.DefaultRedisTimeout
	DefaultRedisRetryInterval = store.DefaultRetryInterval
)

// Redis is a Store shared by every instance that uses the same Redis: each
// decision is decided by a Lua script that reads, decides and writes the
// states of all the request's limits atomically, with the arithmetic of
// package limiter; decisions made at once share one script (EVALSHA, one
// network round trip however many limits and decisions it holds).
//
// A client is one hash, Prefix + "{" + 32 hex digits of the SHA-256 of the
// client's key + "}", whose fields are its counters (and "~", the time its
// TTL is set until). The braces are a Cluster hash tag: a client's limits
// share a slot, so a request whose limits all key on the same client is one
// script even in a Cluster. A request whose limits span slots is one script
// per slot, pipelined (still one round trip); when some slots allow and
// another denies, a second round trip gives back what the allowing slots
// counted. Every hash expires when its states would be forgotten anyway.
type Redis struct {
	client  redis.UniversalClient
	pipe    *pipe
	cluster bool
	prefix  string
	name    string
	timeout time.Duration
	// policy is the failure policy and the local denials, which are used
	// only while the subscription to InvalidateChannel is confirmed
	// (redis_admin.go).
	policy    *store.Remote
	watchStop chan struct{}
	watchDone chan struct{}
	serverTS  bool

	// server is what the plugin's Redis store does alike: the hooks of
	// the failure policy, the health checks, the watch of invalidations.
	server store.RedisServer

	logger   atomic.Pointer[zap.Logger]
	undoWarn store.Throttle
	stats    redisStats // see stats.go

	scratch   sync.Pool
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// NewRedis returns a store on client, which it owns: Close closes it. The
// client should come from NewRedisClient or have its settings (in
// particular ContextTimeoutEnabled, without which a Redis that does not
// answer holds requests for the client's read timeout, not Timeout).
func NewRedis(client redis.UniversalClient, o RedisOptions) (*Redis, error) {
	if client == nil {
		return nil, errors.New("redis storage: no client")
	}
	if o.Prefix == "" {
		o.Prefix = DefaultRedisPrefix
	}
	if err := store.CheckPrefix(o.Prefix); err != nil {
		return nil, fmt.Errorf("redis storage: key prefix %w", err)
	}
	if o.Timeout < 0 || o.RetryInterval < 0 {
		return nil, errors.New("redis storage: negative timeout or retry interval")
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultRedisTimeout
	}
	if o.RetryInterval == 0 {
		o.RetryInterval = DefaultRedisRetryInterval
	}
	if o.OnError > store.Local {
		return nil, fmt.Errorf("redis storage: unknown %s", o.OnError)
	}
	_, cluster := client.(*redis.ClusterClient)
	s := &Redis{
		client:   client,
		cluster:  cluster,
		prefix:   o.Prefix,
		name:     o.Name,
		timeout:  o.Timeout,
		policy:   store.NewRemote(o.OnError, o.RetryInterval, !o.NoLocalDenials, o.MaxLocalDenials),
		serverTS: !o.LocalClock,
	}
	s.server = store.RedisServer{Remote: s.policy, Doer: conn{client}, Log: serverLog{s}, Timeout: o.Timeout}
	s.SetLogger(o.Logger)
	s.scratch.New = func() any { return new(redisScratch) }
	s.pipe = newPipe(client, cluster)
	if s.policy.Denials != nil {
		s.watchStop, s.watchDone = make(chan struct{}), make(chan struct{})
		go s.watchInvalidations()
	}
	return s, nil
}

// Client returns the store's client, for other users of the same Redis
// and settings (the response cache). It belongs to the store: do not close
// it.
func (r *Redis) Client() redis.UniversalClient { return r.client }

// Name says where the store keeps its counts (RedisOptions.Name).
func (r *Redis) Name() string { return r.name }

// NewRedisClient returns a go-redis client for opts with the settings a
// store needs: every wait bounded by timeout and by the caller's context,
// no retries (a script whose reply was lost may have counted; running it
// again would count twice), one dial attempt per connection.
func NewRedisClient(opts *redis.UniversalOptions, timeout time.Duration) redis.UniversalClient {
	o := *opts
	if timeout <= 0 {
		timeout = DefaultRedisTimeout
	}
	o.ContextTimeoutEnabled = true
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = timeout, timeout, timeout, timeout
	o.MaxRetries = -1
	o.DialerRetries = 1
	// Maintenance notifications are a Redis Cloud feature that costs a
	// command per connection and background work; a rate limiter whose
	// requests are all short does not need them.
	o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	routeRedisLogs(nil)
	return redis.NewUniversalClient(&o)
}

// SetLogger replaces the logger (a store kept across Caddy reloads logs to
// the newest configuration's).
func (s *Redis) SetLogger(l *zap.Logger) {
	if l == nil {
		l = zap.NewNop()
	}
	s.logger.Store(l)
	routeRedisLogs(l)
}

// Close closes the client and the local fallback store.
func (s *Redis) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.policy.Stop()
		if s.watchStop != nil {
			close(s.watchStop)
			<-s.watchDone
		}
		s.pipe.stop()
		s.closeErr = s.client.Close()
		s.pipe.wait()
	})
	return s.closeErr
}

// Ping checks that Redis answers within the timeout. When it does not, the
// store treats Redis as down (OnError decides at once, Redis is probed
// every retry interval until it answers) and the error is returned for the
// caller to report; it is not fatal.
func (s *Redis) Ping(ctx context.Context) error {
	err := s.Probe(ctx)
	if err != nil {
		s.policy.Down(err, s)
	}
	return err
}

// Probe implements store.Server: a PING within the timeout, then Redis's
// memory policy once (store.RedisServer).
func (s *Redis) Probe(ctx context.Context) error { return s.server.Probe(ctx) }

// conn is the store's client as package store sends it one command
// (store.Doer): a probe, INFO, and the scripts that are not batched.
type conn struct{ c redis.UniversalClient }

func (c conn) Do(ctx context.Context, args []string) (any, error) {
	a := make([]any, len(args))
	for i := range args {
		a[i] = args[i]
	}
	cmd := onceCmd{redis.NewCmd(ctx, a...)}
	_ = c.c.Process(ctx, cmd)
	reply, err := cmd.Val(), cmd.Err()
	if err == redis.Nil {
		return nil, nil
	}
	return reply, err
}

// serverLog is the store's logger as package store writes to it
// (store.RedisLog).
type serverLog struct{ s *Redis }

func (l serverLog) Failure(msg string, err error) {
	fields := []zap.Field{zap.String("on_error", l.s.policy.OnError.String())}
	if !store.IsOOM(err) {
		fields = append(fields, zap.Duration("retry_interval", l.s.policy.Retry))
	}
	l.s.logger.Load().Warn(msg, append(fields, zap.Error(err))...)
}

func (l serverLog) Warn(msg string, err error) { l.s.logger.Load().Warn(msg, zap.Error(err)) }

func (l serverLog) Info(msg string) { l.s.logger.Load().Info(msg) }

// Take implements store.Store: from the local denials, else by Redis,
// else by OnError (store.Remote).
func (s *Redis) Take(ctx context.Context, now time.Time, reqs []store.Request, results []limiter.Result) error {
	if len(results) < len(reqs) {
		return store.ErrTooFewResults
	}
	if len(reqs) == 0 {
		return nil
	}
	if len(reqs) > store.MaxTakeFields {
		return store.ErrTooManyFields
	}
	for i := range reqs {
		if err := checkRequest(&reqs[i]); err != nil {
			return err
		}
	}
	if s.closed.Load() {
		return s.policy.Fallback(ctx, now, reqs, results, redis.ErrClosed)
	}
	return s.policy.Take(ctx, now, reqs, results, s)
}

// Refund implements store.Store: it gives back what an earlier Take
// counted, with limiter.Limit.Refund's arithmetic, in one script (one per
// Cluster slot, pipelined).
func (s *Redis) Refund(ctx context.Context, now time.Time, reqs []store.Request) error {
	if len(reqs) == 0 {
		return nil
	}
	for i := range reqs {
		if err := checkRequest(&reqs[i]); err != nil {
			return err
		}
	}
	return s.policy.Refund(ctx, now, reqs, s)
}

// Failed implements store.Server: the error is counted, and logged at most
// once per store.WarnInterval.
func (s *Redis) Failed(err error, warn bool) {
	s.stats.countError(err)
	s.server.Failed(err, warn)
}

// Answered implements store.Server.
func (s *Redis) Answered() { s.server.Answered() }

// GiveBack implements store.Server: it runs the refund script, within the
// timeout.
func (s *Redis) GiveBack(ctx context.Context, now time.Time, reqs []store.Request) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	sc := s.scratch.Get().(*redisScratch)
	defer s.putScratch(sc)
	s.prepare(sc, reqs)
	var runs []slotRun
	if s.cluster && !oneSlot(sc.slots) {
		runs = s.groupBySlot(sc, len(reqs))
	} else {
		runs = []slotRun{{idx: nil}}
	}
	pending := runs
	return store.AtServerTime(now.UnixMicro(), func(at int64) (int64, error) {
		for g := range pending {
			r := &pending[g]
			r.keys, r.argv = s.script(sc, reqs, r.idx, now, at)
		}
		s.pipeline(ctx, pending, refundScript)
		var again []slotRun
		serverNow := int64(0)
		for _, r := range pending {
			if r.err != nil {
				return 0, r.err
			}
			if t, ok := store.BoundsReply(r.reply); ok {
				// Asked again with the window of the server's time (the
				// slots that answered gave back already).
				serverNow = t
				again = append(again, slotRun{idx: r.idx})
			} else if r.reply != "R" {
				return 0, store.ErrBadReply
			}
		}
		pending = again
		return serverNow, nil
	})
}

// checkRequest refuses what the script cannot compute (the memory store
// would divide by zero); the handler validates limits before they get here.
func checkRequest(r *store.Request) error {
	if err := r.Limit.Validate(); err != nil {
		return fmt.Errorf("redis storage: counter %q: %w", r.Counter, err)
	}
	if r.Cost < 1 {
		return fmt.Errorf("redis storage: counter %q: cost %d must be at least 1", r.Counter, r.Cost)
	}
	return nil
}

// Decide implements store.Server: it asks Redis, within the timeout. A
// request decided by one script needs no timer of its own: its batch has
// its deadline.
func (s *Redis) Decide(ctx context.Context, now time.Time, reqs []store.Request, results []limiter.Result) error {
	deadline := time.Now().Add(s.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	sc := s.scratch.Get().(*redisScratch)
	defer s.putScratch(sc)
	s.prepare(sc, reqs)
	// With the server's clock, Go computes calendar windows for its own
	// time; a server whose clock is on the other side of a boundary says
	// so, and is asked again with the window of its time.
	if s.cluster && !oneSlot(sc.slots) {
		return store.AtServerTime(now.UnixMicro(), func(at int64) (int64, error) {
			return s.decideSlots(ctx, deadline, now, at, reqs, results, sc)
		})
	}
	return store.AtServerTime(now.UnixMicro(), func(at int64) (int64, error) {
		return s.decideOne(ctx, deadline, now, at, reqs, results, sc)
	})
}

func oneSlot(slots []uint16) bool {
	for _, sl := range slots[1:] {
		if sl != slots[0] {
			return false
		}
	}
	return true
}

// decideOne runs the script once for every request.
func (s *Redis) decideOne(ctx context.Context, deadline, now time.Time, at int64, reqs []store.Request, results []limiter.Result, sc *redisScratch) (int64, error) {
	keys, spec, fields := s.requests(sc, reqs, nil, at)
	reply, err := s.pipe.decide(ctx, deadline, s.scriptNow(now), sc.slots[0], keys, fields, spec)
	if err != nil && err != store.ErrFull {
		return 0, err
	}
	if serverNow, ok := store.BoundsReply(reply); ok {
		return serverNow, nil
	}
	if _, err := store.ParseResults(reply, reqs, nil, results, sc.bounds); err != nil {
		return 0, err
	}
	store.AllOrNothing(reqs, results[:len(reqs)])
	if err != nil {
		store.Unwritten(results[:len(reqs)])
	}
	return 0, err
}

// eval runs a script with EVALSHA, or EVAL when Redis does not have it yet
// (after a restart or SCRIPT FLUSH; EVAL caches it again), by ctx's
// deadline (or within the timeout). Refunds, undos and the scripts of a
// Cluster request across slots come here: they are rare, and not batched.
func (s *Redis) eval(ctx context.Context, sc *script, keys []string, argv ...string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	return store.ScriptText(ctx, conn{s.client}, sc.Script, keys, argv)
}

// runScript runs sc by its SHA, and by its source when Redis does not
// have it (store.RunScript).
func (s *Redis) runScript(ctx context.Context, sc *script, keys []string, argv ...string) (any, error) {
	return store.RunScript(ctx, conn{s.client}, sc.Script, keys, argv)
}

var _ store.Store = (*Redis)(nil)
