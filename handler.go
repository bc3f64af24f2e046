package edgelimit

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/storage"
)

// scratch holds one request's working slices, pooled so that the request
// path allocates nothing for them.
type scratch struct {
	keys    []string // per handler limit: the client's key
	parts   []int    // per handler limit: the key part used, -1 if none
	reqs    []storage.Request
	counted []storage.Request
	res     []limiter.Result
	which   []*compiledLimit
	tiers   []string
	buf     []byte
	ledger  ledger
}

func newScratch(n int) *scratch {
	return &scratch{
		keys:    make([]string, n),
		parts:   make([]int, n),
		reqs:    make([]storage.Request, 0, n),
		counted: make([]storage.Request, 0, n),
		res:     make([]limiter.Result, n),
		which:   make([]*compiledLimit, 0, n),
		tiers:   make([]string, 0, n),
		buf:     make([]byte, 0, 128),
	}
}

// Request variables shared by the edge_limit handlers a request meets.
const (
	// exemptVar carries exemptions to later handlers.
	exemptVar = "edge_limit.exempt"
	// ledgerVar carries what earlier handlers counted.
	ledgerVar = "edge_limit.ledger"
)

// ledger lists what the edge_limit handlers of one request have counted, so
// that a denial by a later handler gives it back: a denied request consumes
// nothing, whichever handler denies it. The entries point into the scratch
// of each handler, which lives until that handler returns, after every
// handler nested in it.
type ledger struct {
	entries []ledgerEntry
	// report is the most constraining result reported so far, so that a
	// later handler's headers replace it only with a tighter one.
	report limiter.Result
}

type ledgerEntry struct {
	store storage.Store
	reqs  []storage.Request
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if len(h.limits) == 0 {
		return next.ServeHTTP(w, r)
	}
	// Each context lookup walks Caddy's context chain: the variables are
	// looked up once, the replacer only for keys that need it.
	ctx := r.Context()
	var repl *caddy.Replacer
	if h.templated {
		repl, _ = ctx.Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	}
	vars, _ := ctx.Value(caddyhttp.VarsCtxKey).(map[string]any)
	sc := h.scratch.Get().(*scratch)
	defer h.scratch.Put(sc)
	keys, parts := sc.keys, sc.parts
	present := false
	for i, l := range h.limits {
		keys[i], parts[i] = l.key(r, repl, vars)
		present = present || parts[i] >= 0
	}
	if !present {
		return next.ServeHTTP(w, r)
	}
	exempt := h.exemptions(vars, parts)
	reqs, which, tiers := sc.reqs[:0], sc.which[:0], sc.tiers[:0]
	for i, l := range h.limits {
		if parts[i] < 0 || exempt != nil && slices.Contains(exempt, l.name) {
			continue
		}
		lim, tier := l.numbersFor(r, repl, vars)
		reqs = append(reqs, storage.Request{
			Counter: l.counters[parts[i]],
			Key:     keys[i],
			Limit:   *lim,
			Cost:    l.cost,
			DryRun:  l.dryRun || h.DryRun,
		})
		which = append(which, l)
		tiers = append(tiers, tier)
	}
	sc.reqs, sc.which, sc.tiers = reqs, which, tiers
	if len(reqs) == 0 {
		return next.ServeHTTP(w, r)
	}
	now := h.clock.Now()
	res := sc.res[:len(reqs)]
	if err := h.store.Take(ctx, now, reqs, res); err != nil {
		return h.storageFailed(w, r, next, now, err)
	}

	denied, report := -1, -1
	for i := range res {
		which[i].outcomes.count(&res[i], reqs[i].DryRun)
		if !res[i].Allowed {
			if res[i].FirstDenial {
				h.notify(r, which[i], reqs[i].Key, tiers[i], &res[i], reqs[i].DryRun)
			}
			if reqs[i].DryRun {
				h.logWouldDeny(r, which[i], &res[i])
			} else if denied < 0 || res[i].RetryAfter > res[denied].RetryAfter {
				denied = i
			}
		}
		if report < 0 || tighter(&res[i], &res[report]) {
			report = i
		}
	}
	if denied >= 0 {
		report = denied
	}
	prior, _ := vars[ledgerVar].(*ledger)
	h.setHeaders(w.Header(), sc, report, denied >= 0, prior)
	if denied >= 0 {
		h.refundEarlier(r, now)
		return h.deny(w, r, which[denied], reqs[denied].Key, tiers[denied], &res[denied])
	}
	if h.record(vars, sc, prior, &res[report]) {
		defer delete(vars, ledgerVar)
	}
	return next.ServeHTTP(w, r)
}

