package edgelimit

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// The responses are the Caddy module's (headers.go and deny.go there), so
// that an API can move between the two edges without its clients noticing.

// headerStyle selects the rate-limit header sets.
type headerStyle uint8

const (
	headerX    headerStyle = 1 // literals, not 1 << iota: see TestYaegiSafe
	headerIETF headerStyle = 2
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

// setHeaders writes the rate-limit headers of the decided limits. The
// x-ratelimit headers report the most constraining limit of the request,
// which may be an earlier edgelimit middleware's; the IETF fields list the
// limits of every middleware.
func (m *middleware) setHeaders(hdr http.Header, d *decision, report int, denied bool, st *requestState) {
	r := &d.res[report]
	keepPrior := !denied && st != nil && st.hasReport && tighter(&st.report, r)
	if m.headers&headerX != 0 && !keepPrior {
		hdr["X-Ratelimit-Limit"] = []string{strconv.FormatInt(r.Limit, 10)}
		hdr["X-Ratelimit-Remaining"] = []string{strconv.FormatInt(r.Remaining, 10)}
		hdr["X-Ratelimit-Reset"] = []string{strconv.FormatInt(resetUnix(r), 10)}
		if m.timeHeader {
			hdr["X-Ratelimit-Time"] = []string{strconv.FormatInt(secondsCeil(r.Window), 10)}
		}
	}
	if m.headers&headerIETF != 0 {
		var policy, state strings.Builder
		appendPrior(&policy, hdr, "Ratelimit-Policy")
		appendPrior(&state, hdr, "Ratelimit")
		for i := range d.res {
			res := &d.res[i]
			if i > 0 {
				policy.WriteString(", ")
				state.WriteString(", ")
			}
			policy.WriteString(`"` + d.which[i].name + `";q=` + strconv.FormatInt(res.Limit, 10))
			if w := secondsCeil(res.Window); w > 0 {
				policy.WriteString(";w=" + strconv.FormatInt(w, 10))
			}
			state.WriteString(`"` + d.which[i].name + `";r=` + strconv.FormatInt(res.Remaining, 10) +
				";t=" + strconv.FormatInt(secondsCeil(res.Reset), 10))
		}
		hdr["Ratelimit-Policy"] = []string{policy.String()}
		hdr["Ratelimit"] = []string{state.String()}
	}
}

// appendPrior starts a structured field list with the items an earlier
// middleware wrote.
func appendPrior(b *strings.Builder, hdr http.Header, name string) {
	if v := hdr[name]; len(v) == 1 && v[0] != "" {
		b.WriteString(v[0])
		b.WriteString(", ")
	}
}

func secondsCeil(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}

// resetUnix is the result's reset time in unix seconds, rounded up: the
// first whole second at which the quota is whole again.
func resetUnix(r *limiter.Result) int64 {
	s := r.ResetAt / 1e6
	if r.ResetAt%1e6 > 0 {
		s++
	}
	return s
}

// retryAfterSeconds rounds up, and is never 0.
func retryAfterSeconds(d time.Duration) int64 {
	s := secondsCeil(d)
	if s < 1 {
		return 1
	}
	return s
}

// deny answers a denied request.
func (m *middleware) deny(w http.ResponseWriter, r *http.Request, l *compiledLimit, key, tier string, res *limiter.Result) {
	status := m.status
	if l.status != 0 {
		status = l.status
	}
	retry := retryAfterSeconds(res.RetryAfter)
	tmpl := m.body
	if l.body != nil {
		tmpl = l.body
	}
	v := &denial{status: status, name: l.name, key: m.displayKey(key), tier: tier, retry: retry, res: res}
	body := tmpl.render(r, v, m.ips, m.escape)
	hdr := w.Header()
	hdr["Retry-After"] = []string{strconv.FormatInt(retry, 10)}
	hdr["Content-Type"] = []string{m.contentTyp}
	hdr["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(body))
	}
}

// displayKey is the key as bodies and logs show it.
func (m *middleware) displayKey(key string) string {
	if m.rawKeys {
		if len(key) > 256 {
			return key[:256]
		}
		return key
	}
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:8])
}

