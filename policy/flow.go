// The request path after the keys, as both edges (Caddy's handler and the
// Traefik plugin's middleware) take it: once an edge has read a request's
// keys into a decision, Decide grants the exemptions, plans the requests
// and has the store take them; Settle judges them, quiets the reports,
// writes the headers, gives back what earlier handlers counted when this
// one denies, holds a request that waits and records what was counted.
// Each returns what became of the request (an Outcome), and the edge acts
// on it: where the request's state lives, its metrics, logs and events,
// how it answers a denial or a 503, and the next handler are the edge's.
// Two steps: Caddy times the store between them. Under Yaegi a call from
// the core into the plugin costs much more than a return: the core
// returns, the edge acts (only a held request calls the edge's clock).

package policy

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/edgelimit/caddy-edgelimit/store"
)

// Outcome is what became of a request in Decide or Settle.
type Outcome int

// Decide's outcomes come before Decided, Settle's after it.
const (
	// Skip: no limit applies to the request (no key is present, or the
	// limits whose key is are exempt): it goes on, counted nowhere.
	Skip Outcome = iota
	// Failed: the store failed (Flow.Err) and its failure policy lets
	// the request through, unlimited (the decision has no requests left:
	// its response is charged nothing).
	Failed
	// Unavailable: the store cannot decide and its policy denies
	// (store.ErrUnavailable, in Flow.Err): the edge answers 503 with
	// Retry-After: 1. What earlier handlers counted was given back.
	Unavailable
	// Decided: the store decided the request, which Settle settles.
	Decided
	// Pass: the request goes on, its headers written and what it counted
	// recorded in Flow.Ledger (after its hold, when it waited).
	Pass
	// Deny: the decision's request Flow.Denied denies the request: its
	// headers are written and what earlier handlers counted was given
	// back; the edge answers the denial.
	Deny
	// Left: the client left while the request was held (Flow.Err is its
	// context's error): what it counted, here and before, was given back.
	Left
)

// Flow is what an edge tells Decide and Settle of a request, besides its
// decision, and what they tell back.
type Flow struct {
	// Exempt are the exemptions the handlers before this one granted;
	// after Decide, this one's too. Added tells whether this one granted
	// some: Exempt is then a new list, for the handlers after it.
	Exempt []string
	Added  bool
	// Earlier is what the handlers before this one counted (nil: none):
	// given back when this one denies or cannot decide, or when the
	// client leaves while held.
	Earlier *Ledger
	// Ledger is where a request that passes is recorded (nil: nowhere):
	// Earlier, or a new ledger that the handlers after this one share.
	Ledger *Ledger
	// Clock is what a held request waits on (a limit with a wait); its
	// Now is when what the request counted is given back if the client
	// leaves meanwhile.
	Clock store.SyncClock
	// Denied and Report are Judge's: the request of the decision that
	// denies (-1: none) and the one the headers report.
	Denied, Report int
	// Wait is how long the request was held (0: it was not).
	Wait time.Duration
	// Err is the store's failure (Failed, Unavailable), or the held
	// client's context's error (Left).
	Err error
	// RefundErr is the error of giving back what was counted (Deny,
	// Unavailable, Left), for the edge to log.
	RefundErr error
}

// Decide grants the request's exemptions (Exemptions), plans its requests
// (Plan) and has s take them at now, holding the places of those that may
// wait (HoldWaits): Skip, Failed, Unavailable or Decided.
func Decide(p *Policy, s store.Store, ctx context.Context, now time.Time, d *Decision, f *Flow) Outcome {
	if p.Exempts {
		exemptions(p, d, f)
	}
	if !Plan(p, d, f.Exempt) {
		return Skip
	}
	if p.Waits {
		HoldWaits(d)
	}
	if err := store.Take(s, ctx, now, d.Reqs, d.Res); err != nil {
		return failed(p, ctx, now, d, f, err)
	}
	return Decided
}

// exemptions adds the exemptions of p's limits whose key is present to
// f's (Exemptions).
func exemptions(p *Policy, d *Decision, f *Flow) {
	exempt, added := Exemptions(p, d, f.Exempt)
	f.Exempt = exempt
	f.Added = added
}

// failed is Decide's for a store that failed with err: the places held
// for waits are given back and, when the store's policy denies
// (store.ErrUnavailable), what earlier handlers counted. The decision is
// left with no requests: nothing was decided, so nothing was checked
// (Checked) and a response let through unlimited is charged nothing.
func failed(p *Policy, ctx context.Context, now time.Time, d *Decision, f *Flow, err error) Outcome {
	if p.Waits {
		ReleaseWaits(d)
	}
	d.Reqs = d.Reqs[:0]
	d.Res = d.Res[:0]
	f.Err = err
	if !errors.Is(err, store.ErrUnavailable) {
		return Failed
	}
	if f.Earlier != nil {
		f.RefundErr = f.Earlier.Refund(ctx, now)
	}
	return Unavailable
}

// Settle judges a decided request (Judge) and, after its hold (WaitFor),
// writes its headers in hdr: Deny, or Pass, recorded in f.Ledger; or Left,
// nothing written.
// The edge reports the first denials, if any (d.Denied, d.FirstDenials,
// quieted by Quiet here).
func Settle(p *Policy, s store.Store, ctx context.Context, now time.Time, hdr http.Header, d *Decision, f *Flow) Outcome {
	denied, report := Judge(d)
	f.Denied = denied
	f.Report = report
	if d.Denied > 0 || p.Waits {
		return settleAll(p, s, ctx, now, hdr, d, f)
	}
	// The usual request, in few values: it passes, nothing to hold.
	WriteHeaders(p, hdr, d, report, false, f.Earlier)
	if f.Ledger != nil {
		Record(f.Ledger, s, d, report)
	}
	return Pass
}

// settleAll is Settle for a request that some limit denied (a dry run
// too) or that may wait.
func settleAll(p *Policy, s store.Store, ctx context.Context, now time.Time, hdr http.Header, d *Decision, f *Flow) Outcome {
	if d.FirstDenials {
		Quiet(p, d, now)
	}
	// A request is held before anything is written: nothing answers a
	// client that left meanwhile.
	if p.Waits {
		if wait := WaitFor(d, f.Denied); wait > 0 && !hold(s, ctx, d, f, wait) {
			return Left
		}
	}
	WriteHeaders(p, hdr, d, f.Report, f.Denied >= 0, f.Earlier)
	if f.Denied >= 0 {
		if f.Earlier != nil {
			f.RefundErr = f.Earlier.Refund(ctx, now)
		}
		return Deny
	}
	if f.Ledger != nil {
		Record(f.Ledger, s, d, f.Report)
	}
	return Pass
}

// hold holds the request wait on f.Clock, and ends its hold (Held): it
// tells whether the client stayed; one that left gets back what it
// counted here and what the handlers before this one counted.
func hold(s store.Store, ctx context.Context, d *Decision, f *Flow, wait time.Duration) bool {
	f.Wait = wait
	err := f.Clock.Sleep(ctx, wait)
	var earlier *Ledger
	if err != nil {
		f.Err = err
		earlier = f.Earlier
	}
	f.RefundErr = Held(ctx, s, f.Clock.Now, d, err != nil, earlier)
	return err == nil
}
