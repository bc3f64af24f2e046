package edgelimit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"

	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
)

func TestMain(m *testing.M) {
	code := m.Run()
	redistest.StopShared()
	e2e.RemoveBinaries()
	os.Exit(code)
}

// appStorage returns the adapted edge_limit app's storage.
func appStorage(t *testing.T, cfg []byte) map[string]any {
	t.Helper()
	var v struct {
		Apps struct {
			EdgeLimit struct {
				Storage map[string]any `json:"storage"`
			} `json:"edge_limit"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &v); err != nil {
		t.Fatal(err)
	}
	return v.Apps.EdgeLimit.Storage
}

func TestRedisCaddyfileGoodForms(t *testing.T) {
	cases := []struct {
		name, global string
		want         map[string]any
	}{
		{"short", "storage redis redis://127.0.0.1:6379/0",
			map[string]any{"backend": "redis", "url": "redis://127.0.0.1:6379/0"}},
		{"defaults", "storage redis",
			map[string]any{"backend": "redis"}},
		{"url and options", "storage redis redis://10.0.0.5:6379/2 {\n\t\t\ttimeout 50ms\n\t\t\ton_error local\n\t\t}",
			map[string]any{"backend": "redis", "url": "redis://10.0.0.5:6379/2", "timeout": float64(50 * time.Millisecond), "on_error": "local"}},
		{"long form", `storage redis {
			url redis://user:{env.REDIS_PASSWORD}@10.0.0.5:6379/0
			timeout 50ms
			on_error deny
			key_prefix prod:edgelimit:
			clock local
			username bob
			password {env.REDIS_PASSWORD}
			db 3
			tls
		}`, map[string]any{"backend": "redis", "url": "redis://user:{env.REDIS_PASSWORD}@10.0.0.5:6379/0", "timeout": float64(50 * time.Millisecond),
			"on_error": "deny", "key_prefix": "prod:edgelimit:", "clock": "local", "username": "bob",
			"password": "{env.REDIS_PASSWORD}", "db": float64(3), "tls": true}},
		{"cluster", "storage redis {\n\t\t\taddrs a:6379 b:6379 c:6379\n\t\t\ton_error allow\n\t\t}",
			map[string]any{"backend": "redis", "addrs": []any{"a:6379", "b:6379", "c:6379"}, "on_error": "allow"}},
		{"sentinel", "storage redis {\n\t\t\taddrs s1:26379 s2:26379\n\t\t\tmaster_name mymaster\n\t\t\tsentinel_password {env.SENTINEL_PASSWORD}\n\t\t}",
			map[string]any{"backend": "redis", "addrs": []any{"s1:26379", "s2:26379"}, "master_name": "mymaster", "sentinel_password": "{env.SENTINEL_PASSWORD}"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := adapt(t, "{\n\tedge_limit {\n\t\t"+c.global+"\n\t}\n}\n:8080 {\n\trespond ok\n}\n")
			if err != nil {
				t.Fatal(err)
			}
			got, _ := json.Marshal(appStorage(t, cfg))
			want, _ := json.Marshal(c.want)
			if string(got) != string(want) {
				t.Fatalf("storage\n got %s\nwant %s", got, want)
			}
		})
	}
	// A handler's own storage.
	cfg, err := adapt(t, ":8080 {\n\tedge_limit {\n\t\tlimit a {\n\t\t\trate 5/1m\n\t\t}\n\t\tstorage redis redis://127.0.0.1:6379/1\n\t}\n\trespond ok\n}\n")
	if err != nil {
		t.Fatal(err)
	}
	if hs := handlersOf(t, cfg); len(hs) != 1 || string(hs[0].StorageRaw) != `{"backend":"redis","url":"redis://127.0.0.1:6379/1"}` {
		t.Fatalf("handler storage: %s", cfg)
	}
}

func TestRedisCaddyfileErrorsNameTheLine(t *testing.T) {
	cases := []struct {
		name, body, want, line string
	}{
		{"malformed url", "storage redis redis://127.0.0.1:notaport/0", `invalid port ":notaport"`, "Caddyfile:3"},
		{"bad scheme", "storage redis http://127.0.0.1:6379", "invalid URL scheme: http", "Caddyfile:3"},
		{"bad db in url", "storage redis redis://127.0.0.1:6379/zero", "invalid database number", "Caddyfile:3"},
		{"malformed url in block", "storage redis {\n\turl \"redis://a b\"\n}", "invalid character", "Caddyfile:4"},
		{"unknown option", "storage redis {\n\turl redis://127.0.0.1:6379\n\tpasword x\n}", `unknown redis storage option "pasword"`, "Caddyfile:5"},
		{"empty addrs", "storage redis {\n\taddrs\n}", "addrs needs at least one host:port", "Caddyfile:4"},
		{"bad address", "storage redis {\n\taddrs a:6379 b\n}", `address "b": want host:port`, "Caddyfile:4"},
		{"bad port", "storage redis {\n\taddrs a:99999\n}", `bad port "99999"`, "Caddyfile:4"},
		{"url and addrs", "storage redis redis://a:6379 {\n\taddrs b:6379\n}", "url and addrs exclude each other", "Caddyfile:3"},
		{"url twice", "storage redis redis://a:6379 {\n\turl redis://b:6379\n}", `option "url" given twice`, "Caddyfile:4"},
		{"option twice", "storage redis {\n\ttimeout 1s\n\ttimeout 2s\n}", `option "timeout" given twice`, "Caddyfile:5"},
		{"master without sentinels", "storage redis {\n\tmaster_name m\n}", "master_name needs the Sentinels' addrs", "Caddyfile:3"},
		{"bad on_error", "storage redis {\n\ton_error ignore\n}", `on_error "ignore": want allow, deny or local`, "Caddyfile:4"},
		{"bad clock", "storage redis {\n\tclock atomic\n}", `clock "atomic"`, "Caddyfile:4"},
		{"bad timeout", "storage redis {\n\ttimeout soon\n}", `bad duration "soon"`, "Caddyfile:4"},
		{"zero timeout", "storage redis {\n\ttimeout 0s\n}", "timeout must be positive", "Caddyfile:4"},
		{"hash tag in prefix", "storage redis {\n\tkey_prefix a{b}:\n}", "would change the keys' Cluster hash slots", "Caddyfile:4"},
		{"bad db", "storage redis {\n\tdb -1\n}", "db -1", "Caddyfile:4"},
		{"db in a cluster", "storage redis {\n\taddrs a:6379 b:6379\n\tdb 2\n}", "only database 0", "Caddyfile:3"},
		{"extra argument", "storage redis redis://a:6379 redis://b:6379", "wrong argument count", "Caddyfile:3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := "{\n\tedge_limit {\n" + indent(c.body) + "\n\t}\n}\n:8080 {\n\trespond ok\n}\n"
			_, err := adapt(t, body)
			if err == nil {
				t.Fatalf("accepted:\n%s", body)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.line) {
				t.Fatalf("error %q, want it to contain %q and %q\n%s", err, c.want, c.line, body)
			}
		})
	}
}

// Credentials in a malformed URL never reach the error.
func TestRedisURLErrorsHideThePassword(t *testing.T) {
	for _, u := range []string{
		"redis://user:hunter2@127.0.0.1:notaport/0",
		"redis://user:hunter2%zz@127.0.0.1:6379/0",
		"redis://user:hunter2@127.0.0.1:6379/0/1",
		"redis://user:hunter2 @127.0.0.1:6379/0",
		"redis://user:hunter2@127.0.0.1:6379/0?dial_timeout=x",
	} {
		r := RedisStorage{URL: u}
		err := r.Validate()
		if err == nil {
			t.Fatalf("%s accepted", u)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("error shows the password: %v", err)
		}
		_, err = adapt(t, "{\n\tedge_limit {\n\t\tstorage redis "+strconv.Quote(u)+"\n\t}\n}\n:8080 {\n\trespond ok\n}\n")
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("Caddyfile error %v", err)
		}
	}
}

// A URL written where an address goes (addrs) is refused without its
// password, in JSON and in the Caddyfile.
func TestRedisAddressErrorsHideThePassword(t *testing.T) {
	for _, a := range []string{"redis://user:hunter2@127.0.0.1:6379", "user:hunter2@127.0.0.1:6379", "hunter2@127.0.0.1:x"} {
		r := RedisStorage{Addrs: []string{a}}
		if err := r.Validate(); err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: %v", a, err)
		}
		_, err := adapt(t, "{\n\tedge_limit {\n\t\tstorage redis {\n\t\t\taddrs "+strconv.Quote(a)+"\n\t\t}\n\t}\n}\n:8080 {\n\trespond ok\n}\n")
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Caddyfile %s: %v", a, err)
		}
	}
}

func TestRedisValidateJSON(t *testing.T) {
	for _, c := range []struct {
		r    RedisStorage
		want string
	}{
		{RedisStorage{URL: "redis://a:1", Addrs: []string{"b:1"}}, "exclude each other"},
		{RedisStorage{Addrs: []string{""}}, "empty address"},
		{RedisStorage{Addrs: []string{"nohost"}}, "want host:port"},
		{RedisStorage{MasterName: "m"}, "master_name needs"},
		{RedisStorage{Addrs: []string{"a:1"}, SentinelPassword: "x"}, "sentinel_password goes with master_name"},
		{RedisStorage{OnError: "explode"}, "on_error"},
		{RedisStorage{Clock: "sundial"}, "clock"},
		{RedisStorage{KeyPrefix: "{x}"}, "key_prefix"},
		{RedisStorage{Timeout: -1}, "timeout"},
		{RedisStorage{DB: -2}, "db"},
		{RedisStorage{URL: "ftp://x"}, "scheme"},
	} {
		if err := c.r.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.r, err, c.want)
		}
	}
	ok := RedisStorage{URL: "redis://{env.REDIS_HOST}:6379/0", Addrs: nil, OnError: "local", Clock: "server"}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
}

// provisionRedis provisions a RedisStorage from JSON as Caddy would.
func provisionRedis(t *testing.T, js string) (*RedisStorage, error) {
	t.Helper()
	var r RedisStorage
	if err := json.Unmarshal([]byte(js), &r); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := r.Provision(ctx); err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = r.Cleanup() })
	return &r, r.Validate()
}

// Caddy starts with an unreachable Redis; on_error applies, fast.
func TestRedisProvisionUnreachable(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 1, Window: time.Hour}
	reqs := []store.Request{{Counter: "c", Key: "k", Limit: l, Cost: 1}}
	res := make([]limiter.Result, 1)
	for _, policy := range []string{"allow", "deny", "local"} {
		r, err := provisionRedis(t, `{"url": "redis://`+addr+`/0", "on_error": "`+policy+`", "timeout": "50ms"}`)
		if err != nil {
			t.Fatalf("%s: provisioning with Redis down: %v", policy, err)
		}
		start := time.Now()
		err = r.Store().Take(context.Background(), time.Now(), reqs, res)
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("%s: Take took %s", policy, d)
		}
		switch policy {
		case "allow":
			if err == nil || errors.Is(err, store.ErrUnavailable) {
				t.Fatalf("allow: %v", err)
			}
		case "deny":
			if !errors.Is(err, store.ErrUnavailable) {
				t.Fatalf("deny: %v", err)
			}
		case "local":
			if err != nil || !res[0].Allowed {
				t.Fatalf("local: %v %+v", err, res[0])
			}
		}
	}
}

// Placeholders are replaced at start-up; two configs with the same
// settings share one store (and its connections); the password stays out of
// logs.
func TestRedisPlaceholdersAndPool(t *testing.T) {
	srv := redistest.Start(t)
	const password = "pl4ceholder-s3cret"
	admin := srv.Client(t)
	if err := admin.ConfigSet(context.Background(), "requirepass", password).Err(); err != nil {
		t.Fatal(err)
	}
	t.Setenv("EDGELIMIT_TEST_REDIS_PASSWORD", password)
	t.Setenv("EDGELIMIT_TEST_REDIS_ADDR", srv.Addr)
	js := `{"url": "redis://:{env.EDGELIMIT_TEST_REDIS_PASSWORD}@{env.EDGELIMIT_TEST_REDIS_ADDR}/0", "on_error": "deny", "clock": "local", "timeout": "5s"}`
	a, err := provisionRedis(t, js)
	if err != nil {
		t.Fatal(err)
	}
	b, err := provisionRedis(t, js)
	if err != nil {
		t.Fatal(err)
	}
	if a.store != b.store {
		t.Fatal("two configs with the same settings got two stores")
	}
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 2, Window: time.Hour}
	reqs := []store.Request{{Counter: "c", Key: "k", Limit: l, Cost: 1}}
	res := make([]limiter.Result, 1)
	for i, want := range []bool{true, true, false} {
		s := []*RedisStorage{a, b, a}[i]
		if err := s.Store().Take(context.Background(), time.Now(), reqs, res); err != nil {
			t.Fatalf("take %d: %v", i, err)
		}
		if res[0].Allowed != want {
			t.Fatalf("take %d: %+v", i, res[0])
		}
	}
	// The same settings with the wrong password: a store of its own, whose
	// errors do not show the password (TestRedisCaddyValidate checks the
	// logs).
	t.Setenv("EDGELIMIT_TEST_REDIS_PASSWORD", "wrong-"+password)
	c, err := provisionRedis(t, js)
	if err != nil {
		t.Fatal(err)
	}
	if c.store == a.store {
		t.Fatal("a different password shares a store")
	}
	// The start-up ping failed: the take is decided without Redis, and says
	// why.
	err = c.Store().Take(context.Background(), time.Now(), reqs, res)
	if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "WRONGPASS") || strings.Contains(err.Error(), password) {
		t.Fatalf("wrong password: %v", err)
	}
	// Releasing the configs closes the store with the last.
	if err := a.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := b.Store().Take(context.Background(), time.Now(), reqs, res); err != nil {
		t.Fatalf("b lost its store when a was cleaned up: %v", err)
	}
	if err := b.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := b.Store().Take(context.Background(), time.Now(), reqs, res); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("the store outlived its last config: %v", err)
	}
}

// The edge_limit handler on Redis: the app's storage for every handler, or
// a handler's own, with the Caddyfile, decided exactly as in memory.
func TestRedisThroughCaddy(t *testing.T) {
	srv := redistest.Shared(t)
	clk := fakeClock(t)
	prefix := fmt.Sprintf("caddytest%d:", time.Now().UnixNano())
	s := startSite(t, `{
	edge_limit {
		storage redis `+srv.URL+` {
			clock local
			key_prefix `+prefix+`
			timeout 5s
		}
	}
}
%ADDR% {
	handle /own {
		edge_limit {
			limit own {
				rate 1/1h
			}
			storage redis {
				url `+srv.URL+`
				clock local
				key_prefix `+prefix+`own:
				on_error deny
				timeout 5s
			}
		}
	}
	handle {
		edge_limit {
			limit per_client {
				key {header.X-Api-Key} {client_ip}
				rate 5/1m
			}
			limit burst {
				key {client_ip}
				token_bucket 3 1/1s
			}
		}
	}
	respond "ok"
}`)
	now := clk.Now()
	for want := 2; want >= 0; want-- {
		expect(t, s.get("/"), 200, "X-RateLimit-Limit", "3", "X-RateLimit-Remaining", strconv.Itoa(want))
	}
	expect(t, s.get("/"), 429, "Retry-After", "1", "X-RateLimit-Remaining", "0",
		"X-RateLimit-Reset", strconv.FormatInt(now.Add(3*time.Second).Unix(), 10))
	// The denied request consumed nothing from per_client.
	clk.Add(time.Second)
	expect(t, s.get("/"), 200, "X-RateLimit-Remaining", "0", "X-RateLimit-Limit", "3")
	clk.Add(3 * time.Second)
	expect(t, s.get("/"), 200, "X-RateLimit-Limit", "5", "X-RateLimit-Remaining", "0")
	expect(t, s.get("/"), 429, "X-RateLimit-Limit", "5", "Retry-After", "56")

	// /own has its own store (and its own key prefix).
	expect(t, s.get("/own"), 200, "X-RateLimit-Limit", "1")
	expect(t, s.get("/own"), 429, "Retry-After", "3596")
	keys, err := srv.Client(t).Keys(context.Background(), prefix+"own:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("the handler's own store wrote %q (%v)", keys, err)
	}
}

// A request denied by a later edge_limit handler gives back, in Redis,
// what the earlier handler counted.
func TestRedisDenialByLaterHandlerRefunds(t *testing.T) {
	srv := redistest.Shared(t)
	fakeClock(t)
	s := startSite(t, `{
	edge_limit {
		storage redis `+srv.URL+` {
			clock local
			key_prefix `+fmt.Sprintf("refund%d:", time.Now().UnixNano())+`
			timeout 5s
		}
	}
}
%ADDR% {
	route /both {
		edge_limit {
			limit outer {
				rate 5/1m
				scope global
			}
		}
		edge_limit {
			limit inner {
				rate 2/1m
			}
		}
		respond "ok"
	}
	route /outer {
		edge_limit {
			limit outer {
				rate 5/1m
				scope global
			}
		}
		respond "ok"
	}
}`)
	expect(t, s.get("/both"), 200)
	expect(t, s.get("/both"), 200)
	for range 3 {
		expect(t, s.get("/both"), 429, "X-RateLimit-Limit", "2")
	}
	// outer kept the two admitted requests only.
	expect(t, s.get("/outer"), 200, "X-RateLimit-Remaining", "2")
	expect(t, s.get("/outer"), 200)
	expect(t, s.get("/outer"), 200, "X-RateLimit-Remaining", "0")
	expect(t, s.get("/outer"), 429)
}

// Each on_error policy through Caddy, with Redis unreachable from the
// start: Caddy starts, and requests get the policy.
func TestRedisOnErrorThroughCaddy(t *testing.T) {
	fakeClock(t)
	down := "redis://127.0.0.1:" + strconv.Itoa(freePort(t)) + "/0"
	s := startSite(t, `%ADDR% {
	handle /allow {
		edge_limit {
			limit a {
				rate 1/1h
			}
			storage redis `+down+` {
				on_error allow
				timeout 50ms
			}
		}
	}
	handle /deny {
		edge_limit {
			limit d {
				rate 1/1h
			}
			storage redis `+down+` {
				on_error deny
				timeout 50ms
			}
		}
	}
	handle /local {
		edge_limit {
			limit l {
				rate 2/1h
			}
			storage redis `+down+` {
				on_error local
				timeout 50ms
			}
		}
	}
	respond "ok"
}`)
	for range 3 {
		expect(t, s.get("/allow"), 200, "X-RateLimit-Limit", "")
		expect(t, s.get("/deny"), 503, "Retry-After", "1")
	}
	expect(t, s.get("/local"), 200, "X-RateLimit-Remaining", "1")
	expect(t, s.get("/local"), 200, "X-RateLimit-Remaining", "0")
	expect(t, s.get("/local"), 429)
}

// Two Caddy instances sharing one Redis: requests alternating between them,
// then from both at once, are admitted exactly up to the limit. The
// password comes from the environment and appears in no log.
func TestRedisTwoCaddyInstances(t *testing.T) {
	bin := e2e.CaddyBinary(t)
	srv := redistest.Start(t)
	const password = "tw0-instances-s3cret"
	if err := srv.Client(t).ConfigSet(context.Background(), "requirepass", password).Err(); err != nil {
		t.Fatal(err)
	}
	caddyfile := `{
	admin 127.0.0.1:%ADMIN%
	edge_limit {
		storage redis {
			url redis://` + srv.Addr + `/0
			password {env.EDGELIMIT_E2E_REDIS_PASSWORD}
			# Generous for a loaded test machine: a slower answer would
			# let a request through unlimited and spoil the count.
			timeout 5s
		}
	}
}
http://127.0.0.1:%PORT% {
	handle /health {
		respond "up"
	}
	handle /alternate {
		edge_limit {
			limit shared {
				key everyone
				rate 20/1h
				window anchored
			}
			zone alternate
		}
	}
	handle /burst {
		edge_limit {
			limit shared {
				key everyone
				token_bucket 30 1/1h
			}
			zone burst
		}
	}
	respond "ok"
}
`
	env := "EDGELIMIT_E2E_REDIS_PASSWORD=" + password
	a := e2e.Run(t, bin, caddyfile, env)
	b := e2e.Run(t, bin, caddyfile, env)

	ok := 0
	for i := range 50 {
		p := []*e2e.Process{a, b}[i%2]
		switch code := p.Get(t, "/alternate"); code {
		case 200:
			ok++
		case 429:
		default:
			t.Fatalf("request %d: status %d\n%s", i, code, p.Output())
		}
	}
	if ok != 20 {
		t.Fatalf("alternating between two instances: %d admitted, want exactly 20", ok)
	}

	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := []*e2e.Process{a, b}[w%2]
			for range 10 {
				resp, err := http.Get(p.Base + "/burst")
				code := -1
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					code = resp.StatusCode
				}
				mu.Lock()
				codes[code]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if codes[200] != 30 || codes[429] != 50 {
		t.Fatalf("80 concurrent requests on two instances for a bucket of 30: %v", codes)
	}
	for _, p := range []*e2e.Process{a, b} {
		if strings.Contains(p.Output(), password) {
			t.Fatalf("the password is in the logs:\n%s", p.Output())
		}
	}
}

// `caddy validate` rejects bad Redis settings with their line, accepts good
// ones, and does not fail when Redis is unreachable.
func TestRedisCaddyValidate(t *testing.T) {
	bin := e2e.CaddyBinary(t)
	dir := t.TempDir()
	validate := func(storageBlock string, env ...string) (string, error) {
		f := filepath.Join(dir, "Caddyfile")
		body := "{\n\tedge_limit {\n\t\t" + storageBlock + "\n\t}\n}\n:0 {\n\trespond ok\n}\n"
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return e2e.Command(bin, dir, env, "validate", "--config", f, "--adapter", "caddyfile")
	}
	for _, c := range []struct{ block, want string }{
		{"storage redis redis://user:hunter2@127.0.0.1:notaport/0", `invalid port`},
		{"storage redis {\n\t\t\turl redis://127.0.0.1:6379\n\t\t\tpasword x\n\t\t}", `unknown redis storage option \"pasword\"`},
		{"storage redis {\n\t\t\taddrs\n\t\t}", "addrs needs at least one host:port"},
	} {
		out, err := validate(c.block)
		if err == nil || !strings.Contains(out, c.want) || !strings.Contains(out, "Caddyfile:") {
			t.Fatalf("%s: err %v\n%s", c.block, err, out)
		}
		if strings.Contains(out, "hunter2") {
			t.Fatalf("the password is in the output:\n%s", out)
		}
	}
	// A placeholder that resolves to a malformed URL fails at provisioning.
	out, err := validate("storage redis {env.EDGELIMIT_BAD_URL}", "EDGELIMIT_BAD_URL=redis://u:hunter2@h:port/x")
	if err == nil || strings.Contains(out, "hunter2") || !strings.Contains(out, "redis storage") {
		t.Fatalf("bad URL from the environment: err %v\n%s", err, out)
	}
	// Unreachable, or refusing the password: valid all the same, with a
	// warning that does not show the password.
	down := "127.0.0.1:" + strconv.Itoa(freePort(t))
	out, err = validate("storage redis redis://:hunter2@" + down + "/0 {\n\t\t\ttimeout 50ms\n\t\t}")
	if err != nil || strings.Contains(out, "hunter2") || !strings.Contains(out, "connection refused") {
		t.Fatalf("unreachable Redis: err %v\n%s", err, out)
	}
	srv := redistest.Start(t)
	if err := srv.Client(t).ConfigSet(context.Background(), "requirepass", "the-right-one").Err(); err != nil {
		t.Fatal(err)
	}
	out, err = validate("storage redis {\n\t\t\turl redis://"+srv.Addr+"/0\n\t\t\tpassword {env.EDGELIMIT_WRONG}\n\t\t}", "EDGELIMIT_WRONG=hunter2")
	if err != nil || strings.Contains(out, "hunter2") || !strings.Contains(out, "WRONGPASS") {
		t.Fatalf("wrong password: err %v\n%s", err, out)
	}
}

