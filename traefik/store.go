package edgelimit

import (
	"errors"
	"fmt"
	"sync"

	"github.com/edgelimit/caddy-edgelimit/store"
)

// Storage says where counters live.
type Storage struct {
	// Redis shares the counters with every Traefik and Caddy instance that
	// uses the same Redis. Without it, counters are kept in memory, shared
	// by every edgelimit middleware of this Traefik and kept across
	// configuration reloads.
	Redis *RedisConfig `json:"redis,omitempty"`

	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
}

// RedisConfig is a Redis server, as the Caddy module's redis storage
// (docs/traefik.md has every option).
type RedisConfig struct {
	Address  string `json:"address,omitempty"`  // host:port (127.0.0.1:6379), or:
	URL      string `json:"url,omitempty"`      // redis[s]://[user[:password]@]host[:port][/db], percent-decoded as go-redis does
	Username string `json:"username,omitempty"` // for Redis ACLs
	Password string `json:"password,omitempty"`
	DB       int    `json:"db,omitempty"`
	TLS      bool   `json:"tls,omitempty"`     // TLS 1.2 or later, the system's roots
	Timeout  string `json:"timeout,omitempty"` // the wait for a connection, then for the decision (100ms)
	// OnError is what requests get when Redis cannot decide in time: allow
	// (default), deny (503) or local (this instance counts alone), from a
	// failure until a probe (PING, every 50ms) finds Redis answering.
	OnError   string `json:"onError,omitempty"`
	KeyPrefix string `json:"keyPrefix,omitempty"` // of every key (edgelimit:), as the Caddy module's key_prefix
	Clock     string `json:"clock,omitempty"`     // server (default: Redis's) or local
	PoolSize  int    `json:"poolSize,omitempty"`  // connections at most (32)
	// DisableLocalDenials asks Redis on every request; by default a client
	// Redis denied until T is denied here until T, unless an operator's
	// reset or credit (Caddy's admin API) says otherwise.
	DisableLocalDenials bool `json:"disableLocalDenials,omitempty"`

	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
}

// Stores are kept for the life of the process (Traefik gives plugins no
// way to release anything): every middleware on the real clock shares one
// memory store, and middlewares with the same Redis settings share one
// Redis store and its connections, across configuration reloads.
var (
	storesMu     sync.Mutex
	sharedMemory *store.Memory
	redisStores  = map[string]*redisStore{}
)

// openStore returns the store for a configuration; own is set by tests,
// whose memory stores are their own (they decide on a clock of their own).
func openStore(c *Storage, own bool) (store.Store, error) {
	if c == nil || c.Redis == nil {
		if own {
			return store.NewMemory(store.MemoryOptions{}), nil
		}
		storesMu.Lock()
		defer storesMu.Unlock()
		if sharedMemory == nil {
			sharedMemory = store.NewMemory(store.MemoryOptions{})
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
	store.RedisURL // the URL's, then the options'
	store.RedisPolicy
	poolSize int
}

// defaultPoolSize is the connections of a Redis store at most, by default.
const defaultPoolSize = 32

func (c *RedisConfig) options() (*redisOptions, error) {
	if c.URL != "" && c.Address != "" {
		return nil, errors.New("redis: url and address exclude each other")
	}
	o := &redisOptions{RedisURL: store.RedisURL{Addr: store.DefaultRedisAddr}, poolSize: defaultPoolSize}
	if c.URL != "" {
		u, err := store.ParseRedisURL(c.URL)
		if err != nil {
			return nil, fmt.Errorf("redis: %w", err)
		}
		o.RedisURL = *u
	}
	if c.Address != "" {
		o.Addr = c.Address
	}
	if err := store.CheckAddr(o.Addr); err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	if c.Username != "" {
		o.Username = c.Username
	}
	if c.Password != "" {
		o.Password = c.Password
	}
	if c.DB != 0 {
		o.DB = c.DB
	}
	o.TLS = o.TLS || c.TLS
	set := store.RedisSettings{DB: c.DB, OnError: c.OnError, KeyPrefix: c.KeyPrefix, Clock: c.Clock,
		DisableLocalDenials: c.DisableLocalDenials, Camel: true}
	if c.Timeout != "" {
		d, err := parseDuration("timeout", c.Timeout)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("redis: timeout %q: want a duration such as 100ms", c.Timeout)
		}
		set.Timeout = d
	}
	var err error
	if o.RedisPolicy, err = set.Resolve(); err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	if c.PoolSize < 0 {
		return nil, fmt.Errorf("redis: poolSize must not be negative, got %d", c.PoolSize)
	}
	if c.PoolSize > 0 {
		o.poolSize = c.PoolSize
	}
	return o, nil
}

// id identifies a store by everything that makes it.
func (o *redisOptions) id() string {
	return store.SettingsID(o.RedisURL, o.RedisPolicy, o.poolSize)
}
