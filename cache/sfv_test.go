package cache

import (
	"strings"
	"testing"
)

func TestParseSFList(t *testing.T) {
	for in, want := range map[string]string{
		``:                                   ``,
		`edgelimit; hit; ttl=42`:             `edgelimit[hit=?1 ttl=42]`,
		`ExampleCache; fwd=uri-miss; stored`: `ExampleCache[fwd=uri-miss stored=?1]`,
		`OriginCache; hit; ttl=1100, "CDN Company Here"; hit; ttl=545`: `OriginCache[hit=?1 ttl=1100] "CDN Company Here"[hit=?1 ttl=545]`,
		`a; fwd=stale; fwd-status=304;ttl=-412`:                        `a[fwd=stale fwd-status=304 ttl=-412]`,
		`a;detail="mem \"x\"", b;collapsed=?0`:                         `a[detail="mem \"x\""] b[collapsed=?0]`,
		`a;k=1.5, *b;k=:aGk=:, c/d:e;k=?1`:                             `a[k=1.5] *b[k=:aGk=:] c/d:e[k=?1]`,
		`(a b);p, c`:                                                   `(a b)[p=?1] c`,
		`a;x=1;x=2`:                                                    `a[x=2]`,
		"a ,\tb":                                                       `a b`,
	} {
		list, err := ParseSFList(in)
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		var parts []string
		for _, m := range list {
			s := m.Item
			if len(m.Params) > 0 {
				var ps []string
				for _, p := range m.Params {
					ps = append(ps, p.Key+"="+p.Value)
				}
				s += "[" + strings.Join(ps, " ") + "]"
			}
			parts = append(parts, s)
		}
		if got := strings.Join(parts, " "); got != want {
			t.Errorf("%q: %s, want %s", in, got, want)
		}
	}
	for _, in := range []string{
		`Origin Cache; hit`, `a;`, `a; Hit`, `a;hit=?2`, `, a`, `a,`, `a,,b`, `"open`, `"bad\q"`,
		"\"tab\there\"", `a;ttl=1234567890123456`, `a;t=1.2345`, `a;t=1.`, `a;t=-`, `:abc`, `(a b`, `a b`,
		"a\x00", `é`, `a;k=é`,
	} {
		if _, err := ParseSFList(in); err == nil {
			t.Errorf("%q parsed", in)
		}
	}
}

func TestSFNameItem(t *testing.T) {
	for in, want := range map[string]string{
		"edgelimit":         "edgelimit",
		"cdn-3.example.com": "cdn-3.example.com",
		"Example CDN":       `"Example CDN"`,
		`say "hi" \o/`:      `"say \"hi\" \\o/"`,
		"10.0.0.1":          `"10.0.0.1"`,
		"*star":             "*star",
	} {
		got, err := SFNameItem(in)
		if err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
		if list, err := ParseSFList(got + "; hit"); err != nil || len(list) != 1 || list[0].Item != got {
			t.Errorf("%q: %q does not parse back: %v", in, got, err)
		}
	}
	for _, in := range []string{"", "café", "tab\there", "nl\n"} {
		if _, err := SFNameItem(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}
