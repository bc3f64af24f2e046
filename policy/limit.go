// Package policy is what both edges of edgelimit (the Caddy module and the
// Traefik plugin) do with a request, once each has read what it needs of
// it: limits compiled from their numbers, the decision of a request's
// limits (exemptions, tiers, all or nothing across handlers), the
// rate-limit headers, the denials and their bodies, and the payload of the
// event that reports a first denial. An edge reads the client's key of
// each limit (placeholders in Caddy, key sources in Traefik), gives them
// to a Decision, and writes what this package says.
//
// The Traefik plugin runs this package in Traefik's Yaegi interpreter: it
// imports the standard library and the packages of this module that do
// too, and avoids what Yaegi cannot run (traefik/yaegi_safe_test.go).
// Under Yaegi a call costs for every value its function holds, run or not:
// the request path is a few small functions, and what is rare (a denial,
// the IETF fields) is in functions of its own.
//
// Files: limit.go (limits: names, numbers, tiers, counters), decision.go
// (a request's decision, and what handlers share), headers.go, template.go
// (denial bodies: templates and escaping), denial.go (denials, the shown
// key, the event payload), charge.go (limits that count what responses
// say), response.go (conditions on responses).
package policy

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/edgelimit/caddy-edgelimit/httpval"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// Numbers are an algorithm and its figures, as a configuration gives them.
type Numbers struct {
	// Algorithm is fixed_window (default), anchored_window,
	// sliding_window, token_bucket or gcra.
	Algorithm string
	// Limit is the units per window, a bucket's capacity or GCRA's burst.
	Limit int64
	// Window is the window; for buckets, the period in which Refill units
	// come back.
	Window time.Duration
	// Refill is the units a bucket gets back per Window (GCRA: default
	// Limit).
	Refill int64
	// Offset moves clock-aligned windows.
	Offset time.Duration
	// Split enforces the window's limit in equal shorter windows.
	Split time.Duration
	// Calendar makes a quota of a calendar period.
	Calendar *Calendar
}

// Calendar is a quota's calendar window.
type Calendar struct {
	// Period is day, week (from Monday) or month.
	Period string
	// At is the reset time of day, HH:MM (default 00:00).
	At string
	// TimeZone is an IANA name (default UTC).
	TimeZone string
}

// Compile turns the numbers into a validated limiter.Limit.
func (n *Numbers) Compile() (limiter.Limit, error) {
	algo := limiter.FixedWindow
	if n.Algorithm != "" {
		a, err := limiter.ParseAlgorithm(n.Algorithm)
		if err != nil {
			return limiter.Limit{}, err
		}
		algo = a
	}
	lim := limiter.Limit{Algorithm: algo, Quota: n.Limit, Window: n.Window, Rate: n.Refill, Offset: n.Offset}
	if algo == limiter.GCRA && lim.Rate == 0 {
		lim.Rate = lim.Quota
	}
	if n.Calendar != nil {
		cal, err := n.Calendar.Compile()
		if err != nil {
			return limiter.Limit{}, err
		}
		if n.Window != 0 || n.Offset != 0 || n.Split != 0 {
			return limiter.Limit{}, errors.New("a calendar quota takes no window, offset or split")
		}
		lim.Calendar = cal
	}
	if n.Split != 0 {
		split := n.Split
		switch {
		case algo == limiter.TokenBucket || algo == limiter.GCRA:
			return limiter.Limit{}, errors.New("split goes with windows, not buckets")
		case split <= 0 || split >= lim.Window || lim.Window%split != 0:
			return limiter.Limit{}, fmt.Errorf("split %s must divide the window %s into equal parts", split, lim.Window)
		}
		lim.Quota = lim.Quota * int64(split) / int64(lim.Window)
		lim.Window = split
		if lim.Quota < 1 {
			return limiter.Limit{}, fmt.Errorf("split %s leaves less than one request per part of %d per %s", split, n.Limit, n.Window)
		}
	}
	if err := lim.Validate(); err != nil {
		return limiter.Limit{}, err
	}
	return lim, nil
}

