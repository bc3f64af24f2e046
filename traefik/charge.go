package edgelimit

import (
	"context"
	"net/http"
	"time"

	"github.com/edgelimit/caddy-edgelimit/policy"
)

// The response path of limits that count responses (countResponses,
// costHeader; the model is package policy's charge.go), as the Caddy
// module's: the request was checked with the others; its response is
// charged once it is known, at WriteHeader, at the first Write or Flush,
// or when the next handler returns having written nothing (200).

// compileResponses reads a countResponses rule; nil for none.
func compileResponses(c *ResponseRule) (*policy.ResponseRule, error) {
	if c == nil {
		return nil, nil
	}
	return policy.NewResponseRule(c.Status, c.Headers)
}

// chargeWriter sees the response of a request to a middleware whose limits
// count responses: its policy.Charge charges them when the response is
// known (given the request's decision), and removes the cost headers.
type chargeWriter struct {
	http.ResponseWriter
	c   policy.Charge
	now func() time.Time
	// stream: the response has no Content-Length; each write is flushed
	// (see Write).
	stream bool
}

// serveCharging serves a request with the response writer of the charges.
func serveCharging(m *middleware, w http.ResponseWriter, r *http.Request) {
	cw := &chargeWriter{ResponseWriter: w, c: policy.Charge{Policy: m.pol, Store: m.store, Log: m.log}, now: m.now}
	d := policy.NewDecision(m.pol)
	r = serve(m, cw, r, d)
	if r == nil {
		return // denied here
	}
	if policy.Checked(d) {
		// serve records every decision it passes in the request's state.
		st, _ := r.Context().Value(stateCtxKey).(*requestState)
		cw.c.Decision = d
		cw.c.Ledger = &st.ledger
	}
	m.next.ServeHTTP(cw, r)
	if !cw.c.Done {
		respond(cw, http.StatusOK)
	}
}

// WriteHeader charges a final response.
func (cw *chargeWriter) WriteHeader(code int) {
	if !cw.c.Done {
		respond(cw, code)
	}
	cw.ResponseWriter.WriteHeader(code)
}

// Write charges a response written without WriteHeader (200). A response
// of unknown length (a stream) is flushed after each write, as Go's
// reverse proxy flushes it: under Yaegi, the handler after this one sees
// this writer as a bare http.ResponseWriter, without its Flush
// (traefik/traefik#10269), and could not flush a stream itself.
func (cw *chargeWriter) Write(b []byte) (int, error) {
	if !cw.c.Done {
		respond(cw, http.StatusOK)
	}
	n, err := cw.ResponseWriter.Write(b)
	if cw.stream {
		if f, ok := cw.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
	}
	return n, err
}

// Flush charges a response flushed before it is written (200), and
// flushes.
func (cw *chargeWriter) Flush() {
	if !cw.c.Done {
		respond(cw, http.StatusOK)
	}
	if f, ok := cw.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the writer underneath.
func (cw *chargeWriter) Unwrap() http.ResponseWriter { return cw.ResponseWriter }

// respond charges the response of code when it is final: its headers say
// whether it streams.
func respond(cw *chargeWriter, code int) {
	hdr := cw.ResponseWriter.Header()
	if cw.c.Respond(context.Background(), cw.now, code, hdr) {
		cw.stream = len(hdr["Content-Length"]) == 0
	}
}