// record enters what this handler counted in the request's ledger; it
// reports whether it started the ledger (and must remove it on the way
// out, before its scratch goes back to the pool).
func (h *Handler) record(vars map[string]any, sc *scratch, l *ledger, report *limiter.Result) bool {
	counted := sc.reqs
	for i := range sc.reqs {
		if !sc.res[i].Allowed {
			// Some dry-run limit denied: it counted nothing.
			counted = sc.counted[:0]
			for j := range sc.reqs {
				if sc.res[j].Allowed {
					counted = append(counted, sc.reqs[j])
				}
			}
			sc.counted = counted
			break
		}
	}
	if len(counted) == 0 || vars == nil {
		return false
	}
	entry := ledgerEntry{store: h.store, reqs: counted}
	if l != nil {
		l.entries = append(l.entries, entry)
		if tighter(report, &l.report) {
			l.report = *report
		}
		return false
	}
	sc.ledger.entries = append(sc.ledger.entries[:0], entry)
	sc.ledger.report = *report
	vars[ledgerVar] = &sc.ledger
	return true
}

// refundEarlier gives back what the edge_limit handlers before this one
// counted for a request this one denies.
func (h *Handler) refundEarlier(r *http.Request, now time.Time) {
	l, ok := caddyhttp.GetVar(r.Context(), ledgerVar).(*ledger)
	if !ok {
		return
	}
	for _, e := range l.entries {
		if err := e.store.Refund(r.Context(), now, e.reqs); err != nil && h.warn.allow(now, 5*time.Second) {
			h.logger.Warn("giving back the counts of a denied request", zap.Error(err))
		}
	}
	l.entries = l.entries[:0]
}

// exemptions returns the names of the limits that do not apply to this
// request: those exempted by earlier handlers, and by the limits of this
// one whose key is present.
func (h *Handler) exemptions(vars map[string]any, parts []int) []string {
	prior, _ := vars[exemptVar].([]string)
	if !h.exempts {
		return prior
	}
	out, added := prior, false
	for i, l := range h.limits {
		if len(l.exempt) == 0 || parts[i] < 0 || slices.Contains(prior, l.name) {
			continue
		}
		if !added {
			out, added = slices.Clone(prior), true
		}
		out = append(out, l.exempt...)
	}
	if added && vars != nil {
		vars[exemptVar] = out
	}
	return out
}

// tighter tells whether a constrains the client more than b: fewer units
// left, or as few for longer.
func tighter(a, b *limiter.Result) bool {
	if a.Remaining != b.Remaining {
		return a.Remaining < b.Remaining
	}
	return a.Reset > b.Reset
}

// key returns the client's identity for this limit and the index of the key
// part it came from, or -1 when no part is present.
func (l *compiledLimit) key(r *http.Request, repl *caddy.Replacer, vars map[string]any) (string, int) {
	for i := range l.keys {
		if v := l.keys[i].value(r, repl, vars); v != "" {
			return v, i
		}
	}
	return "", -1
}

// value is the part's value for r; vars are the request's variables.
func (k *keyPart) value(r *http.Request, repl *caddy.Replacer, vars map[string]any) string {
	switch k.kind {
	case keyLiteral:
		return k.tmpl
	case keyHeader:
		switch vs := r.Header[k.header]; len(vs) {
		case 0:
			return ""
		case 1:
			return vs[0]
		default:
			return strings.Join(vs, ",")
		}
	case keyClientIP:
		if ip, ok := vars[caddyhttp.ClientIPVarKey].(string); ok {
			return ip
		}
		return remoteHost(r)
	case keyRemoteHost:
		return remoteHost(r)
	}
	if repl == nil {
		return ""
	}
	// Unknown placeholders count as empty: an anonymous request must not
	// share the counter of a literal "{http.auth.user.id}".
	v := repl.ReplaceAll(k.tmpl, "")
	if v == k.skeleton {
		return ""
	}
	return v
}

func remoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

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

