package edgelimit

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/httpval"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/policy"
	"github.com/edgelimit/caddy-edgelimit/store"
)

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"": 0, "60": time.Minute, "10s": 10 * time.Second, "1m30s": 90 * time.Second, "1d": 24 * time.Hour,
		"7d": 7 * 24 * time.Hour, "250ms": 250 * time.Millisecond,
	} {
		got, err := parseDuration("window", in)
		if err != nil || got != want {
			t.Errorf("%q: %v %v, want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"-1m", "1w", "d", "1.5d", "999999999999"} {
		if _, err := parseDuration("window", bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestPlaceholders: the request placeholders of a body, as the Caddy
// module's replacer has them, escaped by the policy for the body's type.
func TestPlaceholders(t *testing.T) {
	r := httptest.NewRequest("GET", "http://api.example:8080/v1/items/9?sid=s1", nil)
	r.RemoteAddr = "[2001:db8::1%eth0]:443"
	r.Header.Set("X-Name", `a"b<c>`)
	ph := &placeholders{r: r, ips: (*httpval.Forwarded)(nil)}
	render := func(body, contentType string) string {
		l := &policy.Limit{Name: "calls"}
		p, err := policy.New([]*policy.Limit{l}, &policy.Responses{Body: body, ContentType: contentType})
		if err != nil {
			t.Fatal(err)
		}
		d := &policy.Decision{Reqs: []store.Request{{Key: "k"}}, Meta: []policy.Planned{{Limit: l, Tier: "BASE"}},
			Res: []limiter.Result{{Limit: 10, Remaining: 0, ResetAt: 5e6, Window: time.Minute, RetryAfter: 75 * time.Second}}}
		w := httptest.NewRecorder()
		p.Denial(d, 0).Write(w, "GET", ph, nil)
		return w.Body.String()
	}
	got := render(`{"a":{edge_limit.status},"n":"{edge_limit.name}","h":"{header.X-Name}","p":"{http.request.uri.path.1}","q":"{query.sid}","host":"{host}","ip":"{remote_host}","r":"{edge_limit.retry_after_human}","w":{edge_limit.window},"x":"{unknown.thing}","lit":"\{not}","brace":{}}`, "application/json")
	want := `{"a":429,"n":"calls","h":"a\"b\u003cc\u003e","p":"items","q":"s1","host":"api.example","ip":"2001:db8::1","r":"1 minute 15 seconds","w":60,"x":"","lit":"{not}","brace":{}}`
	if got != want {
		t.Errorf("render:\n got %s\nwant %s", got, want)
	}
	// HTML: an unquoted attribute's value ends at a space (and = starts
	// another), and a script element decodes no references, so that a
	// backslash there would escape the template's closing quote;
	// JavaScript: / ends a regular expression literal or a comment.
	r.Header.Set("X-Name", `a"b<c>&'d`+"`${x}` on=1\\/")
	for ct, want := range map[string]string{
		"text/plain":               `a"b<c>&'d` + "`${x}` on=1\\/",
		"text/html; charset=utf-8": `a&#34;b&lt;c&gt;&amp;&#39;d&#96;${x}&#96;&#32;on&#61;1&#92;/`,
		"application/javascript":   `a\"b\u003cc\u003e\u0026\u0027d\u0060\u0024{x}\u0060 on=1\\\u002f`,
	} {
		if got := render("{header.X-Name}", ct); got != want {
			t.Errorf("%s: got %s, want %s", ct, got, want)
		}
	}
}

// sourceValue reads a source as readKeys does, without an ipStrategy or
// credentials.
func sourceValue(s *httpval.Part, r *http.Request) string {
	if s.Kind < httpval.KindEdge {
		return httpval.Value(s, r, nil)
	}
	return value(s, r, nil)
}

func TestSources(t *testing.T) {
	// The plugin's own kinds come after the core's (httpval.KindEdge).
	if srcBearer != httpval.KindEdge || srcCredential < srcBearer {
		t.Fatal("the plugin's source kinds are not httpval's edge kinds")
	}
	r := httptest.NewRequest("GET", "/?k=q1&k=q2", nil)
	r.RemoteAddr = "198.51.100.7:5000"
	r.Header.Add("X-Api-Key", "first")
	r.Header.Add("X-Api-Key", "second")
	r.Header.Set("Authorization", "bEaReR \t tok")
	r.AddCookie(&http.Cookie{Name: "sid", Value: "c1"})
	for src, want := range map[string]string{
		"header:x-api-key": "first", "query:k": "q1", "cookie:sid": "c1", "ip": "198.51.100.7",
		"remote": "198.51.100.7", "bearer": "tok", "header:Authorization": "Bearer tok", "const:all": "all",
	} {
		s, err := parseSource(src, false)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if got := sourceValue(&s, r); got != want {
			t.Errorf("%s = %q, want %q", src, got, want)
		}
	}
	// Header keys as the Caddy module reads them (internal/httpval): the
	// first value, trimmed; the auth scheme in one case, one space after it.
	auth, _ := parseSource("header:Authorization", false)
	key, _ := parseSource("header:X-Api-Key", false)
	for in, want := range map[string]string{"Basic abc=": "Basic abc=", "basic abc": "Basic abc=", "Basic a*c": "Basic a*c", "DPOP x": "Dpop x",
		"custom \t X": "Custom X", " token ": "Token", "bearer  tok": "Bearer tok"} {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("Authorization", in)
		r.Header.Set("X-Api-Key", " \t"+in+"\t")
		if got := sourceValue(&auth, r); got != want {
			t.Errorf("Authorization %q: key %q, want %q", in, got, want)
		}
		if got := sourceValue(&key, r); got != strings.Trim(in, " ") {
			t.Errorf("X-Api-Key %q: key %q, want %q", " \t"+in+"\t", got, strings.Trim(in, " "))
		}
	}
	basic := httptest.NewRequest("GET", "/", nil)
	basic.Header.Set("Authorization", "Basic dXNlcjpwYXNz")
	if s, _ := parseSource("bearer", false); sourceValue(&s, basic) != "" {
		t.Error("a Basic credential is no bearer token")
	}
	if _, err := parseSource("query:tier", true); err == nil {
		t.Error("a tier from the query string is refused")
	}
}

func TestRedisOptions(t *testing.T) {
	// The password percent-decoded, as go-redis (the Caddy module's
	// client) decodes it: one URL, one password at both edges.
	o, err := (&RedisConfig{URL: "rediss://u:p%40ss@cache:6380/3", OnError: "local", Timeout: "250ms"}).options()
	if err != nil {
		t.Fatal(err)
	}
	if o.Addr != "cache:6380" || o.Username != "u" || o.Password != "p@ss" || o.DB != 3 || !o.TLS || o.OnError != store.Local || o.Timeout != 250*time.Millisecond {
		t.Errorf("%+v", o)
	}
	o, _ = (&RedisConfig{URL: "redis://[::1]:7000"}).options()
	if o.Addr != "[::1]:7000" {
		t.Errorf("IPv6 address: %s", o.Addr)
	}
	o, _ = (&RedisConfig{URL: "redis://cache"}).options()
	if o.Addr != "cache:6379" {
		t.Errorf("default port: %s", o.Addr)
	}
	for _, bad := range []RedisConfig{{URL: "http://x"}, {Address: "nohost"}, {KeyPrefix: "a{b"}, {Clock: "atomic"}, {Timeout: "0s"}, {URL: "redis://h/x"},
		{Address: ":6379"}} { // no host: refused, as the Caddy module refuses it
		if _, err := bad.options(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
	// A URL written as the address is refused without its password.
	for _, a := range []string{"redis://user:hunter2@127.0.0.1:6379", "user:hunter2@127.0.0.1:6379"} {
		if _, err := (&RedisConfig{Address: a}).options(); err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: %v", a, err)
		}
	}
	// The core's checks (store.RedisSettings) name the plugin's options.
	for _, c := range []struct {
		bad  RedisConfig
		want string
	}{
		{RedisConfig{OnError: "ignore"}, `redis: onError "ignore": want allow, deny or local`},
		{RedisConfig{KeyPrefix: "a{b"}, `redis: keyPrefix "a{b":`},
		{RedisConfig{DB: -1}, "redis: db must not be negative, got -1"},
		{RedisConfig{Clock: "atomic"}, `redis: clock "atomic": want server or local`},
	} {
		bad, want := c.bad, c.want
		if _, err := bad.options(); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%+v: %v, want %s...", bad, err, want)
		}
	}
}

// TestUnknownOptions: what mapstructure could not place is refused, at
// every level, with its path and the option meant (the harness decodes
// real YAML); a credential is not named.
func TestUnknownOptions(t *testing.T) {
	bad := func(k string) map[string]interface{} { return map[string]interface{}{k: 1} }
	c := &Config{
		Limits: map[string]*Limit{
			"l": {Limit: 5, Window: "1m", Unknown: map[string]interface{}{"algoritm": "gcra"}},
			"m": {Limit: 5, Calendar: &Calendar{Period: "day", Unknown: bad("zone")}, Tier: "header:T",
				Tiers:          map[string]*Numbers{"a": {Limit: 1, Unknown: bad("limt"), Calendar: &Calendar{Unknown: bad("att")}}, "b": nil},
				CountResponses: &ResponseRule{Unknown: bad("statuses")}},
		},
		IPStrategy:  &IPStrategy{Unknown: bad("excludedIP")},
		Credentials: &Credentials{Clients: map[string]*Client{"s3cret": {Unknown: bad("tiers")}}, Unknown: bad("form")},
		Storage:     &Storage{Redis: &RedisConfig{Unknown: map[string]interface{}{"onEror": "deny"}}, Unknown: bad("redi")},
		Notify:      &Notify{Unknown: bad("timout")},
		Unknown:     map[string]interface{}{"stauts": 503, "zzz": 1},
	}
	_, err := New(context.Background(), okHandler(), c, "bad")
	want := "unknown option stauts (did you mean status?); unknown option zzz; " +
		"unknown option limits.l.algoritm (did you mean algorithm?); " +
		"unknown option limits.m.calendar.zone; unknown option limits.m.tiers.a.limt (did you mean limit?); " +
		"unknown option limits.m.tiers.a.calendar.att (did you mean at?); " +
		"unknown option limits.m.countResponses.statuses (did you mean status?); " +
		"unknown option ipStrategy.excludedIP (did you mean excludedIPs?); " +
		"unknown option credentials.form (did you mean from?); " +
		"unknown option credentials.clients.<credential>.tiers (did you mean tier?); " +
		"unknown option storage.redi (did you mean redis?); unknown option storage.redis.onEror (did you mean onError?); " +
		"unknown option notify.timout (did you mean timeout?)"
	if err == nil || !strings.HasSuffix(err.Error(), want) || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("%v\nwant %s", err, want)
	}
}

// TestRedisStoreRegistry: middlewares with the same Redis settings share
// one store (store.SettingsID); any setting that differs makes another.
func TestRedisStoreRegistry(t *testing.T) {
	open := func(c RedisConfig) store.Store {
		s, err := openStore(&Storage{Redis: &c}, false)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// Nothing listens there: the stores fail over to onError, unused.
	base := RedisConfig{Address: "127.0.0.1:1", Password: "a", KeyPrefix: "registry:", DisableLocalDenials: true}
	s := open(base)
	if open(base) != s {
		t.Error("the same settings, another store")
	}
	// The same settings written as a URL: the same store.
	if open(RedisConfig{URL: "redis://:a@127.0.0.1:1/0", KeyPrefix: "registry:", DisableLocalDenials: true}) != s {
		t.Error("the same settings from a URL, another store")
	}
	for _, other := range []RedisConfig{
		{Address: "127.0.0.1:1", Password: "b", KeyPrefix: "registry:", DisableLocalDenials: true},
		{Address: "127.0.0.1:1", Password: "a", KeyPrefix: "registry2:", DisableLocalDenials: true},
		{Address: "127.0.0.1:1", Password: "a", KeyPrefix: "registry:", DisableLocalDenials: true, Clock: "local"},
		{Address: "127.0.0.1:1", Password: "a", KeyPrefix: "registry:", DisableLocalDenials: true, PoolSize: 3},
		{Address: "127.0.0.1:1", Password: "a", KeyPrefix: "registry:", DisableLocalDenials: true, DB: 2},
		{Address: "127.0.0.1:1", Password: "a", KeyPrefix: "registry:", DisableLocalDenials: true, Username: "u"},
		{Address: "127.0.0.1:1", Password: "a", KeyPrefix: "registry:", DisableLocalDenials: true, TLS: true},
		{Address: "127.0.0.1:1", Password: "a", KeyPrefix: "registry:", DisableLocalDenials: true, OnError: "deny"},
		{Address: "127.0.0.1:1", Password: "a", KeyPrefix: "registry:", DisableLocalDenials: true, Timeout: "1s"},
		{Address: "127.0.0.1:1", Password: "a", KeyPrefix: "registry:"},
		{Address: "127.0.0.2:1", Password: "a", KeyPrefix: "registry:", DisableLocalDenials: true},
		// Parts that run together spell another store: "a" and "b" are
		// not "ab" and "".
		{Address: "127.0.0.1:1", Username: "a", Password: "", KeyPrefix: "registry:", DisableLocalDenials: true},
	} {
		if open(other) == s {
			t.Errorf("%+v: the same store as %+v", other, base)
		}
	}
}

// TestSourceNames: a source's name is read without the space around it
// ("query: key" is the parameter key), and a name no request carries is
// refused (its key would never apply).
func TestSourceNames(t *testing.T) {
	src, err := parseSource("query: key", false)
	if err != nil || src.Kind != httpval.KindQuery || src.Name != "key" {
		t.Fatalf("query: key: %+v %v", src, err)
	}
	if src, err := parseSource("cookie:\tsid ", false); err != nil || src.Name != "sid" {
		t.Fatalf("cookie sid: %+v %v", src, err)
	}
	if src, err := parseSource("const: api", false); err != nil || src.Name != " api" {
		t.Fatalf("const: %+v %v", src, err)
	}
	for _, s := range []string{"cookie:a;b", "header:X Api", "cookie:a=b"} {
		if _, err := parseSource(s, false); err == nil || !strings.Contains(err.Error(), "is not allowed") {
			t.Errorf("%s: %v", s, err)
		}
	}
}
