package edgelimit

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/internal/args"
	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
)

func init() {
	caddy.RegisterModule(RedisStorage{})
}

// RedisStorage keeps counters in Redis, so that every Caddy instance using
// the same Redis shares them, exactly: each request is decided by one Lua
// script (one network round trip, however many limits apply), with Redis's
// clock. Redis may be a single server, Sentinels watching a master, or a
// Cluster.
//
// When Redis does not answer within Timeout, OnError decides; Caddy starts
// even when Redis is unreachable, and recovers by itself when it answers.
type RedisStorage struct {
	// URL of a single Redis server:
	// redis://[user[:password]@]host[:port][/db], rediss:// for TLS, or
	// unix:///path/to/socket?db=<n>. Placeholders such as {env.REDIS_URL}
	// are replaced at start-up. go-redis query parameters (pool_size,
	// protocol, client_name...) are accepted; timeouts come from Timeout.
	// Default, when Addrs is empty too: redis://127.0.0.1:6379/0.
	URL string `json:"url,omitempty"`

	// Addrs are host:port addresses: the seed nodes of a Redis Cluster, or,
	// with MasterName, the Sentinels. Not with URL. Placeholders are
	// replaced at start-up.
	Addrs []string `json:"addrs,omitempty"`

	// MasterName is the name of the master that the Sentinels in Addrs
	// watch; the connection follows it through failovers.
	MasterName string `json:"master_name,omitempty"`

	// Username for Redis ACLs; overrides the URL's. Placeholders are
	// replaced at start-up.
	Username string `json:"username,omitempty"`

	// Password for Redis; overrides the URL's. Use a placeholder such as
	// {env.REDIS_PASSWORD} to keep it out of the configuration. It never
	// appears in logs.
	Password string `json:"password,omitempty"`

	// SentinelPassword is the Sentinels' own password, when they require
	// one. Placeholders are replaced at start-up.
	SentinelPassword string `json:"sentinel_password,omitempty"`

	// DB is the database number; overrides the URL's when not 0. A Cluster
	// has only database 0.
	DB int `json:"db,omitempty"`

	// TLS connects with TLS (TLS 1.2 or later, the server's certificate
	// checked against the system roots). A rediss:// URL does too.
	TLS bool `json:"tls,omitempty"`

	// Timeout bounds the wait for Redis on each request: from taking a
	// connection (or connecting) to reading the decision. Beyond it,
	// OnError decides. Default: 100ms.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// OnError is what happens to requests when Redis cannot decide within
	// Timeout: "allow" (default: they pass unlimited, and a warning is
	// logged at most every few seconds), "deny" (503 with Retry-After: 1),
	// or "local" (this instance counts alone, in memory, with the same
	// limits). After a failure, OnError decides every request at once, so
	// that nobody waits for a Redis that is down, while Redis is probed
	// (PING) every 50ms; the first answer puts it back in use.
	OnError string `json:"on_error,omitempty"`

	// KeyPrefix starts every Redis key, to share a Redis with other
	// applications or separate environments. Without '{' or '}'. Default:
	// "edgelimit:".
	KeyPrefix string `json:"key_prefix,omitempty"`

	// Clock is "server" (default: Redis's clock, so instances whose clocks
	// differ agree) or "local" (each instance's own clock).
	Clock string `json:"clock,omitempty"`

	// DisableLocalDenials turns off the memory of denials. By default, a
	// client that Redis denied until T is denied by this instance without
	// asking Redis until T: a client that keeps sending past its limit
	// costs one round trip per instance and window, not one per request.
	// It never admits more than Redis would; it may deny a little longer
	// than Redis would when units are given back elsewhere (a refund, a
	// reset on another instance), at most until T.
	DisableLocalDenials bool `json:"disable_local_denials,omitempty"`

	poolKey string
	store   *storage.Redis
}

// CaddyModule returns the Caddy module information.
func (RedisStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "edge_limit.storage.redis",
		New: func() caddy.Module { return new(RedisStorage) },
	}
}