// denial holds the values of the {edge_limit.*} placeholders.
type denial struct {
	status int
	name   string
	key    string
	tier   string
	retry  int64
	res    *limiter.Result
}

// template is a parsed body template: literal text and placeholders.
type template []segment

type segment struct {
	text        string
	placeholder bool
}

// parseTemplate splits s into text and placeholders as the Caddy module
// reads a body: {name}, where name starts with a letter and holds letters,
// digits and ._-/:, is a placeholder; \{ and \} are literal braces; any
// other brace is literal too, so JSON can be written as it is.
func parseTemplate(s string) template {
	var out template
	var text strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && (s[i+1] == '{' || s[i+1] == '}'):
			text.WriteByte(s[i+1])
			i++
		case c == '{':
			if n := placeholderLen(s[i:]); n > 0 {
				if text.Len() > 0 {
					out = append(out, segment{text: text.String()})
					text.Reset()
				}
				out = append(out, segment{text: s[i+1 : i+n-1], placeholder: true})
				i += n - 1
			} else {
				text.WriteByte(c)
			}
		default:
			text.WriteByte(c)
		}
	}
	if text.Len() > 0 {
		out = append(out, segment{text: text.String()})
	}
	return out
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

// render fills the template, its string values escaped for the body's
// content type (escaperFor): a hostile header echoed in the body cannot
// break out of its string or element. Unknown placeholders are empty.
func (t template) render(r *http.Request, d *denial, ips *ipStrategy, escape escaping) string {
	var b strings.Builder
	for _, s := range t {
		if !s.placeholder {
			b.WriteString(s.text)
			continue
		}
		v, isString := placeholder(s.text, r, d, ips)
		if isString {
			v = escape.apply(v)
		}
		b.WriteString(v)
	}
	return b.String()
}

// shorthands are the Caddyfile's short placeholder names.
var shorthands = map[string]string{
	"method": "http.request.method", "host": "http.request.host", "hostport": "http.request.hostport",
	"uri": "http.request.uri", "path": "http.request.uri.path", "query": "http.request.uri.query",
	"scheme": "http.request.scheme", "remote_host": "http.request.remote.host",
	"client_ip": "http.vars.client_ip",
}

// placeholder returns a placeholder's value, and whether it is a string
// (numbers are not escaped, as in Caddy).
func placeholder(name string, r *http.Request, d *denial, ips *ipStrategy) (string, bool) {
	if rest, ok := strings.CutPrefix(name, "edge_limit."); ok {
		return denialValue(rest, d)
	}
	if long, ok := shorthands[name]; ok {
		name = long
	}
	for _, p := range [...][2]string{{"header.", "http.request.header."}, {"query.", "http.request.uri.query."},
		{"cookie.", "http.request.cookie."}, {"path.", "http.request.uri.path."}} {
		if rest, ok := strings.CutPrefix(name, p[0]); ok {
			name = p[1] + rest
		}
	}
	switch name {
	case "http.request.method":
		return r.Method, true
	case "http.request.host":
		if h, _, err := net.SplitHostPort(r.Host); err == nil {
			return h, true
		}
		return r.Host, true
	case "http.request.hostport":
		return r.Host, true
	case "http.request.scheme":
		if r.TLS != nil {
			return "https", true
		}
		return "http", true
	case "http.request.uri":
		return r.URL.RequestURI(), true
	case "http.request.uri.path":
		return r.URL.Path, true
	case "http.request.uri.query":
		return r.URL.RawQuery, true
	case "http.request.remote.host":
		return remoteIP(r), true
	case "http.vars.client_ip":
		return ips.clientIP(r), true
	}
	if h, ok := strings.CutPrefix(name, "http.request.header."); ok {
		return strings.Join(r.Header[textproto.CanonicalMIMEHeaderKey(h)], ","), true
	}
	if q, ok := strings.CutPrefix(name, "http.request.uri.query."); ok {
		return r.URL.Query().Get(q), true
	}
	if c, ok := strings.CutPrefix(name, "http.request.cookie."); ok {
		for _, ck := range r.Cookies() {
			if strings.EqualFold(ck.Name, c) {
				return ck.Value, true
			}
		}
		return "", true
	}
	if i, ok := strings.CutPrefix(name, "http.request.uri.path."); ok {
		idx, err := strconv.Atoi(i)
		parts := strings.Split(r.URL.Path, "/")
		if len(parts) > 0 && parts[0] == "" {
			parts = parts[1:]
		}
		if err != nil || idx < 0 || idx >= len(parts) {
			return "", true
		}
		return parts[idx], true
	}
	return "", true
}

