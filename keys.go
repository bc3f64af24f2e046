package edgelimit

import (
	"errors"
	"fmt"
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
		if v := l.keys[i].value(r, repl, vars); v != "" {
			return v, i
		}
	}
	return "", -1
}

// value is the part's value for r; vars are the request's variables, whose
// client_ip is the client's address as Caddy found it (trusted_proxies).
func (k *keyPart) value(r *http.Request, repl *caddy.Replacer, vars map[string]any) string {
	switch k.Kind {
	case httpval.KindHeader:
		// The usual key, a call less.
		return httpval.First(r.Header, k.Name)
	case httpval.KindClient:
		// Caddy's server finds no address in a remote address without a
		// port (a unix socket's "@"): the remote host then, as the
		// plugin's ip.
		if ip, ok := vars[caddyhttp.ClientIPVarKey].(string); ok && ip != "" {
			return httpval.ClientKey(ip, k.V6)
		}
	case keyTemplate:
		return k.fill(r, repl)
	}
	return httpval.Value(&k.Part, r, nil)
}

// fill evaluates a template part: header placeholders as a header part
// reads them (httpval.First), the others with the replacer. Unknown or
// empty placeholders count as empty, and a part whose placeholders are all
// empty is absent: an anonymous request must not share the counter of a
// literal "{http.auth.user.id}".
func (k *keyPart) fill(r *http.Request, repl *caddy.Replacer) string {
	var b strings.Builder
	present := false
	for _, seg := range k.segs {
		var v string
		switch {
		case seg.part.Kind != 0:
			v = httpval.Value(&seg.part, r, nil)
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

// clientIP is the client's address: as Caddy found it, else the remote
// address as Caddy writes it.
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok {
		return ip
	}
	return httpval.RemoteIP(r)
}

// keyPart is one element of a limit's key (or its tier placeholder): the
// usual placeholders as the core's parts (httpval.Part: a header, the
// client's address, the remote host, the Basic user, a constant), read
// without the replacer so that reading them allocates nothing; the others
// a template.
type keyPart struct {
	httpval.Part
	tmpl string       // the part as written
	segs []keySegment // the template's pieces (keyTemplate)
}

// keyTemplate is the kind of a part with other placeholders, read with
// Caddy's replacer.
const keyTemplate = httpval.KindEdge

// keySegment is a piece of a template part: text, a placeholder the core
// reads (a header, a query parameter, a cookie, the Basic user), or
// another placeholder, read with the replacer.
type keySegment struct {
	text        string
	part        httpval.Part // Kind 0: none
	placeholder string       // placeholder name, without braces
}

// basicUserPlaceholder is the user that Basic credentials claim, before
// basic_auth checks the password (httpval.BasicUser): the key of failed
// logins per user, which {http.auth.user.id} is not (it is set only once
// the password is right).
const basicUserPlaceholder = "edge_limit.basic_user"

// requestPart returns the core's part for a placeholder of what the
// request says (without braces): a header ("http.request.header.X-Api-Key",
// or "header.X-Api-Key" as some Caddyfile shorthands leave it), a query
// parameter, a cookie, the user Basic credentials claim. The core reads
// them as the plugin does: a cookie by its exact name (Caddy's cookie
// placeholder ignores case: a client could send another spelling first,
// new on every request, beside the cookie the upstream reads).
func requestPart(placeholder string) (httpval.Part, bool) {
	if placeholder == basicUserPlaceholder {
		return httpval.Part{Kind: httpval.KindBasicUser}, true
	}
	for _, p := range requestPrefixes {
		if name, ok := strings.CutPrefix(placeholder, p.prefix); ok && name != "" {
			if p.kind == httpval.KindHeader {
				name = textproto.CanonicalMIMEHeaderKey(name)
			}
			return httpval.Part{Kind: p.kind, Name: name}, true
		}
	}
	return httpval.Part{}, false
}

// requestPrefixes are the placeholder prefixes of requestPart.
var requestPrefixes = []struct {
	prefix string
	kind   httpval.Kind
}{
	{"http.request.header.", httpval.KindHeader}, {"header.", httpval.KindHeader},
	{"http.request.uri.query.", httpval.KindQuery}, {"query.", httpval.KindQuery},
	{"http.request.cookie.", httpval.KindCookie}, {"cookie.", httpval.KindCookie},
}

func parseKeyPart(s string) (keyPart, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return keyPart{}, errors.New("empty key part")
	}
	if !strings.ContainsRune(s, '{') {
		return keyPart{Part: httpval.Part{Kind: httpval.KindConst, Name: s}, tmpl: s}, nil
	}
	if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") && strings.Count(s, "{") == 1 {
		name := s[1 : len(s)-1]
		if p, ok := requestPart(name); ok {
			if err := httpval.CheckName(&p); err != nil {
				return keyPart{}, fmt.Errorf("%s: %w", s, err)
			}
			return keyPart{Part: p, tmpl: s}, nil
		}
		switch name {
		case "http.vars.client_ip", "client_ip":
			return keyPart{Part: httpval.Part{Kind: httpval.KindClient}, tmpl: s}, nil
		case "http.request.remote.host", "remote_host":
			return keyPart{Part: httpval.Part{Kind: httpval.KindRemote}, tmpl: s}, nil
		}
	}
	segs := splitTemplate(s)
	for i := range segs {
		if err := httpval.CheckName(&segs[i].part); err != nil {
			return keyPart{}, fmt.Errorf("%s: %w", s, err)
		}
	}
	return keyPart{Part: httpval.Part{Kind: keyTemplate}, tmpl: s, segs: segs}, nil
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
		if p, ok := requestPart(name); ok {
			segs = append(segs, keySegment{part: p})
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
	if what, ok := httpval.FromClient(&k.Part); ok {
		return what, true
	}
	for _, seg := range k.segs {
		if what, ok := httpval.FromClient(&seg.part); ok {
			return what, true
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