// url gives one server; addrs a Cluster, even with one address; addrs and
// master_name the Sentinels' failover client.
func TestRedisClientKinds(t *testing.T) {
	for _, c := range []struct {
		r       RedisStorage
		cluster bool
		addrs   string
	}{
		{RedisStorage{}, false, "127.0.0.1:6379"},
		{RedisStorage{URL: "redis://h:7000/2"}, false, "h:7000"},
		{RedisStorage{URL: "unix:///run/redis.sock?db=1"}, false, "/run/redis.sock"},
		{RedisStorage{Addrs: []string{"a:1", "b:2", "c:3"}}, true, "a:1,b:2,c:3"},
		{RedisStorage{Addrs: []string{"config-endpoint:6379"}}, true, "config-endpoint:6379"},
		{RedisStorage{Addrs: []string{"s1:26379", "s2:26379"}, MasterName: "mymaster"}, false, "mymaster@s1:26379,s2:26379"},
	} {
		set, err := c.r.resolve(caddy.NewReplacer())
		if err != nil {
			t.Fatal(err)
		}
		client := storage.NewRedisClient(set.opts, time.Second)
		_, isCluster := client.(*redis.ClusterClient)
		client.Close()
		if isCluster != c.cluster || set.target != c.addrs {
			t.Errorf("%+v: %T for %s", c.r, client, set.target)
		}
	}
	set, err := (&RedisStorage{URL: "rediss://u:p@h:1/3", DB: 4, Username: "v", Password: "q"}).resolve(caddy.NewReplacer())
	if err != nil {
		t.Fatal(err)
	}
	if o := set.opts; o.DB != 4 || o.Username != "v" || o.Password != "q" || o.TLSConfig == nil {
		t.Fatalf("overrides: %+v", o)
	}
}

