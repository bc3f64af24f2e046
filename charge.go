package edgelimit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/policy"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// The response path of limits that count responses (count_responses,
// cost header; package policy's charge.go has the model): the request was
// checked with the others; the response is charged once it is known, at
// WriteHeader, at the first Write, or when the handlers after this one
// return (an error whose status Caddy writes, or nothing at all: 200).

// compileResponses reads a limit's response options into its spec.
func compileResponses(l *Limit, spec *policy.Spec, cl *compiledLimit) error {
	if m := l.CountResponses; m != nil {
		for _, code := range m.StatusCode {
			if code < 1 || code > 5 && code < 100 || code > 599 {
				return fmt.Errorf("count_responses: status %d: want a code from 100 to 599, or a class from 1xx to 5xx", code)
			}
		}
		spec.Charged = true
		cl.responses = m
	}
	spec.CostHeader = l.CostHeader
	spec.KeepCostHeader = l.KeepCostHeader
	return nil
}

// charging is what a handler with limits that count responses keeps for
// its response path.
type charging struct {
	// strip are the cost headers no client sees: removed from every
	// response of the handler, charged or not.
	strip []string
	warn  store.Throttle
}

// newCharging returns the response path of a handler's limits, nil when
// none counts responses.
func newCharging(p *policy.Policy) *charging {
	if !p.Charges {
		return nil
	}
	return &charging{strip: p.StripHeaders}
}

// chargeWriter sees the response of a request to a handler whose limits
// count responses: it charges them when the response is known (armed with
// the request's decision), and removes the cost headers.
type chargeWriter struct {
	caddyhttp.ResponseWriterWrapper
	h    *Handler
	r    *http.Request
	sc   *scratch // the decision, while the request is served; nil: nothing to charge
	done bool
}

// serveCharging serves a request with the response writer of the charges.
func (h *Handler) serveCharging(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	cw := &chargeWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, h: h, r: r}
	err := h.serve(cw, r, next)
	if !cw.done {
		// Neither served nor denied by this handler: its error's status
		// (or 200) is written by Caddy, without the cost headers.
		cw.finish(err)
	}
	return err
}

// serveCharged passes a checked request on, and charges its response: the
// decision in sc must outlive the response (sc goes back to its pool when
// serve returns).
func (h *Handler) serveCharged(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, sc *scratch) error {
	cw := w.(*chargeWriter)
	cw.sc = sc
	err := next.ServeHTTP(cw, r)
	if !cw.done {
		cw.finish(err)
	}
	cw.sc = nil
	return err
}

// finish charges a response that the handlers after this one did not
// write: Caddy writes the status of their error (500 unless it is a
// caddyhttp.HandlerError with one, as basic_auth's 401), or 200.
func (cw *chargeWriter) finish(err error) {
	status := http.StatusOK
	if err != nil {
		status = http.StatusInternalServerError
		var he caddyhttp.HandlerError
		if errors.As(err, &he) && he.StatusCode != 0 {
			status = he.StatusCode
		}
	}
	cw.respond(status)
}

// WriteHeader charges a final response (not 1xx, but 101).
func (cw *chargeWriter) WriteHeader(status int) {
	if !cw.done && (status >= 200 || status == http.StatusSwitchingProtocols) {
		cw.respond(status)
	}
	cw.ResponseWriterWrapper.WriteHeader(status)
}

// Write charges a response written without WriteHeader (200).
func (cw *chargeWriter) Write(b []byte) (int, error) {
	if !cw.done {
		cw.respond(http.StatusOK)
	}
	return cw.ResponseWriterWrapper.Write(b)
}

// ReadFrom charges as Write does, and copies as the wrapper does.
func (cw *chargeWriter) ReadFrom(r io.Reader) (int64, error) {
	if !cw.done {
		cw.respond(http.StatusOK)
	}
	return cw.ResponseWriterWrapper.ReadFrom(r)
}

// FlushError charges a response flushed before it is written (200), then
// flushes (http.ResponseController finds it first).
func (cw *chargeWriter) FlushError() error {
	if !cw.done {
		cw.respond(http.StatusOK)
	}
	return http.NewResponseController(cw.ResponseWriter).Flush()
}

// respond charges the response of status, once: its headers are final.
func (cw *chargeWriter) respond(status int) {
	cw.done = true
	hdr := cw.ResponseWriter.Header()
	if cw.sc != nil {
		cw.h.charge(cw.r, cw.sc.Decision, status, hdr)
	}
	for _, name := range cw.h.charging.strip {
		delete(hdr, name)
	}
}

// charge counts the response of status with headers hdr to the limits of
// d that count responses and match it, and writes the rate-limit headers
// again with what remains. A response that an edge_limit after this one
// denied is charged nothing: the request was denied.
func (h *Handler) charge(r *http.Request, d *policy.Decision, status int, hdr http.Header) {
	vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	ledger := ledgerOf(vars)
	if ledger != nil && ledger.Denied {
		return
	}
	policy.ResetCharges(d)
	for i := range d.Reqs {
		if d.Reqs[i].Mode != store.ModeCheck {
			continue
		}
		cl := h.limits[d.Meta[i].Index]
		if cl.responses != nil && !cl.responses.Match(status, hdr) {
			continue
		}
		cost, found := policy.ResponseCost(cl.Limit, hdr)
		if found != policy.CostOK && found != policy.CostMissing {
			h.badCost(cl, hdr.Get(cl.CostHeader), found)
		}
		if cost > 0 {
			policy.AddCharge(d, i, cost)
		}
	}
	if len(d.Charges) == 0 {
		return
	}
	now := h.clock.Now()
	// The client may be gone: what its request cost is charged all the
	// same (an attacker who hangs up does not get a free guess).
	if err := h.store.Take(context.WithoutCancel(r.Context()), now, d.Charges, d.ChargeRes); err != nil {
		h.metrics.storageError()
		if h.charging.warn.Allow(now, 5*time.Second) {
			h.logger.Warn("rate-limit storage failed: a response's cost was not charged", zap.Error(err))
		}
		return
	}
	report := policy.Charged(d)
	policy.RewriteHeaders(h.pol, hdr, d, report, ledger)
}

// badCost logs, at most every 5 seconds per handler, a cost header that
// is not a whole number of units.
func (h *Handler) badCost(cl *compiledLimit, value string, found int) {
	if !h.charging.warn.Allow(h.clock.Now(), 5*time.Second) {
		return
	}
	if len(value) > 64 {
		value = value[:64]
	}
	h.logger.Warn(policy.CostProblem(found), zap.String("limit", cl.Name),
		zap.String("header", cl.CostHeader), zap.String("value", value))
}
