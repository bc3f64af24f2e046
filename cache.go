package edgelimit

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/cache"
	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/storage"
)

func init() {
	caddy.RegisterModule(Cache{})
}

// Cache is the edge_cache HTTP handler: a Bloom-compatible response cache.
// Placed before edge_limit (the directive order does it), a HIT is served
// without reaching the limiter, so cached responses never count against a
// rate limit. Every response it passes carries Bloom-Status: MISS, HIT,
// DIRECT or OFFLINE.
type Cache struct {
	// TTL is how long a response stays fresh when the upstream sets no
	// lifetime (Bloom-Response-TTL, Cache-Control s-maxage or max-age).
	// Default: 10m (Bloom's 600 s).
	TTL caddy.Duration `json:"ttl,omitempty"`

	// TTLMax caps every lifetime, including the upstream's. Default: 30d.
	TTLMax caddy.Duration `json:"ttl_max,omitempty"`

	// MaxSize is the largest body stored, in bytes; larger responses are
	// streamed through with DIRECT. Default: 256000 (256KB).
	MaxSize int64 `json:"max_size,omitempty"`

	// MaxMemory bounds the memory storage, in bytes, across every
	// edge_cache handler with the same bound; the least recently used
	// entries go first. Default: 256000000 (256MB).
	MaxMemory int64 `json:"max_memory,omitempty"`

	// StaleIfError keeps entries this long past their lifetime, to be
	// served (with OFFLINE) when the upstream cannot be reached. Default:
	// 0, no stale copies.
	StaleIfError caddy.Duration `json:"stale_if_error,omitempty"`

	// Identity lists further values that tell users apart, beyond the
	// Authorization header which is always part of the key: placeholders
	// such as {http.request.cookie.session} or {http.auth.user.id}. Their
	// values are hashed into the key, never stored.
	Identity []string `json:"identity,omitempty"`

	// Storage is "memory" (default: in this process, kept across reloads
	// while max_memory is unchanged) or "redis" (shared by every instance
	// on the edge_limit Redis).
	Storage string `json:"storage,omitempty"`

	// RedisPrefix starts the Redis key names of the redis storage.
	// Default: "edge_cache:".
	RedisPrefix string `json:"redis_prefix,omitempty"`

	// Zone separates the entries of this handler from those of other
	// edge_cache handlers sharing a store. The Caddyfile derives it from
	// the directive's text, so it is stable across reloads and equal on
	// every instance with the same configuration.
	Zone string `json:"zone,omitempty"`

	policy  cache.Policy
	stale   time.Duration
	store   cache.Store
	release func()
	flights *cache.Group
	logger  *zap.Logger
	warn    *rateLimitedLog
	clock   clock.Clock
}

// CaddyModule returns the Caddy module information.
func (Cache) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.edge_cache",
		New: func() caddy.Module { return new(Cache) },
	}
}

// Defaults of the edge_cache handler.
const (
	DefaultCacheTTL    = cache.DefaultTTL
	DefaultCacheTTLMax = cache.DefaultMaxTTL
	DefaultMaxSize     = cache.DefaultMaxSize
	DefaultMaxMemory   = cache.DefaultMaxMemory
)

// Provision applies defaults and finds or opens the store.
func (c *Cache) Provision(ctx caddy.Context) error {
	c.logger = ctx.Logger()
	c.clock = clock.ForProvision()
	c.warn = new(rateLimitedLog)
	c.flights = new(cache.Group)
	if c.TTL == 0 {
		c.TTL = caddy.Duration(DefaultCacheTTL)
	}
	if c.TTLMax == 0 {
		c.TTLMax = caddy.Duration(max(DefaultCacheTTLMax, time.Duration(c.TTL)))
	}
	if c.MaxSize == 0 {
		c.MaxSize = DefaultMaxSize
	}
	if c.MaxMemory == 0 {
		c.MaxMemory = max(DefaultMaxMemory, c.MaxSize)
	}
	if err := c.validate(); err != nil {
		return err
	}
	if c.Zone == "" {
		text, err := json.Marshal(c)
		if err != nil {
			return err
		}
		c.Zone = shortHash(string(text))
	}
	c.policy = cache.Policy{TTL: time.Duration(c.TTL), MaxTTL: time.Duration(c.TTLMax)}
	c.stale = time.Duration(c.StaleIfError)
	switch c.Storage {
	case "", "memory":
		// Entries are judged fresh by the clock that stored them: a store
		// is shared only by configurations on the same clock.
		key := fmt.Sprintf("edge_cache/memory/%d/%d/%s", c.MaxMemory, c.MaxSize, clock.ID(c.clock))
		v, _, err := cacheMemoryPool.LoadOrNew(key, func() (caddy.Destructor, error) {
			return pooledCache{cache.NewMemory(cache.MemoryOptions{MaxMemory: c.MaxMemory, MaxEntry: c.MaxSize})}, nil
		})
		if err != nil {
			return err
		}
		c.store = v.(pooledCache).Memory
		c.release = func() { _, _ = cacheMemoryPool.Delete(key) }
	case "redis":
		client, release, err := cacheRedisClient(ctx)
		if err != nil {
			return fmt.Errorf("edge_cache storage redis: %w", err)
		}
		c.store = cache.NewRedis(client, cache.RedisOptions{Prefix: c.RedisPrefix})
		c.release = release
	}
	registerCacheStore(c.store)
	return nil
}

