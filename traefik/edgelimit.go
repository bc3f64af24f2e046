// Package edgelimit is edgelimit as a Traefik middleware plugin: the rate
// limits and quotas of the Caddy module (github.com/edgelimit/caddy-edgelimit),
// decided by the same limiter package, with the same headers and denials, in
// memory or in a Redis shared with Caddy instances.
//
// Traefik runs plugins from source in the Yaegi interpreter. This package
// imports the standard library, limiter and internal/httpval only (both
// vendored, both standard library only), and avoids what Yaegi
// cannot run: the min, max and clear builtins, range over an integer or a
// function, generics (slices, maps, atomic.Pointer, sync.OnceValue). The
// test yaegi_safe_test.go checks the sources for them; the harness module
// (harness/) loads the plugin through Yaegi as Traefik does.
package edgelimit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// Config is the middleware's dynamic configuration. Traefik decodes it from
// YAML, TOML or labels; names match case-insensitively (limits, ipStrategy).
type Config struct {
	// Limits by name. Every limit whose key is present applies to the
	// request: it passes only if each allows it, and a denied request
	// consumes nothing. A limit's name identifies its counter: limits of
	// the same name share one counter in every middleware (and in the
	// Caddy instances sharing the Redis) that declares them alike.
	Limits map[string]*Limit `json:"limits,omitempty"`

	// Status of a denial: 429 (default), or any 4xx/5xx (420, 400, 503).
	Status int `json:"status,omitempty"`

	// Headers: "x-ratelimit" (default: X-RateLimit-Limit, -Remaining and
	// -Reset in unix seconds, for the most constraining limit),
	// "ratelimit" (the IETF RateLimit and RateLimit-Policy fields, one item
	// per limit), "both" or "none".
	Headers string `json:"headers,omitempty"`

	// TimeHeader adds X-RateLimit-Time, the reported limit's window in
	// seconds.
	TimeHeader bool `json:"timeHeader,omitempty"`

	// DryRun counts and sends headers, never denies; would-be denials are
	// logged.
	DryRun bool `json:"dryRun,omitempty"`

	// Body is the denial's body template: {edge_limit.*} placeholders and
	// request placeholders ({http.request.uri.path}, {header.X}...), as in
	// the Caddy module. Default: {"status":429,"error":"Rate limit
	// exceeded, try again in N seconds"}.
	Body string `json:"body,omitempty"`

	// ContentType of the body. Default application/json; a JSON body has
	// its values JSON-escaped.
	ContentType string `json:"contentType,omitempty"`

	// ShowKey is how {edge_limit.key} and logs show a client's key:
	// "hashed" (default: 16 hex digits of its SHA-256) or "raw".
	ShowKey string `json:"showKey,omitempty"`

	// IPStrategy says how the "ip" key source finds the client's address,
	// as Traefik's ipStrategy: by default the connection's remote address.
	IPStrategy *IPStrategy `json:"ipStrategy,omitempty"`

	// Credentials is a static map of known credentials, for the
	// "credential" key and tier sources.
	Credentials *Credentials `json:"credentials,omitempty"`

	// Storage keeps the counters: memory (default) or Redis.
	Storage *Storage `json:"storage,omitempty"`

	// Notify posts the first denial of a client in a window to a webhook,
	// as the Caddy module's edge_limit.exceeded event.
	Notify *Notify `json:"notify,omitempty"`

	// Now replaces the clock, for tests. Traefik's configuration cannot set
	// it.
	Now func() time.Time `json:"-"`
}

