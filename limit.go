package edgelimit

import (
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/policy"
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

	// IPv6Prefix is the length of the IPv6 prefix that a key part of the
	// client's address ({client_ip}, {remote_host}) counts as one client:
	// every address of a /64 is one client by default, since anyone with
	// an IPv6 connection has 2^64 of them. 128 counts each address apart.
	// IPv4 addresses, mapped into IPv6 or not, count one by one.
	IPv6Prefix int `json:"ipv6_prefix,omitempty"`

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

	// CountResponses makes the limit count responses, not requests: those
	// it matches (Caddy's response matcher: status codes or classes such
	// as 4 for 4xx, and headers), each Cost units (or what CostHeader
	// says), once the response is known. A request is served only while
	// the limit has room for Cost: failed logins, {"status_code": [401]}.
	// An empty matcher counts every response.
	CountResponses *caddyhttp.ResponseMatcher `json:"count_responses,omitempty"`

	// CostHeader names a response header that says what the request cost
	// (tokens, rows, credits): each response is charged its number, even
	// when that is more than remains (the next requests are denied until
	// enough is back), and a request is served while at least one unit
	// remains. A response without it is charged nothing; a value that is
	// not a whole number is charged 1 unit, one larger than 2^40 that
	// many, and logged. The header is removed from the response unless
	// KeepCostHeader.
	CostHeader string `json:"cost_header,omitempty"`

	// KeepCostHeader passes CostHeader on to the client.
	KeepCostHeader bool `json:"keep_cost_header,omitempty"`

	// Ban denies a client every request for this long once one of its
	// requests was denied by this limit (a penalty box), or until its
	// quota would be whole again if that is later: whole seconds, up to
	// 24 days. Kept with the counter (in Redis, seen by every instance).
	Ban caddy.Duration `json:"ban,omitempty"`

	// Wait, for a token_bucket or gcra limit, holds a request that would
	// pass within this long until its turn, instead of denying it (shaping:
	// nginx's limit_req delay): whole milliseconds, up to 8s. WaitMax is
	// the requests of one client held at once (default 8); a client's
	// requests past it are denied.
	Wait    caddy.Duration `json:"wait,omitempty"`
	WaitMax int            `json:"wait_max,omitempty"`

	// Sync counts this limit in each instance's memory and merges the
	// counts into the Redis storage this often (1ms to 1m), admitting from
	// the shared total: the instance's last merged total plus what it
	// counted since. For a limit whose key is the same for every request
	// (key api), which would otherwise be one Redis core's decisions per
	// second at most. The instances may admit, beyond the limit, what each
	// admits in one interval. Not with ban, wait or count_responses; with
	// the memory storage, counts are local anyway and it changes nothing.
	Sync caddy.Duration `json:"sync,omitempty"`
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

// compiledLimit is a Limit ready for the request path: the shared core's
// limit (package policy), and what Caddy reads of the request for it.
type compiledLimit struct {
	*policy.Limit
	cfg      *Limit // as configured, for the admin API
	zone     string // the zone of a route limit ("" for global ones)
	scope    string // route, global, or shared (the edge_limit app's)
	keys     []keyPart
	tierKey  *keyPart
	outcomes *outcomes
}

// compileLimit checks a limit's configuration and prepares it; zone
// separates route-scoped counters.
func compileLimit(l *Limit, zone string) (*compiledLimit, error) {
	keys := l.Key
	if len(keys) == 0 {
		keys = []string{"{http.vars.client_ip}"}
	}
	cl := &compiledLimit{cfg: l}
	var scope string
	switch l.Scope {
	case "", "route":
		scope = "r/" + zone
		cl.zone, cl.scope = zone, "route"
	case "global":
		scope = "g"
		cl.scope = "global"
	default:
		if err := policy.CheckName(l.Name); err != nil {
			return nil, err
		}
		return nil, checkScope(l.Scope)
	}
	spec := &policy.Spec{
		Name:        l.Name,
		Keys:        len(keys),
		Numbers:     *l.Numbers.spec(),
		Tiered:      l.Tier != "",
		DefaultTier: l.DefaultTier,
		Cost:        l.Cost,
		IPv6Prefix:  l.IPv6Prefix,
		Exempt:      l.Exempt,
		Status:      l.Status,
		Body:        l.Body,
		DryRun:      l.DryRun,
		Ban:         time.Duration(l.Ban),
		Wait:        time.Duration(l.Wait),
		WaitMax:     l.WaitMax,
		Sync:        time.Duration(l.Sync),
	}
	if err := compileResponses(l, spec); err != nil {
		return nil, err
	}
	spec.Tiers = make(map[string]*policy.Numbers, len(l.Tiers))
	for name, n := range l.Tiers {
		spec.Tiers[name] = n.spec()
	}
	var err error
	if cl.Limit, err = policy.Compile(spec, scope); err != nil {
		return nil, err
	}
	if l.Tier != "" {
		kp, err := parseKeyPart(l.Tier)
		if err != nil {
			return nil, fmt.Errorf("tier %q: %w", l.Tier, err)
		}
		kp.V6 = 128 // a tier of an address is the address's
		cl.tierKey = &kp
	}
	for _, k := range keys {
		kp, err := parseKeyPart(k)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", k, err)
		}
		kp.V6 = cl.IPv6Prefix
		cl.keys = append(cl.keys, kp)
	}
	return cl, nil
}

