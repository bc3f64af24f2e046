package harness

import (
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// docMiddlewares returns the edgelimit middlewares of every YAML block of
// docs/traefik.md, by name: each block that is a dynamic configuration
// (http.middlewares) is read as Traefik's file provider reads it.
func docMiddlewares(t *testing.T) map[string]map[string]interface{} {
	t.Helper()
	b, err := os.ReadFile("../../docs/traefik.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]interface{}{}
	blocks := strings.Split(string(b), "```yaml\n")
	for n, blk := range blocks[1:] {
		end := strings.Index(blk, "```")
		if end < 0 {
			t.Fatalf("YAML block %d is not closed", n+1)
		}
		var doc map[string]interface{}
		if err := yaml.Unmarshal([]byte(blk[:end]), &doc); err != nil {
			t.Fatalf("YAML block %d: %v\n%s", n+1, err, blk[:end])
		}
		httpConf, _ := doc["http"].(map[string]interface{})
		mws, _ := httpConf["middlewares"].(map[string]interface{})
		for name, mw := range mws {
			plugin, _ := mw.(map[string]interface{})["plugin"].(map[string]interface{})
			conf, ok := plugin["edgelimit"].(map[string]interface{})
			if !ok {
				continue
			}
			if _, dup := out[name]; dup {
				t.Fatalf("two middlewares named %s in docs/traefik.md", name)
			}
			out[name] = conf
		}
	}
	return out
}

// TestDocs loads every edgelimit middleware of docs/traefik.md through
// Yaegi, and checks what the published policies promise.
func TestDocs(t *testing.T) {
	p := loadPlugin(t)
	mws := docMiddlewares(t)
	if len(mws) < 9 {
		t.Fatalf("found %d middlewares in docs/traefik.md", len(mws))
	}
	clk := newClock()
	built := map[string]http.Handler{}
	for name, conf := range mws {
		cfg := p.config(t, conf, clk.Now)
		if sr, ok := conf["storage"]; ok && sr != nil {
			// The page's Redis is not here: check it loads, use memory.
			if _, err := p.newHandler(cfg, &upstream{}, name); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			delete(conf, "storage")
			cfg = p.config(t, conf, clk.Now)
		}
		h, err := p.newHandler(cfg, &upstream{}, name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		built[name] = h
	}
	if t.Failed() {
		return
	}
	until := func(h http.Handler, n int, path string, hdr ...string) (int, *http.Response) {
		for i := 1; i <= n; i++ {
			w := send(h, "GET", path, hdr...)
			if w.Code != 200 {
				return i, w.Result()
			}
		}
		return 0, nil
	}

	t.Run("001", func(t *testing.T) {
		n, resp := until(built["payments-limit"], 100, "/v1/payments", "X-Api-Key", "key-unknown")
		if n != 11 || resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" {
			t.Fatalf("BASE PAYMENTS bucket of 10: denied at %d", n)
		}
		body := readBody(t, resp)
		for _, want := range []string{`try again in 1 second"`, `"tier":"BASE"`, `"type":"PAYMENTS"`, `"resource":"payments"`} {
			if !strings.Contains(body, want) {
				t.Errorf("body %s lacks %s", body, want)
			}
		}
		if n, _ := until(built["payments-limit"], 100, "/v1/payments", "X-Api-Key", "key-t1"); n != 51 {
			t.Errorf("TIER_1 PAYMENTS bucket of 50: denied at %d", n)
		}
		// key-base-1 and key-base-2 are one organization: one bucket.
		a, _ := until(built["default-limit"], 30, "/v1/items", "X-Api-Key", "key-base-1")
		b, _ := until(built["default-limit"], 100, "/v1/items", "X-Api-Key", "key-base-2")
		if a != 0 || b != 21 {
			t.Errorf("org-base's DEFAULT bucket of 50 over two keys: denied at %d and %d", a, b)
		}
	})
	t.Run("002", func(t *testing.T) {
		n, resp := until(built["clarabridge"], 200, "/")
		if n != 151 || resp.StatusCode != 400 || resp.Header.Get("X-Ratelimit-Time") != "3600" {
			t.Fatalf("anonymous 150 per hour: denied at %d", n)
		}
		if body := readBody(t, resp); body != `{"error":"rate_limit_reached"}` {
			t.Errorf("body %s", body)
		}
		if n, _ := until(built["clarabridge"], 50, "/", "Authorization", "Bearer console-1", "X-Caller", "console"); n != 21 {
			t.Errorf("console token 20 per hour: denied at %d", n)
		}
	})
	t.Run("003", func(t *testing.T) {
		n, resp := until(built["intercom"], 2000, "/contacts", "X-App-Id", "app1", "X-Workspace-Id", "ws1")
		if n != 1667 || resp.StatusCode != 429 {
			t.Fatalf("10,000 per minute per app in 10 s windows: denied at %d", n)
		}
		if body := readBody(t, resp); !strings.Contains(body, "More than 1666 requests received in 10 seconds") {
			t.Errorf("body %s", body)
		}
	})
	t.Run("004", func(t *testing.T) {
		clk.Add(7 * time.Second) // anchored: the window starts now, not on the minute
		n, resp := until(built["rest-limit"], 100, "/v1.1/sites")
		if n != 61 || resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "60" {
			t.Fatalf("unauthenticated 60 per minute: denied at %d, Retry-After %s", n, resp.Header.Get("Retry-After"))
		}
		if body := readBody(t, resp); !strings.Contains(body, `"url":"/v1.1/sites"`) {
			t.Errorf("body %s", body)
		}
		if n, _ := until(built["rest-limit"], 100, "/v1.1/sites", "Authorization", "Bearer t", "X-Auth", "authenticated"); n != 0 {
			t.Errorf("an authenticated token is not held to 60: denied at %d", n)
		}
	})
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return b.String()
}