func denialValue(name string, d *denial) (string, bool) {
	switch name {
	case "status":
		return strconv.Itoa(d.status), false
	case "name":
		return d.name, true
	case "key":
		return d.key, true
	case "tier":
		return d.tier, true
	case "retry_after":
		return strconv.FormatInt(d.retry, 10), false
	case "retry_after_seconds":
		return plural(d.retry, "second"), true
	case "retry_after_human":
		return humanSeconds(d.retry), true
	case "limit":
		return strconv.FormatInt(d.res.Limit, 10), false
	case "remaining":
		return strconv.FormatInt(d.res.Remaining, 10), false
	case "reset":
		return strconv.FormatInt(resetUnix(d.res), 10), false
	case "window":
		return strconv.FormatInt(secondsCeil(d.res.Window), 10), false
	}
	return "", true
}

func plural(n int64, unit string) string {
	s := strconv.FormatInt(n, 10) + " " + unit
	if n != 1 {
		s += "s"
	}
	return s
}

// humanUnits are the units humanSeconds speaks in, largest first.
var humanUnits = [4]struct {
	size int64
	name string
}{{86400, "day"}, {3600, "hour"}, {60, "minute"}, {1, "second"}}

// humanSeconds says n seconds as a person would, in at most two units,
// rounded up, never sooner than n (the Caddy module's words).
func humanSeconds(n int64) string {
	if n < 60 {
		return plural(n, "second")
	}
	for i := 0; i < 3; i++ {
		u := humanUnits[i]
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
	return plural(n, "second")
}

func jsonEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteRune(c)
		case c < 0x20 || c == '<' || c == '>' || c == '&' || c == 0x2028 || c == 0x2029:
			fmt.Fprintf(&b, `\u%04x`, c)
		default:
			b.WriteRune(c)
		}
	}
	return b.String()
}

// escaping is how a body escapes the values of its placeholders, as the
// Caddy module's bodies (body.go there) do for their content type: JSON
// string content, a JavaScript string in either quotes, HTML or XML text
// and attribute values; other types as they are. A kind, not a function
// value: Yaegi panics on an interpreted function returned as one.
type escaping uint8

const (
	escapeNone escaping = iota
	escapeJSON
	escapeJS
	escapeHTML
)

// escaperFor returns the escaping of a body of this content type.
func escaperFor(contentType string) escaping {
	ct := strings.ToLower(contentType)
	switch {
	case strings.Contains(ct, "json"):
		return escapeJSON
	case strings.Contains(ct, "javascript"), strings.Contains(ct, "ecmascript"):
		return escapeJS
	case strings.Contains(ct, "html"), strings.Contains(ct, "xml"):
		return escapeHTML
	}
	return escapeNone
}

var htmlEscaper = strings.NewReplacer("<", "&lt;", ">", "&gt;", "&", "&amp;", `"`, "&#34;", "'", "&#39;")

func (e escaping) apply(s string) string {
	switch e {
	case escapeJSON:
		return jsonEscape(s)
	case escapeJS:
		return strings.ReplaceAll(jsonEscape(s), "'", `\u0027`)
	case escapeHTML:
		return htmlEscaper.Replace(s)
	}
	return s
}