// deny answers a denied request.
func (h *Handler) deny(w http.ResponseWriter, r *http.Request, l *compiledLimit, key, tier string, res *limiter.Result) error {
	status := h.Status
	if l.status != 0 {
		status = l.status
	}
	retry := retryAfterSeconds(res.RetryAfter)
	hdr := w.Header()
	hdr["Retry-After"] = []string{strconv.FormatInt(retry, 10)}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	repl.Set("edge_limit.status", status)
	repl.Set("edge_limit.name", l.name)
	repl.Set("edge_limit.key", h.displayKey(key))
	repl.Set("edge_limit.tier", tier)
	repl.Set("edge_limit.retry_after", retry)
	repl.Set("edge_limit.retry_after_seconds", secondsText(retry))
	repl.Set("edge_limit.retry_after_human", humanSeconds(retry))
	repl.Set("edge_limit.limit", res.Limit)
	repl.Set("edge_limit.remaining", res.Remaining)
	repl.Set("edge_limit.reset", resetUnix(res))
	repl.Set("edge_limit.window", secondsCeil(res.Window))
	if h.HandleErrors {
		return caddyhttp.Error(status, fmt.Errorf("rate limit %q exceeded, retry after %d seconds", l.name, retry))
	}
	tmpl := h.body
	if l.body != "" {
		tmpl = l.body
	}
	body := h.renderBody(repl, tmpl)
	hdr["Content-Type"] = []string{h.ContentType}
	hdr["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(body))
	}
	return nil
}

// notify reports the first denial of a key in a window: one info log line
// and an edge_limit.exceeded event.
func (h *Handler) notify(r *http.Request, l *compiledLimit, key, tier string, res *limiter.Result, dryRun bool) {
	shown := h.displayKey(key)
	reset := time.UnixMicro(res.ResetAt)
	if !dryRun {
		h.logger.Info("rate limit exceeded",
			zap.String("limit", l.name),
			zap.String("key", shown),
			zap.String("tier", tier),
			zap.String("client_ip", clientIP(r)),
			zap.Int64("limit_value", res.Limit),
			zap.Duration("retry_after", res.RetryAfter),
			zap.Time("window_end", reset))
	}
	h.events.exceeded(map[string]any{
		"limit":       l.name,
		"key":         shown,
		"tier":        tier,
		"client_ip":   clientIP(r),
		"host":        r.Host,
		"path":        r.URL.Path,
		"limit_value": res.Limit,
		"retry_after": retryAfterSeconds(res.RetryAfter),
		"window_end":  reset.UTC().Format(time.RFC3339),
		"reset":       resetUnix(res),
		"dry_run":     dryRun,
	})
}

// displayKey is the key as logs, events and bodies show it.
func (h *Handler) displayKey(key string) string {
	if h.rawKeys {
		if len(key) > 256 {
			return key[:256]
		}
		return key
	}
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:8])
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

// renderBody fills the denial body's placeholders. In a JSON body, values
// are escaped as JSON string content: a hostile header echoed in the body
// cannot break out of its string.
func (h *Handler) renderBody(repl *caddy.Replacer, tmpl string) string {
	if !strings.Contains(h.ContentType, "json") {
		return repl.ReplaceAll(tmpl, "")
	}
	out, err := repl.ReplaceFunc(tmpl, func(_ string, val any) (any, error) {
		s, ok := val.(string)
		if !ok {
			return val, nil
		}
		return jsonEscape(s), nil
	})
	if err != nil {
		return repl.ReplaceAll(tmpl, "")
	}
	return out
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

// storageFailed applies the store's failure policy: ErrUnavailable denies
// with 503; anything else lets the request through unlimited.
func (h *Handler) storageFailed(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, now time.Time, err error) error {
	h.metrics.storageError()
	if h.warn.allow(now, 5*time.Second) {
		h.logger.Warn("rate-limit storage failed", zap.Error(err))
	}
	if errors.Is(err, storage.ErrUnavailable) {
		h.refundEarlier(r, now)
		w.Header()["Retry-After"] = []string{"1"}
		return caddyhttp.Error(http.StatusServiceUnavailable, err)
	}
	return next.ServeHTTP(w, r)
}

func (h *Handler) logWouldDeny(r *http.Request, l *compiledLimit, res *limiter.Result) {
	lvl := zap.DebugLevel
	if res.FirstDenial {
		lvl = zap.InfoLevel
	}
	if ce := h.logger.Check(lvl, "dry run: rate limit would deny"); ce != nil {
		ce.Write(zap.String("limit", l.name), zap.String("client_ip", clientIP(r)),
			zap.Duration("retry_after", res.RetryAfter))
	}
}

func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok {
		return ip
	}
	return remoteHost(r)
}

// retryAfterSeconds rounds up: a client that waits that long gets through,
// and a denied client is never told to retry after 0 seconds.
func retryAfterSeconds(d time.Duration) int64 {
	return max(secondsCeil(d), 1)
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

// rateLimitedLog lets a message through at most once per period.
type rateLimitedLog struct{ last atomic.Int64 }

func (l *rateLimitedLog) allow(now time.Time, every time.Duration) bool {
	t := now.UnixNano()
	last := l.last.Load()
	return t-last >= int64(every) && l.last.CompareAndSwap(last, t)
}
