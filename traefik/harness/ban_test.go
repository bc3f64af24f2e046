package harness

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
)

// TestBanSharedAcrossEdges: a ban is kept with the counter in Redis: the
// Caddy module bans a client, and the plugin under Yaegi, on the same
// Redis, denies it until the ban ends, with the Retry-After that says so;
// then both serve it again.
func TestBanSharedAcrossEdges(t *testing.T) {
	r := startRedis(t)
	p := loadPlugin(t)
	clk := clock.NewFake(clockBase().AddDate(0, 0, 2).Add(5*time.Hour + 10*time.Second))
	restore := clock.Install(clk)
	site := e2e.Start(t, "%ADDR% {\n\troute {\n\t\tedge_limit {\n\t\t\tlimit api {\n\t\t\t\tkey {header.X-Api-Key}\n\t\t\t\trate 2/1m\n\t\t\t\tban 10m\n\t\t\t\tscope global\n\t\t\t}\n"+
		"\t\t\tstorage redis redis://"+r.Addr+" {\n\t\t\t\tkey_prefix ban:\n\t\t\t\tclock local\n\t\t\t}\n\t\t}\n\t\trespond \"ok\"\n\t}\n}")
	restore()
	plugin := p.middleware(t, "limits:\n  api: {key: [header:X-Api-Key], limit: 2, window: 1m, ban: 10m}\nstorage:\n  redis: {address: \""+r.Addr+"\", keyPrefix: \"ban:\", clock: local}\n",
		clk.Now, &upstream{})
	viaPlugin := func() *httptest.ResponseRecorder {
		req := httptest.NewRequest("GET", "/", nil)
		req.Header.Set("X-Api-Key", "k1")
		w := httptest.NewRecorder()
		plugin.ServeHTTP(w, req)
		return w
	}
	e2e.Expect(t, site.Do("GET", "/", "X-Api-Key", "k1"), 200)
	expectReply(t, viaPlugin(), 200, "X-Ratelimit-Remaining", "0")
	e2e.Expect(t, site.Do("GET", "/", "X-Api-Key", "k1"), 429, "Retry-After", "600")
	clk.Add(2 * time.Minute)
	expectReply(t, viaPlugin(), 429, "Retry-After", "480", "X-Ratelimit-Remaining", "0")
	e2e.Expect(t, site.Do("GET", "/", "X-Api-Key", "k1"), 429, "Retry-After", "480")
	e2e.Expect(t, site.Do("GET", "/", "X-Api-Key", "k2"), 200)
	clk.Add(8 * time.Minute)
	expectReply(t, viaPlugin(), 200, "X-Ratelimit-Remaining", "1")
	e2e.Expect(t, site.Do("GET", "/", "X-Api-Key", "k1"), 200, "X-RateLimit-Remaining", "0")
}

// TestBanConfigErrors: a bad ban is refused, naming the field; a
// misspelled option is not ignored.
func TestBanConfigErrors(t *testing.T) {
	p := loadPlugin(t)
	base := "limits:\n  l:\n    limit: 5\n    window: 1m\n"
	for conf, want := range map[string]string{
		base + "    ban: 0":      `limit "l": ban must be more than 0, got 0s`,
		base + "    ban: 0s":     `limit "l": ban must be more than 0, got 0s`,
		base + "    ban: -1m":    `limit "l": ban "-1m"`,
		base + "    ban: soon":   `limit "l": ban "soon"`,
		base + "    ban: 1500ms": `limit "l": ban must be whole seconds`,
		base + "    ban: 30d":    `limit "l": ban must be whole seconds from 1s to 24 days`,
		base + "    bans: 10m":   "unknown option limits.l.bans (did you mean ban?)",
	} {
		var m map[string]interface{}
		if err := yamlUnmarshal(conf, &m); err != nil {
			t.Fatal(err)
		}
		cfg, err := p.decode(m)
		if err == nil {
			_, err = p.newHandler(cfg, &upstream{}, "bad")
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one that says %q", conf, err, want)
		}
	}
}
