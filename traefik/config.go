package edgelimit

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/policy"
)

// Config is the middleware's dynamic configuration. Traefik decodes it from
// YAML, TOML, labels or a CRD with mapstructure; names match
// case-insensitively (limits, ipStrategy). An option this schema does not
// have is refused, naming it: Traefik hands a plugin what it was given,
// and a misspelled option would silently do nothing. Each struct keeps
// what mapstructure did not place in its Unknown field for that check.
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

	// ShowKey is how {edge_limit.key}, logs and events show a client's
	// key: "hashed" (default: 16 hex digits of its SHA-256) or "raw".
	ShowKey string `json:"showKey,omitempty"`

	// KeySecret makes the hashed keys an HMAC-SHA256 with this secret (at
	// least 16 bytes), as the Caddy module's key_secret: the same secret
	// at both edges shows the same client alike.
	KeySecret string `json:"keySecret,omitempty"`

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
	Now func() time.Time `json:"-" mapstructure:"-"`

	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
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

	// The limit's numbers (see Numbers); with tiers, those of clients in
	// no known tier.
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

	// IPv6Prefix is the length of the IPv6 prefix that the ip and remote
	// sources count as one client (default 64: one subscriber's network);
	// 128 counts each address apart. IPv4 addresses, mapped into IPv6 or
	// not, count one by one.
	IPv6Prefix int `json:"ipv6Prefix,omitempty"`

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

	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
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

	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
}

// Calendar is a quota's calendar window.
type Calendar struct {
	// Period: day, week (from Monday) or month.
	Period string `json:"period,omitempty"`
	// At is the reset time of day, HH:MM (default 00:00).
	At string `json:"at,omitempty"`
	// TimeZone is an IANA name (default UTC).
	TimeZone string `json:"timeZone,omitempty"`

	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
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

	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
}

// Credentials are the known credentials of a static map.
type Credentials struct {
	// From is the source of the credential: header:<Name>, query:<name>,
	// cookie:<name> or bearer.
	From string `json:"from,omitempty"`
	// Clients maps each known credential to its client.
	Clients map[string]*Client `json:"clients,omitempty"`

	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
}

// Client is what a known credential stands for.
type Client struct {
	// ID identifies the client (the "credential" key source); several
	// credentials of one client share its counters. Default: the
	// credential itself.
	ID string `json:"id,omitempty"`
	// Tier is the client's tier (the "credential" tier source).
	Tier string `json:"tier,omitempty"`

	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
}

// CreateConfig returns the default configuration.
func CreateConfig() *Config {
	return &Config{}
}

// checkUnknown refuses the options that no field of the configuration
// took, at every level, naming each with its path, and the option meant
// when it is a near miss ("algoritm": algorithm).
func (c *Config) checkUnknown() error {
	var errs []string
	errs = unknownOptions(errs, "", c.Unknown, reflect.TypeOf(c))
	for _, name := range sortedLimits(c.Limits) {
		l := c.Limits[name]
		if l == nil {
			continue
		}
		p := "limits." + name + "."
		errs = unknownOptions(errs, p, l.Unknown, reflect.TypeOf(l))
		if l.Calendar != nil {
			errs = unknownOptions(errs, p+"calendar.", l.Calendar.Unknown, reflect.TypeOf(l.Calendar))
		}
		for _, tier := range sortedTiers(l.Tiers) {
			if n := l.Tiers[tier]; n != nil {
				errs = unknownOptions(errs, p+"tiers."+tier+".", n.Unknown, reflect.TypeOf(n))
				if n.Calendar != nil {
					errs = unknownOptions(errs, p+"tiers."+tier+".calendar.", n.Calendar.Unknown, reflect.TypeOf(n.Calendar))
				}
			}
		}
	}
	if c.IPStrategy != nil {
		errs = unknownOptions(errs, "ipStrategy.", c.IPStrategy.Unknown, reflect.TypeOf(c.IPStrategy))
	}
	if c.Credentials != nil {
		errs = unknownOptions(errs, "credentials.", c.Credentials.Unknown, reflect.TypeOf(c.Credentials))
		for _, cl := range c.Credentials.Clients {
			if cl != nil {
				// The credential itself is a secret: not in the message.
				errs = unknownOptions(errs, "credentials.clients.<credential>.", cl.Unknown, reflect.TypeOf(cl))
			}
		}
	}
	if c.Storage != nil {
		errs = unknownOptions(errs, "storage.", c.Storage.Unknown, reflect.TypeOf(c.Storage))
		if c.Storage.Redis != nil {
			errs = unknownOptions(errs, "storage.redis.", c.Storage.Redis.Unknown, reflect.TypeOf(c.Storage.Redis))
		}
	}
	if c.Notify != nil {
		errs = unknownOptions(errs, "notify.", c.Notify.Unknown, reflect.TypeOf(c.Notify))
	}
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, "; "))
}

// unknownOptions adds to errs a message for each option of unknown, at
// path, of a struct of type t. (The type, not the value: under Yaegi a
// value handed on as an interface{} is reflected as the interpreter's
// wrapper.)
func unknownOptions(errs []string, path string, unknown map[string]interface{}, t reflect.Type) []string {
	for _, k := range sortedKeys(unknown) {
		msg := "unknown option " + path + k
		if near := policy.Nearest(k, optionNames(t)); near != "" {
			msg += " (did you mean " + near + "?)"
		}
		errs = append(errs, msg)
	}
	return errs
}

// optionNames are the names of the options of a configuration struct, as
// documented (their json names).
func optionNames(t reflect.Type) []string {
	if t.Kind() == reflect.Ptr {
		t = t.Elem()
	}
	var names []string
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			names = append(names, name)
		}
	}
	return names
}

func sortedKeys(m map[string]interface{}) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func sortedLimits(m map[string]*Limit) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func sortedTiers(m map[string]*Numbers) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// numbers reads a limit's own numbers.
func (l *Limit) numbers() (policy.Numbers, error) {
	n := Numbers{Algorithm: l.Algorithm, Limit: l.Limit, Window: l.Window, Refill: l.Refill,
		Offset: l.Offset, Split: l.Split, Calendar: l.Calendar}
	return n.spec()
}

// spec reads the numbers, their durations parsed.
func (n *Numbers) spec() (policy.Numbers, error) {
	out := policy.Numbers{Algorithm: n.Algorithm, Limit: n.Limit, Refill: n.Refill}
	var err error
	if out.Window, err = parseDuration("window", n.Window); err != nil {
		return out, err
	}
	if out.Offset, err = parseDuration("offset", n.Offset); err != nil {
		return out, err
	}
	if out.Split, err = parseDuration("split", n.Split); err != nil {
		return out, err
	}
	if n.Calendar != nil {
		out.Calendar = &policy.Calendar{Period: n.Calendar.Period, At: n.Calendar.At, TimeZone: n.Calendar.TimeZone}
	}
	return out, nil
}

// parseDuration reads a Go duration ("1m30s"), days ("1d", "7d"), or a
// plain number of seconds, as Traefik's durations; "" is 0.
func parseDuration(what, s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > int64(limiter.MaxWindow/time.Second) {
			return 0, fmt.Errorf("%s %q is out of range", what, s)
		}
		return time.Duration(n) * time.Second, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseInt(days, 10, 64)
		if err != nil || n < 0 || n > 366 {
			return 0, fmt.Errorf("%s %q: want a duration such as 10s, 1m, 1h or 1d", what, s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%s %q: want a duration such as 10s, 1m, 1h or 1d", what, s)
	}
	return d, nil
}