// Limit is one rate limit or quota.
type Limit struct {
	// Key lists the key sources that identify the client, most specific
	// first; the first present one is used, and each source counts apart.
	// Sources: header:<Name>, query:<name>, cookie:<name>, ip (with
	// ipStrategy), remote (the connection's address), bearer (the token of
	// Authorization: Bearer), credential (the id of a known credential),
	// const:<text> (every request shares it). When none is present the
	// limit does not apply. Default: [ip].
	Key []string `json:"key,omitempty"`

	// The limit's numbers; with tiers, those of clients in no known tier.
	Algorithm string    `json:"algorithm,omitempty"`
	Limit     int64     `json:"limit,omitempty"`
	Window    string    `json:"window,omitempty"`
	Refill    int64     `json:"refill,omitempty"`
	Offset    string    `json:"offset,omitempty"`
	Split     string    `json:"split,omitempty"`
	Calendar  *Calendar `json:"calendar,omitempty"`

	// Tier is the source of the client's tier: header:<Name> (set by a
	// forwardAuth middleware before this one) or credential.
	Tier string `json:"tier,omitempty"`
	// Tiers maps tier names to their numbers: one algorithm, one counter
	// per client, whatever its tier.
	Tiers map[string]*Numbers `json:"tiers,omitempty"`
	// DefaultTier names the tier of clients in no known tier.
	DefaultTier string `json:"defaultTier,omitempty"`

	// Cost is the units each request takes. Default 1.
	Cost int64 `json:"cost,omitempty"`

	// Scope is "global" (default: the counter is the limit's name, shared
	// with every middleware and Caddy global limit of that name) or
	// "middleware" (this middleware counts alone).
	Scope string `json:"scope,omitempty"`

	// Exempt names limits that do not apply to a request this limit
	// applies to, here and in the edgelimit middlewares after this one.
	Exempt []string `json:"exempt,omitempty"`

	// Status and Body override the middleware's for this limit's denials.
	Status int    `json:"status,omitempty"`
	Body   string `json:"body,omitempty"`

	// DryRun counts and reports this limit but never denies for it.
	DryRun bool `json:"dryRun,omitempty"`
}

// Numbers are an algorithm and its figures.
type Numbers struct {
	// Algorithm: fixed_window (default), anchored_window, sliding_window,
	// token_bucket or gcra.
	Algorithm string `json:"algorithm,omitempty"`
	// Limit is the requests per window, the bucket's capacity
	// (token_bucket) or the burst (gcra).
	Limit int64 `json:"limit,omitempty"`
	// Window: "10s", "1m", "1h", "1d"; a plain number is seconds. For
	// buckets, the period in which Refill units come back.
	Window string `json:"window,omitempty"`
	// Refill is the units added per Window (token_bucket; gcra defaults to
	// Limit).
	Refill int64 `json:"refill,omitempty"`
	// Offset moves clock-aligned windows: a 1d window with offset 6h
	// resets at 06:00 UTC.
	Offset string `json:"offset,omitempty"`
	// Split enforces the window's limit in equal shorter windows.
	Split string `json:"split,omitempty"`
	// Calendar makes a quota: per day, week or month.
	Calendar *Calendar `json:"calendar,omitempty"`
}

// Calendar is a quota's calendar window.
type Calendar struct {
	// Period: day, week (from Monday) or month.
	Period string `json:"period,omitempty"`
	// At is the reset time of day, HH:MM (default 00:00).
	At string `json:"at,omitempty"`
	// TimeZone is an IANA name (default UTC).
	TimeZone string `json:"timeZone,omitempty"`
}

// IPStrategy finds the client's address in X-Forwarded-For, as Traefik's
// ipStrategy does. Without Depth or ExcludedIPs the remote address is the
// client: a header the client can write is never trusted by default.
type IPStrategy struct {
	// Depth takes the Depth-th address from the right of X-Forwarded-For
	// (1: the one the nearest proxy added). When the header holds fewer,
	// the remote address is used.
	Depth int `json:"depth,omitempty"`
	// ExcludedIPs are addresses or CIDR ranges of proxies: the client is
	// the rightmost address of X-Forwarded-For not in them. Ignored with
	// Depth.
	ExcludedIPs []string `json:"excludedIPs,omitempty"`
}