// spec is the numbers as package policy reads them (nil: none).
func (n *Numbers) spec() *policy.Numbers {
	if n == nil {
		return nil
	}
	out := &policy.Numbers{
		Algorithm: n.Algorithm,
		Limit:     n.Limit,
		Window:    time.Duration(n.Window),
		Refill:    n.Refill,
		Offset:    time.Duration(n.Offset),
		Split:     time.Duration(n.Split),
	}
	if n.Calendar != nil {
		out.Calendar = n.Calendar.spec()
	}
	return out
}

// spec is the calendar window as package policy reads it.
func (c *CalendarConfig) spec() *policy.Calendar {
	return &policy.Calendar{Period: c.Period, At: c.At, TimeZone: c.TimeZone}
}

// templated tells whether the limit's key or tier needs the replacer.
func (cl *compiledLimit) templated() bool {
	for i := range cl.keys {
		if cl.keys[i].Kind == keyTemplate {
			return true
		}
	}
	return cl.tierKey != nil && cl.tierKey.Kind == keyTemplate
}

// tierValue is the value of the limit's tier placeholder for the request.
func (cl *compiledLimit) tierValue(r *http.Request, repl *caddy.Replacer, vars map[string]any) string {
	if cl.tierKey == nil {
		return ""
	}
	return cl.tierKey.value(r, repl, vars)
}

// warnPrivileges logs a warning when the limit grants a privilege (exempts
// other limits, or chooses a tier) from a request header as the client
// sent it: a client can then give itself the privilege with a made-up
// value. A header that forward_auth sets (copy_headers removes the
// client's own first) is safe; the warning says so.
func warnPrivileges(logger *zap.Logger, cl *compiledLimit) {
	const advice = "key it on authenticated input: {http.auth.user.id}, a header forward_auth sets with copy_headers, or a map of known credentials"
	if len(cl.Exempt) > 0 {
		for i := range cl.keys {
			if from, ok := cl.keys[i].fromClient(); ok {
				logger.Warn("limit exempts others but is keyed on what a client sends (a header, a cookie, the query): any client could skip those limits with a made-up value; "+advice,
					zap.String("limit", cl.Name), zap.Strings("exempts", cl.Exempt), zap.String("from", from))
				break
			}
		}
	}
	if cl.tierKey != nil {
		if from, ok := cl.tierKey.fromClient(); ok {
			logger.Warn("limit chooses its tier from what a client sends (a header, a cookie, the query): any client could claim a better tier; "+advice,
				zap.String("limit", cl.Name), zap.String("from", from))
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
