package edgecache

import (
	"context"
	"errors"
	"mime"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/edgelimit/caddy-edgelimit/cache"
)

// ServeHTTP implements caddyhttp.MiddlewareHandler.
//
// A cacheable request (GET, HEAD, OPTIONS) with a fresh entry is a HIT,
// answered here; so is one with a stale entry within its
// stale-while-revalidate window, which is refreshed in the background. A GET or OPTIONS without one joins the flight for its
// key: the first goes upstream (MISS when stored, DIRECT when not), the
// others wait (coalesce_wait at most) and are served its entry. Anything
// else goes straight upstream with DIRECT: other methods, upgrades, and
// requests with a body (the body is not in the key, and a client that
// never sends it must not hold the others of its URL). A request that
// carries a private header (a session cookie) is served only shared
// entries and leads no flight. When the upstream cannot be reached, a
// stale copy within stale_if_error is served, else a 502; both say OFFLINE.
func (c *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	switch {
	case !cache.CacheableMethod(r.Method):
		return c.passThrough(w, r, next, nil, verdict{fwd: fwdMethod})
	case len(r.Header["Upgrade"]) > 0:
		return c.passThrough(w, r, next, nil, verdict{fwd: fwdBypass, detail: "upgrade"})
	case hasBody(r):
		return c.passThrough(w, r, next, nil, verdict{fwd: fwdBypass, detail: "body"})
	}
	private := c.isPrivate(r)
	now := c.clock.Now()
	p, e, err := c.find(r, cache.KeyOf(r, c.Zone, c.identity(r)), now)
	if err != nil {
		c.storeFailed(err)
		return c.passThrough(w, r, next, nil, verdict{fwd: fwdMiss, detail: "store-error"})
	}
	var stale *cache.Entry
	fwd := fwdURIMiss
	switch {
	case e == nil:
		if p.index != nil {
			fwd = fwdVaryMiss // other variants are stored
		}
	case e.Index || !e.Matches(r.Header):
		fwd = fwdVaryMiss
	case !e.Fresh(now) && e.Revalidating(now) && (e.Shared || !private):
		// Served at once, stale, while one request refreshes it.
		c.revalidate(r, next, p, private)
		return c.serveHit(w, r, e, now)
	case !e.Fresh(now):
		fwd = fwdStale
		if e.Usable(now) && (e.Shared || !private) {
			stale = e
		}
	case e.Shared || !private:
		return c.serveHit(w, r, e, now)
	default:
		// A fresh entry this request may not be served: it carries a
		// private header and the entry is not shared.
		fwd = fwdRequest
	}
	if r.Method == http.MethodHead {
		// A HEAD has no body to fill the GET entry with.
		return c.passThrough(w, r, next, stale, verdict{fwd: fwd, detail: "head"})
	}
	if private {
		// Its response may be this user's alone: it is stored only if the
		// upstream says it may be shared, and nobody waits for it.
		return c.fetch(w, r, next, p, stale, nil, true, verdict{fwd: fwd})
	}
	f, leader := c.flights.Join(p.at.ID)
	if !leader {
		return c.await(w, r, next, f, p, stale, fwd)
	}
	// A flight that landed between Get and Join has stored its entry.
	if e, err := c.store.Get(r.Context(), p.at, now); err == nil && e != nil && !e.Index && e.Matches(r.Header) && e.Fresh(now) {
		c.flights.Land(p.at.ID, f, cache.Stored, e)
		return c.serveHit(w, r, e, now)
	}
	return c.fetch(w, r, next, p, stale, f, false, verdict{fwd: fwd})
}

// place is where a request's response is kept: under the URL's key, or,
// when the URL's responses vary, under the key of the variant the request
// selects, with an index under the URL's key (cache.NewIndex).
type place struct {
	// key is the URL's key.
	key cache.Key
	// index is the URL's index, when its responses vary.
	index *cache.Entry
	// at is where the request's response is looked up (key, or the
	// variant's key), and the flight it joins.
	at cache.Key
}

// find looks up the entry that serves r, following the URL's index to the
// variant r selects.
func (c *Handler) find(r *http.Request, key cache.Key, now time.Time) (place, *cache.Entry, error) {
	p := place{key: key, at: key}
	e, err := c.store.Get(r.Context(), key, now)
	if err != nil || e == nil || !e.Index {
		return p, e, err
	}
	p.index, p.at = e, cache.VariantKey(key, e.Vary, r.Header)
	e, err = c.store.Get(r.Context(), p.at, now)
	return p, e, err
}

