package policy

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// HeaderStyle selects the rate-limit header sets.
type HeaderStyle uint8

// The header sets: literals, not 1 << iota (see TestYaegiSafe).
const (
	HeaderX    HeaderStyle = 1
	HeaderIETF HeaderStyle = 2
)

// ParseHeaderStyle reads x-ratelimit (default), ratelimit, both or none.
func ParseHeaderStyle(s string) (HeaderStyle, error) {
	switch s {
	case "", "x-ratelimit":
		return HeaderX, nil
	case "ratelimit":
		return HeaderIETF, nil
	case "both":
		return HeaderX | HeaderIETF, nil
	case "none":
		return 0, nil
	}
	return 0, fmt.Errorf("headers %q: want x-ratelimit, ratelimit, both or none", s)
}

// WriteHeaders writes the rate-limit headers of the decided limits. The
// X-RateLimit headers report the most constraining limit of the request,
// which may be an earlier handler's (prior); the IETF fields list the
// limits of every handler. The X-RateLimit headers of the first handler,
// the usual case, are written here; the rest is otherHeaders'.
func WriteHeaders(p *Policy, hdr http.Header, d *Decision, report int, denied bool, prior *Ledger) {
	if (p.Headers != HeaderX || p.TimeHeader || prior != nil) && !otherHeaders(p, hdr, d, report, denied, prior) {
		return
	}
	writeX(hdr, &d.Res[report])
}

// writeX writes the X-RateLimit-Limit, -Remaining and -Reset headers of r.
func writeX(hdr http.Header, r *limiter.Result) {
	// The values in one array, each a slice of its own (a handler that
	// rewrites a value in place, as header replace does, rewrites only
	// this one); the reset is ResetUnix's, written out.
	reset := r.ResetAt / 1e6
	if r.ResetAt%1e6 > 0 {
		reset++
	}
	vals := []string{strconv.FormatInt(r.Limit, 10), strconv.FormatInt(r.Remaining, 10), strconv.FormatInt(reset, 10)}
	hdr["X-Ratelimit-Limit"] = vals[0:1:1]
	hdr["X-Ratelimit-Remaining"] = vals[1:2:2]
	hdr["X-Ratelimit-Reset"] = vals[2:3:3]
}

// otherHeaders writes the IETF fields and X-RateLimit-Time, and tells
// whether the X-RateLimit headers are to be written (not when an earlier
// handler's report a tighter limit).
func otherHeaders(p *Policy, hdr http.Header, d *Decision, report int, denied bool, prior *Ledger) bool {
	if p.Headers&HeaderIETF != 0 {
		writeIETF(hdr, d)
	}
	r := &d.Res[report]
	if p.Headers&HeaderX == 0 || prior != nil && !denied && keepPrior(prior, r) {
		return false
	}
	if p.TimeHeader {
		hdr["X-Ratelimit-Time"] = []string{strconv.FormatInt(SecondsCeil(r.Window), 10)}
	}
	return true
}

// keepPrior tells whether an earlier handler's X-RateLimit headers report
// a tighter limit than r.
func keepPrior(prior *Ledger, r *limiter.Result) bool {
	return prior.HasReport && Tighter(&prior.Report, r)
}

// writeIETF writes the RateLimit-Policy and RateLimit fields, an item per
// limit, after those of earlier handlers. Each item is appended with the
// ", " that parts it from the one before (its limit's ietfQ, ietfR), cut
// from a field's first (cut). What it calls is written out: calls less.
func writeIETF(hdr http.Header, d *Decision) {
	b := d.Buf[:0]
	cut := 2
	if v := hdr["Ratelimit-Policy"]; len(v) == 1 && v[0] != "" {
		b = append(b, v[0]...)
		cut = 0
	}
	for i := range d.Res {
		r := &d.Res[i]
		b = append(b, d.Meta[i].Limit.ietfQ...)
		b = strconv.AppendInt(b, r.Limit, 10)
		if w := int64((r.Window + time.Second - 1) / time.Second); w > 0 {
			b = append(b, ";w="...)
			b = strconv.AppendInt(b, w, 10)
		}
	}
	hdr["Ratelimit-Policy"] = []string{string(b[cut:])}
	b = b[:0]
	cut = 2
	if v := hdr["Ratelimit"]; len(v) == 1 && v[0] != "" {
		b = append(b, v[0]...)
		cut = 0
	}
	d.ietfAt = len(b) + 2 - cut
	for i := range d.Res {
		r := &d.Res[i]
		b = append(b, d.Meta[i].Limit.ietfR...)
		b = strconv.AppendInt(b, r.Remaining, 10)
		b = append(b, ";t="...)
		b = strconv.AppendInt(b, int64((r.Reset+time.Second-1)/time.Second), 10)
	}
	d.ietfLen = len(b) - cut - d.ietfAt
	hdr["Ratelimit"] = []string{string(b[cut:])}
	d.Buf = b[:0]
}

// SecondsCeil is d in whole seconds, rounded up.
func SecondsCeil(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}

// ResetUnix is the result's reset time in unix seconds, rounded up: the
// first whole second at which the quota is whole again. An aligned window
// that ends at 10:00:00 says 10:00:00.
func ResetUnix(r *limiter.Result) int64 {
	s := r.ResetAt / 1e6
	if r.ResetAt%1e6 > 0 {
		s++
	}
	return s
}

// RetryAfterSeconds rounds up: a client that waits that long gets through,
// and a denied client is never told to retry after 0 seconds.
func RetryAfterSeconds(d time.Duration) int64 {
	s := SecondsCeil(d)
	if s < 1 {
		return 1
	}
	return s
}
