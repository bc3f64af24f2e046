package policy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"strconv"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// Limits that count what responses say: failed logins (the responses
// matching a condition), or what an upstream reports a request cost (a
// number in a response header). Such a limit is checked before the
// request is served: a client with no room left is denied, and nothing is
// counted (store.ModeCheck). Once the response is known, the edge asks the
// limits it matches for their cost (ResponseCost), adds a charge for each
// (AddCharge), has the store count them whatever is left (store.ModeCharge:
// a response that cost more than remains overdraws the limit, and the next
// requests are denied until enough is back), and writes the headers again
// with what remains after the charges (Charged, RewriteHeaders).
//
// Requests in flight at once are all checked before any is charged: a
// client with n requests in flight when it reaches the limit has at most
// n - 1 served past it (limit + n - 1 in all), and then none until the
// window lets it through again.

// compileCharge checks the charge settings of a limit.
func (l *Limit) compileCharge(s *Spec) error {
	if s.CostHeader == "" {
		if s.KeepCostHeader {
			return errors.New("keeping the cost header needs a cost header")
		}
		l.Charged = s.Charged
		return nil
	}
	if s.Cost != 0 && s.Cost != 1 {
		return errors.New("give either a cost or a cost header, not both: the header says what each response costs")
	}
	if err := checkHeaderName(s.CostHeader); err != nil {
		return fmt.Errorf("cost header: %w", err)
	}
	l.Charged = true
	l.CostHeader = textproto.CanonicalMIMEHeaderKey(s.CostHeader)
	l.KeepCostHeader = s.KeepCostHeader
	return nil
}

// checkHeaderName checks that name is a header field name (RFC 9110 token).
func checkHeaderName(name string) error {
	if name == "" {
		return errors.New("an empty header name")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' ||
			c == '!' || c == '#' || c == '$' || c == '%' || c == '&' || c == '\'' || c == '*' || c == '+' || c == '^' ||
			c == '`' || c == '|' || c == '~') {
			return fmt.Errorf("%q is not a header name", name)
		}
	}
	return nil
}

// CheckCost is what a limit that counts responses needs left for a
// request to be served: its cost, or with a cost header one unit (the
// request is admitted while anything remains; its response says what it
// cost).
func CheckCost(l *Limit) int64 {
	if l.CostHeader != "" {
		return 1
	}
	return l.Cost
}

// What ResponseCost found in a cost header.
const (
	// CostOK: a whole number of units, charged as it is.
	CostOK = 0
	// CostMissing: no header; nothing is charged (the upstream reported
	// no usage: an error, or Caddy's own answer).
	CostMissing = 1
	// CostInvalid: not a whole number of units (negative, a fraction,
	// text, empty); one unit is charged, the least a served request costs.
	CostInvalid = 2
	// CostTooLarge: more than limiter.MaxQuota; that is charged, which
	// empties any limit.
	CostTooLarge = 3
)

// ResponseCost is what a response matched by limit l costs: l's cost, or
// the number its cost header holds (its first value, without the spaces
// around it; see the constants for what else is charged), and what was
// found, for the edge to log what is not CostOK or CostMissing.
func ResponseCost(l *Limit, hdr http.Header) (int64, int) {
	if l.CostHeader == "" {
		return l.Cost, CostOK
	}
	vs := hdr[l.CostHeader]
	if len(vs) == 0 {
		return 0, CostMissing
	}
	return ParseCost(vs[0])
}

// ParseCost reads a reported cost: ASCII digits, with spaces and tabs
// around them (CostOK, CostInvalid or CostTooLarge, as ResponseCost).
func ParseCost(v string) (int64, int) {
	i, j := 0, len(v)
	for i < j && (v[i] == ' ' || v[i] == '\t') {
		i++
	}
	for j > i && (v[j-1] == ' ' || v[j-1] == '\t') {
		j--
	}
	if i == j {
		return 1, CostInvalid
	}
	n := int64(0)
	for k := i; k < j; k++ {
		c := v[k]
		if c < '0' || c > '9' {
			return 1, CostInvalid
		}
		if n > limiter.MaxQuota {
			continue // the digits are read to the end: "12x" is invalid, however long
		}
		n = n*10 + int64(c-'0')
	}
	if n > limiter.MaxQuota {
		return limiter.MaxQuota, CostTooLarge
	}
	return n, CostOK
}

