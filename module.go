// Package edgelimit is a Caddy v2 plugin that protects HTTP APIs at the edge:
// rate limits and quotas (the edge_limit handler and app) and a Bloom-style
// response cache (the edge_cache handler). The algorithms live in limiter/,
// their state in storage/; this package is the Caddy glue.
package edgelimit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/textproto"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/limiter"
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

	store   storage.Store
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
	// expire soonest (logged as evictions). Default: 1048576 (about 60 MB).
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
	m.poolKey = fmt.Sprintf("memory/%d/%d", m.MaxKeys, m.SweepInterval)
	v, _, err := memoryPool.LoadOrNew(m.poolKey, func() (caddy.Destructor, error) {
		return pooledMemory{storage.NewMemory(storage.MemoryOptions{
			MaxKeys:       m.MaxKeys,
			SweepInterval: time.Duration(m.SweepInterval),
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
	// (whole seconds), {edge_limit.limit}, {edge_limit.remaining},
	// {edge_limit.reset} (unix seconds) and any request placeholder.
	// Default: {"status":<status>,"error":"Rate limit exceeded, try again in
	// <n> seconds"}.
	Body string `json:"body,omitempty"`

	// ContentType of the denial body. Default: application/json.
	ContentType string `json:"content_type,omitempty"`

	// HandleErrors leaves the denial's body to the site's handle_errors
	// routes: the handler sets the headers and the {edge_limit.*}
	// placeholders, then returns an HTTP error with the status.
	HandleErrors bool `json:"handle_errors,omitempty"`

	// StorageRaw gives this handler a store of its own. Default: the
	// edge_limit app's storage (memory unless configured).
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=edge_limit.storage inline_key=backend"`

	limits  []*compiledLimit
	store   storage.Store
	logger  *zap.Logger
	metrics *metrics
	headers headerStyle
	body    string
	scratch *sync.Pool
	warn    *rateLimitedLog
}

// Limit is one rate limit or quota.
type Limit struct {
	// Name identifies the limit in headers, logs, metrics and events, and
	// (with Scope) its counter. Letters, digits, '_', '-' and '.'.
	Name string `json:"name"`

	// Key lists the parts that identify the client, most specific first:
	// the first that is not empty after replacing placeholders is used,
	// e.g. ["{http.request.header.X-Api-Key}", "{http.vars.client_ip}"].
	// Each part counts apart from the others. A part with no placeholder
	// is a constant that every client reaching it shares. When every part
	// is empty the limit does not apply to the request. Default: the
	// client IP.
	Key []string `json:"key,omitempty"`

	// Algorithm is one of fixed_window (default: windows aligned to the
	// clock), anchored_window (a window starts at the first counted
	// request), sliding_window (the previous window weighs in, so there is
	// no burst at a boundary), token_bucket, gcra.
	Algorithm string `json:"algorithm,omitempty"`

	// Limit is the number of requests (units of cost) per window; for
	// token_bucket the bucket's capacity; for gcra the burst. Required.
	Limit int64 `json:"limit,omitempty"`

	// Window is the window length; for token_bucket and gcra the period in
	// which Refill tokens are added. Required unless Calendar is set.
	Window caddy.Duration `json:"window,omitempty"`

	// Refill is the number of tokens added per Window (token_bucket,
	// gcra). Required for token_bucket.
	Refill int64 `json:"refill,omitempty"`

	// Offset moves clock-aligned window boundaries: a 24h window with a 6h
	// offset resets at 06:00 UTC. Default 0: windows align to the Unix
	// epoch (a 1d window resets at midnight UTC).
	Offset caddy.Duration `json:"offset,omitempty"`

	// Calendar makes a fixed window a calendar period (a quota): per day,
	// week or month, reset at a time of day in a time zone.
	Calendar *CalendarConfig `json:"calendar,omitempty"`

	// Cost is the number of units each request takes. Default 1.
	Cost int64 `json:"cost,omitempty"`

	// Scope is "route" (default): the handler counts this limit on its own;
	// or "global": every handler with a global limit of this name shares
	// one counter (an API-wide limit across routes and sites).
	Scope string `json:"scope,omitempty"`

	// DryRun counts this limit and reports it in headers, but never denies
	// because of it.
	DryRun bool `json:"dry_run,omitempty"`
}

// CalendarConfig is a calendar window.
type CalendarConfig struct {
	// Period is day, week (starting Monday) or month.
	Period string `json:"period"`
	// At is the reset time of day, HH:MM. Default 00:00.
	At string `json:"at,omitempty"`
	// TimeZone is an IANA time zone name. Default UTC.
	TimeZone string `json:"time_zone,omitempty"`
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
	DefaultBody        = `{"status":{edge_limit.status},"error":"Rate limit exceeded, try again in {edge_limit.retry_after} seconds"}`
)

// Provision compiles the limits and finds the store.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
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
	h.metrics = app.metrics
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
	return nil
}

// compiledLimit is a Limit ready for the request path.
type compiledLimit struct {
	name     string
	keys     []keyPart
	counters []string // one per key part: parts never share a counter
	limit    limiter.Limit
	cost     int64
	dryRun   bool
	window   time.Duration
}

// compileLimit checks a limit's configuration and prepares it.
func compileLimit(l *Limit, zone string) (*compiledLimit, error) {
	if err := checkName(l.Name); err != nil {
		return nil, err
	}
	lim, err := l.numbers()
	if err != nil {
		return nil, err
	}
	cost := l.Cost
	if cost == 0 {
		cost = 1
	}
	if cost < 1 || cost > limiter.MaxQuota {
		return nil, fmt.Errorf("cost must be between 1 and %d, got %d", int64(limiter.MaxQuota), cost)
	}
	keys := l.Key
	if len(keys) == 0 {
		keys = []string{"{http.vars.client_ip}"}
	}
	cl := &compiledLimit{name: l.Name, limit: lim, cost: cost, dryRun: l.DryRun, window: lim.PolicyWindow()}
	var base string
	switch l.Scope {
	case "", "route":
		base = "r/" + zone + "/" + l.Name + "/" + lim.Algorithm.String()
	case "global":
		base = "g/" + l.Name + "/" + lim.Algorithm.String()
	default:
		return nil, fmt.Errorf("scope %q: want route or global", l.Scope)
	}
	for i, k := range keys {
		kp, err := parseKeyPart(k)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", k, err)
		}
		cl.keys = append(cl.keys, kp)
		cl.counters = append(cl.counters, fmt.Sprintf("%s#%d", base, i))
	}
	return cl, nil
}

// numbers turns the configured numbers into a limiter.Limit, validated.
func (l *Limit) numbers() (limiter.Limit, error) {
	algo := limiter.FixedWindow
	if l.Algorithm != "" {
		a, err := limiter.ParseAlgorithm(l.Algorithm)
		if err != nil {
			return limiter.Limit{}, err
		}
		algo = a
	}
	lim := limiter.Limit{
		Algorithm: algo,
		Quota:     l.Limit,
		Window:    time.Duration(l.Window),
		Rate:      l.Refill,
		Offset:    time.Duration(l.Offset),
	}
	if algo == limiter.GCRA && lim.Rate == 0 {
		lim.Rate = lim.Quota
	}
	if l.Calendar != nil {
		cal, err := l.Calendar.compile()
		if err != nil {
			return limiter.Limit{}, err
		}
		if l.Window != 0 || l.Offset != 0 {
			return limiter.Limit{}, errors.New("a calendar quota takes no window or offset")
		}
		lim.Calendar = cal
	}
	if err := lim.Validate(); err != nil {
		return limiter.Limit{}, err
	}
	return lim, nil
}

func (c *CalendarConfig) compile() (limiter.Calendar, error) {
	p, err := limiter.ParsePeriod(c.Period)
	if err != nil {
		return nil, err
	}
	cw := limiter.CalendarWindow{Period: p, Location: time.UTC}
	if c.TimeZone != "" {
		loc, err := time.LoadLocation(c.TimeZone)
		if err != nil {
			return nil, fmt.Errorf("time zone %q: %w", c.TimeZone, err)
		}
		cw.Location = loc
	}
	if c.At != "" {
		t, err := time.Parse("15:04", c.At)
		if err != nil {
			return nil, fmt.Errorf("reset time %q: want HH:MM", c.At)
		}
		cw.At = time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute
	}
	if err := cw.Validate(); err != nil {
		return nil, err
	}
	return cw.Cached(), nil
}

func checkName(name string) error {
	if name == "" {
		return errors.New("a limit needs a name")
	}
	if len(name) > 64 {
		return fmt.Errorf("name %q is longer than 64 bytes", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return fmt.Errorf("name %q: use letters, digits, '_', '-' and '.'", name)
		}
	}
	return nil
}

// keyPart is one element of a limit's key, with fast paths for the usual
// placeholders so that reading them allocates nothing.
type keyPart struct {
	kind     keyKind
	header   string // canonical header name (keyHeader)
	tmpl     string // the part as written (keyTemplate, keyLiteral)
	skeleton string // the template with every placeholder empty
}

type keyKind uint8

const (
	keyLiteral keyKind = iota
	keyHeader
	keyClientIP
	keyRemoteHost
	keyTemplate
)

func parseKeyPart(s string) (keyPart, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return keyPart{}, errors.New("empty key part")
	}
	if !strings.ContainsRune(s, '{') {
		return keyPart{kind: keyLiteral, tmpl: s}, nil
	}
	if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") && strings.Count(s, "{") == 1 {
		name := s[1 : len(s)-1]
		for _, p := range []string{"http.request.header.", "header."} {
			if h, ok := strings.CutPrefix(name, p); ok && h != "" {
				return keyPart{kind: keyHeader, header: textproto.CanonicalMIMEHeaderKey(h), tmpl: s}, nil
			}
		}
		switch name {
		case "http.vars.client_ip", "client_ip":
			return keyPart{kind: keyClientIP, tmpl: s}, nil
		case "http.request.remote.host", "remote_host":
			return keyPart{kind: keyRemoteHost, tmpl: s}, nil
		}
	}
	return keyPart{kind: keyTemplate, tmpl: s, skeleton: caddy.NewEmptyReplacer().ReplaceAll(s, "")}, nil
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
