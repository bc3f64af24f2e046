package edgecache

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/cache"
)

// A background fetch is an upstream request edge_cache makes for no
// client: to refresh an entry served stale (stale_while_revalidate), or to
// relieve a flight whose leader is slow while its waiters go on waiting
// (coalesce_wait). Each leads the flight of its key, so there is at most
// one per entry at a time; MaxBackgroundFetches bounds them across the
// process; each ends within backgroundTimeout or when its configuration is
// unloaded; none carries a body.

// MaxBackgroundFetches bounds the background fetches running at once, in
// every edge_cache of the process. Past it, none is started: a stale entry
// is served without a refresh (the next request tries again), and a waiter
// that gives up on a slow flight fetches in the foreground.
const MaxBackgroundFetches = 64

// backgroundTimeout bounds one background fetch, as reverse_proxy sets no
// response timeout by default. A network deadline, not a decision: it
// measures real waiting.
const backgroundTimeout = time.Minute

var backgroundSlots = make(chan struct{}, MaxBackgroundFetches)

// acquireBackground takes a slot for a background fetch, if one is free.
func acquireBackground() bool {
	select {
	case backgroundSlots <- struct{}{}:
		return true
	default:
		return false
	}
}

func releaseBackground() { <-backgroundSlots }

// background fetches for r in a goroutine that leads f and lands it,
// holding a slot taken with acquireBackground, then calls done with the
// outcome (done may be nil). private tells that r carries a private header
// that the key does not hold: the fetch goes without it (detach), and its
// response is stored only if the upstream marks it shared.
func (c *Handler) background(r *http.Request, next caddyhttp.Handler, p place, f *cache.Flight, fwd string, private bool, done func(cache.Outcome)) {
	bg, w, cancel := c.detach(r, private)
	go func() {
		defer releaseBackground()
		defer cancel()
		defer func() {
			// A panic must not take the process down: there is no server
			// goroutine to recover it. fetch has landed the flight.
			if p := recover(); p != nil {
				c.logger.Error("edge_cache background fetch panicked", zap.Any("panic", p), zap.String("uri", bg.RequestURI))
			}
		}()
		// From a private request, the response is stored only if marked
		// shared, as that request's own MISS would be.
		err := c.fetch(w, bg, next, p, nil, f, private, verdict{fwd: fwd, background: true})
		if err != nil {
			if ce := c.logger.Check(zap.DebugLevel, "edge_cache background fetch failed"); ce != nil {
				ce.Write(zap.String("uri", bg.RequestURI), zap.Error(err))
			}
		}
		if done != nil {
			o, _ := f.Landed()
			done(o)
		}
	}()
}

// revalidate refreshes the entry at p in the background, after r was
// served it stale: unless a fetch for it is in flight already (one refresh
// per entry; requests past the window wait for it as for any MISS), or
// MaxBackgroundFetches are running (the next request tries again).
func (c *Handler) revalidate(r *http.Request, next caddyhttp.Handler, p place, private bool) {
	if !acquireBackground() {
		revalidations[revalidateBusy].Inc()
		return
	}
	f, ok := c.flights.Lead(p.at.ID)
	if !ok {
		releaseBackground()
		return
	}
	c.background(r, next, p, f, fwdStale, private, func(o cache.Outcome) {
		switch o {
		case cache.Stored:
			revalidations[revalidateStored].Inc()
		case cache.Unreachable:
			revalidations[revalidateUnreachable].Inc()
		default:
			revalidations[revalidateNotStored].Inc()
		}
	})
}

// bodyHeaders describe a request body; a background fetch has none.
var bodyHeaders = []string{"Content-Length", "Transfer-Encoding", "Trailer", "Content-Type", "Content-Encoding", "Expect"}

// detach returns the request a background fetch sends for r, the writer it
// answers to, and the function that releases it. It is r as a MISS would
// send it (forUpstream strips the rest), with no body, HEAD made GET, a
// context of its own (r's values, not r's end: the client may leave), and
// Caddy's request state (replacer, vars) of its own, so that it shares
// nothing mutable with r.
//
// Placeholders r's handlers set before edge_cache ({http.auth.user.id}
// from basic_auth, a map's outputs) and its vars are carried over: the key
// holds what they derive from (Authorization, the identity). Unless
// private: then r carries a header the key does not hold (a session
// cookie), and the fetch goes without it, without r's vars, and with only
// the placeholders the identity keys on, so that it never runs with one
// user's credentials for an entry shared with others.
func (c *Handler) detach(r *http.Request, private bool) (*http.Request, http.ResponseWriter, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), backgroundTimeout)
	stop := context.AfterFunc(c.ctx, cancel)
	bg := r.Clone(ctx)
	if bg.Method == http.MethodHead {
		bg.Method = http.MethodGet
	}
	bg.Body, bg.GetBody, bg.ContentLength, bg.TransferEncoding, bg.Trailer = http.NoBody, nil, 0, nil, nil
	for _, n := range bodyHeaders {
		delete(bg.Header, n)
	}
	if private {
		for _, n := range c.private {
			delete(bg.Header, n)
		}
	}
	w := &discardWriter{h: make(http.Header)}
	repl := caddy.NewReplacer()
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	bg = caddyhttp.PrepareRequest(bg, repl, w, srv)
	if orig, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		// The new request's own placeholders come first; this answers
		// only what it does not know.
		repl.Map(func(key string) (any, bool) {
			v, ok := orig.Get(key)
			if ok && private && !c.identityKey(key) {
				// Known, and withheld: empty, not left as its name.
				return "", true
			}
			return v, ok
		})
	}
	if vars, ok := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any); ok && !private {
		for k, v := range vars {
			if caddyhttp.GetVar(bg.Context(), k) == nil {
				caddyhttp.SetVar(bg.Context(), k, v)
			}
		}
	}
	return bg, w, func() { stop(); cancel() }
}

// identityKey tells whether the placeholder key is one the identity
// templates read.
func (c *Handler) identityKey(key string) bool {
	for _, tmpl := range c.Identity {
		if strings.Contains(tmpl, "{"+key+"}") {
			return true
		}
	}
	return false
}

// discardWriter is where a background fetch answers: nobody reads it.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) WriteHeader(int)             {}
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
