package edgelimit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// Storage says where counters live.
type Storage struct {
	// Redis shares the counters with every Traefik and Caddy instance that
	// uses the same Redis. Without it, counters are kept in memory, shared
	// by every edgelimit middleware of this Traefik and kept across
	// configuration reloads.
	Redis *RedisConfig `json:"redis,omitempty"`
}

// RedisConfig is a Redis server, as the Caddy module's redis storage.
type RedisConfig struct {
	// Address is host:port. Default 127.0.0.1:6379 (unless URL is set).
	Address string `json:"address,omitempty"`
	// URL is redis://[user[:password]@]host[:port][/db], or rediss:// for
	// TLS; instead of Address.
	URL string `json:"url,omitempty"`
	// Username and Password for Redis ACLs or requirepass.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// DB is the database number.
	DB int `json:"db,omitempty"`
	// TLS connects with TLS 1.2 or later, the server's certificate checked
	// against the system roots.
	TLS bool `json:"tls,omitempty"`
	// Timeout bounds the wait for Redis on each request, from taking a
	// connection to reading the decision. Default 100ms.
	Timeout string `json:"timeout,omitempty"`
	// OnError is what requests get when Redis cannot decide in time:
	// "allow" (default: they pass unlimited), "deny" (503 with
	// Retry-After: 1) or "local" (this instance counts alone, in memory,
	// until Redis answers). After a failure, OnError decides at once for a
	// second before one request tries Redis again.
	OnError string `json:"onError,omitempty"`
	// KeyPrefix starts every key (default "edgelimit:"), as the Caddy
	// module's key_prefix: instances share counts only with the same one.
	KeyPrefix string `json:"keyPrefix,omitempty"`
	// Clock is "server" (default: Redis's clock, so instances whose clocks
	// differ agree) or "local".
	Clock string `json:"clock,omitempty"`
	// PoolSize bounds the connections to Redis (default 32).
	PoolSize int `json:"poolSize,omitempty"`
	// DisableLocalDenials asks Redis on every request. By default, a
	// client that Redis denied until T is denied by this instance until T
	// without a round trip, with the same headers, as the Caddy module's
	// local_denials on.
	DisableLocalDenials bool `json:"disableLocalDenials,omitempty"`
}

// request asks for Cost units of one limit for one client (the Caddy
// module's storage.Request).
type request struct {
	Counter string
	Key     string
	Limit   limiter.Limit
	Cost    int64
	DryRun  bool
}

// store decides requests against shared state, all or nothing: when every
// request that is not a dry run is allowed, each allowed one is counted;
// otherwise nothing is, and the denials keep their mark (for FirstDenial).
type store interface {
	Take(ctx context.Context, now time.Time, reqs []request, results []limiter.Result) error
	Refund(ctx context.Context, now time.Time, reqs []request) error
}

// errUnavailable is returned by a store that cannot decide and whose
// failure policy is to deny.
var errUnavailable = errors.New("rate-limit storage unavailable")

// allOrNothing applies the all-or-nothing rule to results decided one by
// one: it reports whether every request that is not a dry run was allowed,
// and when one was not, it reports the allowed ones as uncounted.
func allOrNothing(reqs []request, results []limiter.Result) bool {
	pass := true
	for i := range reqs {
		if !results[i].Allowed && !reqs[i].DryRun {
			pass = false
		}
	}
	if pass {
		return true
	}
	for i := range reqs {
		if results[i].Allowed {
			uncounted(&results[i], reqs[i].Cost)
		}
	}
	return false
}

// uncounted reports what remained before a request that its own limit
// allowed but that another limit denied.
func uncounted(r *limiter.Result, cost int64) {
	r.Remaining += cost
	if r.Remaining > r.Limit {
		r.Remaining = r.Limit
	}
}

// Stores are kept for the life of the process (Traefik gives plugins no
// way to release anything): every middleware on the real clock shares one
// memory store, and middlewares with the same Redis settings share one
// Redis store and its connections, across configuration reloads.
var (
	storesMu     sync.Mutex
	sharedMemory *memoryStore
	redisStores  = map[string]*redisStore{}
)

// openStore returns the store for a configuration; now is set by tests
// only, whose memory stores are their own.
func openStore(c *Storage, now func() time.Time) (store, error) {
	if c == nil || c.Redis == nil {
		if now != nil {
			return newMemoryStore(0), nil
		}
		storesMu.Lock()
		defer storesMu.Unlock()
		if sharedMemory == nil {
			sharedMemory = newMemoryStore(0)
		}
		return sharedMemory, nil
	}
	o, err := c.Redis.options()
	if err != nil {
		return nil, err
	}
	storesMu.Lock()
	defer storesMu.Unlock()
	key := o.id()
	if s, ok := redisStores[key]; ok {
		return s, nil
	}
	s := newRedisStore(o)
	redisStores[key] = s
	return s, nil
}