// Compile checks the calendar window and prepares it.
func (c *Calendar) Compile() (limiter.Calendar, error) {
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

// Spec is a limit as a configuration gives it, once the edge has read it.
type Spec struct {
	// Name identifies the limit in headers, logs, metrics and events, and
	// (with the scope) its counters.
	Name string
	// Keys is the number of the limit's key parts (at least one): each
	// counts apart from the others.
	Keys int
	// Numbers are the limit's; with tiers, those of clients in no known
	// tier.
	Numbers
	// Tiers maps tier names to their numbers: one algorithm, one counter
	// per client, whatever its tier. A tier without its own offset or
	// split has the limit's.
	Tiers map[string]*Numbers
	// Tiered says that the limit has a tier source to choose between the
	// tiers.
	Tiered bool
	// DefaultTier names the tier of clients in no known tier.
	DefaultTier string
	// Cost is the units each request takes (default 1).
	Cost int64
	// IPv6Prefix is the length of the IPv6 prefix by which a key part of
	// the client's address counts (0: httpval.DefaultIPv6Prefix).
	IPv6Prefix int
	// Exempt names the limits that do not apply where this one does.
	Exempt []string
	// Status and Body override the policy's for this limit's denials.
	Status int
	Body   string
	// DryRun counts and reports this limit but never denies for it.
	DryRun bool
	// Charged makes the limit count what responses say (charge.go): it is
	// checked before the request is served, counting nothing, and charged
	// once the response is known, for the responses the edge's condition
	// matches. A CostHeader makes a limit charged.
	Charged bool
	// CostHeader names the response header whose number each response is
	// charged, instead of Cost; it is removed before the client sees it
	// unless KeepCostHeader.
	CostHeader     string
	KeepCostHeader bool
	// Responses are the responses a charged limit counts (nil: all): the
	// edge's condition.
	Responses ResponseMatcher
	// Ban denies a client every request for Ban once one was denied
	// (limiter.Limit.Ban), in every tier.
	Ban time.Duration
	// Wait holds a request over a bucket's limit that would pass within
	// Wait until its turn (wait.go), at most WaitMax of a client's
	// (default DefaultWaitMax).
	Wait    time.Duration
	WaitMax int
	// Sync counts the limit in this instance's memory and merges the
	// counts into a shared store (Redis) every Sync, admitting from the
	// shared total as last merged plus what was counted here since
	// (store.Synced): for a limit whose key is the same for every request.
	// Zero: every decision at the store.
	Sync time.Duration
}

// Limit is a limit compiled for the request path.
type Limit struct {
	Name string
	// Counters names the counter of each key part: scope/name/algorithm#i.
	Counters []string
	// Base are the numbers of clients in no known tier, reported as tier
	// BaseTier ("" without tiers).
	Base     limiter.Limit
	BaseTier string
	// Tiers are the numbers of each tier.
	Tiers  map[string]*Tier
	Cost   int64
	DryRun bool
	Exempt []string
	Status int       // 0: the policy's
	Body   *Template // nil: the policy's
	// Charged, CostHeader (canonical) and KeepCostHeader are the Spec's:
	// the limit counts what responses say.
	Charged        bool
	CostHeader     string
	KeepCostHeader bool
	// Responses are the Spec's: the responses such a limit counts (nil:
	// all).
	Responses ResponseMatcher
	// WaitMax is the requests of a client held at once (wait.go); waiting
	// counts the requests held now.
	WaitMax int
	waiting int64
	// Sync is the Spec's: the interval of the merges of a limit counted in
	// memory (store.Request.Sync).
	Sync time.Duration
	// IPv6Prefix is the Spec's, checked and its default resolved: the
	// edge gives it to the key parts of the client's address
	// (httpval.Part.V6).
	IPv6Prefix int
	// ietfQ and ietfR begin the limit's items of the RateLimit-Policy and
	// RateLimit fields, after the ", " that parts them from the one before
	// (writeIETF): set by New.
	ietfQ, ietfR string
}

// Tier is one tier's numbers.
type Tier struct {
	Name  string
	Limit limiter.Limit
}

// Compile checks a limit and prepares it. Its counters are named
// scope/name/algorithm#i, i the key part: the scope separates limits of
// the same name that must not share counters ("g" for global ones, "r/" and
// a zone for a Caddy route's, "m/" and a name for a Traefik middleware's),
// so that two instances, Caddy or Traefik, whose limits have the same
// scope, name, algorithm and key parts share their counts through Redis.
func Compile(s *Spec, scope string) (*Limit, error) {
	if err := CheckName(s.Name); err != nil {
		return nil, err
	}
	cost := s.Cost
	if cost == 0 {
		cost = 1
	}
	if cost < 1 || cost > limiter.MaxQuota {
		return nil, fmt.Errorf("cost must be between 1 and %d, got %d", int64(limiter.MaxQuota), cost)
	}
	if s.Status != 0 {
		if err := CheckStatus(int64(s.Status)); err != nil {
			return nil, err
		}
	}
	v6, err := httpval.IPv6Prefix(s.IPv6Prefix)
	if err != nil {
		return nil, err
	}
	l := &Limit{Name: s.Name, Cost: cost, IPv6Prefix: v6, DryRun: s.DryRun, Status: s.Status, Responses: s.Responses}
	if s.Body != "" {
		l.Body = ParseTemplate(s.Body)
	}
	for _, e := range s.Exempt {
		if err := CheckName(e); err != nil {
			return nil, fmt.Errorf("exempt: %w", err)
		}
		if e == s.Name {
			return nil, errors.New("a limit cannot exempt itself")
		}
	}
	l.Exempt = s.Exempt
	if err := l.compileCharge(s); err != nil {
		return nil, err
	}
	if err := l.compileNumbers(s); err != nil {
		return nil, err
	}
	if s.Ban != 0 {
		if err := l.setBan(s.Ban); err != nil {
			return nil, err
		}
	}
	if err := l.compileWait(s); err != nil {
		return nil, err
	}
	if err := l.checkCost(); err != nil {
		return nil, err
	}
	if err := store.CheckSync(s.Sync, &l.Base, l.Charged); err != nil {
		return nil, err
	}
	l.Sync = s.Sync
	keys := s.Keys
	if keys < 1 {
		keys = 1
	}
	base := scope + "/" + s.Name + "/" + l.Base.Algorithm.String() + "#"
	for i := 0; i < keys; i++ {
		l.Counters = append(l.Counters, base+strconv.Itoa(i))
	}
	return l, nil
}

// compileNumbers resolves the limit's own numbers and its tiers.
func (l *Limit) compileNumbers(s *Spec) error {
	hasOwn := s.Limit != 0 || s.Calendar != nil || s.Algorithm != ""
	if len(s.Tiers) == 0 {
		if s.Tiered || s.DefaultTier != "" {
			return errors.New("a tier source and a default tier need tiers")
		}
		lim, err := s.Numbers.Compile()
		if err != nil {
			return err
		}
		l.Base = lim
		return nil
	}
	if !s.Tiered {
		return errors.New("tiers need a tier source to choose between them")
	}
	l.Tiers = make(map[string]*Tier, len(s.Tiers))
	for _, name := range sortedNames(s.Tiers) {
		n := s.Tiers[name]
		if n == nil {
			return fmt.Errorf("tier %q has no numbers", name)
		}
		merged := *n
		// Offset and split alone are what tiers inherit, not numbers: a
		// tier and its limit share one counter, so one window.
		if merged.Calendar == nil && merged.Offset == 0 {
			merged.Offset = s.Offset
		}
		if merged.Calendar == nil && merged.Split == 0 {
			merged.Split = s.Split
		}
		lim, err := merged.Compile()
		if err != nil {
			return fmt.Errorf("tier %q: %w", name, err)
		}
		l.Tiers[name] = &Tier{Name: name, Limit: lim}
	}
	switch {
	case s.DefaultTier != "":
		if hasOwn {
			return errors.New("give either a default tier or the limit's own numbers for unknown tiers, not both")
		}
		t, ok := l.Tiers[s.DefaultTier]
		if !ok {
			return fmt.Errorf("default tier %q is not one of the tiers", s.DefaultTier)
		}
		l.Base, l.BaseTier = t.Limit, t.Name
	case hasOwn:
		lim, err := s.Numbers.Compile()
		if err != nil {
			return err
		}
		l.Base, l.BaseTier = lim, "default"
	default:
		return errors.New("clients in no known tier need numbers: give a default tier or the limit's own numbers")
	}
	for _, name := range sortedNames(s.Tiers) {
		t := l.Tiers[name]
		if t.Limit.Algorithm != l.Base.Algorithm {
			return fmt.Errorf("tier %q uses %s but the limit uses %s: all tiers share one counter, so one algorithm",
				t.Name, t.Limit.Algorithm, l.Base.Algorithm)
		}
	}
	return nil
}

// CheckBan checks a ban as an edge reads it: more than 0 (a ban of 0 is
// written by mistake), and no longer than a limit's ban may be
// (limiter.Limit.Ban: whole seconds, up to limiter.MaxBan).
func CheckBan(ban time.Duration) error {
	if ban <= 0 {
		return fmt.Errorf("ban must be more than 0, got %s", ban)
	}
	return (&limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 1, Window: time.Second, Ban: ban}).Validate()
}

