package policy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// Denial is a denied request: what its placeholders are made of.
type Denial struct {
	Policy *Policy
	Limit  *Limit
	Key    string
	Tier   string
	Status int
	// Retry is Retry-After, in whole seconds.
	Retry int64
	Res   limiter.Result
	hdr   [3]string // the values of the denial's headers
}

// Denial returns the denial of the request by limit i of d.
func (p *Policy) Denial(d *Decision, i int) *Denial {
	l := d.Meta[i].Limit
	dn := &Denial{Policy: p, Limit: l, Key: d.Reqs[i].Key, Tier: d.Meta[i].Tier, Status: p.Status,
		Retry: RetryAfterSeconds(d.Res[i].RetryAfter), Res: d.Res[i]}
	if l.Status != 0 {
		dn.Status = l.Status
	}
	return dn
}

// Write answers the denied request: its status, Retry-After, and the body
// of its template (the limit's, else the policy's), the placeholders that
// are not {edge_limit.*} given by others. buf is scratch for the body; the
// buffer is returned for reuse.
func (dn *Denial) Write(w http.ResponseWriter, method string, others Placeholders, buf []byte) []byte {
	tmpl := dn.Policy.Body
	if dn.Limit.Body != nil {
		tmpl = dn.Limit.Body
	}
	body := tmpl.render(buf[:0], dn, others)
	// The header values: the numbers in one string, the values in the
	// denial's array, each its own slice.
	var nums [40]byte
	b := strconv.AppendInt(nums[:0], dn.Retry, 10)
	n := len(b)
	all := string(strconv.AppendInt(b, int64(len(body)), 10))
	dn.hdr = [3]string{all[:n], dn.Policy.ContentType, all[n:]}
	hdr := w.Header()
	hdr["Retry-After"] = dn.hdr[0:1:1]
	hdr["Content-Type"] = dn.hdr[1:2:2]
	hdr["Content-Length"] = dn.hdr[2:3:3]
	w.WriteHeader(dn.Status)
	if method != http.MethodHead {
		_, _ = w.Write(body)
	}
	return body
}

// Value gives an {edge_limit.*} placeholder of the denial (name with its
// prefix), for an edge's own placeholders (Caddy's replacer, handle_errors
// routes, log formats).
func (dn *Denial) Value(name string) (any, bool) {
	v, ok := edgeNames[name]
	if !ok {
		return nil, false
	}
	switch v {
	case edgeStatus:
		return dn.Status, true
	case edgeName:
		return dn.Limit.Name, true
	case edgeKey:
		return dn.Policy.DisplayKey(dn.Key), true
	case edgeTier:
		return dn.Tier, true
	case edgeRetryAfter:
		return dn.Retry, true
	case edgeRetryAfterSeconds:
		return plural(dn.Retry, "second"), true
	case edgeRetryAfterHuman:
		return HumanSeconds(dn.Retry), true
	case edgeLimit:
		return dn.Res.Limit, true
	case edgeRemaining:
		return dn.Res.Remaining, true
	case edgeReset:
		return ResetUnix(&dn.Res), true
	case edgeWindow:
		return SecondsCeil(dn.Res.Window), true
	}
	return nil, false
}

// appendValue writes an {edge_limit.*} value, escaped for the body.
func (dn *Denial) appendValue(b []byte, v edgeValue, esc Escaping) []byte {
	switch v {
	case edgeStatus:
		return strconv.AppendInt(b, int64(dn.Status), 10)
	case edgeName:
		return AppendEscaped(b, dn.Limit.Name, esc)
	case edgeKey:
		return dn.Policy.AppendDisplayKey(b, dn.Key, esc)
	case edgeTier:
		return AppendEscaped(b, dn.Tier, esc)
	case edgeRetryAfter:
		return strconv.AppendInt(b, dn.Retry, 10)
	case edgeRetryAfterSeconds:
		b = strconv.AppendInt(b, dn.Retry, 10)
		if dn.Retry == 1 {
			return append(b, " second"...)
		}
		return append(b, " seconds"...)
	case edgeRetryAfterHuman:
		return AppendEscaped(b, HumanSeconds(dn.Retry), esc)
	case edgeLimit:
		return strconv.AppendInt(b, dn.Res.Limit, 10)
	case edgeRemaining:
		return strconv.AppendInt(b, dn.Res.Remaining, 10)
	case edgeReset:
		return strconv.AppendInt(b, ResetUnix(&dn.Res), 10)
	case edgeWindow:
		return strconv.AppendInt(b, SecondsCeil(dn.Res.Window), 10)
	}
	return b
}