// redisPool holds Redis stores across config reloads: a new config with the
// same settings keeps the connections, and the last config to let go of a
// store closes it.
var redisPool = caddy.NewUsagePool()

type pooledRedis struct{ *storage.Redis }

func (p pooledRedis) Destruct() error { return p.Close() }

// redisSettings are the resolved settings of a RedisStorage.
type redisSettings struct {
	opts   *redis.UniversalOptions
	store  storage.RedisOptions
	target string // where Redis is, for logs: no credentials
	clock  clock.Clock
}

// Provision resolves the placeholders and finds or creates the store. An
// unreachable Redis is logged, not an error.
func (r *RedisStorage) Provision(ctx caddy.Context) error {
	if err := r.Validate(); err != nil {
		return err
	}
	set, err := r.resolve(caddy.NewReplacer())
	if err != nil {
		return err
	}
	logger := ctx.Logger().With(zap.String("redis", set.target))
	set.store.Logger = logger
	key := set.poolKey()
	v, loaded, err := redisPool.LoadOrNew(key, func() (caddy.Destructor, error) {
		client := storage.NewRedisClient(set.opts, set.store.Timeout)
		s, err := storage.NewRedis(client, set.store)
		if err != nil {
			client.Close()
			return nil, err
		}
		// Reports an unreachable Redis now, and makes OnError decide from
		// the first request instead of every request waiting for it.
		_ = s.Ping(ctx)
		return pooledRedis{s}, nil
	})
	if err != nil {
		return err
	}
	r.poolKey = key
	r.store = v.(pooledRedis).Redis
	if loaded {
		r.store.SetLogger(logger)
	}
	return nil
}

// Validate checks what does not depend on placeholders.
func (r *RedisStorage) Validate() error {
	if r.URL != "" && len(r.Addrs) > 0 {
		return errors.New("redis storage: url and addrs exclude each other (url names one server, addrs a Cluster or Sentinels)")
	}
	if r.MasterName != "" && len(r.Addrs) == 0 {
		return errors.New("redis storage: master_name needs the Sentinels' addrs")
	}
	if r.SentinelPassword != "" && r.MasterName == "" {
		return errors.New("redis storage: sentinel_password goes with master_name")
	}
	for _, a := range r.Addrs {
		if a == "" {
			return errors.New("redis storage: empty address in addrs")
		}
		if err := checkAddr(a); err != nil {
			return fmt.Errorf("redis storage: %w", err)
		}
	}
	if _, err := r.policy(); err != nil {
		return err
	}
	if r.DB != 0 && len(r.Addrs) > 0 && r.MasterName == "" {
		return errors.New("redis storage: a Redis Cluster has only database 0")
	}
	if r.URL != "" && !hasPlaceholder(r.URL) {
		if _, err := parseRedisURL(r.URL); err != nil {
			return fmt.Errorf("redis storage: %w", err)
		}
	}
	return nil
}

