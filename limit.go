package edgelimit

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

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

	// The limit's algorithm and numbers; with tiers, the numbers of
	// clients in no known tier.
	Numbers

	// Tier is a placeholder whose value selects the numbers from Tiers,
	// such as {http.vars.tier} set by the map directive from the API key.
	Tier string `json:"tier,omitempty"`

	// Tiers maps tier names to their numbers. All tiers of a limit use the
	// same algorithm and share one counter per client, so a client whose
	// tier changes keeps its count.
	Tiers map[string]*Numbers `json:"tiers,omitempty"`

	// DefaultTier names the tier of clients whose Tier placeholder is empty
	// or unknown. Without it they get the limit's own numbers, and the tier
	// is reported as "default".
	DefaultTier string `json:"default_tier,omitempty"`

	// Cost is the number of units each request takes. Default 1.
	Cost int64 `json:"cost,omitempty"`

	// Scope is "route" (default): the handler counts this limit on its own;
	// or "global": every handler with a global limit of this name shares
	// one counter (an API-wide limit across routes and sites). Limits
	// declared in the edge_limit global option are always global.
	Scope string `json:"scope,omitempty"`

	// Exempt names limits that do not apply to a request this limit applies
	// to (its key is present): plugin tokens held to a daily quota but
	// exempt from the API-wide and per-route limits. The exemption holds
	// in this handler and in the edge_limit handlers the request meets
	// after it.
	Exempt []string `json:"exempt,omitempty"`

	// Status overrides the handler's denial status for this limit.
	Status int `json:"status,omitempty"`

	// Body overrides the handler's denial body for this limit.
	Body string `json:"body,omitempty"`

	// DryRun counts this limit and reports it in headers, but never denies
	// because of it.
	DryRun bool `json:"dry_run,omitempty"`
}