// TestRedisOutageLogsQuietly: with on_error deny, each 503 was returned as
// a handler error, and Caddy logged one error line per request (47,700
// lines in a 5-second outage). The 503s are answered, and the outage is
// logged once per interval; with handle_errors, the error routes render
// the 503 (logged at debug level).
func TestRedisOutageLogsQuietly(t *testing.T) {
	fakeClock(t)
	logOption, logs := e2e.Logs(t)
	down := "redis://127.0.0.1:" + strconv.Itoa(freePort(t)) + "/0"
	limit := `
		edge_limit {
			limit d {
				rate 100/1h
			}
			storage redis ` + down + ` {
				on_error deny
				timeout 50ms
			}
			%HANDLE_ERRORS%
		}`
	s := startSite(t, "{\n"+logOption+"}\n%ADDR% {"+strings.ReplaceAll(limit, "%HANDLE_ERRORS%", "")+"\n\trespond \"ok\"\n}")
	for range 50 {
		expect(t, s.get("/"), 503, "Retry-After", "1", "body", `{"status":503,"error":"Service unavailable, try again in 1 second"}`)
	}
	lines := logs()
	if n := e2e.Count(lines, `"level":"error"`); n != 0 {
		t.Fatalf("%d error lines for 50 requests during an outage:\n%s", n, strings.Join(lines, "\n"))
	}
	if n := e2e.Count(lines, "rate-limit storage failed"); n > 2 {
		t.Fatalf("%d warnings for one outage", n)
	}
	// With handle_errors, the site's error routes render the 503.
	s = startSite(t, "{\n"+logOption+"}\n%ADDR% {"+strings.ReplaceAll(limit, "%HANDLE_ERRORS%", "handle_errors")+`
	respond "ok"
	handle_errors {
		respond "custom {err.status_code}"
	}
}`)
	for range 5 {
		expect(t, s.get("/"), 503, "Retry-After", "1", "body", "custom 503")
	}
	if n := e2e.Count(logs(), `"level":"error"`); n != 0 {
		t.Fatalf("%d error lines with handle_errors", n)
	}
}

