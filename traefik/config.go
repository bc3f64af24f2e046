package edgelimit

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// compiledLimit is a Limit ready for the request path.
type compiledLimit struct {
	name     string
	keys     []source
	counters []string // one per key source: sources never share a counter
	limit    limiter.Limit
	tierName string // the tier reported for limit ("" when untiered)
	tierSrc  *source
	tiers    map[string]*tierNumbers
	cost     int64
	dryRun   bool
	exempt   []string
	status   int      // 0: the middleware's
	body     template // nil: the middleware's
}

type tierNumbers struct {
	name  string
	limit limiter.Limit
}

// compileLimit checks a limit and prepares it. Its counters are named as
// the Caddy module names a global limit's ("g/<name>/<algorithm>#<source
// index>"), so that a Caddy instance whose global limit of the same name
// has the same algorithm and key sources in the same order shares them
// through Redis; a middleware-scoped limit's are "m/<middleware>/...".
func compileLimit(name string, l *Limit, middleware string) (*compiledLimit, error) {
	if err := checkName(name); err != nil {
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
		if err := checkStatus(l.Status); err != nil {
			return nil, err
		}
	}
	cl := &compiledLimit{name: name, cost: cost, dryRun: l.DryRun, status: l.Status}
	if l.Body != "" {
		cl.body = parseTemplate(l.Body)
	}
	for _, e := range l.Exempt {
		if err := checkName(e); err != nil {
			return nil, fmt.Errorf("exempt: %w", err)
		}
		if e == name {
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
		keys = []string{"ip"}
	}
	var base string
	switch l.Scope {
	case "", "global":
		base = "g/" + name + "/" + cl.limit.Algorithm.String()
	case "middleware":
		base = "m/" + middleware + "/" + name + "/" + cl.limit.Algorithm.String()
	default:
		return nil, fmt.Errorf("scope %q: want global or middleware", l.Scope)
	}
	for i, k := range keys {
		src, err := parseSource(k, false)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", k, err)
		}
		cl.keys = append(cl.keys, src)
		cl.counters = append(cl.counters, base+"#"+strconv.Itoa(i))
	}
	return cl, nil
}

// numbers returns the limit's own numbers.
func (l *Limit) numbers() *Numbers {
	return &Numbers{Algorithm: l.Algorithm, Limit: l.Limit, Window: l.Window, Refill: l.Refill,
		Offset: l.Offset, Split: l.Split, Calendar: l.Calendar}
}

// checkCost refuses a cost that no request could ever pay, as the Caddy
// module does: more units than the limit (or one of its tiers) holds would
// deny every request, with a Retry-After that never comes true.
func (cl *compiledLimit) checkCost() error {
	if cl.cost > cl.limit.Quota {
		return fmt.Errorf("cost %d is larger than the limit of %d: every request would be denied", cl.cost, cl.limit.Quota)
	}
	for _, name := range sortedTiers(cl.tiers) {
		if t := cl.tiers[name]; cl.cost > t.limit.Quota {
			return fmt.Errorf("cost %d is larger than the limit of %d of tier %q: its requests would all be denied", cl.cost, t.limit.Quota, name)
		}
	}
	return nil
}