// setBan gives the limit's numbers, and its tiers', a ban.
func (l *Limit) setBan(ban time.Duration) error {
	l.Base.Ban = ban
	if err := l.Base.Validate(); err != nil {
		return err
	}
	for _, t := range l.Tiers {
		t.Limit.Ban = ban
	}
	return nil
}

func sortedNames(m map[string]*Numbers) []string {
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// checkCost refuses a cost that no request could ever pay: more units than
// the limit (or one of its tiers) holds would deny every request, with a
// Retry-After that never comes true.
func (l *Limit) checkCost() error {
	if l.Cost > l.Base.Quota {
		return fmt.Errorf("cost %d is larger than the limit of %d: every request would be denied", l.Cost, l.Base.Quota)
	}
	names := make([]string, 0, len(l.Tiers))
	for name := range l.Tiers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if t := l.Tiers[name]; l.Cost > t.Limit.Quota {
			return fmt.Errorf("cost %d is larger than the limit of %d of tier %q: its requests would all be denied", l.Cost, t.Limit.Quota, name)
		}
	}
	return nil
}

// NumbersFor returns the numbers of a client in tier (the tier source's
// value), and the tier reported.
func (l *Limit) NumbersFor(tier string) (*limiter.Limit, string) {
	if t, ok := l.Tiers[tier]; ok {
		return &t.Limit, t.Name
	}
	return &l.Base, l.BaseTier
}

// CheckName checks a limit's (or a tier's) name.
func CheckName(name string) error {
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

// CheckStatus checks the status of a denial.
func CheckStatus(n int64) error {
	if n < 400 || n > 599 {
		return fmt.Errorf("status %d: a denial needs a 4xx or 5xx status", n)
	}
	return nil
}
