// Package edgecache is the edge_cache Caddy module: a Bloom-compatible
// response cache in front of edge_limit, so that a cached response is
// served without counting against a rate limit. Every response it passes
// carries Bloom-Status (MISS, HIT, DIRECT or OFFLINE) and Cache-Status
// (RFC 9211).
//
// The handler (this file) keys requests and serves entries (serve.go)
// through a recorder that decides what to store (recorder.go); status.go
// writes Bloom-Status and Cache-Status, and metrics.go counts them in
// Caddy's metrics registry and keeps the list of live stores; its stores
// are modules of the edge_cache.storage namespace (storage.go) around the
// engines of package cache; admin.go serves the purge endpoint. A new
// store is a cache.Store in package cache and a module in storage.go.
package edgecache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dunglas/httpsfv"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/cache"
	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/internal/zone"
	"github.com/edgelimit/caddy-edgelimit/store"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler is the edge_cache HTTP handler: a Bloom-compatible response cache.
// Placed before edge_limit (the directive order does it), a HIT is served
// without reaching the limiter, so cached responses never count against a
// rate limit. Every response it passes carries Bloom-Status: MISS, HIT,
// DIRECT or OFFLINE.
type Handler struct {
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

	// StaleWhileRevalidate serves an entry this long past its lifetime at
	// once, as a HIT, while one request refreshes it in the background
	// (RFC 5861), for responses whose Cache-Control says nothing of it; an
	// upstream's stale-while-revalidate=N wins, and must-revalidate or
	// proxy-revalidate forbid it. Capped by ttl_max. Default: 0, stale
	// entries are fetched again before they are served.
	StaleWhileRevalidate caddy.Duration `json:"stale_while_revalidate,omitempty"`

	// Identity lists further values that tell users apart, beyond the
	// Authorization header which is always part of the key: placeholders
	// such as {http.request.cookie.session} or {http.auth.user.id}. Their
	// values are hashed into the key, never stored.
	Identity []string `json:"identity,omitempty"`

	// PrivateHeaders are request headers that make a request one user's
	// (a session cookie): such a request is served only entries the
	// upstream marked shareable (Cache-Control public or s-maxage), and its
	// response is stored only when so marked, unless Identity tells users
	// apart by that header (a cookie placeholder covers Cookie).
	// Authorization is always part of the key. Default: Cookie.
	PrivateHeaders []string `json:"private_headers,omitempty"`

	// SharePrivate turns the PrivateHeaders rule off: as in Bloom, only
	// Authorization (and Identity) tell users apart, and a page rendered
	// for one session cookie may be served to anyone.
	SharePrivate bool `json:"share_private,omitempty"`

	// KeepHeaders are request headers of the default strip list that reach
	// the upstream on cacheable requests anyway; their values become part
	// of the key. By default the headers that make common upstreams answer
	// for another URL, method, host, scheme, port or client (X-Original-URL,
	// X-Rewrite-URL, X-HTTP-Method-Override, X-Host, Forwarded, X-Real-IP,
	// every X-Forwarded-* but For and Proto, and others: see the docs), and
	// Expect, are removed from the requests whose responses may be stored,
	// as they are not in the key.
	KeepHeaders []string `json:"keep_headers,omitempty"`

	// CoalesceWait bounds how long a request waits for another's upstream
	// request for the same key (a MISS in flight) before it asks the
	// upstream itself. Default: 10s.
	CoalesceWait caddy.Duration `json:"coalesce_wait,omitempty"`

	// StorageRaw is where entries live: {"backend": "memory"} (default: in
	// this process, kept across reloads while max_memory and max_size are
	// unchanged) or {"backend": "redis", "prefix": "edge_cache:"} (shared
	// by every instance on the edge_limit Redis). The backend's name alone
	// ("memory", "redis") is read too, as earlier versions wrote it.
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=edge_cache.storage inline_key=backend"`

	// RedisPrefix is the prefix of the redis storage when StorageRaw is
	// the name "redis" (the form of earlier versions). Default:
	// "edge_cache:".
	RedisPrefix string `json:"redis_prefix,omitempty"`

	// Zone separates the entries of this handler from those of other
	// edge_cache handlers sharing a store. The Caddyfile derives it from
	// the directive's text, so it is stable across reloads and equal on
	// every instance with the same configuration.
	Zone string `json:"zone,omitempty"`

	// CacheStatus names this cache in the Cache-Status response header
	// (RFC 9211) every response it passes carries: a token such as the
	// default "edgelimit", or other printable ASCII text, sent as a
	// quoted string. "off" leaves Cache-Status out (and an upstream's
	// Cache-Status as it is).
	CacheStatus string `json:"cache_status,omitempty"`

	// BloomStatusOff leaves the Bloom-Status response header out. The
	// metrics still count its values.
	BloomStatusOff bool `json:"bloom_status_off,omitempty"`

	// ctx ends when the configuration is unloaded: background fetches
	// end with it.
	ctx     context.Context
	policy  cache.Policy
	stale   time.Duration
	private []string // canonical names of the private headers, less those identity covers
	keep    []string // canonical names of KeepHeaders
	store   cache.Store
	flights *cache.Group
	logger  *zap.Logger
	warn    *store.Throttle
	clock   clock.Clock
	// statusItem is the cache's name as Cache-Status writes it, or ""
	// when Cache-Status is off.
	statusItem string
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.edge_cache",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Defaults of the edge_cache handler.
const (
	DefaultTTL       = cache.DefaultTTL
	DefaultTTLMax    = cache.DefaultMaxTTL
	DefaultMaxSize   = cache.DefaultMaxSize
	DefaultMaxMemory = cache.DefaultMaxMemory
	// DefaultCoalesceWait bounds a wait on another request's MISS.
	DefaultCoalesceWait = 10 * time.Second
)

// stripHeaders are the request headers that make common upstreams answer
// for another URL (Symfony, IIS rewrites), another method, host, scheme,
// port or client, or with an error (Expect), and that are not part of the
// key: a response computed from one would be stored under the plain URL
// and served to the next visitor. Every X-Forwarded-* goes too, but
// X-Forwarded-For and X-Forwarded-Proto, which reverse_proxy sets itself
// from the connection (or takes from trusted_proxies).
var stripHeaders = []string{
	"X-Original-Url", "X-Original-Uri", "X-Original-Host", "X-Original-Method", "X-Rewrite-Url",
	"X-Http-Method-Override", "X-Http-Method", "X-Method-Override", "X-Host", "Forwarded",
	"X-Real-Ip", "True-Client-Ip", "Cf-Connecting-Ip", "Fastly-Client-Ip", "X-Client-Ip", "X-Cluster-Client-Ip",
	"X-Url-Scheme", "Front-End-Https", "X-Envoy-Original-Path", "Expect",
}

// stripped tells whether the request header name (canonical) is removed
// from cacheable requests.
func (c *Handler) stripped(name string) bool {
	if slices.Contains(c.keep, name) {
		return false
	}
	if rest, ok := strings.CutPrefix(name, "X-Forwarded-"); ok {
		return rest != "For" && rest != "Proto"
	}
	return slices.Contains(stripHeaders, name)
}

// Provision applies defaults and opens the store.
func (c *Handler) Provision(ctx caddy.Context) error {
	c.logger = ctx.Logger()
	c.ctx = ctx
	c.clock = clock.ForProvision()
	c.warn = new(store.Throttle)
	c.flights = new(cache.Group)
	if c.TTL == 0 {
		c.TTL = caddy.Duration(DefaultTTL)
	}
	if c.TTLMax == 0 {
		c.TTLMax = caddy.Duration(max(DefaultTTLMax, time.Duration(c.TTL)))
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
		z, err := zone.Of(c.zoneView())
		if err != nil {
			return err
		}
		c.Zone = z
	}
	c.statusItem, _ = statusItem(c.CacheStatus)
	registerMetrics(ctx, c.logger)
	if c.CoalesceWait == 0 {
		c.CoalesceWait = caddy.Duration(DefaultCoalesceWait)
	}
	c.policy = cache.Policy{TTL: time.Duration(c.TTL), MaxTTL: time.Duration(c.TTLMax), StaleWhileRevalidate: time.Duration(c.StaleWhileRevalidate)}
	c.stale = time.Duration(c.StaleIfError)
	c.provisionHeaders()
	raw, err := storageJSON(c.StorageRaw, c.RedisPrefix)
	if err != nil {
		return err
	}
	c.StorageRaw = raw
	mod, err := ctx.LoadModule(c, "StorageRaw")
	if err != nil {
		return fmt.Errorf("loading the edge_cache storage: %w", err)
	}
	backend, ok := mod.(StorageBackend)
	if !ok {
		return fmt.Errorf("edge_cache storage module %T provides no store", mod)
	}
	c.store, err = backend.OpenStore(StoreOptions{MaxMemory: c.MaxMemory, MaxEntry: c.MaxSize, Clock: c.clock})
	if err != nil {
		return fmt.Errorf("edge_cache storage: %w", err)
	}
	registerStore(c.store)
	return nil
}

// Validate rejects configurations that cannot work.
func (c *Handler) Validate() error { return c.validate() }

func (c *Handler) validate() error {
	switch {
	case c.TTL < 0:
		return fmt.Errorf("ttl must be positive, got %s", time.Duration(c.TTL))
	case c.TTLMax < 0:
		return fmt.Errorf("ttl_max must be positive, got %s", time.Duration(c.TTLMax))
	case c.TTLMax > 0 && c.TTL > c.TTLMax:
		return fmt.Errorf("ttl %s is longer than ttl_max %s", time.Duration(c.TTL), time.Duration(c.TTLMax))
	case c.StaleIfError < 0:
		return fmt.Errorf("stale_if_error must not be negative, got %s", time.Duration(c.StaleIfError))
	case c.StaleWhileRevalidate < 0:
		return fmt.Errorf("stale_while_revalidate must not be negative, got %s", time.Duration(c.StaleWhileRevalidate))
	case c.MaxSize < 0:
		return fmt.Errorf("max_size must be positive, got %d", c.MaxSize)
	case c.MaxMemory < 0:
		return fmt.Errorf("max_memory must be positive, got %d", c.MaxMemory)
	case c.MaxMemory > 0 && c.MaxSize > c.MaxMemory:
		return fmt.Errorf("max_size %d is larger than max_memory %d", c.MaxSize, c.MaxMemory)
	}
	if _, err := storageJSON(c.StorageRaw, c.RedisPrefix); err != nil {
		return err
	}
	if c.RedisPrefix != "" && !isName(c.StorageRaw, "redis") {
		return errors.New("redis_prefix goes with storage \"redis\"; in the storage object, write prefix")
	}
	for _, id := range c.Identity {
		if id == "" {
			return errors.New("identity: empty value")
		}
	}
	for _, n := range append(append([]string(nil), c.PrivateHeaders...), c.KeepHeaders...) {
		if n == "" || strings.ContainsAny(n, " :{}") {
			return fmt.Errorf("header name %q: want a request header's name", n)
		}
	}
	if c.SharePrivate && len(c.PrivateHeaders) > 0 {
		return errors.New("private_headers and share_private: give one")
	}
	if c.CoalesceWait < 0 {
		return fmt.Errorf("coalesce_wait must not be negative, got %s", time.Duration(c.CoalesceWait))
	}
	if _, err := statusItem(c.CacheStatus); err != nil {
		return fmt.Errorf("cache_status %q: %w", c.CacheStatus, err)
	}
	return nil
}

// statusItem returns the cache's name as Cache-Status writes it (an
// sf-token, else an sf-string), "" for off.
func statusItem(name string) (string, error) {
	switch name {
	case "off":
		return "", nil
	case "":
		name = DefaultCacheStatusName
	}
	// A Token when it is one, else a String.
	if s, err := httpsfv.Marshal(httpsfv.NewItem(httpsfv.Token(name))); err == nil {
		return s, nil
	}
	if s, err := httpsfv.Marshal(httpsfv.NewItem(name)); err == nil {
		return s, nil
	}
	return "", errors.New("want printable ASCII (a token such as edgelimit, or any text in quotes)")
}

// zoneView is the handler as its zone is derived from: the headers it
// sends do not change which entries it shares, so turning them on or off
// keeps the entries.
func (c *Handler) zoneView() *Handler {
	v := *c
	v.CacheStatus, v.BloomStatusOff = "", false
	return &v
}

// provisionHeaders resolves the private and kept headers.
func (c *Handler) provisionHeaders() {
	c.private, c.keep = nil, nil
	if !c.SharePrivate {
		names := c.PrivateHeaders
		if len(names) == 0 {
			names = []string{"Cookie"}
		}
		for _, n := range names {
			n = http.CanonicalHeaderKey(n)
			if !c.identityCovers(n) {
				c.private = append(c.private, n)
			}
		}
	}
	for _, n := range c.KeepHeaders {
		c.keep = append(c.keep, http.CanonicalHeaderKey(n))
	}
}

// identityCovers tells whether an identity placeholder reads the request
// header name (a cookie placeholder reads Cookie), so that entries are kept
// apart by it.
func (c *Handler) identityCovers(name string) bool {
	for _, id := range c.Identity {
		lower := strings.ToLower(id)
		if strings.Contains(lower, "http.request.header."+strings.ToLower(name)+"}") ||
			name == "Cookie" && strings.Contains(lower, "http.request.cookie.") {
			return true
		}
	}
	return false
}

// isPrivate tells whether r carries one of the private headers.
func (c *Handler) isPrivate(r *http.Request) bool {
	for _, n := range c.private {
		if vs := r.Header[n]; len(vs) > 0 && (len(vs) > 1 || vs[0] != "") {
			return true
		}
	}
	return false
}

// isName tells whether raw is the JSON string name.
func isName(raw json.RawMessage, name string) bool {
	var s string
	return json.Unmarshal(raw, &s) == nil && s == name
}

// Cleanup releases this configuration's hold on the store (the storage
// module, which Caddy cleans up too, holds it).
func (c *Handler) Cleanup() error {
	if c.store != nil {
		unregisterStore(c.store)
	}
	return nil
}

// storeFailed logs a store error, at most every few seconds.
func (c *Handler) storeFailed(err error) {
	if c.warn.Allow(c.clock.Now(), 5*time.Second) {
		c.logger.Warn("cache storage failed; answering DIRECT", zap.Error(err))
	}
}

// identity returns the values of the identity placeholders for r.
// The values of the kept headers follow those of the identity
// placeholders.
func (c *Handler) identity(r *http.Request) []string {
	if len(c.Identity) == 0 && len(c.keep) == 0 {
		return nil
	}
	vals := make([]string, len(c.Identity), len(c.Identity)+len(c.keep))
	if repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); repl != nil {
		for i, tmpl := range c.Identity {
			// Unknown placeholders are empty: an anonymous request must
			// not share the identity of a literal "{http.auth.user.id}".
			vals[i] = repl.ReplaceAll(tmpl, "")
		}
	}
	for _, n := range c.keep {
		vals = append(vals, strings.Join(r.Header[n], "\n"))
	}
	return vals
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