// TestRedisBackInUseWhenItAnswers: with on_error deny, a request made
// after Redis was healthy again was answered 503 "did not answer
// recently": Redis was left alone for a second after a failure. A failed
// Redis is probed (PING) every 50ms while requests are decided at once,
// and is back in use as soon as it answers: once the store says so, with
// no request in between, the next request is served.
func TestRedisBackInUseWhenItAnswers(t *testing.T) {
	srv := redistest.Start(t)
	fakeClock(t)
	logOption, logs := e2e.Logs(t)
	s := startSite(t, `{
`+logOption+`}
%ADDR% {
	edge_limit {
		limit d {
			rate 100/1h
		}
		storage redis `+srv.URL+` {
			on_error deny
			timeout 100ms
			clock local
		}
	}
	respond "ok"
}`)
	expect(t, s.get("/"), 200)
	c := srv.Client(t)
	ctx := context.Background()
	if err := c.Do(ctx, "CLIENT", "PAUSE", 600, "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	expect(t, s.get("/"), 503) // waits the timeout: Redis is paused
	for range 5 {
		start := time.Now()
		expect(t, s.get("/"), 503) // at once: Redis is known down
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("a request waited %s for a Redis known down", d)
		}
	}
	// Redis answers again when the pause ends; the store's probe finds it.
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for e2e.Count(logs(), "redis rate-limit storage answers again") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("Redis answers, and the store did not say it noticed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	expect(t, s.get("/"), 200)
}
