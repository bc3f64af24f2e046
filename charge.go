package edgelimit

import (
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
func compileResponses(l *Limit, spec *policy.Spec) error {
	if m := l.CountResponses; m != nil {
		for _, code := range m.StatusCode {
			if code < 1 || code > 5 && code < 100 || code > 599 {
				return fmt.Errorf("count_responses: status %d: want a code from 100 to 599, or a class from 1xx to 5xx", code)
			}
		}
		spec.Charged = true
		spec.Responses = m
	}
	spec.CostHeader = l.CostHeader
	spec.KeepCostHeader = l.KeepCostHeader
	return nil
}

// charging is what a handler with limits that count responses keeps for
// its response path: the throttle of its warnings.
type charging struct {
	warn store.Throttle
}

// newCharging returns the response path of a handler's limits, nil when
// none counts responses.
func newCharging(p *policy.Policy) *charging {
	if !p.Charges {
		return nil
	}
	return &charging{}
}

// chargeWriter sees the response of a request to a handler whose limits
// count responses: its policy.Charge charges them when the response is
// known (armed with the request's decision), and removes the cost headers;
// it is the charge's log (policy.ChargeLog).
type chargeWriter struct {
	caddyhttp.ResponseWriterWrapper
	c policy.Charge // its Decision: sc's, while the request is served
	h *Handler
	r *http.Request
}

// serveCharging serves a request with the response writer of the charges.
func (h *Handler) serveCharging(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	cw := &chargeWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, h: h, r: r,
		c: policy.Charge{Policy: h.pol, Store: h.store}}
	cw.c.Log = cw
	err := h.serve(cw, r, next)
	if !cw.c.Done {
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
	cw.c.Decision = sc.Decision
	err := next.ServeHTTP(cw, r)
	if !cw.c.Done {
		cw.finish(err)
	}
	cw.c.Decision = nil
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

// WriteHeader charges a final response.
func (cw *chargeWriter) WriteHeader(status int) {
	if !cw.c.Done {
		cw.respond(status)
	}
	cw.ResponseWriterWrapper.WriteHeader(status)
}

// Write charges a response written without WriteHeader (200).
func (cw *chargeWriter) Write(b []byte) (int, error) {
	if !cw.c.Done {
		cw.respond(http.StatusOK)
	}
	return cw.ResponseWriterWrapper.Write(b)
}

// ReadFrom charges as Write does, and copies as the wrapper does.
func (cw *chargeWriter) ReadFrom(r io.Reader) (int64, error) {
	if !cw.c.Done {
		cw.respond(http.StatusOK)
	}
	return cw.ResponseWriterWrapper.ReadFrom(r)
}

// FlushError charges a response flushed before it is written (200), then
// flushes (http.ResponseController finds it first).
func (cw *chargeWriter) FlushError() error {
	if !cw.c.Done {
		cw.respond(http.StatusOK)
	}
	return http.NewResponseController(cw.ResponseWriter).Flush()
}

// respond charges the response of status when it is final, with the
// request's decision and ledger (a handler after this one may have
// started it).
func (cw *chargeWriter) respond(status int) {
	if cw.c.Decision != nil {
		vars, _ := cw.r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
		cw.c.Ledger = ledgerOf(vars)
	}
	cw.c.Respond(cw.r.Context(), cw.h.clock.Now, status, cw.ResponseWriter.Header())
}

// ChargeFailed counts a store's failure to charge a response, and logs it
// at most every 5 seconds per handler.
func (cw *chargeWriter) ChargeFailed(err error) {
	h := cw.h
	h.metrics.storageError()
	if h.charging.warn.Allow(h.clock.Now(), 5*time.Second) {
		h.logger.Warn(policy.ChargeFailed, zap.Error(err))
	}
}

// BadCost logs, at most every 5 seconds per handler, a cost header that
// is not a whole number of units.
func (cw *chargeWriter) BadCost(issue policy.CostIssue) {
	h := cw.h
	if h.charging.warn.Allow(h.clock.Now(), 5*time.Second) {
		h.logger.Warn(policy.CostProblem(issue.Found), zap.String("limit", issue.Limit.Name),
			zap.String("header", issue.Limit.CostHeader), zap.String("value", issue.Value))
	}
}

// Interface guard.
var _ policy.ChargeLog = (*chargeWriter)(nil)
