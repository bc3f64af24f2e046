package edgelimit

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/internal/throttle"
	"github.com/edgelimit/caddy-edgelimit/internal/zone"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/storage"
)

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
	// derived from the names of its limits (and numbered in file order when
	// several directives have the same names), so a reload keeps the counts
	// when numbers, keys, statuses or bodies change. In JSON, an empty zone
	// is derived from the names of the limits: handlers with limits of the
	// same names share their route counters unless each has a zone.
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
	// enough to correlate, useless to replay a credential, but an IP
	// address or a short id can be found again by trying them all: give a
	// KeySecret) or "raw" (cut to 256 bytes).
	ShowKey string `json:"show_key,omitempty"`

	// KeySecret makes the hashed keys an HMAC-SHA256 with this secret, so
	// that nobody without it can find an IP address or an id back from a
	// log line. The same secret on every instance gives the same hashes.
	// Placeholders such as {env.EDGELIMIT_KEY_SECRET} are replaced when the
	// configuration loads.
	KeySecret string `json:"key_secret,omitempty"`

	// HandleErrors leaves the denial's body to the site's handle_errors
	// routes: the handler sets the headers and the {edge_limit.*}
	// placeholders, then returns an HTTP error with the status.
	HandleErrors bool `json:"handle_errors,omitempty"`

	// StorageRaw gives this handler a store of its own. Default: the
	// edge_limit app's storage (memory unless configured).
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=edge_limit.storage inline_key=backend"`

	useAt   []caddyfile.Token // where each Use name is, when read from a Caddyfile
	limits  []*compiledLimit
	exempts bool // some limit exempts others
	// templated: some key or tier placeholder needs the replacer (the
	// others are read from the request without it).
	templated bool
	store     storage.Store
	timer     storeTimer // how long store takes to decide
	logger    *zap.Logger
	metrics   *metrics
	events    *emitter
	headers   headerStyle
	body      *bodyTemplate
	escape    escaper // how values are escaped in bodies of ContentType
	rawKeys   bool
	keyMAC    []byte // the resolved KeySecret
	scratch   *sync.Pool
	warn      *throttle.Log
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
	h.warn = new(throttle.Log)
	if err := h.provisionResponses(); err != nil {
		return err
	}
	appIface, err := ctx.App("edge_limit")
	if err != nil {
		return fmt.Errorf("loading the edge_limit app: %w", err)
	}
	app := appIface.(*App)
	if err := h.compileLimits(app); err != nil {
		return err
	}
	own := h.limits[:len(h.Limits)]
	for _, cl := range own {
		warnPrivileges(h.logger, cl)
	}
	app.declare(own)
	if err := app.checkExempt(ctx, own); err != nil {
		return err
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
	h.timer = h.metrics.timerFor(h.store)
	for _, cl := range h.limits {
		app.registry.add(cl, h.store, h.clock)
	}
	n := len(h.limits)
	h.scratch = &sync.Pool{New: func() any { return newScratch(n) }}
	return nil
}

// provisionResponses applies the defaults of what a limited response says.
func (h *Handler) provisionResponses() error {
	if h.Status == 0 {
		h.Status = DefaultStatus
	}
	if h.ContentType == "" {
		h.ContentType = DefaultContentType
	}
	body := h.Body
	if body == "" {
		body = DefaultBody
	}
	h.body = parseBody(compileTemplate(body))
	h.escape = escaperFor(h.ContentType)
	style, err := parseHeaderStyle(h.Headers)
	if err != nil {
		return err
	}
	h.headers = style
	if err := checkShowKey(h.ShowKey); err != nil {
		return err
	}
	h.rawKeys = h.ShowKey == "raw"
	if h.KeySecret != "" {
		if h.rawKeys {
			return errors.New("key_secret goes with show_key hashed, not raw")
		}
		secret := caddy.NewReplacer().ReplaceAll(h.KeySecret, "")
		if len(secret) < 16 {
			return errors.New("key_secret: want at least 16 bytes (after placeholders are replaced), so that the hashes cannot be reversed by guessing the secret")
		}
		h.keyMAC = []byte(secret)
	}
	return nil
}

// zoneNames is what the zone of the handler's route counters is derived
// from: the names of its limits, in order. Numbers, keys, statuses and
// bodies are left out, so that changing them keeps the counts.
func (h *Handler) zoneNames() []string {
	names := make([]string, 0, len(h.Limits)+1)
	names = append(names, "edge_limit/2")
	for _, l := range h.Limits {
		if l != nil {
			names = append(names, l.Name)
		}
	}
	return names
}

