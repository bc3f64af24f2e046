package policy

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// Policy is one handler's (or middleware's) limits and how its limited
// responses read.
type Policy struct {
	Limits []*Limit
	// Exempts tells whether some limit exempts others.
	Exempts bool

	Status      int
	Headers     HeaderStyle
	TimeHeader  bool
	DryRun      bool
	Body        *Template
	ContentType string
	Escape      Escaping
	// RawKeys shows keys as they are, else hashed (with KeyMAC when set).
	RawKeys bool
	KeyMAC  []byte
	// Charges tells whether some limit counts what responses say
	// (charge.go); StripHeaders are those limits' cost headers that no
	// client sees, removed from every response, charged or not.
	Charges      bool
	StripHeaders []string
	// Waits tells whether some limit holds requests (wait.go).
	Waits bool
	// One tells whether the policy is one limit that One may decide: no
	// tiers, exemptions, waits, bans or charges.
	One bool
	// oneLimit is the text of One's limit's quota, made once for its
	// X-RateLimit-Limit; oneX tells whether those are its only headers
	// (Headers and TimeHeader, read once).
	oneLimit string
	oneX     bool

	// The requests of each limit and key part, and what they are for, as
	// Plan makes them but for the client's key and tier; tiered tells
	// whether some limit has tiers.
	requests [][]store.Request
	planned  []Planned
	tiered   bool
	// reports remembers the clients reported lately (Quiet).
	reports reports
}

// Responses is how a policy's limited responses read, as configured.
type Responses struct {
	// Status of a denial: 429 (default), 420, 400, 503, any 4xx or 5xx.
	Status int
	// Headers: x-ratelimit (default), ratelimit, both or none.
	Headers string
	// TimeHeader adds X-RateLimit-Time.
	TimeHeader bool
	// DryRun counts and sends headers, never denies.
	DryRun bool
	// Body is the denial body's template (default DefaultBody), of
	// ContentType (default DefaultContentType).
	Body        string
	ContentType string
	// ShowKey is how keys are shown: hashed (default) or raw.
	ShowKey string
	// KeySecret makes the hashed keys an HMAC-SHA256: at least 16 bytes.
	KeySecret string
}

// The defaults of the responses.
const (
	DefaultStatus      = 429
	DefaultContentType = "application/json"
	DefaultBody        = `{"status":{edge_limit.status},"error":"Rate limit exceeded, try again in {edge_limit.retry_after_seconds}"}`
)

// New makes the policy of limits that answers as r says.
func New(limits []*Limit, r *Responses) (*Policy, error) {
	p := &Policy{Limits: limits, Status: r.Status, TimeHeader: r.TimeHeader, DryRun: r.DryRun, ContentType: r.ContentType}
	if p.Status == 0 {
		p.Status = DefaultStatus
	}
	if err := CheckStatus(int64(p.Status)); err != nil {
		return nil, err
	}
	if p.ContentType == "" {
		p.ContentType = DefaultContentType
	}
	p.Escape = EscapingFor(p.ContentType)
	body := r.Body
	if body == "" {
		body = DefaultBody
	}
	p.Body = ParseTemplate(body)
	style, err := ParseHeaderStyle(r.Headers)
	if err != nil {
		return nil, err
	}
	p.Headers = style
	switch r.ShowKey {
	case "", "hashed":
	case "raw":
		p.RawKeys = true
	default:
		return nil, fmt.Errorf("show key %q: want hashed or raw", r.ShowKey)
	}
	if r.KeySecret != "" {
		if p.RawKeys {
			return nil, errors.New("a key secret goes with hashed keys, not raw")
		}
		if len(r.KeySecret) < 16 {
			return nil, errors.New("key secret: want at least 16 bytes, so that the hashes cannot be reversed by guessing the secret")
		}
		p.KeyMAC = []byte(r.KeySecret)
	}
	for i, l := range limits {
		l.ietfQ, l.ietfR = `, "`+l.Name+`";q=`, `, "`+l.Name+`";r=`
		p.Exempts = p.Exempts || len(l.Exempt) > 0
		reqs := make([]store.Request, len(l.Counters))
		for part, counter := range l.Counters {
			reqs[part] = store.Request{Counter: counter, Limit: l.Base, Cost: l.Cost, DryRun: l.DryRun || p.DryRun, Sync: l.Sync}
			if l.Charged {
				reqs[part].Mode = store.ModeCheck
				reqs[part].Cost = CheckCost(l)
			}
		}
		p.Charges = p.Charges || l.Charged
		if l.Charged && l.CostHeader != "" && !l.KeepCostHeader {
			p.StripHeaders = append(p.StripHeaders, l.CostHeader)
		}
		p.Waits = p.Waits || l.WaitMax != 0
		p.requests = append(p.requests, reqs)
		p.planned = append(p.planned, Planned{Limit: l, Index: i, Tier: l.BaseTier})
		p.tiered = p.tiered || l.Tiers != nil
	}
	p.One = len(limits) == 1 && !p.tiered && !p.Exempts && !p.Waits && !p.Charges && len(limits[0].Counters) > 0 && store.Alone(&p.requests[0][0])
	if p.One {
		p.oneLimit = strconv.FormatInt(p.requests[0][0].Limit.Quota, 10)
		p.oneX = p.Headers == HeaderX && !p.TimeHeader
	}
	return p, nil
}

