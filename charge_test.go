package edgelimit

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/policy"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// The recipes of docs/directive.md for limits that count responses, loaded
// as the page shows them (the site on the test's address, the upstreams
// the test's servers), through a real Caddy.

// recipe returns the caddyfile block of a docs page that holds marker,
// with ":8080" the test's site and each address of upstreams (the page's)
// moved to the test's (the value).
func recipe(t *testing.T, page, marker string, upstreams map[string]string) string {
	t.Helper()
	b, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	for _, block := range strings.Split(string(b), "```caddyfile\n")[1:] {
		body, _, ok := strings.Cut(block, "\n```")
		if !ok || !strings.Contains(body, marker) {
			continue
		}
		if !strings.HasPrefix(body, ":8080 {") {
			t.Fatalf("%s: the recipe with %q is not a site on :8080", page, marker)
		}
		body = "%ADDR%" + strings.TrimPrefix(body, ":8080")
		for from, to := range upstreams {
			if !strings.Contains(body, from) {
				t.Fatalf("%s: the recipe with %q has no %s", page, marker, from)
			}
			body = strings.ReplaceAll(body, from, to)
		}
		return body
	}
	t.Fatalf("%s: no caddyfile block holds %q", page, marker)
	return ""
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// from sends a request from a loopback address of its own (127.0.0.x), so
// that a test has several client IPs.
func from(t *testing.T, s *site, ip, method, path string, headers ...string) reply {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{
		DialContext:       (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext,
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequest(method, s.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s from %s: %v", method, path, ip, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: string(body)}
}

// counter is an upstream that counts what reaches it.
type counter struct {
	n atomic.Int64
	h http.HandlerFunc
}

func upstream(t *testing.T, h http.HandlerFunc) (*counter, string) {
	c := &counter{h: h}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.n.Add(1)
		c.h(w, r)
	}))
	t.Cleanup(srv.Close)
	return c, srv.Listener.Addr().String()
}

func ok(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }

// TestFailedLoginsBasicAuth: the basic_auth recipe. Five wrong passwords
// for a user, or from an IP, in 15 minutes from the first: then 429 for
// every request of that user or IP, the right password too, until the 15
// minutes are over; right passwords count nothing. Without counting
// responses, edge_limit never sees basic_auth's 401s (it runs after it).
func TestFailedLoginsBasicAuth(t *testing.T) {
	clk := fakeClock(t)
	app, addr := upstream(t, ok)
	s := startSite(t, recipe(t, "docs/directive.md", "basic_auth {", map[string]string{"127.0.0.1:9000": addr}))
	right, wrong := basic("alice", "correct horse"), basic("alice", "guess")
	start := clk.Now()

	for i := 0; i < 20; i++ {
		expect(t, s.get("/", "Authorization", right), 200, "X-RateLimit-Remaining", "5")
	}
	for i := 4; i >= 0; i-- {
		clk.Add(time.Minute)
		// The headers say what is left after this failure.
		expect(t, s.get("/", "Authorization", wrong), 401, "X-RateLimit-Remaining", strconv.Itoa(i),
			"X-RateLimit-Limit", "5", "X-RateLimit-Reset", strconv.FormatInt(start.Add(16*time.Minute).Unix(), 10))
	}
	served := app.n.Load()
	// The window started at the first failure; 4 minutes later, 11 are
	// left.
	expect(t, s.get("/", "Authorization", right), 429, "Retry-After", "660")
	expect(t, s.get("/"), 429)
	// The user, from another address: denied; another user from there is
	// not.
	expect(t, from(t, s, "127.0.0.2", "GET", "/", "Authorization", right), 429)
	expect(t, from(t, s, "127.0.0.2", "GET", "/", "Authorization", basic("bob", "x")), 401, "X-RateLimit-Remaining", "4")
	if app.n.Load() != served {
		t.Fatalf("a denied request was served")
	}
	clk.Set(start.Add(16*time.Minute - time.Second))
	expect(t, s.get("/", "Authorization", right), 429, "Retry-After", "1")
	clk.Set(start.Add(16 * time.Minute))
	expect(t, s.get("/", "Authorization", right), 200)
}

// TestFailedLoginsForwardAuth: the forward_auth recipe: the authentication
// service's 401 reaches the client through Caddy, and counts.
func TestFailedLoginsForwardAuth(t *testing.T) {
	fakeClock(t)
	app, appAddr := upstream(t, ok)
	_, authAddr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/verify" {
			http.Error(w, "wrong path", http.StatusNotFound)
			return
		}
		if user, pass, ok := r.BasicAuth(); ok && user == "alice" && pass == "correct horse" {
			w.Header().Set("Remote-User", user)
			return
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="app"`)
		http.Error(w, "who are you", http.StatusUnauthorized)
	})
	s := startSite(t, recipe(t, "docs/directive.md", "forward_auth 127.0.0.1:9091", map[string]string{
		"127.0.0.1:9000": appAddr, "127.0.0.1:9091": authAddr,
	}))
	right, wrong := basic("alice", "correct horse"), basic("alice", "guess")
	expect(t, s.get("/", "Authorization", right), 200, "X-RateLimit-Remaining", "5")
	for i := 4; i >= 0; i-- {
		r := s.get("/", "Authorization", wrong)
		expect(t, r, 401, "X-RateLimit-Remaining", strconv.Itoa(i), "WWW-Authenticate", `Basic realm="app"`)
	}
	served := app.n.Load()
	expect(t, s.get("/", "Authorization", right), 429)
	expect(t, from(t, s, "127.0.0.3", "GET", "/", "Authorization", right), 429)
	expect(t, from(t, s, "127.0.0.3", "GET", "/", "Authorization", basic("carol", "x")), 401)
	if app.n.Load() != served {
		t.Fatal("a denied request reached the application")
	}
}

// TestFailedLoginsApplication: the recipe for an application's own login:
// its 401s count per IP wherever they come from, and per client at its
// OAuth token endpoint (Basic client credentials); its 200s count nothing.
func TestFailedLoginsApplication(t *testing.T) {
	fakeClock(t)
	app, addr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/login":
			if r.FormValue("password") != "correct horse" {
				http.Error(w, "wrong password", http.StatusUnauthorized)
				return
			}
		case "/oauth/token":
			if id, secret, ok := r.BasicAuth(); !ok || id != "client-1" || secret != "s3cret" {
				http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
				return
			}
		default:
			if r.Header.Get("Authorization") != "Bearer good" {
				http.Error(w, "no token", http.StatusUnauthorized)
				return
			}
		}
		_, _ = io.WriteString(w, "ok")
	})
	s := startSite(t, recipe(t, "docs/directive.md", "limit failed_clients {", map[string]string{"127.0.0.1:9000": addr}))
	post := func(ip, path, form string, headers ...string) reply {
		t.Helper()
		return from(t, s, ip, "POST", path+"?"+form, append(headers, "Content-Type", "application/x-www-form-urlencoded")...)
	}
	for range 10 {
		expect(t, post("127.0.0.4", "/login", "password=correct+horse"), 200)
		expect(t, from(t, s, "127.0.0.4", "GET", "/api", "Authorization", "Bearer good"), 200)
	}
	// Three wrong passwords and two made-up tokens: five failures.
	for range 3 {
		expect(t, post("127.0.0.4", "/login", "password=guess"), 401)
	}
	expect(t, from(t, s, "127.0.0.4", "GET", "/api", "Authorization", "Bearer made-up"), 401)
	expect(t, from(t, s, "127.0.0.4", "GET", "/api"), 401, "X-RateLimit-Remaining", "0")
	served := app.n.Load()
	expect(t, post("127.0.0.4", "/login", "password=correct+horse"), 429)
	expect(t, from(t, s, "127.0.0.4", "GET", "/api", "Authorization", "Bearer good"), 429)
	if app.n.Load() != served {
		t.Fatal("a denied request reached the application")
	}
	// A client's secret guessed from several addresses: five wrong ones,
	// then the client is denied, its right secret too, from anywhere.
	for i, ip := range []string{"127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.0.9"} {
		expect(t, post(ip, "/oauth/token", "grant_type=client_credentials", "Authorization", basic("client-1", "guess"+strconv.Itoa(i))), 401)
	}
	expect(t, post("127.0.0.10", "/oauth/token", "grant_type=client_credentials", "Authorization", basic("client-1", "s3cret")), 429)
	expect(t, post("127.0.0.10", "/login", "password=correct+horse"), 200)
}

// TestFailedLoginsInFlight: attempts in flight at once are all checked
// before any is charged: with n in flight when the client reaches the
// limit, at most n - 1 are served past it, then none.
func TestFailedLoginsInFlight(t *testing.T) {
	fakeClock(t)
	const inFlight = 8
	var (
		mu      sync.Mutex
		waiting int
		release = make(chan struct{})
	)
	app, addr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Hold") != "" {
			mu.Lock()
			waiting++
			if waiting == inFlight {
				close(release)
			}
			mu.Unlock()
			select {
			case <-release:
			case <-time.After(30 * time.Second):
			}
		}
		http.Error(w, "wrong password", http.StatusUnauthorized)
	})
	s := startSite(t, recipe(t, "docs/directive.md", "limit failed_clients {", map[string]string{"127.0.0.1:9000": addr}))
	for range 4 {
		expect(t, s.get("/login"), 401)
	}
	var wg sync.WaitGroup
	statuses := make([]int, inFlight)
	for i := range inFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(context.Background(), "GET", s.base+"/login", nil)
			req.Header.Set("X-Hold", "1")
			resp, err := s.tester.Client.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			statuses[i] = resp.StatusCode
		}()
	}
	wg.Wait()
	for i, st := range statuses {
		if st != 401 {
			t.Fatalf("attempt %d in flight: %d, want all served (401)", i, st)
		}
	}
	if got, want := app.n.Load(), int64(4+inFlight); got != want || got != 5+inFlight-1 {
		t.Fatalf("served %d attempts, want limit + in flight - 1 = %d", got, want)
	}
	for range 5 {
		r := s.get("/login")
		expect(t, r, 429, "X-RateLimit-Remaining", "0")
	}
	if app.n.Load() != 4+inFlight {
		t.Fatal("served past the limit after the attempts in flight were charged")
	}
}

// usageUpstream answers with the cost header the request asks for in
// X-Test-Usage ("-" for none), and the status of X-Test-Status (200).
func usageUpstream(t *testing.T) (*counter, string) {
	return upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if v := r.Header.Get("X-Test-Usage"); v != "-" {
			w.Header().Set("X-Usage-Tokens", v)
		}
		if st, err := strconv.Atoi(r.Header.Get("X-Test-Status")); err == nil {
			w.WriteHeader(st)
		}
		_, _ = io.WriteString(w, "answer")
	})
}

// TestCostHeaderQuota: the recipe of docs/directive.md: a monthly quota
// charged with what the upstream reports, admitted while a unit remains,
// overdrawn by the last answer, its headers showing what remains after
// the charge, the header stripped; bad values charged as the page says.
func TestCostHeaderQuota(t *testing.T) {
	clk := fakeClock(t)
	log, lines := e2e.Logs(t)
	app, addr := usageUpstream(t)
	s := startSite(t, "{\n"+log+"}\n"+recipe(t, "docs/directive.md", "cost header X-Usage-Tokens", map[string]string{"127.0.0.1:9000": addr}))
	key := []string{"X-Api-Key", "k1"}
	ask := func(usage string) reply {
		t.Helper()
		return s.get("/v1/chat", append(key, "X-Test-Usage", usage)...)
	}
	r := ask("600000")
	expect(t, r, 200, "body", "answer", "X-RateLimit-Limit", "1000000", "X-RateLimit-Remaining", "400000", "X-Usage-Tokens", "")
	expect(t, ask("-"), 200, "X-RateLimit-Remaining", "400000")
	expect(t, ask("0"), 200, "X-RateLimit-Remaining", "400000")
	expect(t, ask(" 99999 "), 200, "X-RateLimit-Remaining", "300001")
	// Not a number: one unit, and a warning.
	expect(t, ask("12.5"), 200, "X-RateLimit-Remaining", "300000")
	expect(t, ask("-7"), 200, "X-RateLimit-Remaining", "299999")
	expect(t, ask("299998"), 200, "X-RateLimit-Remaining", "1")
	// One unit left: served, and overdrawn by its answer.
	expect(t, ask("5000"), 200, "X-RateLimit-Remaining", "0")
	served := app.n.Load()
	monthEnd := monthEnd(clk.Now())
	r = ask("1")
	expect(t, r, 429, "X-RateLimit-Remaining", "0", "Retry-After", strconv.FormatInt(int64((monthEnd.Sub(clk.Now())+time.Second-1)/time.Second), 10),
		"X-RateLimit-Reset", strconv.FormatInt(monthEnd.Unix(), 10))
	if app.n.Load() != served {
		t.Fatal("a request was served with nothing left")
	}
	// Another key has its own quota; a value past what a quota holds
	// empties it (logged: the last warning is 5 seconds old).
	clk.Add(5 * time.Second)
	expect(t, s.get("/v1/chat", "X-Api-Key", "k2", "X-Test-Usage", "99999999999999999999"), 200, "X-RateLimit-Remaining", "0")
	expect(t, s.get("/v1/chat", "X-Api-Key", "k2", "X-Test-Usage", "1"), 429)
	// A request the quota does not apply to (no key) is not limited, and
	// its client does not see the header either.
	expect(t, s.get("/v1/chat", "X-Test-Usage", "7"), 200, "X-Usage-Tokens", "", "X-RateLimit-Limit", "")
	clk.Set(monthEnd)
	expect(t, ask("10"), 200, "X-RateLimit-Remaining", "999990")
	got := lines()
	if e2e.Count(got, "not a whole number", `"value":"12.5"`, `"limit":"tokens"`) != 1 || e2e.Count(got, "larger than a limit holds") != 1 {
		t.Fatalf("the bad values were not logged as the page says (%d lines):\n%s", len(got), strings.Join(got, "\n"))
	}
}

// TestResponseLimitsAcrossInstancesOnRedis: two stores on one Redis (two
// Caddy instances: each directive has its own client and local denials)
// share what responses cost exactly, overdraws included, and the failed
// logins of a client.
func TestResponseLimitsAcrossInstancesOnRedis(t *testing.T) {
	clk := fakeClock(t)
	srv := redistest.Start(t)
	_, addr := usageUpstream(t)
	instance := func(path string) string {
		return `
	handle ` + path + `/* {
		edge_limit {
			quota tokens {
				key {header.X-Api-Key}
				limit 100 per month
				cost header X-Usage-Tokens
			}
			limit failed_logins {
				key {client_ip}
				rate 3/15m
				window anchored
				count_responses status 401
				scope global
			}
			headers ratelimit
			storage redis ` + srv.URL + ` {
				clock local
			}
		}
		reverse_proxy ` + addr + `
	}`
	}
	s := startSite(t, "%ADDR% {"+instance("/a")+instance("/b")+"\n}\n")
	ask := func(instance, usage string) reply {
		t.Helper()
		return s.get(instance+"/chat", "X-Api-Key", "k1", "X-Test-Usage", usage)
	}
	// The RateLimit field has an item per limit: the tokens left after
	// the charge, and the failed logins left.
	left := func(tokens, logins int) string {
		return `"tokens";r=` + strconv.Itoa(tokens) + `;t=` + strconv.FormatInt(int64(monthEnd(clk.Now()).Sub(clk.Now())/time.Second), 10) +
			`, "failed_logins";r=` + strconv.Itoa(logins) + ";t=900"
	}
	expect(t, ask("/a", "60"), 200, "RateLimit", left(40, 3))
	expect(t, ask("/b", "30"), 200, "RateLimit", left(10, 3))
	expect(t, ask("/a", "50"), 200, "RateLimit", left(0, 3))
	for range 3 {
		expect(t, ask("/b", "1"), 429, "RateLimit", left(0, 3))
		expect(t, ask("/a", "1"), 429)
	}
	// Failed logins of one client, on either instance: 3, then denied
	// on both.
	fail := []string{"X-Api-Key", "k2", "X-Test-Usage", "-", "X-Test-Status", "401"}
	for i, instance := range []string{"/a", "/b", "/a"} {
		r := s.get(instance+"/login", fail...)
		expect(t, r, 401)
		if want := `"failed_logins";r=` + strconv.Itoa(2-i) + ";t=900"; !strings.Contains(r.get("RateLimit"), want) {
			t.Fatalf("failure %d: RateLimit %q, want %s", i, r.get("RateLimit"), want)
		}
	}
	expect(t, s.get("/b/login", "X-Api-Key", "k2", "X-Test-Usage", "-"), 429)
	expect(t, s.get("/a/login", "X-Api-Key", "k2", "X-Test-Usage", "-"), 429)
	clk.Add(15 * time.Minute)
	expect(t, s.get("/b/login", "X-Api-Key", "k2", "X-Test-Usage", "-"), 200)
}

// monthEnd is the end of the calendar month (UTC) that holds t.
func monthEnd(t time.Time) time.Time {
	y, m, _ := t.UTC().Date()
	return time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC)
}

// TestChargesAndOtherHandlers: a response that a later edge_limit denied
// is charged to no limit that counts responses (the request was denied);
// a cost header kept reaches the client; requests of limits that count
// responses and of plain ones are decided together, all or nothing.
func TestChargesAndOtherHandlers(t *testing.T) {
	clk := fakeClock(t)
	_, addr := usageUpstream(t)
	s := startSite(t, `
%ADDR% {
	route {
		edge_limit {
			limit failures {
				rate 3/1h
				count_responses status 4xx
			}
			limit tokens {
				key {header.X-Api-Key}
				rate 100/1h
				cost header X-Usage-Tokens keep
			}
			headers ratelimit
		}
		edge_limit {
			limit per_minute {
				rate 1/1m
			}
			headers ratelimit
		}
		reverse_proxy `+addr+`
	}
}`)
	expect(t, s.get("/", "X-Test-Status", "404", "X-Test-Usage", "9", "X-Api-Key", "k"), 404, "X-Usage-Tokens", "9",
		"RateLimit", `"failures";r=2;t=3600, "tokens";r=91;t=3600, "per_minute";r=0;t=60`)
	for range 3 {
		// per_minute denies with 429, a 4xx: not a failure to count.
		expect(t, s.get("/", "X-Test-Status", "404", "X-Test-Usage", "9", "X-Api-Key", "k"), 429)
	}
	clk.Add(time.Minute)
	r := s.get("/", "X-Test-Status", "404", "X-Test-Usage", "9", "X-Api-Key", "k")
	expect(t, r, 404)
	if !strings.Contains(r.get("RateLimit"), `"failures";r=1;`) || !strings.Contains(r.get("RateLimit"), `"tokens";r=82;`) {
		t.Fatalf("the denied requests changed the counts (charged, or given back what checks never took): RateLimit %s", r.get("RateLimit"))
	}
}

// TestCostHeaderStreams: a streamed answer (server-sent events) passes
// through as it is written, charged when its headers are: the limits that
// count responses do not hold a stream back.
func TestCostHeaderStreams(t *testing.T) {
	fakeClock(t)
	read := make(chan struct{})
	_, addr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("X-Usage-Tokens", "5")
		_, _ = io.WriteString(w, "data: one\n\n")
		http.NewResponseController(w).Flush()
		select {
		case <-read:
		case <-time.After(20 * time.Second):
		}
		_, _ = io.WriteString(w, "data: two\n\n")
	})
	s := startSite(t, recipe(t, "docs/directive.md", "cost header X-Usage-Tokens", map[string]string{"127.0.0.1:9000": addr}))
	req, err := http.NewRequest("GET", s.base+"/v1/chat", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Api-Key", "streamer")
	resp, err := s.tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("X-RateLimit-Remaining") != "999995" || resp.Header.Get("X-Usage-Tokens") != "" {
		t.Fatalf("headers %v", resp.Header)
	}
	first := make([]byte, len("data: one\n\n"))
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "data: one\n\n" {
		t.Fatalf("first event %q: %v", first, err)
	}
	close(read)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "data: two\n\n" {
		t.Fatalf("rest %q: %v", rest, err)
	}
}

// TestChargeOutlivesTheClient: a client that hangs up before its failed
// login is answered is charged all the same, on Redis too (whose calls
// end with the request's context).
func TestChargeOutlivesTheClient(t *testing.T) {
	srv := redistest.Start(t)
	rs, err := storage.NewRedis(storage.NewRedisClient(&redis.UniversalOptions{Addrs: []string{srv.Addr}}, time.Second),
		storage.RedisOptions{Prefix: "hangup:"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	h := &Handler{Status: DefaultStatus, ContentType: DefaultContentType, store: rs, logger: zap.NewNop(),
		warn: new(store.Throttle), clock: clock.Real, metrics: buildMetrics(), proxies: new(proxyCheck)}
	h.timer = h.metrics.timerFor(rs)
	cl, err := compileLimit(&Limit{Name: "failed_logins", Numbers: Numbers{Limit: 1, Window: caddy.Duration(time.Hour)},
		CountResponses: &caddyhttp.ResponseMatcher{StatusCode: []int{401}}}, "hangup")
	if err != nil {
		t.Fatal(err)
	}
	cl.outcomes = h.metrics.outcomesFor(cl.Name)
	h.limits = []*compiledLimit{cl}
	if err := h.provisionResponses(); err != nil {
		t.Fatal(err)
	}
	h.charging = newCharging(h.pol)
	h.scratch = &sync.Pool{New: func() any { return &scratch{Decision: policy.NewDecision(h.pol)} }}

	r := benchRequest("10.1.2.3")
	ctx, hangUp := context.WithCancel(r.Context())
	gone := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		hangUp()
		return caddyhttp.Error(http.StatusUnauthorized, errors.New("wrong password"))
	})
	if err := h.ServeHTTP(&nopWriter{h: http.Header{}}, r.WithContext(ctx), gone); err == nil {
		t.Fatal("the failed login passed")
	}
	w := &nopWriter{h: http.Header{}}
	served := false
	_ = h.ServeHTTP(w, benchRequest("10.1.2.3"), caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		served = true
		return nil
	}))
	if served || w.h.Get("Retry-After") == "" {
		t.Fatalf("the failed login of a client that hung up was not charged: served %v, %v", served, w.h)
	}
}
