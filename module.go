// Package edgelimit is a Caddy v2 plugin that protects HTTP APIs at the edge:
// rate limits and quotas (the edge_limit handler and app) and a Bloom-style
// response cache (the edge_cache handler). The algorithms live in limiter/,
// their state in storage/; this package is the Caddy glue.
package edgelimit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/storage"
)

func init() {
	caddy.RegisterModule(App{})
	caddy.RegisterModule(Handler{})
	caddy.RegisterModule(MemoryStorage{})
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

	store   storage.Store
	shared  map[string]*compiledLimit
	metrics *metrics
	logger  *zap.Logger
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
		cl.outcomes = a.metrics.outcomesFor(cl.name)
		a.shared[l.Name] = cl
	}
	return nil
}

// Start implements caddy.App.
func (a *App) Start() error { return nil }

// Stop implements caddy.App.
func (a *App) Stop() error { return nil }

// StorageBackend is implemented by the modules of the edge_limit.storage
// namespace: after Provision, Store returns the store to use. A backend
// that shares state across reloads releases it in Cleanup.
type StorageBackend interface {
	Store() storage.Store
}

// defaultStorage is the storage used when none is configured.
var defaultStorage = json.RawMessage(`{"backend":"memory"}`)

// loadStorage provisions the storage module in the named field of owner.
func loadStorage(ctx caddy.Context, owner any, field string) (storage.Store, error) {
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

// MemoryStorage keeps counters in this Caddy process: no set-up, the fastest
// option, exact for one instance. Counters survive `caddy reload`.
type MemoryStorage struct {
	// MaxKeys bounds the number of (limit, client) counters kept. When the
	// bound is reached, expired counters are dropped first, then those that
	// expire soonest (counted as evictions). Default: 1048576 (about 140 MB).
	MaxKeys int `json:"max_keys,omitempty"`
	// SweepInterval is how often expired counters are removed in the
	// background. Default: 10s.
	SweepInterval caddy.Duration `json:"sweep_interval,omitempty"`

	poolKey string
	mem     *storage.Memory
}

// CaddyModule returns the Caddy module information.
func (MemoryStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "edge_limit.storage.memory",
		New: func() caddy.Module { return new(MemoryStorage) },
	}
}

// memoryPool holds memory stores across config reloads: a new config with
// the same memory settings finds the old store and its counters.
var memoryPool = caddy.NewUsagePool()

type pooledMemory struct{ *storage.Memory }

func (p pooledMemory) Destruct() error { return p.Close() }

// Provision finds or creates the store.
func (m *MemoryStorage) Provision(caddy.Context) error {
	if m.MaxKeys < 0 {
		return fmt.Errorf("max_keys must not be negative, got %d", m.MaxKeys)
	}
	if m.SweepInterval < 0 {
		return fmt.Errorf("sweep_interval must not be negative, got %s", time.Duration(m.SweepInterval))
	}
	// The store sweeps with the clock the handlers decide with: a store
	// is shared only by configurations on the same clock.
	clk := clock.ForProvision()
	m.poolKey = fmt.Sprintf("memory/%d/%d/%s", m.MaxKeys, m.SweepInterval, clock.ID(clk))
	v, _, err := memoryPool.LoadOrNew(m.poolKey, func() (caddy.Destructor, error) {
		return pooledMemory{storage.NewMemory(storage.MemoryOptions{
			MaxKeys:       m.MaxKeys,
			SweepInterval: time.Duration(m.SweepInterval),
			Now:           clk.Now,
		})}, nil
	})
	if err != nil {
		return err
	}
	m.mem = v.(pooledMemory).Memory
	return nil
}

// Store implements StorageBackend.
func (m *MemoryStorage) Store() storage.Store { return m.mem }

// Cleanup releases this config's hold on the store.
func (m *MemoryStorage) Cleanup() error {
	if m.poolKey == "" {
		return nil
	}
	_, err := memoryPool.Delete(m.poolKey)
	return err
}

