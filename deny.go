package edgelimit

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// deny answers a denied request.
func (h *Handler) deny(w http.ResponseWriter, r *http.Request, l *compiledLimit, key, tier string, res *limiter.Result) error {
	d := &denial{h: h, l: l, key: key, tier: tier, status: h.Status, retry: retryAfterSeconds(res.RetryAfter), res: *res}
	if l.status != 0 {
		d.status = l.status
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	// The {edge_limit.*} placeholders, for handle_errors routes and log
	// formats, computed when read.
	repl.Map(d.value)
	if h.HandleErrors {
		w.Header()["Retry-After"] = []string{strconv.FormatInt(d.retry, 10)}
		return caddyhttp.Error(d.status, fmt.Errorf("rate limit %q exceeded, retry after %d seconds", l.name, d.retry))
	}
	tmpl := h.body
	if l.body != nil {
		tmpl = l.body
	}
	buf := bodyBuffers.Get().(*[]byte)
	body := tmpl.render((*buf)[:0], d, repl, h.escape)
	// The header values: the numbers in one string, the values in the
	// denial's array, each its own slice (a handler that rewrites a value
	// in place, as header replace does, rewrites only this response's).
	var nums [40]byte
	b := strconv.AppendInt(nums[:0], d.retry, 10)
	n := len(b)
	all := string(strconv.AppendInt(b, int64(len(body)), 10))
	d.hdr = [3]string{all[:n], h.ContentType, all[n:]}
	hdr := w.Header()
	hdr["Retry-After"] = d.hdr[0:1:1]
	hdr["Content-Type"] = d.hdr[1:2:2]
	hdr["Content-Length"] = d.hdr[2:3:3]
	w.WriteHeader(d.status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
	if cap(body) <= 64<<10 {
		*buf = body
		bodyBuffers.Put(buf)
	}
	return nil
}

// secondsText is n seconds with its unit: "1 second", "56 seconds".
func secondsText(n int64) string {
	return plural(n, "second")
}

func plural(n int64, unit string) string {
	s := strconv.FormatInt(n, 10) + " " + unit
	if n != 1 {
		s += "s"
	}
	return s
}

// humanUnits are the units humanSeconds speaks in, largest first.
var humanUnits = [...]struct {
	size int64
	name string
}{{86400, "day"}, {3600, "hour"}, {60, "minute"}, {1, "second"}}

// humanSeconds says n seconds as a person would, in at most two units:
// "1 second", "45 seconds", "1 minute 30 seconds", "2 hours", "1 day 3
// hours". It is exact or rounded up, never sooner than n: a client that
// waits as long as it says gets through.
func humanSeconds(n int64) string {
	if n < 60 {
		return secondsText(n)
	}
	for i, u := range humanUnits[:3] {
		if n < u.size {
			continue
		}
		big, rest := n/u.size, n%u.size
		if rest == 0 {
			return plural(big, u.name)
		}
		next := humanUnits[i+1]
		small := (rest + next.size - 1) / next.size
		if small*next.size == u.size {
			return plural(big+1, u.name)
		}
		return plural(big, u.name) + " " + plural(small, next.name)
	}
	return secondsText(n)
}

// compileTemplate escapes every brace of s that is not part of a placeholder
// ({name} where name starts with a letter and holds letters, digits and
// ._-/:), so that JSON bodies can be written as they are. Braces the author
// escaped already stay escaped.
func compileTemplate(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && (s[i+1] == '{' || s[i+1] == '}'):
			b.WriteString(s[i : i+2])
			i++
		case c == '{':
			if n := placeholderLen(s[i:]); n > 0 {
				b.WriteString(s[i : i+n])
				i += n - 1
			} else {
				b.WriteString(`\{`)
			}
		case c == '}':
			b.WriteString(`\}`)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// placeholderLen returns the length of the placeholder at the start of s,
// or 0.
func placeholderLen(s string) int {
	if len(s) < 3 || !isLetter(s[1]) {
		return 0
	}
	for i := 2; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '}':
			return i + 1
		case isLetter(c) || c >= '0' && c <= '9' || strings.IndexByte("._-/:", c) >= 0:
		default:
			return 0
		}
	}
	return 0
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// retryAfterSeconds rounds up: a client that waits that long gets through,
// and a denied client is never told to retry after 0 seconds.
func retryAfterSeconds(d time.Duration) int64 {
	return max(secondsCeil(d), 1)
}

// unavailable answers 503 with Retry-After: 1 when the storage cannot
// decide and its policy is to deny. The answer is written here, not
// returned as an error: Caddy would log each such error, one line per
// request for as long as the outage lasts (the storage failure is logged
// once per interval already). With handle_errors, the error goes to the
// site's error routes, which log it at debug level.
func (h *Handler) unavailable(w http.ResponseWriter, r *http.Request, err error) error {
	hdr := w.Header()
	hdr["Retry-After"] = []string{"1"}
	if h.HandleErrors {
		return caddyhttp.Error(http.StatusServiceUnavailable, err)
	}
	body, ct := "Service unavailable, try again in 1 second\n", "text/plain; charset=utf-8"
	if strings.Contains(strings.ToLower(h.ContentType), "json") { // the body is ours: no escaping
		body, ct = `{"status":503,"error":"Service unavailable, try again in 1 second"}`, h.ContentType
	}
	hdr["Content-Type"] = []string{ct}
	hdr["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(http.StatusServiceUnavailable)
	if r.Method != http.MethodHead {
		_, _ = io.WriteString(w, body)
	}
	return nil
}

// checkStatus checks the status of a denial (the handler's or a limit's).
func checkStatus(n int64) error {
	if n < 400 || n > 599 {
		return fmt.Errorf("status %d: a denial needs a 4xx or 5xx status", n)
	}
	return nil
}

// checkShowKey checks how keys are shown: "hashed" (or "", the default) or
// "raw".
func checkShowKey(s string) error {
	switch s {
	case "", "hashed", "raw":
		return nil
	}
	return fmt.Errorf("show_key %q: want hashed or raw", s)
}