// redisOptions are resolved RedisConfig settings.
type redisOptions struct {
	addr      string
	username  string
	password  string
	db        int
	tls       bool
	timeout   time.Duration
	onError   onError
	prefix    string
	localTime bool
	poolSize  int
	// noLocalDenials turns off the memory of denials (denials.go).
	noLocalDenials bool
}

type onError uint8

const (
	onErrorAllow onError = iota
	onErrorDeny
	onErrorLocal
)

// Defaults of the Redis store, as the Caddy module's.
const (
	defaultRedisPrefix   = "edgelimit:"
	defaultRedisTimeout  = 100 * time.Millisecond
	defaultRetryInterval = time.Second
	defaultPoolSize      = 32
)

func (c *RedisConfig) options() (*redisOptions, error) {
	o := &redisOptions{addr: "127.0.0.1:6379", prefix: defaultRedisPrefix, timeout: defaultRedisTimeout, poolSize: defaultPoolSize}
	if c.URL != "" && c.Address != "" {
		return nil, errors.New("redis: url and address exclude each other")
	}
	if c.URL != "" {
		if err := o.parseURL(c.URL); err != nil {
			return nil, err
		}
	}
	if c.Address != "" {
		o.addr = c.Address
	}
	if _, _, err := splitHostPort(o.addr); err != nil {
		return nil, fmt.Errorf("redis: address %q: want host:port", o.addr)
	}
	if c.Username != "" {
		o.username = c.Username
	}
	if c.Password != "" {
		o.password = c.Password
	}
	if c.DB < 0 {
		return nil, fmt.Errorf("redis: db must not be negative, got %d", c.DB)
	}
	if c.DB != 0 {
		o.db = c.DB
	}
	o.tls = o.tls || c.TLS
	if c.Timeout != "" {
		d, err := parseDuration("timeout", c.Timeout)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("redis: timeout %q: want a duration such as 100ms", c.Timeout)
		}
		o.timeout = d
	}
	switch c.OnError {
	case "", "allow":
	case "deny":
		o.onError = onErrorDeny
	case "local":
		o.onError = onErrorLocal
	default:
		return nil, fmt.Errorf("redis: onError %q: want allow, deny or local", c.OnError)
	}
	if c.KeyPrefix != "" {
		o.prefix = c.KeyPrefix
	}
	if strings.ContainsAny(o.prefix, "{}") {
		return nil, fmt.Errorf("redis: keyPrefix %q holds '{' or '}', which would change the keys' Cluster hash slots", o.prefix)
	}
	switch c.Clock {
	case "", "server":
	case "local":
		o.localTime = true
	default:
		return nil, fmt.Errorf("redis: clock %q: want server or local", c.Clock)
	}
	if c.PoolSize < 0 {
		return nil, fmt.Errorf("redis: poolSize must not be negative, got %d", c.PoolSize)
	}
	if c.PoolSize > 0 {
		o.poolSize = c.PoolSize
	}
	o.noLocalDenials = c.DisableLocalDenials
	return o, nil
}

// parseURL reads redis://[user[:password]@]host[:port][/db] and rediss://.
func (o *redisOptions) parseURL(raw string) error {
	scheme, rest, ok := strings.Cut(raw, "://")
	switch {
	case !ok:
		return fmt.Errorf("redis: url %q: want redis://host:port/db", redactURL(raw))
	case scheme == "rediss":
		o.tls = true
	case scheme != "redis":
		return fmt.Errorf("redis: url %q: want the redis:// or rediss:// scheme", redactURL(raw))
	}
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		user, pass, hasPass := strings.Cut(rest[:at], ":")
		o.username = user
		if hasPass {
			o.password = pass
		}
		rest = rest[at+1:]
	}
	host, db, hasDB := strings.Cut(rest, "/")
	if host != "" {
		if _, _, err := splitHostPort(host); err != nil {
			host += ":6379"
		}
		o.addr = host
	}
	if hasDB && db != "" {
		n, err := strconv.Atoi(db)
		if err != nil || n < 0 {
			return fmt.Errorf("redis: url %q: database %q is not a number", redactURL(raw), db)
		}
		o.db = n
	}
	return nil
}

// redactURL hides a URL's password in messages.
func redactURL(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return "(url)"
	}
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		if user, _, hasPass := strings.Cut(rest[:at], ":"); hasPass {
			return scheme + "://" + user + ":xxxxx@" + rest[at+1:]
		}
	}
	return raw
}

// id identifies a store by everything that makes it; hashed, since it
// holds the password.
func (o *redisOptions) id() string {
	text := fmt.Sprintf("%q %q %q %d %t %d %d %q %t %d %t", o.addr, o.username, o.password, o.db, o.tls,
		o.timeout, o.onError, o.prefix, o.localTime, o.poolSize, o.noLocalDenials)
	sum := sha256.Sum256([]byte(text))
	return hex.EncodeToString(sum[:])
}