func sortedTiers(tiers map[string]*tierNumbers) []string {
	names := make([]string, 0, len(tiers))
	for name := range tiers {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// compileNumbers resolves the limit's own numbers and its tiers, as the
// Caddy module does.
func (cl *compiledLimit) compileNumbers(l *Limit) error {
	hasOwn := l.Limit != 0 || l.Calendar != nil || l.Algorithm != ""
	if len(l.Tiers) == 0 {
		if l.Tier != "" || l.DefaultTier != "" {
			return errors.New("tier and defaultTier need tiers")
		}
		lim, err := l.numbers().compile()
		if err != nil {
			return err
		}
		cl.limit = lim
		return nil
	}
	if l.Tier == "" {
		return errors.New("tiers need a tier source to choose between them (tier: header:<Name> or credential)")
	}
	src, err := parseSource(l.Tier, true)
	if err != nil {
		return fmt.Errorf("tier %q: %w", l.Tier, err)
	}
	cl.tierSrc = &src
	cl.tiers = make(map[string]*tierNumbers, len(l.Tiers))
	names := make([]string, 0, len(l.Tiers))
	for name := range l.Tiers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		n := l.Tiers[name]
		if n == nil {
			return fmt.Errorf("tier %q has no numbers", name)
		}
		merged := *n
		// Offset and split alone are what tiers inherit, not numbers.
		if merged.Offset == "" && merged.Calendar == nil {
			merged.Offset = l.Offset
		}
		if merged.Split == "" && merged.Calendar == nil {
			merged.Split = l.Split
		}
		lim, err := merged.compile()
		if err != nil {
			return fmt.Errorf("tier %q: %w", name, err)
		}
		cl.tiers[name] = &tierNumbers{name: name, limit: lim}
	}
	switch {
	case l.DefaultTier != "":
		if hasOwn {
			return errors.New("give either defaultTier or the limit's own numbers for unknown tiers, not both")
		}
		t, ok := cl.tiers[l.DefaultTier]
		if !ok {
			return fmt.Errorf("defaultTier %q is not one of the tiers", l.DefaultTier)
		}
		cl.limit, cl.tierName = t.limit, t.name
	case hasOwn:
		lim, err := l.numbers().compile()
		if err != nil {
			return err
		}
		cl.limit, cl.tierName = lim, "default"
	default:
		return errors.New("clients in no known tier need numbers: give defaultTier or the limit's own numbers")
	}
	for _, name := range names {
		t := cl.tiers[name]
		if t.limit.Algorithm != cl.limit.Algorithm {
			return fmt.Errorf("tier %q uses %s but the limit uses %s: all tiers share one counter, so one algorithm",
				t.name, t.limit.Algorithm, cl.limit.Algorithm)
		}
	}
	return nil
}

// compile turns the numbers into a validated limiter.Limit.
func (n *Numbers) compile() (limiter.Limit, error) {
	algo := limiter.FixedWindow
	if n.Algorithm != "" {
		a, err := limiter.ParseAlgorithm(n.Algorithm)
		if err != nil {
			return limiter.Limit{}, err
		}
		algo = a
	}
	window, err := parseDuration("window", n.Window)
	if err != nil {
		return limiter.Limit{}, err
	}
	offset, err := parseDuration("offset", n.Offset)
	if err != nil {
		return limiter.Limit{}, err
	}
	split, err := parseDuration("split", n.Split)
	if err != nil {
		return limiter.Limit{}, err
	}
	lim := limiter.Limit{Algorithm: algo, Quota: n.Limit, Window: window, Rate: n.Refill, Offset: offset}
	if algo == limiter.GCRA && lim.Rate == 0 {
		lim.Rate = lim.Quota
	}
	if n.Calendar != nil {
		cal, err := n.Calendar.compile()
		if err != nil {
			return limiter.Limit{}, err
		}
		if window != 0 || offset != 0 || split != 0 {
			return limiter.Limit{}, errors.New("a calendar quota takes no window, offset or split")
		}
		lim.Calendar = cal
	}
	if split != 0 {
		switch {
		case algo == limiter.TokenBucket || algo == limiter.GCRA:
			return limiter.Limit{}, errors.New("split goes with windows, not buckets")
		case split <= 0 || split >= lim.Window || lim.Window%split != 0:
			return limiter.Limit{}, fmt.Errorf("split %s must divide the window %s into equal parts", split, lim.Window)
		}
		lim.Quota = lim.Quota * int64(split) / int64(lim.Window)
		lim.Window = split
		if lim.Quota < 1 {
			return limiter.Limit{}, fmt.Errorf("split %s leaves less than one request per part of %d per %s", split, n.Limit, window)
		}
	}
	if err := lim.Validate(); err != nil {
		return limiter.Limit{}, err
	}
	return lim, nil
}

func (c *Calendar) compile() (limiter.Calendar, error) {
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

// numbersFor returns the numbers for the request's tier, and the tier name.
func (cl *compiledLimit) numbersFor(r *http.Request, cred *Client) (*limiter.Limit, string) {
	if cl.tierSrc != nil {
		if t, ok := cl.tiers[cl.tierSrc.tier(r, cred)]; ok {
			return &t.limit, t.name
		}
	}
	return &cl.limit, cl.tierName
}

// usesCredentials tells whether a key or tier source is "credential".
func (cl *compiledLimit) usesCredentials() bool {
	for _, k := range cl.keys {
		if k.kind == srcCredential {
			return true
		}
	}
	return cl.tierSrc != nil && cl.tierSrc.kind == srcCredential
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

func checkStatus(n int) error {
	if n < 400 || n > 599 {
		return fmt.Errorf("status %d: a denial needs a 4xx or 5xx status", n)
	}
	return nil
}