// Numbers are an algorithm and its figures.
type Numbers struct {
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
	// gcra). Required for token_bucket; for gcra it defaults to Limit.
	Refill int64 `json:"refill,omitempty"`

	// Offset moves clock-aligned window boundaries: a 24h window with a 6h
	// offset resets at 06:00 UTC. Default 0: windows align to the Unix
	// epoch (a 1d window resets at midnight UTC).
	Offset caddy.Duration `json:"offset,omitempty"`

	// Calendar makes a fixed window a calendar period (a quota): per day,
	// week or month, reset at a time of day in a time zone.
	Calendar *CalendarConfig `json:"calendar,omitempty"`

	// Split enforces a window's limit in shorter windows, each allowing
	// the same share: 1000 per 1m split 10s is 166 per 10 seconds.
	Split caddy.Duration `json:"split,omitempty"`
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

// compiledLimit is a Limit ready for the request path.
type compiledLimit struct {
	name     string
	cfg      *Limit // as configured, for the admin API
	zone     string // the zone of a route limit ("" for global ones)
	scope    string // route, global, or shared (the edge_limit app's)
	keys     []keyPart
	counters []string // one per key part: parts never share a counter
	limit    limiter.Limit
	tierName string // the tier reported for limit ("" when untiered)
	tierKey  *keyPart
	tiers    map[string]*tierNumbers
	cost     int64
	dryRun   bool
	exempt   []string
	status   int           // 0: the handler's
	body     *bodyTemplate // nil: the handler's
	outcomes *outcomes
}

type tierNumbers struct {
	name  string
	limit limiter.Limit
}

// compileLimit checks a limit's configuration and prepares it; zone
// separates route-scoped counters.
func compileLimit(l *Limit, zone string) (*compiledLimit, error) {
	if err := checkName(l.Name); err != nil {
		return nil, err
	}
	cost := l.Cost
	if cost == 0 {
		cost = 1
	}
	if cost < 1 || cost > limiter.MaxQuota {
		return nil, fmt.Errorf("cost must be between 1 and %d, got %d", int64(limiter.MaxQuota), cost)
	}
	if l.Status != 0 {
		if err := checkStatus(int64(l.Status)); err != nil {
			return nil, err
		}
	}
	cl := &compiledLimit{name: l.Name, cfg: l, cost: cost, dryRun: l.DryRun, status: l.Status}
	if l.Body != "" {
		cl.body = parseBody(compileTemplate(l.Body))
	}
	for _, e := range l.Exempt {
		if err := checkName(e); err != nil {
			return nil, fmt.Errorf("exempt: %w", err)
		}
		if e == l.Name {
			return nil, errors.New("a limit cannot exempt itself")
		}
	}
	cl.exempt = l.Exempt
	if err := cl.compileNumbers(l); err != nil {
		return nil, err
	}
	if err := cl.checkCost(); err != nil {
		return nil, err
	}
	keys := l.Key
	if len(keys) == 0 {
		keys = []string{"{http.vars.client_ip}"}
	}
	var base string
	switch l.Scope {
	case "", "route":
		base = "r/" + zone + "/" + l.Name + "/" + cl.limit.Algorithm.String()
		cl.zone, cl.scope = zone, "route"
	case "global":
		base = "g/" + l.Name + "/" + cl.limit.Algorithm.String()
		cl.scope = "global"
	default:
		return nil, checkScope(l.Scope)
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

// compileNumbers resolves the limit's own numbers and its tiers.
func (cl *compiledLimit) compileNumbers(l *Limit) error {
	// Offset and split alone are what tiers inherit, not numbers.
	hasOwn := l.Limit != 0 || l.Calendar != nil || l.Algorithm != ""
	if len(l.Tiers) == 0 {
		if l.Tier != "" || l.DefaultTier != "" {
			return errors.New("tier and default_tier need tiers")
		}
		lim, err := l.Numbers.compile()
		if err != nil {
			return err
		}
		cl.limit = lim
		return nil
	}
	if l.Tier == "" {
		return errors.New("tiers need a tier placeholder to choose between them")
	}
	kp, err := parseKeyPart(l.Tier)
	if err != nil {
		return fmt.Errorf("tier %q: %w", l.Tier, err)
	}
	cl.tierKey = &kp
	cl.tiers = make(map[string]*tierNumbers, len(l.Tiers))
	names := make([]string, 0, len(l.Tiers))
	for name := range l.Tiers {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		n := l.Tiers[name]
		if n == nil {
			return fmt.Errorf("tier %q has no numbers", name)
		}
		lim, err := n.compile()
		if err != nil {
			return fmt.Errorf("tier %q: %w", name, err)
		}
		cl.tiers[name] = &tierNumbers{name: name, limit: lim}
	}
	switch {
	case l.DefaultTier != "":
		if hasOwn {
			return errors.New("give either default_tier or the limit's own numbers for unknown tiers, not both")
		}
		t, ok := cl.tiers[l.DefaultTier]
		if !ok {
			return fmt.Errorf("default_tier %q is not one of the tiers", l.DefaultTier)
		}
		cl.limit, cl.tierName = t.limit, t.name
	case hasOwn:
		lim, err := l.Numbers.compile()
		if err != nil {
			return err
		}
		cl.limit, cl.tierName = lim, "default"
	default:
		return errors.New("clients in no known tier need numbers: give default_tier or the limit's own numbers")
	}
	for _, t := range cl.tiers {
		if t.limit.Algorithm != cl.limit.Algorithm {
			return fmt.Errorf("tier %q uses %s but the limit uses %s: all tiers share one counter, so one algorithm",
				t.name, t.limit.Algorithm, cl.limit.Algorithm)
		}
	}
	return nil
}

// compile turns the configured numbers into a validated limiter.Limit.
func (n *Numbers) compile() (limiter.Limit, error) {
	algo := limiter.FixedWindow
	if n.Algorithm != "" {
		a, err := limiter.ParseAlgorithm(n.Algorithm)
		if err != nil {
			return limiter.Limit{}, err
		}
		algo = a
	}
	lim := limiter.Limit{
		Algorithm: algo,
		Quota:     n.Limit,
		Window:    time.Duration(n.Window),
		Rate:      n.Refill,
		Offset:    time.Duration(n.Offset),
	}
	if algo == limiter.GCRA && lim.Rate == 0 {
		lim.Rate = lim.Quota
	}
	if n.Calendar != nil {
		cal, err := n.Calendar.compile()
		if err != nil {
			return limiter.Limit{}, err
		}
		if n.Window != 0 || n.Offset != 0 || n.Split != 0 {
			return limiter.Limit{}, errors.New("a calendar quota takes no window, offset or split")
		}
		lim.Calendar = cal
	}
	if n.Split != 0 {
		split := time.Duration(n.Split)
		switch {
		case algo == limiter.TokenBucket || algo == limiter.GCRA:
			return limiter.Limit{}, errors.New("split goes with windows, not buckets")
		case split <= 0 || split >= lim.Window || lim.Window%split != 0:
			return limiter.Limit{}, fmt.Errorf("split %s must divide the window %s into equal parts", split, lim.Window)
		}
		lim.Quota = lim.Quota * int64(split) / int64(lim.Window)
		lim.Window = split
		if lim.Quota < 1 {
			return limiter.Limit{}, fmt.Errorf("split %s leaves less than one request per part of %d per %s", split, n.Limit, time.Duration(n.Window))
		}
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

// checkCost refuses a cost that no request could ever pay: more units than
// the limit (or one of its tiers) holds would deny every request, with a
// Retry-After that never comes true.
func (cl *compiledLimit) checkCost() error {
	if cl.cost > cl.limit.Quota {
		return fmt.Errorf("cost %d is larger than the limit of %d: every request would be denied", cl.cost, cl.limit.Quota)
	}
	for _, t := range cl.tiers {
		if cl.cost > t.limit.Quota {
			return fmt.Errorf("cost %d is larger than the limit of %d of tier %q: its requests would all be denied", cl.cost, t.limit.Quota, t.name)
		}
	}
	return nil
}

// templated tells whether the limit's key or tier needs the replacer.
func (cl *compiledLimit) templated() bool {
	for i := range cl.keys {
		if cl.keys[i].kind == keyTemplate {
			return true
		}
	}
	return cl.tierKey != nil && cl.tierKey.kind == keyTemplate
}

// numbersFor returns the numbers for the request's tier, and the tier name.
func (cl *compiledLimit) numbersFor(r *http.Request, repl *caddy.Replacer, vars map[string]any) (*limiter.Limit, string) {
	if cl.tierKey != nil {
		if t, ok := cl.tiers[cl.tierKey.value(r, repl, vars)]; ok {
			return &t.limit, t.name
		}
	}
	return &cl.limit, cl.tierName
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

// warnPrivileges logs a warning when the limit grants a privilege (exempts
// other limits, or chooses a tier) from a request header as the client
// sent it: a client can then give itself the privilege with a made-up
// value. A header that forward_auth sets (copy_headers removes the
// client's own first) is safe; the warning says so.
func warnPrivileges(logger *zap.Logger, cl *compiledLimit) {
	const advice = "key it on authenticated input: {http.auth.user.id}, a header forward_auth sets with copy_headers, or a map of known credentials"
	if len(cl.exempt) > 0 {
		for i := range cl.keys {
			if from, ok := cl.keys[i].fromClient(); ok {
				logger.Warn("limit exempts others but is keyed on what a client sends (a header, a cookie, the query): any client could skip those limits with a made-up value; "+advice,
					zap.String("limit", cl.name), zap.Strings("exempts", cl.exempt), zap.String("from", from))
				break
			}
		}
	}
	if cl.tierKey != nil {
		if from, ok := cl.tierKey.fromClient(); ok {
			logger.Warn("limit chooses its tier from what a client sends (a header, a cookie, the query): any client could claim a better tier; "+advice,
				zap.String("limit", cl.name), zap.String("from", from))
		}
	}
}

// checkScope checks a limit's scope: route or global.
func checkScope(s string) error {
	if s != "route" && s != "global" {
		return fmt.Errorf("scope %q: want route or global", s)
	}
	return nil
}
