package policy

import (
	"net/http"
	"strconv"

	"github.com/edgelimit/caddy-edgelimit/store"
)

// One decides, for a policy of one limit (p.One), a request whose key d
// holds, in the memory store m at t (unix microseconds): the usual request
// of such a policy, planned, taken, judged, answered and recorded in one
// function (under Yaegi each call costs more than what most of these steps
// do). It returns true when the request passed: its rate-limit headers are
// written in hdr and what it counted is recorded in l, a new ledger (no
// handler before this one counted the request). Otherwise the limit denied
// it (a dry run too), d holds the decision to judge (Judge: Denied and
// FirstDenials are its), and nothing is written or recorded.
func One(p *Policy, d *Decision, m *store.Memory, t int64, hdr http.Header, l *Ledger) bool {
	// Plan, for one limit whose key is present.
	d.Reqs = d.Reqs[:1] // NewDecision's room for the policy's one limit
	req := &d.Reqs[0]
	*req = p.requests[0][d.Parts[0]]
	req.Key = d.Keys[0]
	d.Meta = d.Meta[:1] // NewDecision's: a plan of the limit is always the same
	d.Res = d.Res[:1]
	res := &d.Res[0]
	store.TakeOne(m, req, res, t)
	if !res.Allowed {
		return false
	}
	if !p.oneX {
		WriteHeaders(p, hdr, d, 0, false, nil)
	} else {
		// writeX, written out, with the limit's text made once (every
		// result of the limit, without tiers, has its quota as Limit).
		reset := res.ResetAt / 1e6
		if res.ResetAt%1e6 > 0 {
			reset++
		}
		vals := []string{p.oneLimit, strconv.FormatInt(res.Remaining, 10), strconv.FormatInt(reset, 10)}
		hdr["X-Ratelimit-Limit"] = vals[0:1:1]
		hdr["X-Ratelimit-Remaining"] = vals[1:2:2]
		hdr["X-Ratelimit-Reset"] = vals[2:3:3]
	}
	// Record, for a new ledger and a request that passed.
	l.Entries = append(l.Entries, Entry{Store: m, Reqs: d.Reqs})
	l.Report = *res
	l.HasReport = true
	return true
}