// WriteUnavailable answers 503 with Retry-After: 1, when the storage
// cannot decide and its policy is to deny: a JSON body when the policy's
// bodies are JSON, else text.
func (p *Policy) WriteUnavailable(w http.ResponseWriter, method string) {
	hdr := w.Header()
	hdr["Retry-After"] = []string{"1"}
	body, ct := "Service unavailable, try again in 1 second\n", "text/plain; charset=utf-8"
	if p.Escape == EscapeJSON { // the body is ours: no escaping
		body, ct = `{"status":503,"error":"Service unavailable, try again in 1 second"}`, p.ContentType
	}
	hdr["Content-Type"] = []string{ct}
	hdr["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(http.StatusServiceUnavailable)
	if method != http.MethodHead {
		_, _ = w.Write([]byte(body))
	}
}

// AppendDisplayKey writes the key as logs, events and bodies show it: raw
// (cut to 256 bytes), or the first 16 hex digits of its SHA-256 (an
// HMAC-SHA256 with the key secret): enough to correlate, useless to replay
// a credential.
func (p *Policy) AppendDisplayKey(b []byte, key string, esc Escaping) []byte {
	if p.RawKeys {
		if len(key) > 256 {
			key = key[:256]
		}
		return AppendEscaped(b, key, esc)
	}
	var sum [sha256.Size]byte
	if p.KeyMAC != nil {
		mac := hmac.New(sha256.New, p.KeyMAC)
		mac.Write([]byte(key))
		mac.Sum(sum[:0])
	} else {
		sum = sha256.Sum256([]byte(key))
	}
	return hex.AppendEncode(b, sum[:8])
}

// DisplayKey is AppendDisplayKey as a string.
func (p *Policy) DisplayKey(key string) string {
	return string(p.AppendDisplayKey(nil, key, EscapeNone))
}

// Request is what an event tells of the request that was denied.
type Request struct {
	ClientIP, Host, Path string
}

// EventData is the payload of the event that reports the first denial of
// a client in a window (edge_limit.exceeded), the same at both edges:
// limit, key (as shown), tier, client_ip, host, path, limit_value,
// retry_after (seconds), window_end (RFC 3339), reset (unix seconds),
// dry_run; and for a limit with a ban, ban (its length in seconds) and
// banned_until (RFC 3339): the denial began the ban, which window_end,
// reset and retry_after say the end of.
func (p *Policy) EventData(d *Decision, i int, r Request) map[string]any {
	res := &d.Res[i]
	data := map[string]any{
		"limit":       d.Meta[i].Limit.Name,
		"key":         p.DisplayKey(d.Reqs[i].Key),
		"tier":        d.Meta[i].Tier,
		"client_ip":   r.ClientIP,
		"host":        r.Host,
		"path":        r.Path,
		"limit_value": res.Limit,
		"retry_after": RetryAfterSeconds(res.RetryAfter),
		"window_end":  time.UnixMicro(res.ResetAt).UTC().Format(time.RFC3339),
		"reset":       ResetUnix(res),
		"dry_run":     d.Reqs[i].DryRun,
	}
	if ban := d.Reqs[i].Limit.Ban; ban != 0 {
		data["ban"] = int64(ban / time.Second)
		data["banned_until"] = data["window_end"]
	}
	return data
}

// IsJSON tells whether a content type is JSON's.
func IsJSON(contentType string) bool { return strings.Contains(strings.ToLower(contentType), "json") }
