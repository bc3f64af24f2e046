// Package edgelimit is a Caddy v2 plugin that protects HTTP APIs at the edge:
// rate limits and quotas. This package is the edge_limit handler and app;
// importing it brings the edge_cache response cache too (package
// edgecache), so one `xcaddy build --with github.com/edgelimit/caddy-edgelimit`
// builds both.
//
// What both edges (this module and the Traefik plugin in traefik/) do is
// written once, in packages of the standard library only that the plugin
// vendors: limiter (the algorithms, pure functions of state and time), store
// (the Store interface, the memory store, the Redis protocol: Lua scripts,
// codec, failure policy, local denials), policy (limits compiled, the
// decision over them, headers, denials, events) and httpval (reading
// requests: credentials, addresses, client keys). Package storage is the
// go-redis client of store's protocol. This package is the Caddy glue, one
// concern per file:
//
//	module.go           registration, the edge_limit app (global option)
//	caddyfile.go        the edge_limit directive and global option
//	limit_caddyfile.go  the limit and tier grammar
//	quota_caddyfile.go  the quota grammar
//	handler.go          the handler: config, provisioning, request path
//	charge.go           the response path of limits that count responses
//	charge_caddyfile.go count_responses and cost header
//	limit.go            limits compiled for Caddy (placeholders, matchers)
//	keys.go             client keys from placeholders
//	exempt.go           exemptions that name other handlers' limits
//	deny.go             denials written through Caddy (caddyhttp.Error)
//	events.go           the edge_limit.exceeded event and its webhook
//	metrics.go          Prometheus metrics
//	storage_memory.go   the memory store module (edge_limit.storage.memory)
//	storage_redis.go    the Redis store module (edge_limit.storage.redis)
//	admin.go            admin API: routes and zones
//	admin_limits.go     admin API: the limits
//	admin_clients.go    admin API: inspect, reset, credit one client
//	command.go          the caddy edge-limit command
//
// Where to add: an algorithm goes in limiter (with its Lua twin in
// store/lua.go) and the grammar in limit_caddyfile.go (and the plugin's
// config in traefik/config.go); a counter store is a store.Store that passes
// store/storetest, plus a module file storage_<name>.go; a header format is
// a style in policy/headers.go.
package edgelimit

import (
	"encoding/json"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"

	// The edge_cache module, built with edge_limit.
	_ "github.com/edgelimit/caddy-edgelimit/edgecache"
)

func init() {
	caddy.RegisterModule(App{})
	caddy.RegisterModule(Handler{})
}

// App is the edge_limit app: the storage that every edge_limit handler uses
// unless it names its own. Configure it with the `edge_limit` global option.
type App struct {
	// StorageRaw is where counters live. Default: memory.
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=edge_limit.storage inline_key=backend"`

	// Limits are declared once for every edge_limit handler to use by
	// name (the handler's "use"). They are global: one counter per client
	// wherever they are used.
	Limits []*Limit `json:"limits,omitempty"`

	store  store.Store
	shared map[string]*compiledLimit
	// registry lists the limits of this configuration for the admin API
	// (admin.go); Start makes it the live one.
	registry *registry
	metrics  *metrics
	logger   *zap.Logger

	// declared are the limit names of the global option and of the
	// handlers provisioned so far, which exemptions may name (exempt.go).
	declared map[string]bool
}

// declare records a handler's limits (global: the global option's): their
// names may be exempted by any limit of the configuration.
func (a *App) declare(limits []*compiledLimit) {
	if a.declared == nil {
		a.declared = make(map[string]bool)
	}
	for _, cl := range limits {
		a.declared[cl.Name] = true
	}
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "edge_limit",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision sets up the app's storage.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	if a.StorageRaw == nil {
		a.StorageRaw = defaultStorage
	}
	store, err := loadStorage(ctx, a, "StorageRaw")
	if err != nil {
		return err
	}
	a.store = store
	a.metrics = newMetrics(ctx, a.logger)
	a.metrics.stores.add(store)
	a.registry = new(registry)
	a.shared = make(map[string]*compiledLimit, len(a.Limits))
	for i, l := range a.Limits {
		if l == nil {
			return fmt.Errorf("limits[%d] is empty", i)
		}
		if l.Scope != "" && l.Scope != "global" {
			return fmt.Errorf("limit %q: limits of the edge_limit app are global, not %s", l.Name, l.Scope)
		}
		shared := *l
		shared.Scope = "global"
		cl, err := compileLimit(&shared, "")
		if err != nil {
			return fmt.Errorf("limit %q: %w", l.Name, err)
		}
		if a.shared[l.Name] != nil {
			return fmt.Errorf("limit %q is declared twice", l.Name)
		}
		cl.outcomes = a.metrics.outcomesFor(cl.Name)
		cl.scope = "shared"
		a.shared[l.Name] = cl
		a.registry.add(cl, a.store, clock.ForProvision())
		warnPrivileges(a.logger, cl)
		a.declare([]*compiledLimit{cl})
	}
	return a.checkExemptions(ctx)
}

// RedisClient returns the Redis client of the app's storage, when it is
// Redis, for the other modules that use the same Redis (edge_cache's redis
// storage). It belongs to the storage: do not close it.
func (a *App) RedisClient() (redis.UniversalClient, bool) {
	if rs, ok := a.store.(*storage.Redis); ok {
		return rs.Client(), true
	}
	return nil, false
}

// Start implements caddy.App.
func (a *App) Start() error {
	startRegistry(a.registry)
	return nil
}

// Stop implements caddy.App: the registry of the admin API is the newest
// running configuration's. A reload starts the new app before it stops the
// old one; a reload that fails after this app started stops the new app,
// and the old configuration, still running, answers again.
func (a *App) Stop() error {
	stopRegistry(a.registry)
	return nil
}

// StorageBackend is implemented by the modules of the edge_limit.storage
// namespace: after Provision, Store returns the store to use. A backend
// that shares state across reloads releases it in Cleanup.
type StorageBackend interface {
	Store() store.Store
}

// defaultStorage is the storage used when none is configured.
var defaultStorage = json.RawMessage(`{"backend":"memory"}`)

// loadStorage provisions the storage module in the named field of owner.
func loadStorage(ctx caddy.Context, owner any, field string) (store.Store, error) {
	mod, err := ctx.LoadModule(owner, field)
	if err != nil {
		return nil, fmt.Errorf("loading storage: %w", err)
	}
	backend, ok := mod.(StorageBackend)
	if !ok {
		return nil, fmt.Errorf("storage module %T provides no store", mod)
	}
	return backend.Store(), nil
}

// Interface guards.
var (
	_ caddy.App                   = (*App)(nil)
	_ caddy.Provisioner           = (*App)(nil)
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddy.Provisioner           = (*MemoryStorage)(nil)
	_ caddy.CleanerUpper          = (*MemoryStorage)(nil)
	_ caddyfile.Unmarshaler       = (*MemoryStorage)(nil)
	_ StorageBackend              = (*MemoryStorage)(nil)
)