// Credentials are the known credentials of a static map.
type Credentials struct {
	// From is the source of the credential: header:<Name>, query:<name>,
	// cookie:<name> or bearer.
	From string `json:"from,omitempty"`
	// Clients maps each known credential to its client.
	Clients map[string]*Client `json:"clients,omitempty"`
}

// Client is what a known credential stands for.
type Client struct {
	// ID identifies the client (the "credential" key source); several
	// credentials of one client share its counters. Default: the
	// credential itself.
	ID string `json:"id,omitempty"`
	// Tier is the client's tier (the "credential" tier source).
	Tier string `json:"tier,omitempty"`
}

// CreateConfig returns the default configuration.
func CreateConfig() *Config {
	return &Config{}
}

// Defaults of the responses, as the Caddy module's.
const (
	DefaultStatus      = 429
	DefaultContentType = "application/json"
	DefaultBody        = `{"status":{edge_limit.status},"error":"Rate limit exceeded, try again in {edge_limit.retry_after_seconds}"}`
)

// middleware is one configured instance.
type middleware struct {
	next       http.Handler
	name       string
	limits     []*compiledLimit
	exempts    bool
	store      store
	now        func() time.Time
	status     int
	headers    headerStyle
	timeHeader bool
	dryRun     bool
	body       template
	escape     escaping // of the values in the body
	contentTyp string
	rawKeys    bool
	ips        *ipStrategy
	creds      *credentials
	notify     *notifier
	log        *logger
}

// New builds the middleware from its configuration.
func New(ctx context.Context, next http.Handler, config *Config, name string) (http.Handler, error) {
	if config == nil {
		config = CreateConfig()
	}
	m := &middleware{next: next, name: name, now: config.Now, log: newLogger(name)}
	if m.now == nil {
		m.now = time.Now
	}
	if err := m.compileResponses(config); err != nil {
		return nil, fmt.Errorf("edgelimit %s: %w", name, err)
	}
	ips, err := compileIPStrategy(config.IPStrategy)
	if err != nil {
		return nil, fmt.Errorf("edgelimit %s: ipStrategy: %w", name, err)
	}
	m.ips = ips
	m.creds, err = compileCredentials(config.Credentials)
	if err != nil {
		return nil, fmt.Errorf("edgelimit %s: credentials: %w", name, err)
	}
	m.notify, err = compileNotify(config.Notify, name)
	if err != nil {
		return nil, fmt.Errorf("edgelimit %s: notify: %w", name, err)
	}
	if err := m.compileLimits(config); err != nil {
		return nil, fmt.Errorf("edgelimit %s: %w", name, err)
	}
	m.store, err = openStore(config.Storage, config.Now)
	if err != nil {
		return nil, fmt.Errorf("edgelimit %s: storage: %w", name, err)
	}
	return m, nil
}

func (m *middleware) compileResponses(c *Config) error {
	m.status = c.Status
	if m.status == 0 {
		m.status = DefaultStatus
	}
	if err := checkStatus(m.status); err != nil {
		return err
	}
	m.contentTyp = c.ContentType
	if m.contentTyp == "" {
		m.contentTyp = DefaultContentType
	}
	m.escape = escaperFor(m.contentTyp)
	body := c.Body
	if body == "" {
		body = DefaultBody
	}
	m.body = parseTemplate(body)
	style, err := parseHeaderStyle(c.Headers)
	if err != nil {
		return err
	}
	m.headers, m.timeHeader, m.dryRun = style, c.TimeHeader, c.DryRun
	switch c.ShowKey {
	case "", "hashed":
	case "raw":
		m.rawKeys = true
	default:
		return fmt.Errorf("showKey %q: want hashed or raw", c.ShowKey)
	}
	return nil
}

