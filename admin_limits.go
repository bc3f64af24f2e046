package edgelimit

import (
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

type LimitInfo struct {
	Name string `json:"name"`
	// Zone separates the counters of route limits: give it to inspect,
	// reset and credit when several routes have a limit of this name.
	Zone string `json:"zone,omitempty"`
	// Scope is route, global (shared by name across handlers) or shared
	// (declared in the edge_limit global option).
	Scope   string                 `json:"scope"`
	Storage string                 `json:"storage"`
	Numbers NumbersInfo            `json:"numbers"`
	Tier    string                 `json:"tier,omitempty"`
	Tiers   map[string]NumbersInfo `json:"tiers,omitempty"`
	// DefaultTier is the tier of clients in no known tier.
	DefaultTier string   `json:"default_tier,omitempty"`
	Key         []string `json:"key"`
	Cost        int64    `json:"cost"`
	Exempt      []string `json:"exempt,omitempty"`
	DryRun      bool     `json:"dry_run,omitempty"`
}

// NumbersInfo is an algorithm and its numbers as configured, and what the
// limiter enforces (a split window enforces a share of the limit per part).
type NumbersInfo struct {
	Algorithm string `json:"algorithm"`
	Limit     int64  `json:"limit"`
	Window    string `json:"window,omitempty"`
	Refill    int64  `json:"refill,omitempty"`
	Offset    string `json:"offset,omitempty"`
	Split     string `json:"split,omitempty"`
	Calendar  string `json:"calendar,omitempty"`
	// Enforced is the limit and window the limiter counts in, when they
	// differ from the configured ones (split).
	Enforced string `json:"enforced,omitempty"`
}

func numbersInfo(n *Numbers, lim limiter.Limit) NumbersInfo {
	info := NumbersInfo{Algorithm: lim.Algorithm.String(), Limit: n.Limit, Refill: lim.Rate}
	if lim.Algorithm != limiter.TokenBucket && lim.Algorithm != limiter.GCRA {
		info.Refill = 0
	}
	if n.Window != 0 {
		info.Window = time.Duration(n.Window).String()
	}
	if n.Offset != 0 {
		info.Offset = time.Duration(n.Offset).String()
	}
	if n.Split != 0 {
		info.Split = time.Duration(n.Split).String()
		info.Enforced = fmt.Sprintf("%d per %s", lim.Quota, lim.Window)
	}
	if c := n.Calendar; c != nil {
		at, tz := c.At, c.TimeZone
		if at == "" {
			at = "00:00"
		}
		if tz == "" {
			tz = "UTC"
		}
		info.Calendar = c.Period + " at " + at + " " + tz
	}
	return info
}

// storageName is the store's backend as the admin API names it: memory or
// redis (a Redis Cluster too).
func storageName(s store.Store) string {
	if b := backendOf(s); b != "redis_cluster" {
		return b
	}
	return "redis"
}

func (e *adminEntry) info() LimitInfo {
	cl := e.cl
	l := cl.cfg
	info := LimitInfo{
		Name: cl.Name, Zone: cl.zone, Scope: cl.scope, Storage: e.label,
		Tier: l.Tier, DefaultTier: l.DefaultTier, Cost: cl.Cost, Exempt: cl.Exempt, DryRun: cl.DryRun,
	}
	own := l.Numbers
	if l.DefaultTier != "" {
		own = *l.Tiers[l.DefaultTier]
	}
	info.Numbers = numbersInfo(&own, cl.Base)
	for i := range cl.keys {
		info.Key = append(info.Key, cl.keys[i].tmpl)
	}
	if len(cl.Tiers) > 0 {
		info.Tiers = make(map[string]NumbersInfo, len(cl.Tiers))
		for name, t := range cl.Tiers {
			info.Tiers[name] = numbersInfo(l.Tiers[name], t.Limit)
		}
	}
	return info
}

// keyTemplate is how a part is written in the configuration.
func (k *keyPart) keyTemplate() string { return k.tmpl }

func handleLimits(w http.ResponseWriter, r *http.Request) error {
	if err := onlyMethod(w, r, http.MethodGet); err != nil {
		return err
	}
	out := struct {
		Limits []LimitInfo `json:"limits"`
	}{Limits: []LimitInfo{}}
	for _, e := range liveRegistry.Load().list() {
		out.Limits = append(out.Limits, e.info())
	}
	sort.SliceStable(out.Limits, func(i, j int) bool {
		a, b := out.Limits[i], out.Limits[j]
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.Zone < b.Zone
	})
	return writeJSON(w, out)
}