// CostProblem says what was wrong with a reported cost, for a log line.
func CostProblem(found int) string {
	switch found {
	case CostInvalid:
		return "the response's cost header is not a whole number of units: one unit charged"
	case CostTooLarge:
		return "the response's cost header is larger than a limit holds: " + strconv.FormatInt(int64(limiter.MaxQuota), 10) + " units charged"
	}
	return ""
}

// Checked tells whether the decision checked a limit that counts
// responses (and the response is to be charged).
func Checked(d *Decision) bool {
	for i := range d.Reqs {
		if d.Reqs[i].Mode == store.ModeCheck {
			return true
		}
	}
	return false
}

// ResetCharges forgets the charges of an earlier response.
func ResetCharges(d *Decision) {
	d.Charges = d.Charges[:0]
	d.charged = d.charged[:0]
}

// AddCharge charges cost units (at least 1) to the limit of d.Reqs[i], a
// check.
func AddCharge(d *Decision, i int, cost int64) {
	r := d.Reqs[i]
	r.Mode = store.ModeCharge
	r.Cost = cost
	d.Charges = append(d.Charges, r)
	d.charged = append(d.charged, i)
	if cap(d.ChargeRes) < len(d.Charges) {
		d.ChargeRes = make([]limiter.Result, len(d.Charges), cap(d.Charges))
	}
	d.ChargeRes = d.ChargeRes[:len(d.Charges)]
}

// Charged puts the results of the charges in place of their checks', and
// returns the result to report now: the most constraining.
func Charged(d *Decision) int {
	for j, i := range d.charged {
		d.Res[i] = d.ChargeRes[j]
	}
	report := 0
	for i := 1; i < len(d.Res); i++ {
		if reportFirst(d, i, report) {
			report = i
		}
	}
	return report
}

// CostIssue is a cost header that Respond could not read as it is: the
// limit's, what ResponseCost found (CostInvalid or CostTooLarge), and the
// value, cut to 64 bytes for a log line.
type CostIssue struct {
	Limit *Limit
	Found int
	Value string
}

// String is the issue in a line: the problem, the limit, the header and
// its value.
func (i CostIssue) String() string {
	return CostProblem(i.Found) + " (limit " + i.Limit.Name + ", header " + i.Limit.CostHeader + ", value " + strconv.Quote(i.Value) + ")"
}

// Charge is the response path of one request to a policy whose limits
// count responses (Policy.Charges), that the response writer of each edge
// holds: it charges the response once, when it is final, and removes the
// cost headers that no client sees. The edge arms it with the request's
// decision once the request passed, and calls Respond when the response
// is known (its WriteHeader, its first Write or Flush, or when the
// handlers after it return having written nothing).
type Charge struct {
	Policy *Policy
	Store  store.Store
	// Log is the edge's, for what Respond meets.
	Log ChargeLog
	// Decision is the request's once it checked a limit that counts
	// responses (Checked); nil: nothing to charge (the cost headers are
	// removed all the same).
	Decision *Decision
	// Ledger is the request's (nil for none): when a handler after this
	// one denied the request (Ledger.Denied), its response, the denial, is
	// charged to no limit.
	Ledger *Ledger
	// Done: the response is charged; its headers are final.
	Done bool
}

// ChargeLog is where an edge logs what charging a response met: the
// store's failure (the response's cost was not charged), and a cost
// header that is not a whole number of units, or too large.
type ChargeLog interface {
	ChargeFailed(err error)
	BadCost(issue CostIssue)
}

// ChargeFailed is the warning of a store that failed to charge a
// response.
const ChargeFailed = "rate-limit storage failed: a response's cost was not charged"

// Respond charges the response of status with headers hdr, unless it was
// charged already or is not final (1xx, but 101 is): to the limits of the
// decision that count responses and match it, in the store at now() (a
// parameter, not a field: Caddy's clock.Now would be a closure on the heap
// per request), and
// writes the rate-limit headers again with what remains; then it removes
// the cost headers. The charges outlive the client (ctx's cancellation):
// what a request cost is charged all the same (an attacker who hangs up
// does not get a free guess). A store's failure and the cost headers it
// could not read go to Log. It reports whether it charged (false: not
// now).
func (c *Charge) Respond(ctx context.Context, now func() time.Time, status int, hdr http.Header) bool {
	if c.Done || status < 200 && status != http.StatusSwitchingProtocols {
		return false
	}
	c.Done = true
	if d := c.Decision; d != nil && (c.Ledger == nil || !c.Ledger.Denied) {
		if err := charge(c.Policy, c.Store, ctx, now, d, status, hdr, c.Ledger); err != nil {
			c.Log.ChargeFailed(err)
		}
		for i := range d.CostIssues {
			c.Log.BadCost(d.CostIssues[i])
		}
	}
	for _, name := range c.Policy.StripHeaders {
		delete(hdr, name)
	}
	return true
}

