package edgelimit

import (
	"encoding/json"
	"html"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// TestBodyMatchesReplacer: a denial body renders as Caddy's replacer
// renders its template, with the {edge_limit.*} values set as before.
func TestBodyMatchesReplacer(t *testing.T) {
	h := &Handler{}
	d := &denial{h: h, l: &compiledLimit{name: "per-key"}, key: "k", tier: "gold", status: 429, retry: 61,
		res: limiter.Result{Limit: 100, Remaining: 0, ResetAt: 1_800_000_000_500_000, Window: 90e9}}
	templates := []string{
		DefaultBody,
		`{"status":{edge_limit.status},"limit":"{edge_limit.name}","key":"{edge_limit.key}","tier":"{edge_limit.tier}"}`,
		"{edge_limit.retry_after} {edge_limit.retry_after_seconds} {edge_limit.retry_after_human}",
		"{edge_limit.limit}/{edge_limit.remaining} until {edge_limit.reset} per {edge_limit.window}",
		`path {http.request.uri.path} ua {http.request.header.User-Agent} none {http.request.header.Absent}`,
		`\{literal\} {} {1bad} { spaced } {unclosed`,
		`{edge_limit.unknown}{vars.x}{edge_limit.status}`,
		"", "plain", "{", "}", `\`, `\{`, "{edge_limit.status",
	}
	for _, tmpl := range templates {
		compiled := compileTemplate(tmpl)
		want := caddy.NewReplacer()
		want.Set("edge_limit.status", d.status)
		want.Set("edge_limit.name", d.l.name)
		want.Set("edge_limit.key", h.displayKey(d.key))
		want.Set("edge_limit.tier", d.tier)
		want.Set("edge_limit.retry_after", d.retry)
		want.Set("edge_limit.retry_after_seconds", secondsText(d.retry))
		want.Set("edge_limit.retry_after_human", humanSeconds(d.retry))
		want.Set("edge_limit.limit", d.res.Limit)
		want.Set("edge_limit.remaining", d.res.Remaining)
		want.Set("edge_limit.reset", resetUnix(&d.res))
		want.Set("edge_limit.window", secondsCeil(d.res.Window))
		got := caddy.NewReplacer()
		for _, r := range []*caddy.Replacer{want, got} {
			r.Set("http.request.uri.path", "/p")
			r.Set("http.request.header.User-Agent", "{edge_limit.status}")
		}
		got.Map(d.value)
		if g, w := string(parseBody(compiled).render(nil, d, got, appendRaw)), want.ReplaceAll(compiled, ""); g != w {
			t.Errorf("template %q: rendered %q, the replacer %q", tmpl, g, w)
		}
		if g, w := got.ReplaceAll(compiled, ""), want.ReplaceAll(compiled, ""); g != w {
			t.Errorf("template %q: placeholders %q, want %q", tmpl, g, w)
		}
	}
}

// FuzzEscapers: an escaped value reads back as itself and cannot close
// its string or open markup.
func FuzzEscapers(f *testing.F) {
	for _, s := range []string{"", `"`, `\`, "'", "</script>", "a\u2028b\u2029", "\x00\x1f\x7f", "\xff\xfe", "é漢🙂", `&lt;`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		// JSON reads each invalid byte as a replacement character.
		var b strings.Builder
		for i := 0; i < len(s); {
			r, n := utf8.DecodeRuneInString(s[i:])
			b.WriteRune(r)
			i += n
		}
		valid := b.String()
		j := appendJSON(nil, s)
		var back string
		if err := json.Unmarshal([]byte(`"`+string(j)+`"`), &back); err != nil || back != valid {
			t.Fatalf("JSON %q: %q, %v; want %q", j, back, err, valid)
		}
		if strings.ContainsAny(string(j), "<>&\u2028\u2029") {
			t.Fatalf("JSON %q holds a character a script element reads", j)
		}
		js := appendJS(nil, s)
		if strings.ContainsRune(string(js), '\'') || unescapedQuote(string(js)) {
			t.Fatalf("JS %q can close its string", js)
		}
		h := appendHTML(nil, s)
		if strings.ContainsAny(string(h), `<>"'`) || html.UnescapeString(string(h)) != s {
			t.Fatalf("HTML %q", h)
		}
	})
}

// unescapedQuote reports a double quote not preceded by an odd number of
// backslashes.
func unescapedQuote(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '"' {
			continue
		}
		n := 0
		for j := i - 1; j >= 0 && s[j] == '\\'; j-- {
			n++
		}
		if n%2 == 0 {
			return true
		}
	}
	return false
}