// put stores e, the response to r: under the URL's key when it does not
// vary, else under its variant's key, with the URL's index beside it.
func (c *Handler) put(ctx context.Context, p place, r *http.Request, e *cache.Entry, now time.Time) error {
	if len(e.Vary) == 0 {
		return c.store.Set(ctx, p.key, e, now)
	}
	if err := c.store.Set(ctx, cache.VariantKey(p.key, e.Vary, r.Header), e, now); err != nil {
		return err
	}
	// The index is no response: a purge by authorization leaves it (and
	// counts the variants it removes).
	ik := p.key
	ik.HasAuth = false
	return c.store.Set(ctx, ik, cache.NewIndex(e, p.index), now)
}

// await waits for the flight another request leads, and answers from what
// it brought. Past coalesce_wait, the first waiter to give up has the
// upstream asked again, in the background, for all of them, and they all
// wait for that request or the first, whichever answers first
// (cache.Group.Relieve); when MaxBackgroundFetches are running, that
// waiter asks in the foreground instead. When the flight brought nothing
// this request may be served, the request asks the upstream itself.
func (c *Handler) await(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, f *cache.Flight, p place, stale *cache.Entry, fwd string) error {
	coalescedTotal.Inc()
	for {
		ctx, cancel := context.WithTimeout(r.Context(), time.Duration(c.CoalesceWait))
		outcome, fe, err := f.Wait(ctx)
		cancel()
		switch {
		case err != nil && r.Context().Err() != nil:
			c.settle(w.Header(), verdict{st: cache.Direct, fwd: fwd, collapsed: -1, detail: "client-gone"})
			return caddyhttp.Error(499, err)
		case err != nil:
			coalesceTimeoutsTotal.Inc()
			relief, leader := c.flights.Relieve(p.at.ID, f)
			switch {
			case leader && acquireBackground():
				// The relief goes in the background, so that this request
				// too is served by whichever fetch answers first.
				c.background(r, next, p, relief, fwd, false, nil)
			case leader:
				return c.fetch(w, r, next, p, stale, relief, false, verdict{fwd: fwd, collapsed: -1})
			}
			f = relief
			continue
		case outcome == cache.Stored && fe.Matches(r.Header):
			return c.serve(w, r, fe, verdict{st: cache.Hit, fwd: fwd, collapsed: 1}, c.clock.Now())
		case outcome == cache.Unreachable:
			return c.offline(w, r, stale, nil, errUpstreamUnreachable, verdict{fwd: fwd, collapsed: 1})
		}
		// Not stored, or another variant: the leader's response may have
		// been for the leader only.
		return c.fetch(w, r, next, p, stale, nil, false, verdict{fwd: fwd, collapsed: -1})
	}
}

// hasBody tells whether the request has (or may still send) a body: a
// length, chunks, or trailers to come (an HTTP/2 stream that declares
// "content-length: 0" and a trailer still sends its upstream a body).
func hasBody(r *http.Request) bool {
	return r.ContentLength != 0 || len(r.TransferEncoding) > 0 || len(r.Trailer) > 0 || len(r.Header["Trailer"]) > 0
}

var errUpstreamUnreachable = errors.New("edge_cache: upstream unreachable")

