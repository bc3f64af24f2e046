package edgecache

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/redis/go-redis/v9"

	"github.com/edgelimit/caddy-edgelimit/cache"
	"github.com/edgelimit/caddy-edgelimit/internal/args"
	"github.com/edgelimit/caddy-edgelimit/internal/clock"
)

func init() {
	caddy.RegisterModule(MemoryStorage{})
	caddy.RegisterModule(RedisStorage{})
}

// StorageBackend is implemented by the modules of the edge_cache.storage
// namespace: after Provision, OpenStore returns the store a handler uses.
// The module's Cleanup releases it. A new store is a cache.Store in package
// cache and a module here.
type StorageBackend interface {
	OpenStore(o StoreOptions) (cache.Store, error)
}

// StoreOptions are what a handler asks of its store.
type StoreOptions struct {
	// MaxMemory bounds the entries kept in memory, in bytes.
	MaxMemory int64
	// MaxEntry is the largest entry the handler stores, in bytes.
	MaxEntry int64
	// Clock judges the entries' freshness.
	Clock clock.Clock
}

// MemoryStorage keeps entries in this Caddy process (the default), least
// recently used out first past the handler's max_memory. The store is kept
// across reloads while max_memory and max_size stay the same, and shared by
// the handlers with the same bounds.
type MemoryStorage struct {
	poolKey string
}

// CaddyModule returns the Caddy module information.
func (MemoryStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "edge_cache.storage.memory",
		New: func() caddy.Module { return new(MemoryStorage) },
	}
}

// memoryPool holds memory stores across config reloads: a new config with
// the same bounds finds the old store and its entries.
var memoryPool = caddy.NewUsagePool()

type pooledMemory struct{ *cache.Memory }

func (p pooledMemory) Destruct() error { return p.Close() }

// OpenStore implements StorageBackend.
func (m *MemoryStorage) OpenStore(o StoreOptions) (cache.Store, error) {
	// Entries are judged fresh by the clock that stored them: a store is
	// shared only by configurations on the same clock.
	key := fmt.Sprintf("edge_cache/memory/%d/%d/%s", o.MaxMemory, o.MaxEntry, clock.ID(o.Clock))
	v, _, err := memoryPool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return pooledMemory{cache.NewMemory(cache.MemoryOptions{MaxMemory: o.MaxMemory, MaxEntry: o.MaxEntry})}, nil
	})
	if err != nil {
		return nil, err
	}
	m.poolKey = key
	return v.(pooledMemory).Memory, nil
}

// Cleanup releases this configuration's hold on the store.
func (m *MemoryStorage) Cleanup() error {
	if m.poolKey == "" {
		return nil
	}
	_, err := memoryPool.Delete(m.poolKey)
	m.poolKey = ""
	return err
}

// UnmarshalCaddyfile reads `storage memory` (no options: max_memory is the
// handler's).
func (m *MemoryStorage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "memory"
	if err := args.None(d); err != nil {
		return err
	}
	if d.NextBlock(d.Nesting()) {
		return d.Errf("unknown memory storage option %q", d.Val())
	}
	return nil
}

// RedisStorage keeps entries in the Redis of the edge_limit global option
// (`edge_limit { storage redis ... }`), shared by every Caddy instance on
// it, with the limiter's connections, timeouts and failure handling.
type RedisStorage struct {
	// Prefix starts the Redis key names. Default: "edge_cache:".
	Prefix string `json:"prefix,omitempty"`

	client redis.UniversalClient
}

// CaddyModule returns the Caddy module information.
func (RedisStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "edge_cache.storage.redis",
		New: func() caddy.Module { return new(RedisStorage) },
	}
}

// RedisProvider is what the edge_limit app offers other modules: the Redis
// client of its storage, when it is Redis.
type RedisProvider interface {
	RedisClient() (redis.UniversalClient, bool)
}

// errNoRedis says how to configure the Redis this storage needs.
var errNoRedis = errors.New("it uses the Redis of the edge_limit global option: configure { edge_limit { storage redis ... } }")

// Provision finds the edge_limit app's Redis client. The client belongs to
// the app's storage, which releases it.
func (r *RedisStorage) Provision(ctx caddy.Context) error {
	app, err := ctx.App("edge_limit")
	if err != nil {
		return fmt.Errorf("edge_cache storage redis: loading the edge_limit app: %w", err)
	}
	p, ok := app.(RedisProvider)
	if !ok {
		return fmt.Errorf("edge_cache storage redis: %w", errNoRedis)
	}
	if r.client, ok = p.RedisClient(); !ok {
		return fmt.Errorf("edge_cache storage redis: %w", errNoRedis)
	}
	return nil
}

// OpenStore implements StorageBackend.
func (r *RedisStorage) OpenStore(StoreOptions) (cache.Store, error) {
	return cache.NewRedis(r.client, cache.RedisOptions{Prefix: r.Prefix}), nil
}

// UnmarshalCaddyfile reads
//
//	storage redis {
//		prefix <text>
//	}
func (r *RedisStorage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "redis"
	if err := args.None(d); err != nil {
		return err
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "prefix":
			v, err := args.One(d)
			if err != nil {
				return err
			}
			r.Prefix = v
		default:
			return d.Errf("unknown redis storage option %q", d.Val())
		}
	}
	return nil
}

// storageJSON turns the storage field into a module object. It also reads
// the form of earlier versions, a backend name ("memory", "redis") with the
// handler's redis_prefix.
func storageJSON(raw json.RawMessage, redisPrefix string) (json.RawMessage, error) {
	if len(raw) == 0 {
		return json.RawMessage(`{"backend":"memory"}`), nil
	}
	var name string
	if json.Unmarshal(raw, &name) != nil {
		return raw, nil
	}
	switch name {
	case "", "memory":
		return json.RawMessage(`{"backend":"memory"}`), nil
	case "redis":
		return caddyconfig.JSONModuleObject(RedisStorage{Prefix: redisPrefix}, "backend", "redis", nil), nil
	}
	return nil, fmt.Errorf("storage %q: want memory or redis", name)
}

// Interface guards.
var (
	_ StorageBackend        = (*MemoryStorage)(nil)
	_ caddy.CleanerUpper    = (*MemoryStorage)(nil)
	_ caddyfile.Unmarshaler = (*MemoryStorage)(nil)
	_ StorageBackend        = (*RedisStorage)(nil)
	_ caddy.Provisioner     = (*RedisStorage)(nil)
	_ caddyfile.Unmarshaler = (*RedisStorage)(nil)
)
