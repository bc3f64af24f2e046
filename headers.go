package edgelimit

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// setHeaders writes the rate-limit headers for the decided limits. The
// x-ratelimit headers report the most constraining limit of the request,
// which may be an earlier handler's (prior); the IETF fields list the
// limits of every handler.
func (h *Handler) setHeaders(hdr http.Header, sc *scratch, report int, denied bool, prior *ledger) {
	res := sc.res[:len(sc.reqs)]
	keepPrior := !denied && prior != nil && len(prior.entries) > 0 && tighter(&prior.report, &res[report])
	if h.headers&headerX != 0 && !keepPrior {
		// One string holds the numbers and one array the values: two
		// allocations for the whole set.
		r := &res[report]
		b := strconv.AppendInt(sc.buf[:0], r.Limit, 10)
		n1 := len(b)
		b = strconv.AppendInt(b, r.Remaining, 10)
		n2 := len(b)
		b = strconv.AppendInt(b, resetUnix(r), 10)
		n3 := len(b)
		if h.TimeHeader {
			b = strconv.AppendInt(b, secondsCeil(r.Window), 10)
		}
		all := string(b)
		sc.buf = b[:0]
		vals := make([]string, 4)
		vals[0], vals[1], vals[2], vals[3] = all[:n1], all[n1:n2], all[n2:n3], all[n3:]
		hdr["X-Ratelimit-Limit"] = vals[0:1:1]
		hdr["X-Ratelimit-Remaining"] = vals[1:2:2]
		hdr["X-Ratelimit-Reset"] = vals[2:3:3]
		if h.TimeHeader {
			hdr["X-Ratelimit-Time"] = vals[3:4:4]
		}
	}
	if h.headers&headerIETF != 0 {
		b := appendPrior(sc.buf[:0], hdr, "Ratelimit-Policy")
		for i := range res {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = append(b, '"')
			b = append(b, sc.which[i].name...)
			b = append(b, `";q=`...)
			b = strconv.AppendInt(b, res[i].Limit, 10)
			if w := secondsCeil(res[i].Window); w > 0 {
				b = append(b, ";w="...)
				b = strconv.AppendInt(b, w, 10)
			}
		}
		hdr["Ratelimit-Policy"] = []string{string(b)}
		b = appendPrior(b[:0], hdr, "Ratelimit")
		for i := range res {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = append(b, '"')
			b = append(b, sc.which[i].name...)
			b = append(b, `";r=`...)
			b = strconv.AppendInt(b, res[i].Remaining, 10)
			b = append(b, ";t="...)
			b = strconv.AppendInt(b, secondsCeil(res[i].Reset), 10)
		}
		hdr["Ratelimit"] = []string{string(b)}
		sc.buf = b[:0]
	}
}

// appendPrior starts a structured field list with the items an earlier
// handler wrote; the caller then appends its own after ", ".
func appendPrior(b []byte, hdr http.Header, name string) []byte {
	if v := hdr[name]; len(v) == 1 && v[0] != "" {
		b = append(b, v[0]...)
		b = append(b, ", "...)
	}
	return b
}

func secondsCeil(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}

// resetUnix is the result's reset time in unix seconds, rounded up: the
// first whole second at which the quota is whole again. An aligned window
// that ends at 10:00:00 says 10:00:00.
func resetUnix(r *limiter.Result) int64 {
	s := r.ResetAt / 1e6
	if r.ResetAt%1e6 > 0 {
		s++
	}
	return s
}

// headerStyle selects the rate-limit header sets.
type headerStyle uint8

const (
	headerX headerStyle = 1 << iota
	headerIETF
)

func parseHeaderStyle(s string) (headerStyle, error) {
	switch s {
	case "", "x-ratelimit":
		return headerX, nil
	case "ratelimit":
		return headerIETF, nil
	case "both":
		return headerX | headerIETF, nil
	case "none":
		return 0, nil
	}
	return 0, fmt.Errorf("headers %q: want x-ratelimit, ratelimit, both or none", s)
}