// compileLimits compiles the handler's own limits, in its zone, and adds
// the app's shared limits it uses.
func (h *Handler) compileLimits(app *App) error {
	if h.Zone == "" {
		z, err := zone.Of(h.zoneNames())
		if err != nil {
			return err
		}
		h.Zone = z
	}
	h.limits = make([]*compiledLimit, 0, len(h.Limits)+len(h.Use))
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
	return nil
}

// Validate rejects configurations that cannot work.
func (h *Handler) Validate() error {
	if err := checkStatus(int64(h.Status)); err != nil {
		return err
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

// scratch holds one request's working slices, pooled so that the request
// path allocates nothing for them.
type scratch struct {
	keys    []string // per handler limit: the client's key
	parts   []int    // per handler limit: the key part used, -1 if none
	reqs    []storage.Request
	counted []storage.Request
	res     []limiter.Result
	which   []*compiledLimit
	tiers   []string
	buf     []byte
	ledger  ledger
}

func newScratch(n int) *scratch {
	return &scratch{
		keys:    make([]string, n),
		parts:   make([]int, n),
		reqs:    make([]storage.Request, 0, n),
		counted: make([]storage.Request, 0, n),
		res:     make([]limiter.Result, n),
		which:   make([]*compiledLimit, 0, n),
		tiers:   make([]string, 0, n),
		buf:     make([]byte, 0, 128),
	}
}

// Request variables shared by the edge_limit handlers a request meets.
const (
	// exemptVar carries exemptions to later handlers.
	exemptVar = "edge_limit.exempt"
	// ledgerVar carries what earlier handlers counted.
	ledgerVar = "edge_limit.ledger"
)

// ledger lists what the edge_limit handlers of one request have counted, so
// that a denial by a later handler gives it back: a denied request consumes
// nothing, whichever handler denies it. The entries point into the scratch
// of each handler, which lives until that handler returns, after every
// handler nested in it.
type ledger struct {
	entries []ledgerEntry
	// report is the most constraining result reported so far, so that a
	// later handler's headers replace it only with a tighter one.
	report limiter.Result
}

type ledgerEntry struct {
	store storage.Store
	reqs  []storage.Request
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if len(h.limits) == 0 {
		return next.ServeHTTP(w, r)
	}
	// Each context lookup walks Caddy's context chain: the variables are
	// looked up once, the replacer only for keys that need it.
	ctx := r.Context()
	var repl *caddy.Replacer
	if h.templated {
		repl, _ = ctx.Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	}
	vars, _ := ctx.Value(caddyhttp.VarsCtxKey).(map[string]any)
	sc := h.scratch.Get().(*scratch)
	defer h.scratch.Put(sc)
	keys, parts := sc.keys, sc.parts
	present := false
	for i, l := range h.limits {
		keys[i], parts[i] = l.key(r, repl, vars)
		present = present || parts[i] >= 0
	}
	if !present {
		return next.ServeHTTP(w, r)
	}
	exempt := h.exemptions(vars, parts)
	reqs, which, tiers := sc.reqs[:0], sc.which[:0], sc.tiers[:0]
	for i, l := range h.limits {
		if parts[i] < 0 || exempt != nil && slices.Contains(exempt, l.name) {
			continue
		}
		lim, tier := l.numbersFor(r, repl, vars)
		reqs = append(reqs, storage.Request{
			Counter: l.counters[parts[i]],
			Key:     keys[i],
			Limit:   *lim,
			Cost:    l.cost,
			DryRun:  l.dryRun || h.DryRun,
		})
		which = append(which, l)
		tiers = append(tiers, tier)
	}
	sc.reqs, sc.which, sc.tiers = reqs, which, tiers
	if len(reqs) == 0 {
		return next.ServeHTTP(w, r)
	}
	now := h.clock.Now()
	res := sc.res[:len(reqs)]
	// The latency is measured from now when it is the real clock's (with
	// its monotonic reading): one clock reading less per request.
	start := now
	if h.clock != clock.Real {
		start = time.Now()
	}
	err := h.store.Take(ctx, now, reqs, res)
	h.timer.observe(start)
	if err != nil {
		return h.storageFailed(w, r, next, now, err)
	}
	denied, report := h.judge(r, sc, res)
	prior, _ := vars[ledgerVar].(*ledger)
	h.setHeaders(w.Header(), sc, report, denied >= 0, prior)
	if denied >= 0 {
		h.refundEarlier(r, now)
		return h.deny(w, r, which[denied], reqs[denied].Key, tiers[denied], &res[denied])
	}
	if h.record(vars, sc, prior, &res[report]) {
		defer delete(vars, ledgerVar)
	}
	return next.ServeHTTP(w, r)
}

// judge counts the outcomes, notifies first denials, and picks the result
// that denies the request (the one with the longest wait; -1 if none) and
// the one its headers report (the denial, or the most constraining).
func (h *Handler) judge(r *http.Request, sc *scratch, res []limiter.Result) (denied, report int) {
	reqs, which := sc.reqs, sc.which
	denied, report = -1, -1
	for i := range res {
		which[i].outcomes.count(&res[i], reqs[i].DryRun)
		if !res[i].Allowed {
			if res[i].FirstDenial {
				h.notify(r, which[i], reqs[i].Key, sc.tiers[i], &res[i], reqs[i].DryRun)
			}
			if reqs[i].DryRun {
				h.logWouldDeny(r, which[i], &res[i])
			} else if denied < 0 || res[i].RetryAfter > res[denied].RetryAfter {
				denied = i
			}
		}
		if report < 0 || tighter(&res[i], &res[report]) {
			report = i
		}
	}
	if denied >= 0 {
		report = denied
	}
	return denied, report
}

// record enters what this handler counted in the request's ledger; it
// reports whether it started the ledger (and must remove it on the way
// out, before its scratch goes back to the pool).
func (h *Handler) record(vars map[string]any, sc *scratch, l *ledger, report *limiter.Result) bool {
	counted := sc.reqs
	for i := range sc.reqs {
		if !sc.res[i].Allowed {
			// Some dry-run limit denied: it counted nothing.
			counted = sc.counted[:0]
			for j := range sc.reqs {
				if sc.res[j].Allowed {
					counted = append(counted, sc.reqs[j])
				}
			}
			sc.counted = counted
			break
		}
	}
	if len(counted) == 0 || vars == nil {
		return false
	}
	entry := ledgerEntry{store: h.store, reqs: counted}
	if l != nil {
		l.entries = append(l.entries, entry)
		if tighter(report, &l.report) {
			l.report = *report
		}
		return false
	}
	sc.ledger.entries = append(sc.ledger.entries[:0], entry)
	sc.ledger.report = *report
	vars[ledgerVar] = &sc.ledger
	return true
}

// refundEarlier gives back what the edge_limit handlers before this one
// counted for a request this one denies.
func (h *Handler) refundEarlier(r *http.Request, now time.Time) {
	l, ok := caddyhttp.GetVar(r.Context(), ledgerVar).(*ledger)
	if !ok {
		return
	}
	for _, e := range l.entries {
		if err := e.store.Refund(r.Context(), now, e.reqs); err != nil && h.warn.Allow(now, 5*time.Second) {
			h.logger.Warn("giving back the counts of a denied request", zap.Error(err))
		}
	}
	l.entries = l.entries[:0]
}

// exemptions returns the names of the limits that do not apply to this
// request: those exempted by earlier handlers, and by the limits of this
// one whose key is present.
func (h *Handler) exemptions(vars map[string]any, parts []int) []string {
	prior, _ := vars[exemptVar].([]string)
	if !h.exempts {
		return prior
	}
	out, added := prior, false
	for i, l := range h.limits {
		if len(l.exempt) == 0 || parts[i] < 0 || slices.Contains(prior, l.name) {
			continue
		}
		if !added {
			out, added = slices.Clone(prior), true
		}
		out = append(out, l.exempt...)
	}
	if added && vars != nil {
		vars[exemptVar] = out
	}
	return out
}

// tighter tells whether a constrains the client more than b: fewer units
// left, or as few for longer.
func tighter(a, b *limiter.Result) bool {
	if a.Remaining != b.Remaining {
		return a.Remaining < b.Remaining
	}
	return a.Reset > b.Reset
}

// storageFailed applies the store's failure policy: ErrUnavailable denies
// with 503; anything else lets the request through unlimited.
func (h *Handler) storageFailed(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, now time.Time, err error) error {
	h.metrics.storageError()
	if h.warn.Allow(now, 5*time.Second) {
		h.logger.Warn("rate-limit storage failed", zap.Error(err))
	}
	if errors.Is(err, storage.ErrUnavailable) {
		h.refundEarlier(r, now)
		return h.unavailable(w, r, err)
	}
	return next.ServeHTTP(w, r)
}

func (h *Handler) logWouldDeny(r *http.Request, l *compiledLimit, res *limiter.Result) {
	lvl := zap.DebugLevel
	if res.FirstDenial {
		lvl = zap.InfoLevel
	}
	if ce := h.logger.Check(lvl, "dry run: rate limit would deny"); ce != nil {
		ce.Write(zap.String("limit", l.name), zap.String("client_ip", clientIP(r)),
			zap.Duration("retry_after", res.RetryAfter))
	}
}
