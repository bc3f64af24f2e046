package edgecache

import (
	"bytes"
	"io"
	"net/http"
	"sync"

	"github.com/edgelimit/caddy-edgelimit/cache"
	"go.uber.org/zap"
)

// recMode is what a cacheRecorder does with the response it is given.
type recMode uint8

const (
	// modeInit: nothing written yet.
	modeInit recMode = iota
	// modeBuffer: a storable response, held until complete.
	modeBuffer
	// modeDiscard: the upstream failed and a stale copy will be served.
	modeDiscard
	// modePass: streaming to the client as it comes.
	modePass
)

// cacheRecorder stands between the cache and the next handler. It decides at
// WriteHeader what to do with the response: buffer it to be stored (up to
// max_size, past which it streams it on with DIRECT), discard it (a gateway
// failure with a stale copy to serve instead), or pass it on, control
// headers removed and Bloom-Status set.
type cacheRecorder struct {
	w     http.ResponseWriter
	r     *http.Request
	c     *Handler
	hdr   http.Header
	own   bool // hdr is the cacheRecorder's; else it is w's
	store bool // the response may be stored
	// sharedOnly stores the response only when the upstream said it may
	// be shared (a request with a private header).
	sharedOnly bool
	stale      bool // a stale copy waits to replace a gateway failure
	status     int
	mode       recMode
	buf        *bytes.Buffer
	decision   cache.Decision
	// v is what the cache did, for the headers and metrics: why the
	// request went forward, then why its response was not stored.
	v verdict
}

// newCacheRecorder returns a cacheRecorder for one request. A response that may be
// stored, or replaced by a stale copy, is given a header map of its own, so
// that the entry holds only the upstream's headers and a discarded failure
// leaves nothing behind; others write to w's headers directly.
func newCacheRecorder(w http.ResponseWriter, r *http.Request, c *Handler, store, stale bool, v verdict) *cacheRecorder {
	rec := &cacheRecorder{w: w, r: r, c: c, store: store, stale: stale, v: v}
	if store || stale {
		rec.hdr, rec.own = make(http.Header), true
	} else {
		rec.hdr = w.Header()
	}
	return rec
}

func (rec *cacheRecorder) Header() http.Header { return rec.hdr }

func (rec *cacheRecorder) WriteHeader(code int) {
	if rec.mode != modeInit {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// Informational answers go on only when nothing is held back.
		if !rec.own {
			cache.StripControl(rec.hdr)
			rec.w.WriteHeader(code)
		}
		return
	}
	rec.status = code
	switch {
	case rec.stale && gatewayStatus(code):
		rec.mode = modeDiscard
		return
	case rec.store && streaming(rec.hdr):
		rec.v.detail = "streaming"
	case rec.store:
		d := rec.c.policy.Decide(code, rec.hdr)
		if d.Store && !cache.CodingAccepted(rec.r.Header, rec.hdr) {
			d = cache.Decision{Reason: "a content coding the request does not accept", Detail: "coding"}
		}
		if d.Store && (d.Shared || !rec.sharedOnly) {
			rec.decision = d
			rec.mode = modeBuffer
			rec.buf = getBuffer()
			return
		}
		rec.v.detail = d.Detail
		if d.Store {
			d.Reason, rec.v.detail = "a request with a private header, and the response not marked shared", "not-shared"
		}
		if ce := rec.c.logger.Check(zap.DebugLevel, "response not stored"); ce != nil {
			ce.Write(zap.String("uri", rec.r.RequestURI), zap.String("reason", d.Reason))
		}
	}
	st := cache.Direct
	if gatewayStatus(code) && !fromUpstream(rec.r, code) {
		st = cache.Offline
		rec.v.detail = "offline"
	}
	_ = rec.pass(st)
}

// settleHeaders puts the recorded headers on w with Bloom-Status, for an
// error returned before anything was written (Caddy then writes the error
// status, or handle_errors renders it, with these headers: a limiter's
// Retry-After, say).
func (rec *cacheRecorder) settleHeaders(st cache.Status) {
	hdr := rec.w.Header()
	if rec.own {
		for name, vs := range rec.hdr {
			if !cache.IsControlHeader(name) {
				hdr[name] = vs
			}
		}
	} else {
		cache.StripControl(hdr)
	}
	rec.v.st = st
	rec.c.settle(hdr, rec.v)
}

// pass starts streaming to the client: headers, status, and whatever was
// buffered.
func (rec *cacheRecorder) pass(st cache.Status) error {
	rec.settleHeaders(st)
	rec.w.WriteHeader(rec.status)
	held := rec.buf
	rec.mode, rec.buf = modePass, nil
	if held != nil {
		defer putBuffer(held)
		if held.Len() > 0 {
			_, err := rec.w.Write(held.Bytes())
			return err
		}
	}
	return nil
}

func (rec *cacheRecorder) Write(p []byte) (int, error) {
	if rec.mode == modeInit {
		rec.WriteHeader(http.StatusOK)
	}
	switch rec.mode {
	case modeBuffer:
		if int64(rec.buf.Len()+len(p)) > rec.c.MaxSize {
			rec.v.detail = "too-large"
			if err := rec.pass(cache.Direct); err != nil {
				return 0, err
			}
			return rec.w.Write(p)
		}
		return rec.buf.Write(p)
	case modeDiscard:
		return len(p), nil
	}
	return rec.w.Write(p)
}

// ReadFrom keeps the fast path (sendfile) of the client's writer for
// responses that pass through.
func (rec *cacheRecorder) ReadFrom(src io.Reader) (int64, error) {
	if rec.mode == modeInit {
		rec.WriteHeader(http.StatusOK)
	}
	if rec.mode == modePass {
		if rf, ok := rec.w.(io.ReaderFrom); ok {
			return rf.ReadFrom(src)
		}
	}
	return io.Copy(writerOnly{rec}, src)
}

// writerOnly hides ReadFrom from io.Copy.
type writerOnly struct{ io.Writer }

// FlushError flushes a response that passes through; one being held is
// complete only at the end.
func (rec *cacheRecorder) FlushError() error {
	if rec.mode != modePass {
		return nil
	}
	return http.NewResponseController(rec.w).Flush()
}

// Unwrap lets http.ResponseController reach the client's connection
// (deadlines, and hijacking for the upgrades that pass through).
func (rec *cacheRecorder) Unwrap() http.ResponseWriter { return rec.w }

// free returns the cacheRecorder's buffer when the request is done.
func (rec *cacheRecorder) free() {
	if rec.buf != nil {
		putBuffer(rec.buf)
		rec.buf = nil
	}
}

var buffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func getBuffer() *bytes.Buffer {
	b := buffers.Get().(*bytes.Buffer)
	b.Reset()
	return b
}

func putBuffer(b *bytes.Buffer) {
	// Responses larger than usual must not pin their memory in the pool.
	if b.Cap() <= 1<<20 {
		buffers.Put(b)
	}
}
