package edgelimit

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/policy"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// TestBodyMatchesReplacer: a denial body (package policy) renders as
// Caddy's replacer renders the same template with its literal braces
// escaped, and the {edge_limit.*} placeholders the handler maps into the
// replacer are the body's values.
func TestBodyMatchesReplacer(t *testing.T) {
	templates := []string{
		DefaultBody,
		`{"status":{edge_limit.status},"limit":"{edge_limit.name}","key":"{edge_limit.key}","tier":"{edge_limit.tier}"}`,
		"{edge_limit.retry_after} {edge_limit.retry_after_seconds} {edge_limit.retry_after_human}",
		"{edge_limit.limit}/{edge_limit.remaining} until {edge_limit.reset} per {edge_limit.window}",
		`path {http.request.uri.path} ua {http.request.header.User-Agent} none {http.request.header.Absent}`,
		`\{literal\} {} {1bad} { spaced } {unclosed`,
		`{edge_limit.unknown}{vars.x}{edge_limit.status}`,
		"plain", "{", "}", `\`, `\{`, "{edge_limit.status",
	}
	l := &policy.Limit{Name: "per-key"}
	d := &policy.Decision{
		Reqs: []store.Request{{Key: "k"}},
		Meta: []policy.Planned{{Limit: l, Tier: "gold"}},
		Res:  []limiter.Result{{Limit: 100, Remaining: 0, ResetAt: 1_800_000_000_500_000, Window: 90e9, RetryAfter: 60_500_000_000}},
	}
	for _, tmpl := range templates {
		p, err := policy.New([]*policy.Limit{l}, &policy.Responses{Body: tmpl, ContentType: "text/plain"})
		if err != nil {
			t.Fatal(err)
		}
		dn := p.Denial(d, 0)
		want := caddy.NewReplacer()
		for _, name := range []string{"status", "name", "key", "tier", "retry_after", "retry_after_seconds", "retry_after_human", "limit", "remaining", "reset", "window"} {
			v, _ := dn.Value("edge_limit." + name)
			want.Set("edge_limit."+name, v)
		}
		got := caddy.NewReplacer()
		for _, r := range []*caddy.Replacer{want, got} {
			r.Set("http.request.uri.path", "/p")
			r.Set("http.request.header.User-Agent", "{edge_limit.status}")
		}
		got.Map(dn.Value)
		w := httptest.NewRecorder()
		dn.Write(w, "GET", got, nil)
		escaped := escapeBraces(tmpl)
		if g, w := w.Body.String(), want.ReplaceAll(escaped, ""); g != w {
			t.Errorf("template %q: rendered %q, the replacer %q", tmpl, g, w)
		}
		if g, w := got.ReplaceAll(escaped, ""), want.ReplaceAll(escaped, ""); g != w {
			t.Errorf("template %q: placeholders %q, want %q", tmpl, g, w)
		}
	}
}

// escapeBraces escapes, for Caddy's replacer, every brace of a body
// template that is not part of a placeholder, as policy.ParseTemplate
// reads them: {name}, name a letter then letters, digits and ._-/:.
func escapeBraces(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && (s[i+1] == '{' || s[i+1] == '}'):
			b.WriteString(s[i : i+2])
			i++
		case c == '{' && placeholderAt(s[i:]) > 0:
			n := placeholderAt(s[i:])
			b.WriteString(s[i : i+n])
			i += n - 1
		case c == '{' || c == '}':
			b.WriteString(`\` + string(c))
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func placeholderAt(s string) int {
	if len(s) < 3 || !(s[1] >= 'a' && s[1] <= 'z' || s[1] >= 'A' && s[1] <= 'Z') {
		return 0
	}
	for i := 2; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '}':
			return i + 1
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._-/:", c) >= 0:
		default:
			return 0
		}
	}
	return 0
}