func (m *middleware) compileLimits(c *Config) error {
	if len(c.Limits) == 0 {
		return errors.New("no limits: give at least one under limits")
	}
	names := make([]string, 0, len(c.Limits))
	for name := range c.Limits {
		names = append(names, name)
	}
	// Limits are decided, reported and tie-broken in the order of their
	// names: the same on every instance.
	sort.Strings(names)
	for _, name := range names {
		l := c.Limits[name]
		if l == nil {
			return fmt.Errorf("limit %q has no settings", name)
		}
		cl, err := compileLimit(name, l, m.name)
		if err != nil {
			return fmt.Errorf("limit %q: %w", name, err)
		}
		if cl.usesCredentials() && m.creds == nil {
			return fmt.Errorf("limit %q: the credential source needs credentials", name)
		}
		m.limits = append(m.limits, cl)
		m.exempts = m.exempts || len(cl.exempt) > 0
	}
	return nil
}

// ServeHTTP decides the request's limits at once, sets the rate-limit
// headers, and passes the request on or denies it.
func (m *middleware) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st, _ := r.Context().Value(stateKey{}).(*requestState)
	n := len(m.limits)
	keys := make([]string, n)
	parts := make([]int, n)
	var cred *Client
	if m.creds != nil {
		cred = m.creds.lookup(r)
	}
	present := false
	for i, l := range m.limits {
		keys[i], parts[i] = l.key(r, m.ips, cred)
		present = present || parts[i] >= 0
	}
	if !present {
		m.next.ServeHTTP(w, r)
		return
	}
	// Under Yaegi every call costs about a microsecond: the calls that
	// would do nothing are not made.
	var exempt []string
	added := false
	if m.exempts || st != nil {
		exempt, added = m.exemptions(st, parts)
	}
	d := &decision{}
	for i, l := range m.limits {
		if parts[i] < 0 || len(exempt) > 0 && contains(exempt, l.name) {
			continue
		}
		lim, tier := &l.limit, l.tierName
		if l.tierSrc != nil {
			lim, tier = l.numbersFor(r, cred)
		}
		d.reqs = append(d.reqs, request{
			Counter: l.counters[parts[i]],
			Key:     keys[i],
			Limit:   *lim,
			Cost:    l.cost,
			DryRun:  l.dryRun || m.dryRun,
		})
		d.which = append(d.which, l)
		d.tiers = append(d.tiers, tier)
	}
	if added {
		st, r = withState(st, r)
		st.exempt = exempt
	}
	if len(d.reqs) == 0 {
		m.next.ServeHTTP(w, r)
		return
	}
	now := m.now()
	d.res = make([]limiter.Result, len(d.reqs))
	if err := m.store.Take(r.Context(), now, d.reqs, d.res); err != nil {
		m.storageFailed(w, r, st, now, err)
		return
	}
	denied, report := m.judge(r, d)
	m.setHeaders(w.Header(), d, report, denied >= 0, st)
	if denied >= 0 {
		refundEarlier(r.Context(), st, now, m.log)
		m.deny(w, r, d.which[denied], d.reqs[denied].Key, d.tiers[denied], &d.res[denied])
		return
	}
	if counted := d.counted(); len(counted) > 0 {
		st, r = withState(st, r)
		st.record(m.store, counted, &d.res[report])
	}
	m.next.ServeHTTP(w, r)
}

// decision is one request's limits and their results.
type decision struct {
	reqs  []request
	which []*compiledLimit
	tiers []string
	res   []limiter.Result
}

// counted returns the requests that were counted: all of them, less the
// dry-run limits that denied (they counted nothing).
func (d *decision) counted() []request {
	for i := range d.res {
		if !d.res[i].Allowed {
			var out []request
			for j := range d.res {
				if d.res[j].Allowed {
					out = append(out, d.reqs[j])
				}
			}
			return out
		}
	}
	return d.reqs
}

// judge logs first denials and picks the result that denies the request
// (the one with the longest wait; -1 if none) and the one its headers
// report (the denial, or the most constraining).
func (m *middleware) judge(r *http.Request, d *decision) (denied, report int) {
	denied, report = -1, -1
	for i := range d.res {
		res := &d.res[i]
		if !res.Allowed {
			if res.FirstDenial {
				m.firstDenial(r, d, i)
			}
			if !d.reqs[i].DryRun && (denied < 0 || res.RetryAfter > d.res[denied].RetryAfter) {
				denied = i
			}
		}
		if report < 0 || tighter(res, &d.res[report]) {
			report = i
		}
	}
	if denied >= 0 {
		report = denied
	}
	return denied, report
}

