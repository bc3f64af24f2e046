package edgelimit

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/httpval"
	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/internal/zone"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/policy"
	"github.com/edgelimit/caddy-edgelimit/store"
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

	useAt  []caddyfile.Token // where each Use name is, when read from a Caddyfile
	limits []*compiledLimit
	// pol decides and answers, as the Traefik plugin does (package
	// policy); the handler reads the request for it.
	pol *policy.Policy
	// templated: some key or tier placeholder needs the replacer (the
	// others are read from the request without it).
	templated bool
	store     store.Store
	timer     storeTimer // how long store takes to decide
	logger    *zap.Logger
	metrics   *metrics
	events    *emitter
	scratch   *sync.Pool
	warn      *store.Throttle
	proxies   *proxyCheck
	clock     clock.Clock
	// waits is the clock as held requests wait on it (syncClock).
	waits store.SyncClock
	// synced merges the limits with sync into Redis (nil: none).
	synced *store.Synced
	// charging is the response path of limits that count responses
	// (charge.go), nil when none does.
	charging *charging
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
	DefaultStatus      = policy.DefaultStatus
	DefaultContentType = policy.DefaultContentType
	DefaultBody        = policy.DefaultBody
)

// Provision compiles the limits and finds the store.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.clock = clock.ForProvision()
	h.waits = syncClock{h.clock}
	h.warn = new(store.Throttle)
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
	if err := h.provisionResponses(); err != nil {
		return err
	}
	h.charging = newCharging(h.pol)
	app.declare(own)
	if err := app.checkExempt(ctx, own); err != nil {
		return err
	}
	h.metrics = app.metrics
	for _, cl := range h.limits {
		if cl.outcomes == nil {
			cl.outcomes = h.metrics.outcomesFor(cl.Name)
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
	h.withSync()
	h.scratch = &sync.Pool{New: func() any { return &scratch{Decision: policy.NewDecision(h.pol)} }}
	return nil
}

// provisionResponses makes the policy: the limits, and what the
// handler's limited responses say.
func (h *Handler) provisionResponses() error {
	if err := checkShowKey(h.ShowKey); err != nil {
		return err
	}
	r := &policy.Responses{Status: h.Status, Headers: h.Headers, TimeHeader: h.TimeHeader, DryRun: h.DryRun,
		Body: h.Body, ContentType: h.ContentType, ShowKey: h.ShowKey}
	if h.KeySecret != "" {
		if h.ShowKey == "raw" {
			return errors.New("key_secret goes with show_key hashed, not raw")
		}
		r.KeySecret = caddy.NewReplacer().ReplaceAll(h.KeySecret, "")
		if len(r.KeySecret) < 16 {
			return errors.New("key_secret: want at least 16 bytes (after placeholders are replaced), so that the hashes cannot be reversed by guessing the secret")
		}
	}
	limits := make([]*policy.Limit, len(h.limits))
	for i, cl := range h.limits {
		limits[i] = cl.Limit
	}
	var err error
	h.pol, err = policy.New(limits, r)
	return err
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
			if own.Name == name {
				return fmt.Errorf("use %q: the handler declares a limit of that name too", name)
			}
		}
		h.limits = append(h.limits, cl)
	}
	h.proxies = new(proxyCheck)
	for _, cl := range h.limits {
		h.templated = h.templated || cl.templated()
		for _, k := range cl.keys {
			if k.Kind == httpval.KindClient {
				h.proxies.limits = append(h.proxies.limits, cl.Name)
				break
			}
		}
	}
	return nil
}