// charge is Respond's charging; the cost headers it could not read are
// in d.CostIssues.
func charge(p *Policy, s store.Store, ctx context.Context, now func() time.Time, d *Decision, status int, hdr http.Header, ledger *Ledger) error {
	d.CostIssues = d.CostIssues[:0]
	ResetCharges(d)
	for i := range d.Reqs {
		if d.Reqs[i].Mode != store.ModeCheck {
			continue
		}
		l := d.Meta[i].Limit
		if l.Responses != nil && !l.Responses.Match(status, hdr) {
			continue
		}
		cost, found := ResponseCost(l, hdr)
		if found != CostOK && found != CostMissing {
			d.CostIssues = append(d.CostIssues, costIssue(l, found, hdr))
		}
		if cost > 0 {
			AddCharge(d, i, cost)
		}
	}
	if len(d.Charges) == 0 {
		return nil
	}
	if err := store.Take(s, context.WithoutCancel(ctx), now(), d.Charges, d.ChargeRes); err != nil {
		return err
	}
	RewriteHeaders(p, hdr, d, Charged(d), ledger)
	return nil
}

func costIssue(l *Limit, found int, hdr http.Header) CostIssue {
	v := hdr[l.CostHeader][0]
	if len(v) > 64 {
		v = v[:64]
	}
	return CostIssue{Limit: l, Found: found, Value: v}
}

// RewriteHeaders writes the rate-limit headers again after the charges:
// the X-RateLimit headers when the charged decision's report is now the
// tightest of the request (prior: what the handlers recorded), and this
// decision's items of the RateLimit field in place of those written before.
func RewriteHeaders(p *Policy, hdr http.Header, d *Decision, report int, prior *Ledger) {
	if p.Headers&HeaderIETF != 0 {
		spliceRateLimit(hdr, d)
	}
	if p.Headers&HeaderX == 0 {
		return
	}
	r := &d.Res[report]
	if prior != nil && keepPrior(prior, r) {
		return
	}
	// As WriteHeaders writes them (written out there: under Yaegi a call
	// costs more than these lines, on every request).
	if p.TimeHeader {
		hdr["X-Ratelimit-Time"] = []string{strconv.FormatInt(SecondsCeil(r.Window), 10)}
	}
	vals := []string{strconv.FormatInt(r.Limit, 10), strconv.FormatInt(r.Remaining, 10), strconv.FormatInt(ResetUnix(r), 10)}
	hdr["X-Ratelimit-Limit"] = vals[0:1:1]
	hdr["X-Ratelimit-Remaining"] = vals[1:2:2]
	hdr["X-Ratelimit-Reset"] = vals[2:3:3]
}

// spliceRateLimit replaces this decision's items of the RateLimit field,
// between those of earlier and of later handlers.
func spliceRateLimit(hdr http.Header, d *Decision) {
	vs := hdr["Ratelimit"]
	if len(vs) != 1 || len(vs[0]) < d.ietfAt+d.ietfLen {
		return
	}
	v := vs[0]
	rest := v[d.ietfAt+d.ietfLen:]
	b := append(d.Buf[:0], v[:d.ietfAt]...)
	// The items as writeIETF writes them.
	for i := range d.Res {
		item := d.Meta[i].Limit.ietfR
		if i == 0 {
			item = item[2:]
		}
		b = append(b, item...)
		b = strconv.AppendInt(b, d.Res[i].Remaining, 10)
		b = append(b, ";t="...)
		b = strconv.AppendInt(b, SecondsCeil(d.Res[i].Reset), 10)
	}
	d.ietfLen = len(b) - d.ietfAt
	b = append(b, rest...)
	hdr["Ratelimit"] = []string{string(b)}
	d.Buf = b[:0]
}
