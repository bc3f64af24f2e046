package edgelimit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/edgelimit/caddy-edgelimit/httpval"
	"github.com/edgelimit/caddy-edgelimit/internal/jsonbody"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/policy"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// ClientRequest is the body of inspect, reset and credit.
type ClientRequest struct {
	// Limit names the limit; for reset, omitted means every limit.
	Limit string `json:"limit,omitempty"`
	// Zone picks among route limits of the same name (see limits).
	Zone string `json:"zone,omitempty"`
	// Storage picks among limits of the same name and zone counted by
	// different stores: a shared limit used by a directive with storage of
	// its own. Either the kind ("memory", "redis") or, where two stores
	// are of one kind, the store's label as GET /edge_limit/limits shows
	// it ("redis 10.0.0.5:6379/0").
	Storage string `json:"storage,omitempty"`
	// Key is the client's key as the limit reads it from a request.
	Key *string `json:"key"`
	// Part names one part of a key of several (0-based); default all.
	Part *int `json:"part,omitempty"`
	// Tier picks the numbers to answer and credit with (inspect, credit);
	// default the numbers of clients in no known tier. All tiers share
	// one counter: it matters for the remaining count and, for token
	// buckets, for how much backlog a unit is.
	Tier string `json:"tier,omitempty"`
	// Units to credit: at least 1.
	Units *int64 `json:"units,omitempty"`
}

