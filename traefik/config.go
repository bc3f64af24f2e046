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

// Config is the middleware's dynamic configuration (docs/traefik.md has
// every option). Traefik decodes it from YAML, TOML, labels or a CRD with
// mapstructure; names match case-insensitively. An option this schema does
// not have is refused, naming it: Traefik hands a plugin what it was
// given, and a misspelled option would silently do nothing. Each struct
// keeps what mapstructure did not place in its Unknown field for that.
type Config struct {
	// Limits by name, decided together: a request passes only if each
	// limit whose key is present allows it, and a denied request consumes
	// nothing. Limits of one name share one counter (global scope), in
	// every middleware and Caddy instance on one Redis that declares them
	// alike.
	Limits      map[string]*Limit `json:"limits,omitempty"`
	Status      int               `json:"status,omitempty"`      // of a denial: 429 (default) or any 4xx/5xx
	Headers     string            `json:"headers,omitempty"`     // x-ratelimit (default), ratelimit, both or none
	TimeHeader  bool              `json:"timeHeader,omitempty"`  // adds X-RateLimit-Time
	DryRun      bool              `json:"dryRun,omitempty"`      // counts and reports, never denies
	Body        string            `json:"body,omitempty"`        // the denial body's template, as the Caddy module's
	ContentType string            `json:"contentType,omitempty"` // of the body (application/json): its values are escaped for it
	ShowKey     string            `json:"showKey,omitempty"`     // hashed (default) or raw, in bodies, logs and events
	KeySecret   string            `json:"keySecret,omitempty"`   // hashed keys as an HMAC with it, as the Caddy module's key_secret
	IPStrategy  *IPStrategy       `json:"ipStrategy,omitempty"`  // how the ip source finds the client's address
	Credentials *Credentials      `json:"credentials,omitempty"` // known credentials, for the credential sources
	Storage     *Storage          `json:"storage,omitempty"`     // memory (default) or Redis
	Notify      *Notify           `json:"notify,omitempty"`      // a webhook for first denials, as the Caddy module's event

	// Now replaces the clock, for tests; Traefik cannot set it.
	Now     func() time.Time       `json:"-" mapstructure:"-"`
	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
}

// Limit is one rate limit or quota.
type Limit struct {
	// Key lists the sources of the client's key, the first present one
	// used, each counting apart: header:<Name>, query:<name>,
	// cookie:<name>, ip, remote, bearer, credential, basic-user,
	// const:<text>. Default [ip]; none present, the limit does not apply.
	Key []string `json:"key,omitempty"`
	// The limit's numbers (as Numbers'); with tiers, of clients in no
	// known tier.
	Algorithm string    `json:"algorithm,omitempty"`
	Limit     int64     `json:"limit,omitempty"`
	Window    string    `json:"window,omitempty"`
	Refill    int64     `json:"refill,omitempty"`
	Offset    string    `json:"offset,omitempty"`
	Split     string    `json:"split,omitempty"`
	Calendar  *Calendar `json:"calendar,omitempty"`
	// Tier is the tier's source (header:<Name> set by forwardAuth, or
	// credential), Tiers their numbers (one algorithm: one counter per
	// client), DefaultTier the tier of clients in none.
	Tier        string              `json:"tier,omitempty"`
	Tiers       map[string]*Numbers `json:"tiers,omitempty"`
	DefaultTier string              `json:"defaultTier,omitempty"`
	Cost        int64               `json:"cost,omitempty"`       // units per request, 1 by default
	IPv6Prefix  int                 `json:"ipv6Prefix,omitempty"` // an IPv6 client of ip or remote counts by this prefix (64)
	Scope       string              `json:"scope,omitempty"`      // global (default: one counter per name) or middleware
	Exempt      []string            `json:"exempt,omitempty"`     // limits that do not apply where this one does
	Status      int                 `json:"status,omitempty"`     // this limit's denials' status
	Body        string              `json:"body,omitempty"`       // this limit's denials' body
	DryRun      bool                `json:"dryRun,omitempty"`     // counts and reports, never denies
	// CountResponses makes the limit count the responses it matches, not
	// the requests (failed logins): a request is served only while the
	// limit has room for its cost, and counted once its response is known.
	CountResponses *ResponseRule `json:"countResponses,omitempty"`
	// CostHeader: each response is charged the number this response
	// header says (tokens an upstream reports), even past what remains; a
	// request is served while one unit remains. Removed from the response
	// unless KeepCostHeader.
	CostHeader     string `json:"costHeader,omitempty"`
	KeepCostHeader bool   `json:"keepCostHeader,omitempty"`
	// Ban denies a client every request for this long (10m, 1h: whole
	// seconds, up to 24 days) once one was denied by this limit.
	Ban string `json:"ban,omitempty"`
	// Wait (token_bucket, gcra): a request that would pass within this
	// long (500ms; at most 8s) is held until its turn instead of denied;
	// at most WaitMax (8) of a client's at once.
	Wait    string `json:"wait,omitempty"`
	WaitMax int    `json:"waitMax,omitempty"`
	// Sync (100ms; 1ms to 1m), with a Redis storage, counts this limit in
	// this instance's memory and merges the counts into Redis this often,
	// admitting from the shared total (the Caddy module's sync): for a
	// key every request shares (const:api). Not with ban, wait or
	// countResponses.
	Sync string `json:"sync,omitempty"`

	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
}

