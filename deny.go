package edgelimit

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/edgelimit/caddy-edgelimit/policy"
)

// deny answers a request denied by request i of d, as the policy says
// (package policy: the same answer as the Traefik plugin's), with the
// {edge_limit.*} placeholders on the request's replacer for handle_errors
// routes and log formats.
func (h *Handler) deny(w http.ResponseWriter, r *http.Request, d *policy.Decision, i int) error {
	dn := h.pol.Denial(d, i)
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	// Computed when read.
	repl.Map(dn.Value)
	if h.HandleErrors {
		w.Header()["Retry-After"] = []string{strconv.FormatInt(dn.Retry, 10)}
		return caddyhttp.Error(dn.Status, fmt.Errorf("rate limit %q exceeded, retry after %d seconds", dn.Limit.Name, dn.Retry))
	}
	buf := bodyBuffers.Get().(*[]byte)
	body := dn.Write(w, r.Method, repl, *buf)
	if cap(body) <= 64<<10 {
		*buf = body
		bodyBuffers.Put(buf)
	}
	return nil
}

// bodyBuffers hold rendered bodies between render and write.
var bodyBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// unavailable answers 503 with Retry-After: 1 when the storage cannot
// decide and its policy is to deny. The answer is written here, not
// returned as an error: Caddy would log each such error, one line per
// request for as long as the outage lasts (the storage failure is logged
// once per interval already). With handle_errors, the error goes to the
// site's error routes, which log it at debug level.
func (h *Handler) unavailable(w http.ResponseWriter, r *http.Request, err error) error {
	if h.HandleErrors {
		w.Header()["Retry-After"] = []string{"1"}
		return caddyhttp.Error(http.StatusServiceUnavailable, err)
	}
	h.pol.WriteUnavailable(w, r.Method)
	return nil
}

// checkStatus checks the status of a denial (the handler's or a limit's).
func checkStatus(n int64) error { return policy.CheckStatus(n) }

// checkShowKey checks how keys are shown: "hashed" (or "", the default) or
// "raw".
func checkShowKey(s string) error {
	switch s {
	case "", "hashed", "raw":
		return nil
	}
	return fmt.Errorf("show_key %q: want hashed or raw", s)
}
