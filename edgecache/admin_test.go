package edgecache_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/edgelimit/caddy-edgelimit/cache"
	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
)

func postPurge(t *testing.T, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(fmt.Sprintf("http://localhost:%d/edge_cache/purge", e2e.AdminPort()), "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func TestCachePurgeThroughAdminAPI(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, api)
	s := startCacheSite(t, `
%ADDR% {
	edge_cache
	reverse_proxy %UPSTREAM%
}`, up)
	get := func(path string, status string, headers ...string) {
		t.Helper()
		e2e.Expect(t, s.Get(path, headers...), 200, "Bloom-Status", status)
	}
	tagged := "/purge/a?bloom-response-buckets=purge_user:1,purge_all"
	other := "/purge/b?bloom-response-buckets=purge_user:2,purge_all"
	get(tagged, "MISS")
	get(other, "MISS")
	get("/purge/me", "MISS", "Authorization", "Bearer purge-alice")
	get("/purge/me", "MISS", "Authorization", "Bearer purge-bob")
	get(tagged, "HIT")

	if code, body := postPurge(t, `{"buckets":["purge_user:1"]}`); code != 200 || body != `{"purged":1}` {
		t.Fatalf("purge bucket: %d %s", code, body)
	}
	get(tagged, "MISS")
	get(other, "HIT")
	if code, body := postPurge(t, `{"authorization":"Bearer purge-alice"}`); code != 200 || body != `{"purged":1}` {
		t.Fatalf("purge authorization: %d %s", code, body)
	}
	get("/purge/me", "MISS", "Authorization", "Bearer purge-alice")
	get("/purge/me", "HIT", "Authorization", "Bearer purge-bob")
	hash := cache.AuthHash("Bearer purge-bob").String()
	if code, body := postPurge(t, `{"authorization_hash":"`+hash+`","buckets":["purge_all"],"shard":0}`); code != 200 || body != `{"purged":3}` {
		t.Fatalf("purge hash and bucket: %d %s", code, body)
	}
	get(other, "MISS")
	get("/purge/me", "MISS", "Authorization", "Bearer purge-bob")

	for body, want := range map[string]string{
		``:                               "JSON object",
		`{`:                              "JSON object",
		`[]`:                             "JSON object",
		`{}`:                             "name what to purge",
		`{"buckets":[]}`:                 "name what to purge",
		`{"bucket":["a"]}`:               "unknown field",
		`{"buckets":[""]}`:               "bucket",
		`{"authorization_hash":"abc"}`:   "64 hexadecimal digits",
		`{"buckets":["a"],"shard":16}`:   "shard 16",
		`{"buckets":["a"],"shard":-1}`:   "shard -1",
		`{"buckets":["a"]} {"x":1}`:      "one JSON object",
		`{"buckets":"a"}`:                "JSON object",
		`{"authorization":"","shard":1}`: "name what to purge",
	} {
		code, got := postPurge(t, body)
		if code != 400 || !strings.Contains(got, want) || !strings.HasPrefix(got, `{"error":`) {
			t.Errorf("body %q: %d %s, want 400 with %q", body, code, got, want)
		}
	}
	resp, err := http.Get(fmt.Sprintf("http://localhost:%d/edge_cache/purge", e2e.AdminPort()))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
		t.Fatalf("GET: %d %v", resp.StatusCode, resp.Header)
	}
}