// ResponseRule is which responses a limit counts, as the Caddy module's
// count_responses (Caddy's response matcher) says it.
type ResponseRule struct {
	Status []string `json:"status,omitempty"` // codes (401) or classes (4xx); none: every status
	// Headers each response must have: name to a value pattern, exact or
	// with * ("*" any value, "fail*", "*ed", "*ail*"); "!Name" (and no
	// value) wants the header absent.
	Headers map[string]string `json:"headers,omitempty"`

	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
}

// Numbers are an algorithm and its figures.
type Numbers struct {
	Algorithm string    `json:"algorithm,omitempty"` // fixed_window (default), anchored_window, sliding_window, token_bucket or gcra
	Limit     int64     `json:"limit,omitempty"`     // per window; a bucket's capacity; GCRA's burst
	Window    string    `json:"window,omitempty"`    // 10s, 1m, 1h, 1d, or seconds; for buckets, the refill's period
	Refill    int64     `json:"refill,omitempty"`    // units per window of a bucket (GCRA: the limit)
	Offset    string    `json:"offset,omitempty"`    // moves clock-aligned windows
	Split     string    `json:"split,omitempty"`     // the window's limit in equal shorter windows
	Calendar  *Calendar `json:"calendar,omitempty"`  // a quota per day, week or month

	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
}

// Calendar is a quota's calendar window.
type Calendar struct {
	Period   string `json:"period,omitempty"`   // day, week (from Monday) or month
	At       string `json:"at,omitempty"`       // the reset time, HH:MM (00:00)
	TimeZone string `json:"timeZone,omitempty"` // IANA (UTC)

	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
}

// IPStrategy finds the client's address in X-Forwarded-For, as Traefik's
// ipStrategy does. Without Depth or ExcludedIPs the remote address is the
// client: a header the client can write is never trusted by default.
type IPStrategy struct {
	// Depth takes the Depth-th address from the right (1: the one the
	// nearest proxy added), the remote address when there are fewer.
	Depth int `json:"depth,omitempty"`
	// ExcludedIPs are proxies (addresses or CIDR ranges): the client is the
	// rightmost address not in them. Ignored with Depth.
	ExcludedIPs []string `json:"excludedIPs,omitempty"`

	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
}

// Credentials are the known credentials of a static map.
type Credentials struct {
	From    string             `json:"from,omitempty"`    // header:<Name>, query:<name>, cookie:<name> or bearer
	Clients map[string]*Client `json:"clients,omitempty"` // each known credential's client

	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
}

// Client is what a known credential stands for.
type Client struct {
	ID   string `json:"id,omitempty"`   // the credential source's key (the credential itself by default)
	Tier string `json:"tier,omitempty"` // the credential tier source's tier

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
	errs := unknownOptions(nil, "", reflect.ValueOf(c).Elem())
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, "; "))
}

// unknownOptions adds to errs a message for each option that the
// configuration struct v, at path, did not take (its Unknown field, where
// mapstructure puts the rest), then those of the structs below it, in the
// order of its fields: pointers to structs, and maps of them by name. A
// known credential is a secret: its name is not in the message.
func unknownOptions(errs []string, path string, v reflect.Value) []string {
	var options, below []string // v's options (json names), what is wrong below v
	var unknown reflect.Value
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		f := v.Field(i)
		switch {
		case name == "-":
			if t.Field(i).Tag.Get("mapstructure") == ",remain" {
				unknown = f
			}
			continue
		case isStructPtr(f.Type()) && !f.IsNil():
			below = unknownOptions(below, path+name+".", f.Elem())
		case f.Kind() == reflect.Map && isStructPtr(f.Type().Elem()):
			for _, k := range sortedKeys(f) {
				e := f.MapIndex(reflect.ValueOf(k))
				if f.Type().Elem() == reflect.TypeOf((*Client)(nil)) {
					k = "<credential>"
				}
				if !e.IsNil() {
					below = unknownOptions(below, path+name+"."+k+".", e.Elem())
				}
			}
		}
		options = append(options, name)
	}
	if unknown.IsValid() {
		for _, k := range sortedKeys(unknown) {
			msg := "unknown option " + path + k
			if near := policy.Nearest(k, options); near != "" {
				msg += " (did you mean " + near + "?)"
			}
			errs = append(errs, msg)
		}
	}
	return append(errs, below...)
}

func isStructPtr(t reflect.Type) bool {
	return t.Kind() == reflect.Ptr && t.Elem().Kind() == reflect.Struct
}

// sortedKeys are the keys of a map of strings, sorted.
func sortedKeys(m reflect.Value) []string {
	keys := make([]string, 0, m.Len())
	for _, k := range m.MapKeys() {
		keys = append(keys, k.String())
	}
	sort.Strings(keys)
	return keys
}

// sortedLimits are the names of the limits, sorted.
func sortedLimits(m map[string]*Limit) []string {
	return sortedKeys(reflect.ValueOf(m))
}

// numbers reads a limit's own numbers.
func (l *Limit) numbers() (*policy.Numbers, error) {
	n := Numbers{Algorithm: l.Algorithm, Limit: l.Limit, Window: l.Window, Refill: l.Refill,
		Offset: l.Offset, Split: l.Split, Calendar: l.Calendar}
	return n.spec()
}

// spec reads the numbers, their durations parsed (nil: none).
func (n *Numbers) spec() (*policy.Numbers, error) {
	if n == nil {
		return nil, nil
	}
	out := &policy.Numbers{Algorithm: n.Algorithm, Limit: n.Limit, Refill: n.Refill}
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