// Validate rejects configurations that cannot work.
func (h *Handler) Validate() error {
	if h.Status != 0 {
		if err := checkStatus(int64(h.Status)); err != nil {
			return err
		}
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

// scratch is one request's decision and what handlers share through
// the request's variables, pooled so that the request path allocates
// nothing for them.
type scratch struct {
	*policy.Decision
	ledger policy.Ledger
	flow   policy.Flow
}

// Request variables shared by the edge_limit handlers a request meets.
const (
	// exemptVar carries exemptions to later handlers.
	exemptVar = "edge_limit.exempt"
	// ledgerVar carries what earlier handlers counted (a *ledgerSlot).
	ledgerVar = "edge_limit.ledger"
)

// ledgerSlot is what ledgerVar holds: the request's ledger, which is the
// scratch of the handler that started it, while that handler runs (every
// handler nested in it is done before it returns); nil after. The handler
// empties the slot on its way out rather than delete the variable: a map
// write after the next handler returned would race with what outlives it
// and still reads the request's variables (a reverse proxy's dial for a
// request that took another connection), and could crash the process.
// The slot outlives the scratch, which goes back to the pool: handlers
// that run after it (handle_errors) find it empty, never a ledger that
// another request reuses.
type ledgerSlot struct{ l *policy.Ledger }

// ledgerOf is the request's ledger, nil when it has none.
func ledgerOf(vars map[string]any) *policy.Ledger {
	if s, ok := vars[ledgerVar].(*ledgerSlot); ok {
		return s.l
	}
	return nil
}

// empty ends a slot's ledger, on the way out of the handler that started
// it.
func (s *ledgerSlot) empty() { s.l = nil }

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.charging != nil {
		return h.serveCharging(w, r, next)
	}
	return h.serve(w, r, next)
}

// serve decides the request, and serves or denies it.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
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
	d := sc.Decision
	present := false
	for i, l := range h.limits {
		d.Keys[i], d.Parts[i] = l.key(r, repl, vars)
		present = present || d.Parts[i] >= 0
		if l.tierKey != nil {
			d.TierValues[i] = l.tierValue(r, repl, vars)
		}
	}
	if !present {
		return next.ServeHTTP(w, r)
	}
	if h.proxies.limits != nil && !h.proxies.done.Load() {
		h.proxies.check(ctx, vars, h.logger)
	}
	prior, _ := vars[exemptVar].([]string)
	ledger := ledgerOf(vars)
	f := &sc.flow
	*f = policy.Flow{Exempt: prior, Earlier: ledger, Ledger: ledger, Clock: h.waits}
	if ledger == nil && vars != nil {
		// A new ledger, for the handlers after this one.
		sc.ledger.Entries = sc.ledger.Entries[:0]
		sc.ledger.HasReport = false
		sc.ledger.Denied = false
		f.Ledger = &sc.ledger
	}
	now := h.clock.Now()
	// The latency is measured from now when it is the real clock's (with
	// its monotonic reading): one clock reading less per request.
	start := now
	if h.clock != clock.Real {
		start = time.Now()
	}
	o := policy.Decide(h.pol, h.store, ctx, now, d, f)
	if f.Added && vars != nil {
		vars[exemptVar] = f.Exempt
	}
	if o == policy.Skip {
		return next.ServeHTTP(w, r)
	}
	h.timer.observe(start)
	if o == policy.Decided {
		o = policy.Settle(h.pol, h.store, ctx, now, w.Header(), d, f)
		if f.Wait > 0 {
			h.metrics.waited(d, o == policy.Pass)
		}
		h.report(r, d)
	}
	if o != policy.Pass {
		return h.answer(w, r, next, d, f, o, now)
	}
	if f.Ledger == &sc.ledger {
		slot := h.share(vars, &sc.ledger)
		defer slot.empty()
	}
	if h.charging != nil && policy.Checked(d) {
		return h.serveCharged(w, r, next, sc)
	}
	return next.ServeHTTP(w, r)
}

// answer acts on what the core made of a request (o, f) but a plain pass:
// it answers a denial, logs a storage failure and lets the request through
// or answers 503 as the storage's policy says, or returns the error of a
// client that left while held; and logs what could not be given back.
func (h *Handler) answer(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, d *policy.Decision, f *policy.Flow, o policy.Outcome, now time.Time) error {
	switch o {
	case policy.Deny:
		h.refundFailed(f, "giving back the counts of a denied request", now)
		return h.deny(w, r, d, f.Denied)
	case policy.Left:
		h.refundFailed(f, "giving back the counts of a request that left while held", h.clock.Now())
		return f.Err
	}
	// Failed or Unavailable: the store's failure policy.
	h.metrics.storageError()
	if h.warn.Allow(now, 5*time.Second) {
		h.logger.Warn("rate-limit storage failed", zap.Error(f.Err))
	}
	if o == policy.Failed {
		return next.ServeHTTP(w, r)
	}
	h.refundFailed(f, "giving back the counts of a denied request", now)
	return h.unavailable(w, r, f.Err)
}

// refundFailed logs, once in a while, what the core could not give back.
func (h *Handler) refundFailed(f *policy.Flow, msg string, now time.Time) {
	if f.RefundErr != nil && h.warn.Allow(now, 5*time.Second) {
		h.logger.Warn(msg, zap.Error(f.RefundErr))
	}
}

// report counts the outcomes, notifies first denials and logs would-be
// denials of dry runs.
func (h *Handler) report(r *http.Request, d *policy.Decision) {
	for i := range d.Res {
		res := &d.Res[i]
		h.limits[d.Meta[i].Index].outcomes.count(res, d.Reqs[i].DryRun)
		if res.Allowed {
			continue
		}
		if res.FirstDenial {
			h.notify(r, d, i)
		}
		if d.Reqs[i].DryRun {
			h.logWouldDeny(r, d.Meta[i].Limit, res)
		}
	}
}

// share makes l, the ledger this handler started (what it counted, in
// its scratch), the request's, for the handlers after it; it returns the
// ledger's slot, which the handler must empty on the way out, before its
// scratch goes back to the pool. A handler that counts responses shares
// the ledger too (its checks are among the requests, counting nothing): it
// learns there that a later one denied.
func (h *Handler) share(vars map[string]any, l *policy.Ledger) *ledgerSlot {
	// A slot emptied by a handler this request met before (its errors
	// are now handled) is used again: the variable is written once.
	slot, _ := vars[ledgerVar].(*ledgerSlot)
	if slot == nil {
		slot = new(ledgerSlot)
		vars[ledgerVar] = slot
	}
	slot.l = l
	return slot
}

func (h *Handler) logWouldDeny(r *http.Request, l *policy.Limit, res *limiter.Result) {
	lvl := zap.DebugLevel
	if res.FirstDenial {
		lvl = zap.InfoLevel
	}
	if ce := h.logger.Check(lvl, "dry run: rate limit would deny"); ce != nil {
		ce.Write(zap.String("limit", l.Name), zap.String("client_ip", clientIP(r)),
			zap.Duration("retry_after", res.RetryAfter))
	}
}