// resolve replaces placeholders and builds the client's and the store's
// options.
func (r *RedisStorage) resolve(repl *caddy.Replacer) (*redisSettings, error) {
	set := &redisSettings{opts: &redis.UniversalOptions{ClientName: "caddy-edgelimit"}}
	o := set.opts
	if len(r.Addrs) > 0 {
		for _, a := range r.Addrs {
			a = repl.ReplaceKnown(a, "")
			if err := checkAddr(a); err != nil {
				return nil, fmt.Errorf("redis storage: %w", err)
			}
			o.Addrs = append(o.Addrs, a)
		}
		o.MasterName = repl.ReplaceKnown(r.MasterName, "")
		// With addrs and no master, a Cluster, even from one seed address
		// (a managed Cluster's configuration endpoint).
		o.IsClusterMode = o.MasterName == ""
	} else {
		raw := repl.ReplaceKnown(r.URL, "")
		if raw == "" {
			raw = "redis://" + store.DefaultRedisAddr + "/0"
		}
		u, err := parseRedisURL(raw)
		if err != nil {
			return nil, fmt.Errorf("redis storage: %w", err)
		}
		o.Addrs = []string{u.Addr}
		o.DB, o.Username, o.Password, o.TLSConfig = u.DB, u.Username, u.Password, u.TLSConfig
		o.Protocol, o.PoolSize, o.PoolFIFO = u.Protocol, u.PoolSize, u.PoolFIFO
		o.MinIdleConns, o.MaxIdleConns, o.MaxActiveConns = u.MinIdleConns, u.MaxIdleConns, u.MaxActiveConns
		o.ConnMaxIdleTime, o.ConnMaxLifetime = u.ConnMaxIdleTime, u.ConnMaxLifetime
		if u.ClientName != "" {
			o.ClientName = u.ClientName
		}
	}
	if v := repl.ReplaceKnown(r.Username, ""); v != "" {
		o.Username = v
	}
	if v := repl.ReplaceKnown(r.Password, ""); v != "" {
		o.Password = v
	}
	o.SentinelPassword = repl.ReplaceKnown(r.SentinelPassword, "")
	if r.DB != 0 {
		o.DB = r.DB
	}
	if r.TLS && o.TLSConfig == nil {
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	set.target = strings.Join(o.Addrs, ",")
	if o.MasterName != "" {
		set.target = o.MasterName + "@" + set.target
	}

	p, err := r.policy()
	if err != nil {
		return nil, err
	}
	set.store.Timeout, set.store.OnError, set.store.Prefix = p.Timeout, p.OnError, p.Prefix
	set.store.LocalClock, set.store.NoLocalDenials = p.LocalClock, p.NoLocalDenials
	set.store.Name = set.target
	if !o.IsClusterMode {
		set.store.Name += "/" + strconv.Itoa(o.DB)
	}
	if r.KeyPrefix != "" && r.KeyPrefix != storage.DefaultRedisPrefix {
		set.store.Name += " " + r.KeyPrefix
	}
	set.clock = clock.ForProvision()
	return set, nil
}

// policy checks and resolves the options the plugin shares
// (store.RedisSettings).
func (r *RedisStorage) policy() (store.RedisPolicy, error) {
	set := store.RedisSettings{DB: r.DB, Timeout: time.Duration(r.Timeout), OnError: r.OnError, KeyPrefix: r.KeyPrefix,
		Clock: r.Clock, DisableLocalDenials: r.DisableLocalDenials}
	p, err := set.Resolve()
	if err != nil {
		return p, fmt.Errorf("redis storage: %w", err)
	}
	return p, nil
}

// poolKey identifies a store by everything that makes it: two configs with
// the same settings share one. Hashed: it holds the password.
func (s *redisSettings) poolKey() string {
	o := s.opts
	parts := []any{o.Addrs, o.MasterName, o.Username, o.Password, o.SentinelPassword, o.DB, o.TLSConfig != nil, o.ClientName,
		o.Protocol, o.PoolSize, o.PoolFIFO, o.MinIdleConns, o.MaxIdleConns, o.MaxActiveConns,
		o.ConnMaxIdleTime, o.ConnMaxLifetime, o.IsClusterMode,
		s.store.Timeout, s.store.OnError, s.store.Prefix, s.store.LocalClock, s.store.NoLocalDenials, clock.ID(s.clock)}
	return "redis/" + store.SettingsID(parts...)
}

// Store implements StorageBackend.
func (r *RedisStorage) Store() store.Store { return r.store }

// Cleanup releases this config's hold on the store.
func (r *RedisStorage) Cleanup() error {
	if r.poolKey == "" {
		return nil
	}
	_, err := redisPool.Delete(r.poolKey)
	r.poolKey = ""
	return err
}

// parseRedisURL parses a Redis URL; its errors never show the password.
func parseRedisURL(raw string) (*redis.Options, error) {
	o, err := redis.ParseURL(raw)
	if err == nil {
		return o, nil
	}
	return nil, store.RedisURLError(raw, err)
}

func checkAddr(a string) error {
	if hasPlaceholder(a) {
		return nil
	}
	return store.CheckAddr(a)
}

func hasPlaceholder(s string) bool { return strings.ContainsRune(s, '{') }

// UnmarshalCaddyfile reads
//
//	storage redis [<url>] {
//		url <url>
//		addrs <host:port>...
//		master_name <name>
//		username <name>
//		password <password>
//		sentinel_password <password>
//		db <n>
//		tls
//		timeout <duration>
//		on_error allow|deny|local
//		key_prefix <prefix>
//		clock server|local
//		local_denials on|off
//	}
func (r *RedisStorage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "redis"
	start := d.Token()
	if d.NextArg() {
		if err := r.setURL(d, d.Val()); err != nil {
			return err
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		opt := d.Val()
		if seen[opt] || opt == "url" && r.URL != "" {
			return d.Errf("redis storage option %q given twice", opt)
		}
		seen[opt] = true
		if err := r.option(d, opt); err != nil {
			return err
		}
	}
	if err := r.Validate(); err != nil {
		return args.ErrAt(start, "%v", err)
	}
	return nil
}

// option reads one option of the storage block.
func (r *RedisStorage) option(d *caddyfile.Dispenser, opt string) error {
	switch opt {
	case "url", "master_name", "username", "password", "sentinel_password", "key_prefix", "on_error", "clock", "local_denials":
		v, err := args.One(d)
		if err != nil {
			return err
		}
		return r.setString(d, opt, v)
	case "addrs":
		r.Addrs = d.RemainingArgs()
		if len(r.Addrs) == 0 {
			return d.Err("addrs needs at least one host:port")
		}
		for _, a := range r.Addrs {
			if err := checkAddr(a); err != nil {
				return d.Err(err.Error())
			}
		}
	case "db":
		n, err := args.Int(d)
		if err != nil {
			return err
		}
		if n < 0 || n > 1<<16 {
			return d.Errf("db %d: want a database number", n)
		}
		r.DB = int(n)
	case "tls":
		if err := args.None(d); err != nil {
			return err
		}
		r.TLS = true
	case "timeout":
		dur, err := args.Duration(d)
		if err != nil {
			return err
		}
		if dur <= 0 {
			return d.Errf("timeout must be positive, got %s", dur)
		}
		r.Timeout = caddy.Duration(dur)
	default:
		return d.Errf("unknown redis storage option %q", opt)
	}
	return nil
}

// setString sets the option opt that takes one word, v.
func (r *RedisStorage) setString(d *caddyfile.Dispenser, opt, v string) error {
	switch opt {
	case "url":
		return r.setURL(d, v)
	case "master_name":
		r.MasterName = v
	case "username":
		r.Username = v
	case "password":
		r.Password = v
	case "sentinel_password":
		r.SentinelPassword = v
	case "key_prefix":
		if err := store.CheckPrefix(v); err != nil {
			return d.Errf("key_prefix %v", err)
		}
		r.KeyPrefix = v
	case "on_error":
		if _, err := store.ParseOnError(v); err != nil {
			return d.Errf("on_error %v", err)
		}
		r.OnError = v
	case "clock":
		if _, err := store.ParseClock(v); err != nil {
			return d.Err(err.Error())
		}
		r.Clock = v
	case "local_denials":
		if v != "on" && v != "off" {
			return d.Errf("local_denials %q: want on or off", v)
		}
		r.DisableLocalDenials = v == "off"
	}
	return nil
}

// setURL takes v as the URL, checked unless it holds placeholders
// (replaced at start-up, checked then).
func (r *RedisStorage) setURL(d *caddyfile.Dispenser, v string) error {
	if !hasPlaceholder(v) {
		if _, err := parseRedisURL(v); err != nil {
			return d.Err(err.Error())
		}
	}
	r.URL = v
	return nil
}

// Interface guards.
var (
	_ StorageBackend        = (*RedisStorage)(nil)
	_ caddy.Provisioner     = (*RedisStorage)(nil)
	_ caddy.Validator       = (*RedisStorage)(nil)
	_ caddy.CleanerUpper    = (*RedisStorage)(nil)
	_ caddyfile.Unmarshaler = (*RedisStorage)(nil)
)