// UnmarshalCaddyfile reads
//
//	storage memory {
//		max_keys <n>
//		sweep_interval <duration>
//	}
func (m *MemoryStorage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "memory"
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "max_keys":
			n, err := intArg(d)
			if err != nil {
				return err
			}
			if n < 1 {
				return d.Errf("max_keys must be at least 1, got %d", n)
			}
			m.MaxKeys = int(n)
		case "sweep_interval":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			m.SweepInterval = caddy.Duration(dur)
		default:
			return d.Errf("unknown memory storage option %q", d.Val())
		}
	}
	return nil
}

// Handler is the edge_limit HTTP handler: it identifies the client of each
// request for each of its limits, asks the store for all of them at once,
// sets the rate-limit headers, and either passes the request on or denies it.
type Handler struct {
	// Limits are checked together on every request: the request passes only
	// when each limit that applies allows it, and a denied request consumes
	// nothing.
	Limits []*Limit `json:"limits,omitempty"`

	// Use names limits declared in the edge_limit app (the global option)
	// that this handler applies too, after its own.
	Use []string `json:"use,omitempty"`

	// Zone separates the counters of route-scoped limits: two handlers with
	// different zones never share a route counter, two with the same zone
	// do. The Caddyfile gives every edge_limit directive its own zone,
	// derived from its text, so a reload keeps the counters of unchanged
	// directives. In JSON, an empty zone is derived from the limits, so
	// identical handlers share their counters.
	Zone string `json:"zone,omitempty"`

	// Status is the HTTP status of a denial: 429 (default), 420, 400, 503,
	// or any 4xx/5xx.
	Status int `json:"status,omitempty"`

	// Headers chooses the rate-limit headers sent with every limited
	// response: "x-ratelimit" (default: X-RateLimit-Limit, -Remaining and
	// -Reset, in unix seconds, for the most constraining limit),
	// "ratelimit" (the IETF draft RateLimit and RateLimit-Policy fields,
	// one item per limit), "both" or "none".
	Headers string `json:"headers,omitempty"`

	// TimeHeader adds X-RateLimit-Time, the window of the reported limit in
	// seconds, to the x-ratelimit headers.
	TimeHeader bool `json:"time_header,omitempty"`

	// DryRun counts and sends headers but never denies; would-be denials
	// are logged. Limits may also be dry-run one by one.
	DryRun bool `json:"dry_run,omitempty"`

	// Body is the template of a denial's body. Placeholders:
	// {edge_limit.status}, {edge_limit.name}, {edge_limit.retry_after}
	// (whole seconds), {edge_limit.retry_after_seconds} (the same with its
	// unit: "1 second", "56 seconds"), {edge_limit.retry_after_human}
	// ("1 minute 30 seconds"), {edge_limit.limit}, {edge_limit.remaining},
	// {edge_limit.reset} (unix seconds) and any request placeholder.
	// Default: {"status":<status>,"error":"Rate limit exceeded, try again in
	// <n> seconds"} ("1 second" for one).
	Body string `json:"body,omitempty"`

	// ContentType of the denial body. Default: application/json.
	ContentType string `json:"content_type,omitempty"`

	// ShowKey is how the client's key appears in {edge_limit.key}, logs and
	// events: "hashed" (default: the first 16 hex digits of its SHA-256,
	// enough to correlate, useless to replay a credential) or "raw" (cut to
	// 256 bytes).
	ShowKey string `json:"show_key,omitempty"`

	// HandleErrors leaves the denial's body to the site's handle_errors
	// routes: the handler sets the headers and the {edge_limit.*}
	// placeholders, then returns an HTTP error with the status.
	HandleErrors bool `json:"handle_errors,omitempty"`

	// StorageRaw gives this handler a store of its own. Default: the
	// edge_limit app's storage (memory unless configured).
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=edge_limit.storage inline_key=backend"`

	limits  []*compiledLimit
	exempts bool // some limit exempts others
	// templated: some key or tier placeholder needs the replacer (the
	// others are read from the request without it).
	templated bool
	store     storage.Store
	logger    *zap.Logger
	metrics   *metrics
	events    *emitter
	headers   headerStyle
	body      string
	rawKeys   bool
	scratch   *sync.Pool
	warn      *rateLimitedLog
	clock     clock.Clock
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.edge_limit",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Defaults.
const (
	DefaultStatus      = 429
	DefaultContentType = "application/json"
	DefaultBody        = `{"status":{edge_limit.status},"error":"Rate limit exceeded, try again in {edge_limit.retry_after_seconds}"}`
)

// Provision compiles the limits and finds the store.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.clock = clock.ForProvision()
	h.warn = new(rateLimitedLog)
	if h.Status == 0 {
		h.Status = DefaultStatus
	}
	if h.ContentType == "" {
		h.ContentType = DefaultContentType
	}
	h.body = h.Body
	if h.body == "" {
		h.body = DefaultBody
	}
	h.body = compileTemplate(h.body)
	style, err := parseHeaderStyle(h.Headers)
	if err != nil {
		return err
	}
	h.headers = style
	switch h.ShowKey {
	case "", "hashed":
	case "raw":
		h.rawKeys = true
	default:
		return fmt.Errorf("show_key %q: want hashed or raw", h.ShowKey)
	}
	if h.Zone == "" {
		sum, err := json.Marshal(h.Limits)
		if err != nil {
			return err
		}
		h.Zone = shortHash(string(sum))
	}
	h.limits = make([]*compiledLimit, 0, len(h.Limits))
	for i, l := range h.Limits {
		if l == nil {
			return fmt.Errorf("limits[%d] is empty", i)
		}
		cl, err := compileLimit(l, h.Zone)
		if err != nil {
			return fmt.Errorf("limit %q: %w", l.Name, err)
		}
		h.limits = append(h.limits, cl)
	}
	appIface, err := ctx.App("edge_limit")
	if err != nil {
		return fmt.Errorf("loading the edge_limit app: %w", err)
	}
	app := appIface.(*App)
	for _, name := range h.Use {
		cl, ok := app.shared[name]
		if !ok {
			return fmt.Errorf("use %q: no such limit in the edge_limit global option", name)
		}
		for _, own := range h.limits {
			if own.name == name {
				return fmt.Errorf("use %q: the handler declares a limit of that name too", name)
			}
		}
		h.limits = append(h.limits, cl)
	}
	for _, cl := range h.limits {
		h.exempts = h.exempts || len(cl.exempt) > 0
		h.templated = h.templated || cl.templated()
	}
	h.metrics = app.metrics
	for _, cl := range h.limits {
		if cl.outcomes == nil {
			cl.outcomes = h.metrics.outcomesFor(cl.name)
		}
	}
	h.events, err = newEmitter(ctx, h.logger)
	if err != nil {
		return err
	}
	if h.StorageRaw != nil {
		h.store, err = loadStorage(ctx, h, "StorageRaw")
		if err != nil {
			return err
		}
	} else {
		h.store = app.store
	}
	n := len(h.limits)
	h.scratch = &sync.Pool{New: func() any { return newScratch(n) }}
	return nil
}

// Validate rejects configurations that cannot work.
func (h *Handler) Validate() error {
	if h.Status < 400 || h.Status > 599 {
		return fmt.Errorf("status %d: a denial needs a 4xx or 5xx status", h.Status)
	}
	seen := make(map[string]bool, len(h.Limits))
	for _, l := range h.Limits {
		if seen[l.Name] {
			return fmt.Errorf("limit %q is declared twice in one handler", l.Name)
		}
		seen[l.Name] = true
	}
	for _, name := range h.Use {
		if seen[name] {
			return fmt.Errorf("limit %q is used twice in one handler", name)
		}
		seen[name] = true
	}
	return nil
}

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:6])
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