// firstDenial reports the first denial of a client in a window: a log
// line, and the event of notify.
func (m *middleware) firstDenial(r *http.Request, d *decision, i int) {
	key := m.displayKey(d.reqs[i].Key)
	m.log.firstDenial(d.which[i].name, key, d.tiers[i], &d.res[i], d.reqs[i].DryRun)
	if m.notify != nil {
		m.notify.exceeded(m.now(), r, m.ips, d.which[i].name, key, d.tiers[i], &d.res[i], d.reqs[i].DryRun)
	}
}

// exemptions returns the names of the limits that do not apply: those
// exempted by earlier edgelimit middlewares, and by the limits of this one
// whose key is present; added tells whether this one exempted any.
func (m *middleware) exemptions(st *requestState, parts []int) ([]string, bool) {
	var prior []string
	if st != nil {
		prior = st.exempt
	}
	if !m.exempts {
		return prior, false
	}
	out, added := prior, false
	for i, l := range m.limits {
		if len(l.exempt) == 0 || parts[i] < 0 || contains(prior, l.name) {
			continue
		}
		if !added {
			out = append([]string(nil), prior...)
			added = true
		}
		out = append(out, l.exempt...)
	}
	return out, added
}

// storageFailed applies the store's failure policy: errUnavailable denies
// with 503 and Retry-After: 1; anything else lets the request through.
func (m *middleware) storageFailed(w http.ResponseWriter, r *http.Request, st *requestState, now time.Time, err error) {
	m.log.warnf(now, "rate-limit storage failed: %v", err)
	if errors.Is(err, errUnavailable) {
		refundEarlier(r.Context(), st, now, m.log)
		w.Header().Set("Retry-After", "1")
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	m.next.ServeHTTP(w, r)
}

// tighter tells whether a constrains the client more than b: fewer units
// left, or as few for longer.
func tighter(a, b *limiter.Result) bool {
	if a.Remaining != b.Remaining {
		return a.Remaining < b.Remaining
	}
	return a.Reset > b.Reset
}

// stateKey is the context key of the requestState that the edgelimit
// middlewares of one request share.
type stateKey struct{}

// requestState is what the edgelimit middlewares of one request share:
// the exemptions granted so far, and what each counted (so that a denial
// by a later one gives it back: a denied request consumes nothing).
type requestState struct {
	exempt  []string
	entries []ledgerEntry
	// report is the most constraining result reported so far: a later
	// middleware's x-ratelimit headers replace it only with a tighter one.
	report    limiter.Result
	hasReport bool
}

type ledgerEntry struct {
	store store
	reqs  []request
}

// withState returns the request's state, adding one (and a request that
// carries it) when it has none.
func withState(st *requestState, r *http.Request) (*requestState, *http.Request) {
	if st != nil {
		return st, r
	}
	st = &requestState{}
	return st, r.WithContext(context.WithValue(r.Context(), stateKey{}, st))
}

func (st *requestState) record(s store, reqs []request, report *limiter.Result) {
	st.entries = append(st.entries, ledgerEntry{store: s, reqs: reqs})
	if !st.hasReport || tighter(report, &st.report) {
		st.report, st.hasReport = *report, true
	}
}

// refundEarlier gives back what the edgelimit middlewares before this one
// counted for a request this one denies.
func refundEarlier(ctx context.Context, st *requestState, now time.Time, log *logger) {
	if st == nil {
		return
	}
	for _, e := range st.entries {
		if err := e.store.Refund(ctx, now, e.reqs); err != nil {
			log.warnf(now, "giving back the counts of a denied request: %v", err)
		}
	}
	st.entries = nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
