package edgelimit

import (
	"context"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// redisStore is the Caddy module's Redis store on the plugin's own client
// (resp.go): the same scripts, keys and encoding (package store), so that
// Traefik and Caddy instances on one Redis share their counts exactly; the
// same failure policy and memory of denials (store.Remote), which an
// operator's reset or credit invalidates through Redis as it does Caddy's,
// and the same hooks and health checks (store.RedisServer). One script per
// request, however many limits apply; Redis's clock unless clock is local.
// Redis Cluster and Sentinel are not supported.
type redisStore struct {
	*store.Remote
	*store.RedisServer
	scripts store.Scripts
	pool    *respPool
	opts    *redisOptions
}

func newRedisStore(o *redisOptions) *redisStore {
	s := &redisStore{
		Remote: store.NewRemote(o.OnError, 0, !o.NoLocalDenials, 0),
		pool:   newRespPool(o),
		opts:   o,
	}
	s.RedisServer = &store.RedisServer{Remote: s.Remote, Doer: s.pool,
		Log: &redisLog{logger: newLogger("redis " + o.Addr), onError: o.OnError.String()}}
	s.scripts = store.Scripts{Doer: s.pool, Prefix: o.Prefix, LocalClock: o.LocalClock}
	if s.Denials != nil {
		// For as long as Traefik runs: a plugin is never told it is
		// unloaded.
		go s.WatchInvalidations(o.Prefix, s, nil)
	}
	go s.CheckEviction(context.Background())
	return s
}

// Take implements store.Store.
func (s *redisStore) Take(ctx context.Context, now time.Time, reqs []store.Request, results []limiter.Result) error {
	if len(reqs) == 0 {
		return nil
	}
	// The limits were validated when the middleware was built: validating
	// them again here, as the Caddy module's store does, would cost much
	// under Yaegi.
	return store.TakeRemote(s.Remote, ctx, now, reqs, results, s)
}

// Refund implements store.Store.
func (s *redisStore) Refund(ctx context.Context, now time.Time, reqs []store.Request) error {
	if len(reqs) == 0 {
		return nil
	}
	return s.Remote.Refund(ctx, now, reqs, s)
}

// Close implements store.Store: a plugin's stores live as long as Traefik.
func (s *redisStore) Close() error { return nil }

// Decide implements store.Server.
func (s *redisStore) Decide(ctx context.Context, now time.Time, reqs []store.Request, results []limiter.Result) error {
	return store.TakeScripts(&s.scripts, ctx, now, reqs, results)
}

// GiveBack implements store.Server.
func (s *redisStore) GiveBack(ctx context.Context, now time.Time, reqs []store.Request) error {
	return s.scripts.Refund(ctx, now, reqs)
}

// redisLog is a store's log as package store writes to it
// (store.RedisLog).
type redisLog struct {
	*logger
	onError string
}

// Failure is written as it comes: the core writes it at most once per
// store.WarnInterval and outage (store.Remote). Through the logger's
// throttle, which the subscription's warnings share, it was lost when Redis
// died: the subscription noticed first, and the failure is warned of once.
func (l *redisLog) Failure(msg string, err error) {
	l.Print(msg + " (onError " + l.onError + "): " + err.Error())
}

func (l *redisLog) Warn(msg string, err error) {
	if err != nil {
		l.warnf("%s: %v", msg, err)
		return
	}
	l.warnf("%s", msg)
}

func (l *redisLog) Info(msg string) { l.info(msg) }

// subscription is a connection of its own, subscribed to a channel.
type subscription struct {
	c       *respConn
	timeout time.Duration
	channel string
}

// Subscribe implements store.Subscriber.
func (s *redisStore) Subscribe(channel string) (store.Subscription, error) {
	c, err := s.pool.dial(time.Now().Add(s.opts.Timeout))
	if err != nil {
		return nil, err
	}
	if err := c.send(time.Now().Add(s.opts.Timeout), []string{"SUBSCRIBE", channel}); err != nil {
		c.c.Close()
		return nil, err
	}
	return &subscription{c: c, timeout: s.opts.Timeout, channel: channel}, nil
}

func (sub *subscription) Receive(timeout time.Duration) (store.Received, error) {
	if err := sub.c.c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return store.Other, err
	}
	msg, err := sub.c.read()
	if err != nil {
		return store.Other, err
	}
	parts, _ := msg.([]interface{})
	if len(parts) < 2 {
		return store.Other, nil
	}
	kind, _ := parts[0].(string)
	ch, _ := parts[1].(string)
	return store.ReceivedOf(kind, ch, sub.channel), nil
}

func (sub *subscription) Ping() error {
	return sub.c.send(time.Now().Add(sub.timeout), []string{"PING"})
}

func (sub *subscription) Close() error { return sub.c.c.Close() }

// read reads one reply.
func (c *respConn) read() (interface{}, error) {
	first, err := c.r.ReadByte()
	if err != nil {
		return nil, err
	}
	return readReply(c.r, first, 0)
}
