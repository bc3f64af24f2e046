package edgelimit

import (
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/edgelimit/caddy-edgelimit/httpval"
)

// placeholders gives a denial body the request placeholders the Caddy
// module's bodies have ({http.request.uri.path}, {header.X}...), so that
// one body template reads the same at both edges; the {edge_limit.*}
// placeholders are the policy's. Unknown ones are empty.
type placeholders struct {
	r   *http.Request
	ips *httpval.Forwarded
}

// shorthands are the Caddyfile's short placeholder names.
var shorthands = map[string]string{
	"method": "http.request.method", "host": "http.request.host", "hostport": "http.request.hostport",
	"uri": "http.request.uri", "path": "http.request.uri.path", "query": "http.request.uri.query",
	"scheme": "http.request.scheme", "remote_host": "http.request.remote.host",
	"client_ip": "http.vars.client_ip",
}

// prefixes are the Caddyfile's short placeholder prefixes.
var prefixes = [4][2]string{{"header.", "http.request.header."}, {"query.", "http.request.uri.query."},
	{"cookie.", "http.request.cookie."}, {"path.", "http.request.uri.path."}}

// GetString implements policy.Placeholders.
func (p *placeholders) GetString(name string) (string, bool) {
	r := p.r
	if long, ok := shorthands[name]; ok {
		name = long
	}
	for _, pre := range prefixes {
		if rest, ok := strings.CutPrefix(name, pre[0]); ok {
			name = pre[1] + rest
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
		return httpval.RemoteIP(r), true
	case "http.vars.client_ip":
		return httpval.ClientIP(p.ips, r), true
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
	return "", false
}
