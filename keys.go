package edgelimit

import (
	"errors"
	"net"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/edgelimit/caddy-edgelimit/httpval"
)

// key returns the client's identity for this limit and the index of the key
// part it came from, or -1 when no part is present.
func (l *compiledLimit) key(r *http.Request, repl *caddy.Replacer, vars map[string]any) (string, int) {
	for i := range l.keys {
		if v := l.keys[i].value(r, repl, vars, l.v6); v != "" {
			return v, i
		}
	}
	return "", -1
}

// value is the part's value for r; vars are the request's variables, v6
// the IPv6 prefix that counts as one client (httpval.IPKey).
func (k *keyPart) value(r *http.Request, repl *caddy.Replacer, vars map[string]any, v6 int) string {
	switch k.kind {
	case keyLiteral:
		return k.tmpl
	case keyHeader:
		return headerValue(r.Header, k.header)
	case keyClientIP:
		if ip, ok := vars[caddyhttp.ClientIPVarKey].(string); ok {
			return httpval.ClientKey(ip, v6)
		}
		return httpval.ClientKey(remoteHost(r), v6)
	case keyRemoteHost:
		return httpval.ClientKey(remoteHost(r), v6)
	case keyBasicUser:
		return httpval.BasicUser(r.Header)
	}
	return k.fill(r, repl)
}

// fill evaluates a template part: header placeholders as headerValue
// reads them, the others with the replacer. Unknown or empty placeholders
// count as empty, and a part whose placeholders are all empty is absent:
// an anonymous request must not share the counter of a literal
// "{http.auth.user.id}".
func (k *keyPart) fill(r *http.Request, repl *caddy.Replacer) string {
	var b strings.Builder
	present := false
	for _, seg := range k.segs {
		var v string
		switch {
		case seg.header != "":
			v = headerValue(r.Header, seg.header)
		case seg.placeholder == basicUserPlaceholder:
			v = httpval.BasicUser(r.Header)
		case seg.placeholder != "":
			if repl != nil {
				v, _ = repl.GetString(seg.placeholder)
			}
		default:
			b.WriteString(seg.text)
			continue
		}
		present = present || v != ""
		b.WriteString(v)
	}
	if !present {
		return ""
	}
	return b.String()
}

// headerValue is what a key counts of a request header: its first value,
// trimmed, as the upstream reads it (httpval.First), so that a second header
// of the same name, whitespace around the value, or the auth scheme's case
// cannot make a new counter.
func headerValue(h http.Header, name string) string {
	return httpval.First(h, name)
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
	kind   keyKind
	header string       // canonical header name (keyHeader)
	tmpl   string       // the part as written (keyTemplate, keyLiteral)
	segs   []keySegment // the template's pieces (keyTemplate)
}

// keySegment is a piece of a template part: text, a request header, or
// another placeholder.
type keySegment struct {
	text        string
	header      string // canonical header name
	placeholder string // placeholder name, without braces
}

type keyKind uint8

const (
	keyLiteral keyKind = iota
	keyHeader
	keyClientIP
	keyRemoteHost
	keyTemplate
	keyBasicUser
)

// basicUserPlaceholder is the user that Basic credentials claim, before
// basic_auth checks the password (httpval.BasicUser): the key of failed
// logins per user, which {http.auth.user.id} is not (it is set only once
// the password is right).
const basicUserPlaceholder = "edge_limit.basic_user"

// headerName returns the canonical header name of a header placeholder's
// name ("http.request.header.X-Api-Key", or "header.X-Api-Key" as some
// Caddyfile shorthands leave it).
func headerName(placeholder string) (string, bool) {
	for _, p := range []string{"http.request.header.", "header."} {
		if h, ok := strings.CutPrefix(placeholder, p); ok && h != "" {
			return textproto.CanonicalMIMEHeaderKey(h), true
		}
	}
	return "", false
}

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
		if h, ok := headerName(name); ok {
			return keyPart{kind: keyHeader, header: h, tmpl: s}, nil
		}
		switch name {
		case "http.vars.client_ip", "client_ip":
			return keyPart{kind: keyClientIP, tmpl: s}, nil
		case "http.request.remote.host", "remote_host":
			return keyPart{kind: keyRemoteHost, tmpl: s}, nil
		case basicUserPlaceholder:
			return keyPart{kind: keyBasicUser, tmpl: s}, nil
		}
	}
	return keyPart{kind: keyTemplate, tmpl: s, segs: splitTemplate(s)}, nil
}

// splitTemplate cuts a template into text and placeholders, as Caddy's
// replacer reads it ({name}; a brace without its pair is text).
func splitTemplate(s string) []keySegment {
	var segs []keySegment
	for s != "" {
		open := strings.IndexByte(s, '{')
		if open < 0 {
			segs = append(segs, keySegment{text: s})
			break
		}
		end := strings.IndexByte(s[open:], '}')
		if end < 0 {
			segs = append(segs, keySegment{text: s})
			break
		}
		if open > 0 {
			segs = append(segs, keySegment{text: s[:open]})
		}
		name := s[open+1 : open+end]
		if h, ok := headerName(name); ok {
			segs = append(segs, keySegment{header: h})
		} else {
			segs = append(segs, keySegment{placeholder: name})
		}
		s = s[open+end+1:]
	}
	return segs
}

// fromClient tells whether the part's value comes from what the client
// sends as it sent it (a header, unless forward_auth's copy_headers
// replaced it; a cookie; the query or the path), which a client can set to
// anything, and names it.
func (k *keyPart) fromClient() (string, bool) {
	if k.kind == keyHeader {
		return "header " + k.header, true
	}
	if k.kind == keyBasicUser {
		return "the user Basic credentials claim, password unchecked", true
	}
	for _, seg := range k.segs {
		if seg.header != "" {
			return "header " + seg.header, true
		}
		for _, p := range clientPlaceholders {
			if strings.HasPrefix(seg.placeholder, p) {
				return seg.placeholder, true
			}
		}
	}
	return "", false
}

// clientPlaceholders are the prefixes of placeholders whose values the
// client chooses.
var clientPlaceholders = []string{
	"http.request.cookie.", "cookie.", "http.request.uri", "query.", "path.", "http.request.host", "http.request.orig_uri",
	basicUserPlaceholder,
}