// Decision is one request's decision: what the edge read of it (Keys,
// Parts, TierValues), the requests to the store, and their results. Make
// one with NewDecision and reuse it (an edge may pool them).
type Decision struct {
	// Keys, Parts and TierValues are the edge's, per limit of the policy:
	// the client's key, the key part it came from (-1 when no part is
	// present: the limit does not apply) and, for a limit with tiers, the
	// tier source's value.
	Keys       []string
	Parts      []int
	TierValues []string

	// Reqs are the requests to decide, Meta what they are for, and Res
	// their results.
	Reqs []store.Request
	Meta []Planned
	Res  []limiter.Result

	// Denied is the number of results that deny (dry runs too), and
	// FirstDenials tells whether one is a first denial, for the edge to
	// report: both set by Judge.
	Denied       int
	FirstDenials bool

	counted []store.Request
	// Buf is scratch for the headers and the body.
	Buf []byte

	// Charges, ChargeRes and charged are a served request's charges
	// (charge.go); ietfAt and ietfLen where the RateLimit field holds this
	// decision's items.
	Charges   []store.Request
	ChargeRes []limiter.Result
	charged   []int
	ietfAt    int
	ietfLen   int
	// CostIssues are the cost headers of the last response charged that
	// could not be read as they are (Respond), for the edge to log.
	CostIssues []CostIssue
}

// The request path is functions, not methods: under Yaegi a method call
// costs four times a function call.

// Planned is what a request of a decision is for: the limit, its index in
// the policy, and the tier reported.
type Planned struct {
	Limit *Limit
	Index int
	Tier  string
}

// NewDecision returns a decision with room for the policy's limits.
func NewDecision(p *Policy) *Decision {
	n := len(p.Limits)
	d := &Decision{
		Keys:       make([]string, n),
		Parts:      make([]int, n),
		TierValues: make([]string, n),
		Reqs:       make([]store.Request, 0, n),
		Meta:       make([]Planned, 0, n),
		Res:        make([]limiter.Result, n),
	}
	if p.One {
		d.Meta = append(d.Meta, p.planned[0]) // One's plan, always
	}
	return d
}