// Validate rejects configurations that cannot work.
func (c *Cache) Validate() error { return c.validate() }

func (c *Cache) validate() error {
	switch {
	case c.TTL < 0:
		return fmt.Errorf("ttl must be positive, got %s", time.Duration(c.TTL))
	case c.TTLMax < 0:
		return fmt.Errorf("ttl_max must be positive, got %s", time.Duration(c.TTLMax))
	case c.TTLMax > 0 && c.TTL > c.TTLMax:
		return fmt.Errorf("ttl %s is longer than ttl_max %s", time.Duration(c.TTL), time.Duration(c.TTLMax))
	case c.StaleIfError < 0:
		return fmt.Errorf("stale_if_error must not be negative, got %s", time.Duration(c.StaleIfError))
	case c.MaxSize < 0:
		return fmt.Errorf("max_size must be positive, got %d", c.MaxSize)
	case c.MaxMemory < 0:
		return fmt.Errorf("max_memory must be positive, got %d", c.MaxMemory)
	case c.MaxMemory > 0 && c.MaxSize > c.MaxMemory:
		return fmt.Errorf("max_size %d is larger than max_memory %d", c.MaxSize, c.MaxMemory)
	}
	switch c.Storage {
	case "", "memory":
		if c.RedisPrefix != "" {
			return errors.New("redis_prefix goes with storage redis")
		}
	case "redis":
	default:
		return fmt.Errorf("storage %q: want memory or redis", c.Storage)
	}
	for _, id := range c.Identity {
		if id == "" {
			return errors.New("identity: empty value")
		}
	}
	return nil
}

// Cleanup releases this configuration's hold on the store.
func (c *Cache) Cleanup() error {
	if c.store == nil {
		return nil
	}
	unregisterCacheStore(c.store)
	if c.release != nil {
		c.release()
	}
	return nil
}

// cacheMemoryPool holds memory stores across config reloads: a new config
// with the same bounds finds the old store and its entries.
var cacheMemoryPool = caddy.NewUsagePool()

type pooledCache struct{ *cache.Memory }

func (p pooledCache) Destruct() error { return p.Close() }

// cacheRedisClient gives `storage redis` its client: the Redis of the
// edge_limit app (the `edge_limit { storage redis ... }` global option), so
// that the cache shares the limiter's settings, connections and timeouts.
// The client belongs to the app's storage, which the app releases.
func cacheRedisClient(ctx caddy.Context) (redis.UniversalClient, func(), error) {
	app, err := ctx.App("edge_limit")
	if err != nil {
		return nil, nil, fmt.Errorf("loading the edge_limit app: %w", err)
	}
	rs, ok := app.(*App).store.(*storage.Redis)
	if !ok {
		return nil, nil, errors.New("it uses the Redis of the edge_limit global option: configure { edge_limit { storage redis ... } }")
	}
	return rs.Client(), func() {}, nil
}

// cacheStores are the stores of the running edge_cache handlers, counted
// by handler, for purges through the admin API.
var cacheStores = struct {
	sync.Mutex
	m map[cache.Store]int
}{m: make(map[cache.Store]int)}

func registerCacheStore(s cache.Store) {
	cacheStores.Lock()
	cacheStores.m[s]++
	cacheStores.Unlock()
}

func unregisterCacheStore(s cache.Store) {
	cacheStores.Lock()
	if cacheStores.m[s]--; cacheStores.m[s] <= 0 {
		delete(cacheStores.m, s)
	}
	cacheStores.Unlock()
}

// liveCacheStores returns the stores to purge.
func liveCacheStores() []cache.Store {
	cacheStores.Lock()
	defer cacheStores.Unlock()
	out := make([]cache.Store, 0, len(cacheStores.m))
	for s := range cacheStores.m {
		out = append(out, s)
	}
	return out
}

// storeFailed logs a store error, at most every few seconds.
func (c *Cache) storeFailed(err error) {
	if c.warn.allow(c.clock.Now(), 5*time.Second) {
		c.logger.Warn("cache storage failed; answering DIRECT", zap.Error(err))
	}
}

// identity returns the values of the identity placeholders for r.
func (c *Cache) identity(r *http.Request) []string {
	if len(c.Identity) == 0 {
		return nil
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	vals := make([]string, len(c.Identity))
	if repl == nil {
		return vals
	}
	for i, tmpl := range c.Identity {
		// Unknown placeholders are empty: an anonymous request must not
		// share the identity of a literal "{http.auth.user.id}".
		vals[i] = repl.ReplaceAll(tmpl, "")
	}
	return vals
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Cache)(nil)
	_ caddy.Validator             = (*Cache)(nil)
	_ caddy.CleanerUpper          = (*Cache)(nil)
	_ caddyhttp.MiddlewareHandler = (*Cache)(nil)
)