// decodeClient reads and checks a body for the named route.
func decodeClient(r *http.Request, route string) (*ClientRequest, error) {
	var req ClientRequest
	if err := jsonbody.Decode(r.Body, maxAdminBody, &req); err != nil {
		var te *json.UnmarshalTypeError
		var tl *jsonbody.TooLargeError
		var re *jsonbody.ReadError
		switch {
		case errors.As(err, &tl):
			return nil, apiError(http.StatusRequestEntityTooLarge, "%v", err)
		case errors.As(err, &re) || errors.Is(err, jsonbody.ErrTrailing):
			return nil, apiError(http.StatusBadRequest, "%v", err)
		case errors.As(err, &te) && te.Field != "":
			return nil, apiError(http.StatusBadRequest, "field %q: want %s, got a JSON %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value)
		}
		return nil, apiError(http.StatusBadRequest, `want a JSON object such as {"limit": "api", "key": "203.0.113.7"}: %v`, err)
	}
	switch {
	case req.Key == nil:
		return nil, apiError(http.StatusBadRequest, `field "key": required (the client's key as the limit reads it: a header value, an IP address, a user id)`)
	case *req.Key == "":
		return nil, apiError(http.StatusBadRequest, `field "key": empty (an empty key never counts)`)
	case len(*req.Key) > maxAdminKey:
		return nil, apiError(http.StatusBadRequest, `field "key": longer than %d bytes`, maxAdminKey)
	case req.Part != nil && (*req.Part < 0 || *req.Part > 64):
		return nil, apiError(http.StatusBadRequest, `field "part": %d is not a key part index`, *req.Part)
	case len(req.Limit) > 64 || len(req.Zone) > 64 || len(req.Tier) > 1024:
		return nil, apiError(http.StatusBadRequest, `field "limit", "zone" or "tier": too long`)
	case len(req.Storage) > 1024:
		return nil, apiError(http.StatusBadRequest, `field "storage": too long`)
	}
	if route != "reset" && req.Limit == "" {
		return nil, apiError(http.StatusBadRequest, `field "limit": required (GET /edge_limit/limits lists them)`)
	}
	if route == "credit" {
		if req.Units == nil {
			return nil, apiError(http.StatusBadRequest, `field "units": required (the units to give back, at least 1)`)
		}
		if *req.Units < 1 || *req.Units > limiter.MaxQuota {
			return nil, apiError(http.StatusBadRequest, `field "units": %d, want 1 to %d`, *req.Units, int64(limiter.MaxQuota))
		}
	} else if req.Units != nil {
		return nil, apiError(http.StatusBadRequest, `field "units": only credit takes units`)
	}
	if route == "reset" && req.Tier != "" {
		return nil, apiError(http.StatusBadRequest, `field "tier": reset takes no tier (the tiers of a limit share one counter)`)
	}
	return &req, nil
}

// jsonKind names what a Go kind wants in JSON.
func jsonKind(k string) string {
	switch {
	case strings.HasPrefix(k, "int"):
		return "an integer"
	case k == "string":
		return "a string"
	}
	return "a " + k
}

// find returns the entries req names: the limit of that name (in that
// zone), or with no name every limit.
func find(req *ClientRequest) ([]*adminEntry, error) {
	all := liveRegistry.Load().list()
	if req.Storage != "" {
		kept := all[:0]
		for _, e := range all {
			if e.label == req.Storage || storageName(e.store) == req.Storage {
				kept = append(kept, e)
			}
		}
		if len(kept) == 0 {
			return nil, apiError(http.StatusNotFound, `field "storage": no limit of the running configuration is counted by %q storage (want memory, redis, or a store's label as GET /edge_limit/limits shows it)`, req.Storage)
		}
		all = kept
	}
	if req.Limit == "" {
		if req.Zone != "" {
			return nil, apiError(http.StatusBadRequest, `field "zone": goes with "limit"`)
		}
		if len(all) == 0 {
			return nil, apiError(http.StatusNotFound, "the running configuration has no edge_limit limits")
		}
		return all, nil
	}
	var named []*adminEntry
	for _, e := range all {
		if e.cl.Name == req.Limit && (req.Zone == "" || e.cl.zone == req.Zone) {
			named = append(named, e)
		}
	}
	if len(named) == 0 {
		if req.Zone != "" {
			return nil, apiError(http.StatusNotFound, "no limit %q in zone %q in the running configuration (GET /edge_limit/limits lists them)", req.Limit, req.Zone)
		}
		return nil, apiError(http.StatusNotFound, "no limit %q in the running configuration (GET /edge_limit/limits lists them)", req.Limit)
	}
	if len(named) > 1 {
		zones := make([]string, 0, len(named))
		for _, e := range named {
			zones = append(zones, fmt.Sprintf(`{"zone": %q, "storage": %q} (%s)`, e.cl.zone, e.label, e.cl.scope))
		}
		return nil, apiError(http.StatusBadRequest, `field "zone": limit %q is in several routes or stores, name one with "zone" and "storage": %s`, req.Limit, strings.Join(zones, ", "))
	}
	return named, nil
}

// partKey is the key a part counts for the value the operator gave: a
// header part reads its header as a request's (httpval.First: trimmed, the
// Authorization scheme written one way), an address part as the client's
// address counts (its IPv6 prefix of v6 bits).
func (k *keyPart) partKey(v string, v6 int) string {
	if k.Kind == httpval.KindClient || k.Kind == httpval.KindRemote {
		return httpval.ClientKey(v, v6)
	}
	if k.Kind == httpval.KindHeader {
		v = httpval.Trim(v)
		if k.Name == "Authorization" || k.Name == "Proxy-Authorization" {
			v = httpval.Credentials(v)
		}
	}
	return v
}

// requests builds the storage requests of an entry for req: one per key
// part named.
func (e *adminEntry) requests(req *ClientRequest, lim limiter.Limit) ([]store.Request, []int, error) {
	cl := e.cl
	var parts []int
	if req.Part != nil {
		if *req.Part >= len(cl.keys) {
			return nil, nil, apiError(http.StatusBadRequest, `field "part": limit %q has %d key part(s), 0 to %d`, cl.Name, len(cl.keys), len(cl.keys)-1)
		}
		parts = []int{*req.Part}
	} else {
		for i := range cl.keys {
			parts = append(parts, i)
		}
	}
	reqs := make([]store.Request, 0, len(parts))
	for _, p := range parts {
		reqs = append(reqs, store.Request{Counter: cl.Counters[p], Key: cl.keys[p].partKey(*req.Key, cl.IPv6Prefix), Limit: lim, Cost: cl.Cost})
	}
	return reqs, parts, nil
}

func adminStore(e *adminEntry) (store.Admin, error) {
	a, ok := e.store.(store.Admin)
	if !ok {
		return nil, apiError(http.StatusNotImplemented, "the storage of limit %q (%s) cannot inspect clients", e.cl.Name, storageName(e.store))
	}
	return a, nil
}

// InspectResponse answers inspect (and credit, after crediting).
type InspectResponse struct {
	Limit   string      `json:"limit"`
	Zone    string      `json:"zone,omitempty"`
	Scope   string      `json:"scope"`
	Storage string      `json:"storage"`
	Tier    string      `json:"tier,omitempty"`
	Numbers NumbersInfo `json:"numbers"`
	// Parts has one entry per key part asked about.
	Parts []PartState `json:"parts"`
	// Warnings, for a credit: what went wrong after the units were given
	// (the invalidation of other instances' local denials not published).
	Warnings []string `json:"warnings,omitempty"`
}

// PartState is one counter of a client: what a request would meet now.
type PartState struct {
	Part int `json:"part"`
	// Key is the part as configured ({header.Authorization}).
	Key   string `json:"key"`
	Limit int64  `json:"limit"`
	// Used is limit - remaining: units counted in the window (or the
	// bucket's backlog).
	Used      int64 `json:"used"`
	Remaining int64 `json:"remaining"`
	// Denying tells whether a request (of the limit's cost) would be
	// denied now.
	Denying bool `json:"denying"`
	// RetryAfter is, when denying, the wait until such a request passes.
	RetryAfter        string `json:"retry_after,omitempty"`
	RetryAfterSeconds int64  `json:"retry_after_seconds,omitempty"`
	// Banned tells that the client is banned (the limit's ban): denied
	// until BannedUntil (RFC 3339), whatever its count; reset lifts it.
	Banned      bool   `json:"banned,omitempty"`
	BannedUntil string `json:"banned_until,omitempty"`
	// Reset is when the quota is whole again (RFC 3339 and unix seconds,
	// rounded up as X-RateLimit-Reset).
	Reset     string `json:"reset"`
	ResetUnix int64  `json:"reset_unix"`
	// Given is what a credit gave this counter.
	Given *int64 `json:"given,omitempty"`
}

// numbers returns the numbers of the tier req names (default: those of
// clients in no known tier) and the tier's name.
func (e *adminEntry) numbers(req *ClientRequest) (limiter.Limit, string, error) {
	cl := e.cl
	if req.Tier == "" {
		return cl.Base, cl.BaseTier, nil
	}
	t, ok := cl.Tiers[req.Tier]
	if !ok {
		names := make([]string, 0, len(cl.Tiers))
		for n := range cl.Tiers {
			names = append(names, n)
		}
		sort.Strings(names)
		if len(names) == 0 {
			return limiter.Limit{}, "", apiError(http.StatusBadRequest, `field "tier": limit %q has no tiers`, cl.Name)
		}
		return limiter.Limit{}, "", apiError(http.StatusBadRequest, `field "tier": limit %q has no tier %q (it has %s)`, cl.Name, req.Tier, strings.Join(names, ", "))
	}
	return t.Limit, t.Name, nil
}

func (e *adminEntry) inspect(ctx context.Context, req *ClientRequest) (*InspectResponse, []store.Request, error) {
	cl := e.cl
	lim, tier, err := e.numbers(req)
	if err != nil {
		return nil, nil, err
	}
	a, err := adminStore(e)
	if err != nil {
		return nil, nil, err
	}
	reqs, parts, err := e.requests(req, lim)
	if err != nil {
		return nil, nil, err
	}
	res := make([]limiter.Result, len(reqs))
	if err := a.Peek(ctx, e.clock.Now(), reqs, res); err != nil {
		return nil, nil, apiError(http.StatusBadGateway, "limit %q: %v", cl.Name, err)
	}
	info := e.info()
	numbers := info.Numbers
	if req.Tier != "" {
		numbers = info.Tiers[req.Tier]
	}
	out := &InspectResponse{Limit: cl.Name, Zone: cl.zone, Scope: cl.scope, Storage: info.Storage, Tier: tier, Numbers: numbers}
	for i, p := range parts {
		r := &res[i]
		ps := PartState{
			Part: p, Key: cl.keys[p].keyTemplate(), Limit: r.Limit, Used: r.Limit - r.Remaining, Remaining: r.Remaining,
			Denying: !r.Allowed, ResetUnix: policy.ResetUnix(r),
		}
		ps.Reset = time.Unix(ps.ResetUnix, 0).UTC().Format(time.RFC3339)
		if !r.Allowed {
			ps.RetryAfterSeconds = policy.RetryAfterSeconds(r.RetryAfter)
			ps.RetryAfter = r.RetryAfter.Round(time.Millisecond).String()
		}
		if r.Banned {
			ps.Banned = true
			ps.BannedUntil = ps.Reset
		}
		out.Parts = append(out.Parts, ps)
	}
	return out, reqs, nil
}

func handleInspect(w http.ResponseWriter, r *http.Request) error {
	if err := onlyMethod(w, r, http.MethodPost); err != nil {
		return err
	}
	req, err := decodeClient(r, "inspect")
	if err != nil {
		return err
	}
	entries, err := find(req)
	if err != nil {
		return err
	}
	out, _, err := entries[0].inspect(r.Context(), req)
	if err != nil {
		return err
	}
	return writeJSON(w, out)
}

// ResetResponse answers reset: the counters forgotten, per limit.
type ResetResponse struct {
	Reset []ResetLimit `json:"reset"`
	// Warnings are what went wrong after the change was made (the
	// invalidation of other instances' local denials not published).
	Warnings []string `json:"warnings,omitempty"`
}

// ResetLimit is one limit reset.
type ResetLimit struct {
	Limit   string `json:"limit"`
	Zone    string `json:"zone,omitempty"`
	Storage string `json:"storage"`
	Parts   []int  `json:"parts"`
	// UsedBefore is what each part had counted before the reset (as
	// inspect says), when it could be read.
	UsedBefore []int64 `json:"used_before,omitempty"`
}

func handleReset(w http.ResponseWriter, r *http.Request) error {
	if err := onlyMethod(w, r, http.MethodPost); err != nil {
		return err
	}
	req, err := decodeClient(r, "reset")
	if err != nil {
		return err
	}
	entries, err := find(req)
	if err != nil {
		return err
	}
	out := ResetResponse{Reset: []ResetLimit{}}
	var errs []error
	counted := false // some part had counts before the reset
	for _, e := range entries {
		if req.Limit == "" && req.Part != nil && *req.Part >= len(e.cl.keys) {
			continue // every limit: those with fewer parts have none to reset
		}
		a, err := adminStore(e)
		if err != nil {
			if req.Limit == "" {
				errs = append(errs, err)
				continue
			}
			return err
		}
		reqs, parts, err := e.requests(req, e.cl.Base)
		if err != nil {
			return err
		}
		var usedBefore []int64
		if before, _, err := e.inspect(r.Context(), &ClientRequest{Key: req.Key, Part: req.Part}); err == nil {
			for _, p := range before.Parts {
				usedBefore = append(usedBefore, p.Used)
				counted = counted || p.Used != 0
			}
		} else {
			counted = true // unknown: no warning
		}
		if err := a.Reset(r.Context(), e.clock.Now(), reqs); err != nil {
			var np *storage.NotPublishedError
			if !errors.As(err, &np) {
				errs = append(errs, fmt.Errorf("limit %q: %w", e.cl.Name, err))
				continue
			}
			out.Warnings = append(out.Warnings, fmt.Sprintf("limit %q: %v", e.cl.Name, err))
		}
		out.Reset = append(out.Reset, ResetLimit{Limit: e.cl.Name, Zone: e.cl.zone, Storage: e.label, Parts: parts, UsedBefore: usedBefore})
	}
	if !counted && len(out.Reset) > 0 {
		out.Warnings = append(out.Warnings, "nothing was counted for this key: is it the key as the limit reads it from a request? (inspect shows the counts)")
	}
	if len(errs) > 0 {
		return apiError(http.StatusBadGateway, "reset %d limit(s), but: %v", len(out.Reset), errors.Join(errs...))
	}
	return writeJSON(w, out)
}

func handleCredit(w http.ResponseWriter, r *http.Request) error {
	if err := onlyMethod(w, r, http.MethodPost); err != nil {
		return err
	}
	req, err := decodeClient(r, "credit")
	if err != nil {
		return err
	}
	entries, err := find(req)
	if err != nil {
		return err
	}
	e := entries[0]
	a, err := adminStore(e)
	if err != nil {
		return err
	}
	lim, _, err := e.numbers(req)
	if err != nil {
		return err
	}
	reqs, _, err := e.requests(req, lim)
	if err != nil {
		return err
	}
	given := make([]int64, len(reqs))
	var warning string
	if err := a.Credit(r.Context(), e.clock.Now(), reqs, *req.Units, given); err != nil {
		var np *storage.NotPublishedError
		if !errors.As(err, &np) {
			return apiError(http.StatusBadGateway, "limit %q: %v", e.cl.Name, err)
		}
		warning = fmt.Sprintf("limit %q: %v", e.cl.Name, err)
	}
	out, _, err := e.inspect(r.Context(), req)
	if err != nil {
		return err
	}
	if warning != "" {
		out.Warnings = []string{warning}
	}
	for i := range out.Parts {
		out.Parts[i].Given = &given[i]
	}
	return writeJSON(w, out)
}

// Interface guard.