// Exemptions returns the names of the limits that do not apply to the
// request: prior (those earlier handlers exempted), and those exempted by
// the limits of this policy whose key is present; added tells whether this
// policy exempted any (and the list is a new one, for later handlers).
func Exemptions(p *Policy, d *Decision, prior []string) (exempt []string, added bool) {
	if !p.Exempts {
		return prior, false
	}
	exempt = prior
	for i, l := range p.Limits {
		if len(l.Exempt) == 0 || d.Parts[i] < 0 || contains(prior, l.Name) {
			continue
		}
		if !added {
			exempt = append([]string(nil), prior...)
			added = true
		}
		exempt = append(exempt, l.Exempt...)
	}
	return exempt, added
}

// Plan makes the requests of the limits that apply to the request (their
// key is present and they are not exempt), and reports whether there are
// any. Without exemptions and tiers, the usual case, they are made here,
// in fewer values (see the package's doc).
func Plan(p *Policy, d *Decision, exempt []string) bool {
	if exempt != nil || p.tiered {
		return planAll(p, d, exempt)
	}
	reqs, meta := d.Reqs[:0], d.Meta[:0]
	for i, part := range d.Parts {
		if part >= 0 {
			reqs = append(reqs, p.requests[i][part])
			reqs[len(reqs)-1].Key = d.Keys[i]
			meta = append(meta, p.planned[i])
		}
	}
	d.Reqs, d.Meta = reqs, meta
	d.Res = d.Res[:len(reqs)]
	return len(reqs) > 0
}

// planAll is Plan with exemptions or tiers.
func planAll(p *Policy, d *Decision, exempt []string) bool {
	reqs, meta := d.Reqs[:0], d.Meta[:0]
	for i, part := range d.Parts {
		if part < 0 || exempt != nil && contains(exempt, p.Limits[i].Name) {
			continue
		}
		reqs = append(reqs, p.requests[i][part])
		reqs[len(reqs)-1].Key = d.Keys[i]
		meta = append(meta, p.planned[i])
		if p.Limits[i].Tiers != nil {
			tier(&reqs[len(reqs)-1], &meta[len(meta)-1], d.TierValues[i])
		}
	}
	d.Reqs, d.Meta = reqs, meta
	if cap(d.Res) < len(reqs) {
		d.Res = make([]limiter.Result, len(reqs))
	}
	d.Res = d.Res[:len(reqs)]
	return len(reqs) > 0
}

// tier gives a request the numbers of the client's tier.
func tier(r *store.Request, m *Planned, value string) {
	lim, name := m.Limit.NumbersFor(value)
	r.Limit = *lim
	m.Tier = name
}

// Judge picks the result that denies the request (the one with the
// longest wait; -1 if none) and the one its headers report (the denial, or
// the most constraining), and counts the denials (Denied, FirstDenials).
// The edge reports the first denials as it does.
func Judge(d *Decision) (denied, report int) {
	d.Denied = 0
	d.FirstDenials = false
	if len(d.Res) != 1 {
		return judge(d)
	}
	// One result, the usual case, in few values.
	denied = -1
	if !d.Res[0].Allowed {
		judgeDenial(d, 0, &denied)
	}
	return denied, 0
}

func judge(d *Decision) (denied, report int) {
	denied, report = -1, 0
	for i := range d.Res {
		a := &d.Res[i]
		if !a.Allowed {
			judgeDenial(d, i, &denied)
		}
		// reportFirst(d, i, report), Tighter's rule written out: calls
		// less on every request (reportFirst keeps the rule's one
		// definition for the response path's Charged).
		b := &d.Res[report]
		if a.Remaining < b.Remaining || a.Remaining == b.Remaining && (a.Reset > b.Reset || a.Reset == b.Reset && d.Meta[i].Limit.Name < d.Meta[report].Limit.Name) {
			report = i
		}
	}
	if denied >= 0 {
		report = denied
	}
	return denied, report
}

// judgeDenial counts the denial of request i, and makes it the request's
// denial when it waits longest (and is not a dry run).
func judgeDenial(d *Decision, i int, denied *int) {
	r := &d.Res[i]
	d.Denied++
	d.FirstDenials = d.FirstDenials || r.FirstDenial
	if d.Reqs[i].DryRun {
		return
	}
	if j := *denied; j < 0 || r.RetryAfter > d.Res[j].RetryAfter || r.RetryAfter == d.Res[j].RetryAfter && d.Meta[i].Limit.Name < d.Meta[j].Limit.Name {
		*denied = i
	}
}

