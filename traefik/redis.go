package edgelimit

import (
	"context"
	"strconv"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// redisStore is the Caddy module's Redis store on the plugin's own client
// (resp.go): the same scripts, keys and encoding (package store), so that
// Traefik and Caddy instances on one Redis share their counts exactly; the
// same failure policy and memory of denials (store.Remote), which an
// operator's reset or credit invalidates through Redis as it does Caddy's.
// One script per request, however many limits apply; Redis's clock unless
// clock is local. Redis Cluster and Sentinel are not supported.
type redisStore struct {
	*store.Remote
	scripts store.Scripts
	pool    *respPool
	opts    *redisOptions
	log     *logger
	health  store.Health
}

func newRedisStore(o *redisOptions) *redisStore {
	s := &redisStore{
		Remote: store.NewRemote(o.OnError, 0, !o.NoLocalDenials, 0),
		pool:   newRespPool(o),
		opts:   o,
		log:    newLogger("redis " + o.addr),
	}
	s.scripts = store.Scripts{Runner: s, Prefix: o.Prefix, LocalClock: o.LocalClock}
	if s.Denials != nil {
		go s.watchInvalidations()
	}
	go s.checkEviction()
	return s
}

// Ping implements store.Conn.
func (s *redisStore) Ping(ctx context.Context) error {
	_, err := s.pool.do(ctx, []string{"PING"})
	return err
}

// MemoryInfo implements store.Conn.
func (s *redisStore) MemoryInfo(ctx context.Context) (string, error) {
	reply, err := s.pool.do(ctx, []string{"INFO", "memory"})
	if text, ok := reply.(string); ok || err != nil {
		return text, err
	}
	return "", store.ErrBadReply
}

// checkEviction warns, once, when Redis's memory policy can forget the
// counts of exhausted clients (store.Health).
func (s *redisStore) checkEviction() {
	s.warnEviction(s.health.CheckEviction(context.Background(), s))
}

func (s *redisStore) warnEviction(advice string) {
	if advice != "" {
		s.log.warnf("%s", advice)
	}
}

// Take implements store.Store.
func (s *redisStore) Take(ctx context.Context, now time.Time, reqs []store.Request, results []limiter.Result) error {
	if len(reqs) == 0 {
		return nil
	}
	// The limits were validated when the middleware was built: validating
	// them again here, as the Caddy module's store does, would cost much
	// under Yaegi.
	return s.Remote.Take(ctx, now, reqs, results, s)
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

// Failed implements store.Server.
func (s *redisStore) Failed(err error, warn bool) {
	if warn {
		s.log.warnf("%s (onError %s): %v", store.FailureWarning(err), s.OnError.String(), err)
	}
}

// Answered implements store.Server.
func (s *redisStore) Answered() { s.log.info(store.AnsweredNote) }

// Probe implements store.Server: a PING within the timeout.
func (s *redisStore) Probe(ctx context.Context) error {
	advice, err := s.health.Probe(ctx, s)
	s.warnEviction(advice)
	return err
}

// Decide implements store.Server.
func (s *redisStore) Decide(ctx context.Context, now time.Time, reqs []store.Request, results []limiter.Result) error {
	return s.scripts.Take(ctx, now, reqs, results)
}

// GiveBack implements store.Server.
func (s *redisStore) GiveBack(ctx context.Context, now time.Time, reqs []store.Request) error {
	return s.scripts.Refund(ctx, now, reqs)
}

// Run implements store.Runner on the pool: EVALSHA, then EVAL when Redis
// does not have the script.
func (s *redisStore) Run(ctx context.Context, sc *store.Script, keys, argv []string) (string, error) {
	args := make([]string, 0, 3+len(keys)+len(argv))
	args = append(args, "EVALSHA", sc.SHA, strconv.Itoa(len(keys)))
	args = append(args, keys...)
	args = append(args, argv...)
	reply, err := poolDo(s.pool, ctx, args)
	if err != nil && store.IsNoScript(err) {
		args[0], args[1] = "EVAL", sc.Src
		reply, err = poolDo(s.pool, ctx, args)
	}
	if err != nil {
		return "", err
	}
	text, ok := reply.(string)
	if !ok {
		return "", store.ErrBadReply
	}
	return text, nil
}

// watchInvalidations keeps the subscription that keeps the local denials
// honest (store.Remote.Watch) as long as Traefik runs: a plugin is never
// told it is unloaded.
func (s *redisStore) watchInvalidations() {
	channel := store.InvalidateChannel(s.opts.Prefix)
	s.Watch(func() (store.Subscription, error) { return s.subscribe(channel) }, nil, func(err error) {
		s.log.warnf("%s: %v", store.NoSubscriptionWarning, err)
	})
}

// subscription is a connection of its own, subscribed to a channel.
type subscription struct {
	c       *respConn
	timeout time.Duration
	channel string
}

func (s *redisStore) subscribe(channel string) (store.Subscription, error) {
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
