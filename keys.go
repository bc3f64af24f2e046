package edgelimit

import (
	"errors"
	"net"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

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

func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok {
		return ip
	}
	return remoteHost(r)
}

// keyPart is one element of a limit's key (or its tier placeholder), with
// fast paths for the usual placeholders so that reading them allocates
// nothing.
type keyPart struct {
	kind     keyKind
	header   string // canonical header name (keyHeader)
	tmpl     string // the part as written (keyTemplate, keyLiteral)
	skeleton string // the template with every placeholder empty
}

type keyKind uint8

const (
	keyLiteral keyKind = iota
	keyHeader
	keyClientIP
	keyRemoteHost
	keyTemplate
)

func parseKeyPart(s string) (keyPart, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return keyPart{}, errors.New("empty key part")
	}
	if !strings.ContainsRune(s, '{') {
		return keyPart{kind: keyLiteral, tmpl: s}, nil
	}
	if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") && strings.Count(s, "{") == 1 {
		name := s[1 : len(s)-1]
		for _, p := range []string{"http.request.header.", "header."} {
			if h, ok := strings.CutPrefix(name, p); ok && h != "" {
				return keyPart{kind: keyHeader, header: textproto.CanonicalMIMEHeaderKey(h), tmpl: s}, nil
			}
		}
		switch name {
		case "http.vars.client_ip", "client_ip":
			return keyPart{kind: keyClientIP, tmpl: s}, nil
		case "http.request.remote.host", "remote_host":
			return keyPart{kind: keyRemoteHost, tmpl: s}, nil
		}
	}
	return keyPart{kind: keyTemplate, tmpl: s, skeleton: caddy.NewEmptyReplacer().ReplaceAll(s, "")}, nil
}