// reportFirst tells whether request i's result is to be reported before
// request j's: tighter, or as tight and of the limit whose name comes
// first, so that the edges report alike whatever order their limits are
// in (a Caddyfile's, or a Traefik map's).
func reportFirst(d *Decision, i, j int) bool {
	a, b := &d.Res[i], &d.Res[j]
	if Tighter(a, b) {
		return true
	}
	return !Tighter(b, a) && d.Meta[i].Limit.Name < d.Meta[j].Limit.Name
}

// Counted returns the requests that were counted: all of them, less those
// that denied (dry-run ones, when the request passed: they counted
// nothing). Checks among them counted nothing either: Refund gives them
// nothing back (they are not taken out here, which the usual request, with
// no check, would pay for). Judge has counted the denials.
func Counted(d *Decision) []store.Request {
	if d.Denied == 0 {
		return d.Reqs
	}
	return allowed(d)
}

// allowed returns the requests of d that were allowed.
func allowed(d *Decision) []store.Request {
	d.counted = d.counted[:0]
	for j := range d.Reqs {
		if d.Res[j].Allowed {
			d.counted = append(d.counted, d.Reqs[j])
		}
	}
	return d.counted
}

// Tighter tells whether a constrains the client more than b: fewer units
// left, or as few for longer.
func Tighter(a, b *limiter.Result) bool {
	if a.Remaining != b.Remaining {
		return a.Remaining < b.Remaining
	}
	return a.Reset > b.Reset
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Ledger is what the handlers of one request have counted, so that a
// denial by a later handler gives it back: a denied request consumes
// nothing, whichever handler denies it.
type Ledger struct {
	Entries []Entry
	// Report is the most constraining result reported so far, so that a
	// later handler's X-RateLimit headers replace it only with a tighter
	// one.
	Report    limiter.Result
	HasReport bool
	// Denied is set by Refund: a handler denied the request, and its
	// response (the denial) is charged to no limit that counts responses.
	Denied bool
}

// Entry is what one handler counted, and where.
type Entry struct {
	Store store.Store
	Reqs  []store.Request
}

// Record enters in l what a handler counted in s for decision d (its
// Counted requests), and the result its headers reported (d.Res[report]).
func Record(l *Ledger, s store.Store, d *Decision, report int) {
	// Counted(d), written out.
	reqs := d.Reqs
	if d.Denied > 0 {
		reqs = allowed(d)
	}
	l.Entries = append(l.Entries, Entry{Store: s, Reqs: reqs})
	if r := &d.Res[report]; !l.HasReport || Tighter(r, &l.Report) {
		l.Report = *r
		l.HasReport = true
	}
}

// Refund gives back what the handlers recorded (a later one denies the
// request), and forgets it; it returns the stores' errors, joined.
func (l *Ledger) Refund(ctx context.Context, now time.Time) error {
	l.Denied = true
	var errs []error
	for _, e := range l.Entries {
		if err := e.Store.Refund(ctx, now, withoutChecks(e.Reqs)); err != nil {
			errs = append(errs, err)
		}
	}
	l.Entries = l.Entries[:0]
	return errors.Join(errs...)
}

// withoutChecks returns reqs less its checks, which counted nothing and
// have nothing to give back (reqs itself when it has none).
func withoutChecks(reqs []store.Request) []store.Request {
	n := 0
	for i := range reqs {
		if reqs[i].Mode != store.ModeCheck {
			n++
		}
	}
	if n == len(reqs) {
		return reqs
	}
	out := make([]store.Request, 0, n)
	for i := range reqs {
		if reqs[i].Mode != store.ModeCheck {
			out = append(out, reqs[i])
		}
	}
	return out
}