// fetch asks the upstream for a GET or OPTIONS, stores what may be stored,
// and answers. f is the flight this request leads, if any: it lands before
// the client is answered, and whatever happens (a panic included).
// With sharedOnly, the response is stored only when the upstream said it
// may be shared. v says why the request goes forward.
func (c *Handler) fetch(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, p place, stale *cache.Entry, f *cache.Flight, sharedOnly bool, v verdict) error {
	landed := f == nil
	land := func(o cache.Outcome, e *cache.Entry) {
		if !landed {
			landed = true
			c.flights.Land(p.at.ID, f, o, e)
		}
	}
	defer land(cache.Uncacheable, nil)

	rec := newCacheRecorder(w, r, c, true, stale != nil, v)
	rec.sharedOnly = sharedOnly
	defer rec.free()
	err := next.ServeHTTP(rec, c.forUpstream(r))
	if err != nil {
		if rec.mode == modePass {
			return err
		}
		if upstreamUnreachable(err) {
			land(cache.Unreachable, nil)
			return c.offline(w, r, stale, rec, err, rec.v)
		}
		// An error answered by Caddy's error handling (a limiter's
		// denial, say): nothing to store.
		rec.v.detail = "error"
		rec.settleHeaders(cache.Direct)
		return err
	}
	if rec.mode == modeInit {
		rec.WriteHeader(http.StatusOK)
	}
	switch rec.mode {
	case modeDiscard:
		land(cache.Unreachable, nil)
		return c.serveStale(w, r, stale, rec.v, rec.status)
	case modeBuffer:
		now := c.clock.Now()
		e := cache.NewEntry(rec.status, rec.hdr, rec.buf.Bytes(), rec.decision, r.Header, now, c.stale)
		// A client that leaves now must not cost the others the entry.
		if err := c.put(context.WithoutCancel(r.Context()), p, r, e, now); err != nil {
			rec.v.detail = "too-large"
			if !errors.Is(err, cache.ErrTooLarge) {
				c.storeFailed(err)
				rec.v.detail = "store-error"
			}
			land(cache.Uncacheable, nil)
			return rec.pass(cache.Direct)
		}
		land(cache.Stored, e)
		return c.serveMiss(w, r, rec, e)
	}
	return nil
}

// passThrough sends a request upstream without storing: methods that are
// not cacheable, HEAD misses, upgrades, and every request while the store
// fails. stale, for a HEAD, is served if the upstream is offline. v says
// why the request goes forward.
func (c *Handler) passThrough(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, stale *cache.Entry, v verdict) error {
	rec := newCacheRecorder(w, r, c, false, stale != nil, v)
	defer rec.free()
	err := next.ServeHTTP(rec, r)
	if err != nil {
		if rec.mode == modePass {
			return err
		}
		if upstreamUnreachable(err) {
			return c.offline(w, r, stale, rec, err, rec.v)
		}
		rec.settleHeaders(cache.Direct)
		return err
	}
	switch rec.mode {
	case modeInit:
		rec.WriteHeader(http.StatusOK)
	case modeDiscard:
		return c.serveStale(w, r, stale, rec.v, rec.status)
	}
	return nil
}

// offline answers when the upstream could not be reached: the stale copy
// if there is one, else a 502 through Caddy's error handling (so that
// handle_errors can render it), both with OFFLINE.
func (c *Handler) offline(w http.ResponseWriter, r *http.Request, stale *cache.Entry, rec *cacheRecorder, err error, v verdict) error {
	if stale != nil {
		return c.serveStale(w, r, stale, v, 0)
	}
	v.detail = "offline"
	if rec != nil {
		rec.v = v
		rec.settleHeaders(cache.Offline)
	} else {
		v.st = cache.Offline
		c.settle(w.Header(), v)
	}
	return caddyhttp.Error(http.StatusBadGateway, err)
}

// serveStale serves a stale copy because the upstream could not be
// reached (status is what the next handler answered instead, 0 for none).
func (c *Handler) serveStale(w http.ResponseWriter, r *http.Request, e *cache.Entry, v verdict, status int) error {
	staleServedTotal.Inc()
	now := c.clock.Now()
	v.st, v.fwd, v.detail = cache.Offline, fwdStale, "offline"
	if status != 0 && status != e.Status {
		v.fwdStatus = status
	}
	return c.serve(w, r, e, v, now)
}

// serveHit serves a fresh entry: Age and Cache-Status come from the
// entry's memo, so that a hit allocates only the copy of its headers.
func (c *Handler) serveHit(w http.ResponseWriter, r *http.Request, e *cache.Entry, now time.Time) error {
	countResponse(cache.Hit)
	m := c.hitMemo(e, now)
	hdr := w.Header()
	vals := c.copyEntryHeader(hdr, e)
	if !c.BloomStatusOff {
		vals[0] = cache.Hit.String()
		hdr[cache.HeaderStatus] = vals[0:1:1]
	}
	if c.statusItem != "" {
		vals[3] = m.Status
		hdr[HeaderCacheStatus] = vals[3:4:4]
	}
	return c.writeEntry(w, r, e, m.AgeValue, vals)
}

// serve answers from an entry with the headers of v and the entry's TTL:
// a waiter's HIT, or a stale OFFLINE.
func (c *Handler) serve(w http.ResponseWriter, r *http.Request, e *cache.Entry, v verdict, now time.Time) error {
	age := e.Age(now)
	v.hasTTL, v.ttl = true, ttlOf(e, age)
	hdr := w.Header()
	vals := c.copyEntryHeader(hdr, e)
	// The entry's own Cache-Status (from the caches behind) comes first.
	c.settle(hdr, v)
	return c.writeEntry(w, r, e, strconv.FormatInt(age, 10), vals)
}

// copyEntryHeader puts the entry's headers on hdr. The entry is shared, so
// its header values are copied (in one allocation) before handlers
// outside this one may change them in place; the four values left over
// are for Bloom-Status, Age, Content-Length and Cache-Status.
func (c *Handler) copyEntryHeader(hdr http.Header, e *cache.Entry) []string {
	vals := make([]string, e.HeaderValues()+4)
	for name, vs := range e.Header {
		n := copy(vals, vs)
		hdr[name] = vals[:n:n]
		vals = vals[n:]
	}
	return vals
}

// writeEntry writes the entry's status and body, or 304 when the request's
// If-None-Match matches; vals are copyEntryHeader's spare values.
func (c *Handler) writeEntry(w http.ResponseWriter, r *http.Request, e *cache.Entry, age string, vals []string) error {
	hdr := w.Header()
	vals[1] = age
	hdr["Age"] = vals[1:2:2]
	if e.NotModified(r.Header["If-None-Match"]) {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	vals[2] = e.ContentLength()
	hdr["Content-Length"] = vals[2:3:3]
	w.WriteHeader(e.Status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(e.Body)
	}
	return nil
}

// serveMiss answers the request whose response was just stored: with its
// own headers (the limiter's among them, which the entry leaves out), the
// entry's ETag, and MISS.
func (c *Handler) serveMiss(w http.ResponseWriter, r *http.Request, rec *cacheRecorder, e *cache.Entry) error {
	hdr := w.Header()
	for name, vs := range rec.hdr {
		if !cache.IsControlHeader(name) && name != "Content-Length" {
			hdr[name] = vs
		}
	}
	hdr["Etag"] = []string{e.ETag}
	v := rec.v
	v.st, v.stored = cache.Miss, true
	notModified := e.NotModified(r.Header["If-None-Match"])
	if notModified {
		v.fwdStatus = e.Status
	}
	c.settle(hdr, v)
	if notModified {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	hdr["Content-Length"] = []string{e.ContentLength()}
	w.WriteHeader(e.Status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(e.Body)
	}
	return nil
}

// forUpstream returns r as the upstream may see it when its response may
// be stored: without the conditional headers that would let the upstream
// answer 304 (the cache needs the whole response, and answers the
// condition itself), and without the headers that make an upstream answer
// for another URL, method or host, which are not in the key.
func (c *Handler) forUpstream(r *http.Request) *http.Request {
	var h http.Header // a copy, made at the first header to drop
	for n := range r.Header {
		if n == "If-None-Match" || n == "If-Modified-Since" || c.stripped(n) {
			if h == nil {
				h = r.Header.Clone()
			}
			delete(h, n)
		}
	}
	if h == nil {
		return r
	}
	r2 := r.WithContext(r.Context())
	r2.Header = h
	return r2
}

// upstreamUnreachable tells whether the next handler's error means the
// upstream could not be reached: reverse_proxy's 502, 503 (no upstream
// available) or 504 (timeout), or a network error returned as it is.
func upstreamUnreachable(err error) bool {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		return gatewayStatus(he.StatusCode)
	}
	var ne net.Error
	return errors.As(err, &ne)
}

func gatewayStatus(code int) bool {
	return code == http.StatusBadGateway || code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout
}

// fromUpstream tells whether a response status is the upstream's own, as
// reverse_proxy reports it, rather than one a handler wrote because the
// upstream failed.
func fromUpstream(r *http.Request, code int) bool {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return false
	}
	v, ok := repl.Get("http.reverse_proxy.status_code")
	return ok && v == code
}

// streaming tells whether a response is meant to reach the client as it is
// produced (server-sent events, RFC 10036 incremental), so it must not be
// held back to be stored.
func streaming(h http.Header) bool {
	if caddyhttp.IsIncremental(h) {
		return true
	}
	ct := h.Get("Content-Type")
	if ct == "" {
		return false
	}
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "text/event-stream"
}
