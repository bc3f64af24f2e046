package edgelimit

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/edgelimit/caddy-edgelimit/policy"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
)

// adminDo sends a request to an admin endpoint (host:port) and returns the
// status and body.
func adminDo(t testing.TB, admin, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+admin+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func adminAddr() string { return "localhost:" + strconv.Itoa(adminPort()) }

// inspectOf decodes an inspect (or credit) answer, failing on another
// status.
func inspectOf(t testing.TB, r statusBody) InspectResponse {
	t.Helper()
	status, body := r.status, r.body
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	var v InspectResponse
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	return v
}

const adminCaddyfile = `
{
	edge_limit {
		quota plugin_daily {
			key {header.X-Plugin-Id}
			limit 1000 per day
			reset 00:00 UTC
		}
	}
}
%ADDR% {
	edge_limit /a* {
		use plugin_daily
		limit api {
			key {header.Authorization} {client_ip}
			rate 3/1m
		}
	}
	edge_limit /b* {
		limit api {
			key {client_ip}
			token_bucket 5 1/1s
		}
	}
	respond "ok"
}
`

// TestAdminAPI: through a real Caddy's admin endpoint, on the memory
// store: a client is denied, inspect says so with its retry-after (and
// counts nothing), reset lets it through, credit gives exactly N more;
// limits lists the configuration; wrong input gets 400, 404, 405 or 413.
func TestAdminAPI(t *testing.T) {
	clk := fakeClock(t)
	s := startSite(t, adminCaddyfile)
	admin := adminAddr()
	auth := []string{"Authorization", "Bearer tok-42"}

	// limits: three limits, two named api in two zones.
	status, body := adminDo(t, admin, "GET", "/edge_limit/limits", "")
	var list struct{ Limits []LimitInfo }
	if err := json.Unmarshal([]byte(body), &list); status != 200 || err != nil || len(list.Limits) != 3 {
		t.Fatalf("limits: %d %v %s", status, err, body)
	}
	zones := map[string]string{}
	for _, l := range list.Limits {
		if l.Name == "api" {
			zones[l.Numbers.Algorithm] = l.Zone
		}
		if l.Storage != "memory" {
			t.Fatalf("storage %q", l.Storage)
		}
	}
	if zones["fixed_window"] == "" || zones["token_bucket"] == "" || zones["fixed_window"] == zones["token_bucket"] {
		t.Fatalf("zones %v", zones)
	}
	zone := zones["fixed_window"]

	for range 3 {
		expect(t, s.get("/a", auth...), 200)
	}
	expect(t, s.get("/a", auth...), 429)

	inspect := `{"limit": "api", "zone": "` + zone + `", "key": " bearer  tok-42 "}`
	var v InspectResponse
	for range 3 { // a peek: asking again counts nothing
		v = inspectAt(t, admin, "POST", "/edge_limit/inspect", inspect)
	}
	if len(v.Parts) != 2 {
		t.Fatalf("parts %+v", v.Parts)
	}
	p := v.Parts[0]
	end := clk.Now().Truncate(time.Minute).Add(time.Minute)
	if !p.Denying || p.Used != 3 || p.Remaining != 0 || p.RetryAfterSeconds != policy.SecondsCeil(end.Sub(clk.Now())) ||
		p.ResetUnix != end.Unix() || p.Reset != end.UTC().Format(time.RFC3339) || p.Key != "{http.request.header.Authorization}" {
		t.Fatalf("inspect of the denied client: %+v", p)
	}
	if q := v.Parts[1]; q.Denying || q.Used != 0 || q.Remaining != 3 {
		t.Fatalf("part 1 (the key as an IP): %+v", q)
	}

	// reset, then the client passes.
	status, body = adminDo(t, admin, "POST", "/edge_limit/reset", `{"limit": "api", "zone": "`+zone+`", "key": "Bearer tok-42"}`)
	if status != 200 || !strings.Contains(body, `"parts": [`) {
		t.Fatalf("reset: %d %s", status, body)
	}
	expect(t, s.get("/a", auth...), 200, "X-RateLimit-Remaining", "2")
	expect(t, s.get("/a", auth...), 200)
	expect(t, s.get("/a", auth...), 200)
	expect(t, s.get("/a", auth...), 429)

	// credit 2: exactly two more.
	v = inspectAt(t, admin, "POST", "/edge_limit/credit", `{"limit": "api", "zone": "`+zone+`", "key": "Bearer tok-42", "part": 0, "units": 2}`)
	if len(v.Parts) != 1 || *v.Parts[0].Given != 2 || v.Parts[0].Remaining != 2 || v.Parts[0].Denying {
		t.Fatalf("credit: %+v", v.Parts)
	}
	expect(t, s.get("/a", auth...), 200)
	expect(t, s.get("/a", auth...), 200)
	expect(t, s.get("/a", auth...), 429)

	// The token bucket in the other zone, by IP; reset of every limit.
	for range 5 {
		expect(t, s.get("/b"), 200)
	}
	expect(t, s.get("/b"), 429)
	v = inspectAt(t, admin, "POST", "/edge_limit/inspect", `{"limit": "api", "zone": "`+zones["token_bucket"]+`", "key": "127.0.0.1"}`)
	if p := v.Parts[0]; !p.Denying || p.RetryAfterSeconds != 1 || p.Remaining != 0 || v.Numbers.Algorithm != "token_bucket" {
		t.Fatalf("bucket: %+v", v)
	}
	status, body = adminDo(t, admin, "POST", "/edge_limit/reset", `{"key": "127.0.0.1"}`)
	if status != 200 || strings.Count(body, `"limit"`) != 3 {
		t.Fatalf("reset of every limit: %d %s", status, body)
	}
	for range 5 {
		expect(t, s.get("/b"), 200)
	}

	// Wrong input.
	huge := `{"limit": "plugin_daily", "key": "` + strings.Repeat("k", maxAdminKey+1) + `"}`
	for _, c := range []struct {
		method, path, body string
		status             int
		says               string
	}{
		{"POST", "/edge_limit/inspect", `{"limit": "api", "key": "x"}`, 400, `field \"zone\"`},
		{"POST", "/edge_limit/inspect", `{"limit": "nope", "key": "x"}`, 404, `no limit \"nope\"`},
		{"POST", "/edge_limit/inspect", `{"limit": "api", "zone": "zz", "key": "x"}`, 404, `zone \"zz\"`},
		{"POST", "/edge_limit/inspect", `{"limit": "plugin_daily"}`, 400, `field \"key\": required`},
		{"POST", "/edge_limit/inspect", `{"limit": "plugin_daily", "key": ""}`, 400, `field \"key\": empty`},
		{"POST", "/edge_limit/inspect", `{"limit": "plugin_daily", "key": 7}`, 400, `field \"key\": want a string`},
		{"POST", "/edge_limit/inspect", `{"limit": "plugin_daily", "key": "x", "extra": 1}`, 400, `unknown field \"extra\"`},
		{"POST", "/edge_limit/inspect", `{"limit": "plugin_daily", "key": "x", "part": 1}`, 400, `field \"part\"`},
		{"POST", "/edge_limit/inspect", `{"limit": "plugin_daily", "key": "x", "tier": "gold"}`, 400, `field \"tier\"`},
		{"POST", "/edge_limit/inspect", `{"limit": "plugin_daily", "key": "x"} {}`, 400, `one JSON object`},
		{"POST", "/edge_limit/inspect", `[1, 2]`, 400, `want a JSON object`},
		{"POST", "/edge_limit/inspect", huge, 400, `field \"key\": longer than`},
		{"POST", "/edge_limit/inspect", `{"key": "` + strings.Repeat("k", maxAdminBody) + `"}`, 413, `body larger than`},
		{"POST", "/edge_limit/credit", `{"limit": "plugin_daily", "key": "x"}`, 400, `field \"units\": required`},
		{"POST", "/edge_limit/credit", `{"limit": "plugin_daily", "key": "x", "units": -3}`, 400, `field \"units\": -3`},
		{"POST", "/edge_limit/credit", `{"limit": "plugin_daily", "key": "x", "units": 1e30}`, 400, `field \"units\"`},
		{"POST", "/edge_limit/credit", `{"limit": "plugin_daily", "key": "x", "units": "5"}`, 400, `field \"units\": want an integer`},
		{"POST", "/edge_limit/reset", `{"limit": "plugin_daily", "key": "x", "units": 5}`, 400, `only credit`},
		{"POST", "/edge_limit/reset", `{"zone": "z", "key": "x"}`, 400, `field \"zone\": goes with`},
		{"GET", "/edge_limit/inspect", ``, 405, `use POST`},
		{"DELETE", "/edge_limit/reset", ``, 405, `use POST`},
		{"PUT", "/edge_limit/credit", ``, 405, `use POST`},
		{"POST", "/edge_limit/limits", ``, 405, `use GET`},
	} {
		status, body := adminDo(t, admin, c.method, c.path, c.body)
		if status != c.status || !strings.Contains(body, c.says) || !strings.HasPrefix(body, `{"error":`) {
			t.Errorf("%s %s %.80s: %d %.300s, want %d saying %s", c.method, c.path, c.body, status, body, c.status, c.says)
		}
	}
	// Nothing above counted or crashed: the quota is whole.
	v = inspectAt(t, admin, "POST", "/edge_limit/inspect", `{"limit": "plugin_daily", "key": "x"}`)
	if v.Parts[0].Remaining != 1000 || v.Scope != "shared" {
		t.Fatalf("quota: %+v", v)
	}
}

// TestAdminAfterReload: the limits answered are the newest
// configuration's, and counts kept by a reload stay visible.
func TestAdminAfterReload(t *testing.T) {
	fakeClock(t)
	cfg := func(name string) string {
		return `%ADDR% {
	edge_limit {
		limit ` + name + ` {
			rate 2/1h
		}
		zone z
	}
	respond "ok"
}`
	}
	s := startSite(t, cfg("first"))
	expect(t, s.get("/"), 200)
	second, _ := e2e.Caddyfile(t, strings.ReplaceAll(cfg("second"), "%ADDR%", s.base))
	e2e.Load(t, second)
	admin := adminAddr()
	_, body := adminDo(t, admin, "GET", "/edge_limit/limits", "")
	if !strings.Contains(body, `"second"`) || strings.Contains(body, `"first"`) {
		t.Fatalf("after reload: %s", body)
	}
	if status, body := adminDo(t, admin, "POST", "/edge_limit/inspect", `{"limit": "first", "key": "127.0.0.1"}`); status != 404 {
		t.Fatalf("the old limit: %d %s", status, body)
	}
	expect(t, s.get("/"), 200)
	v := inspectAt(t, admin, "POST", "/edge_limit/inspect", `{"limit": "second", "key": "127.0.0.1"}`)
	if v.Parts[0].Used != 1 {
		t.Fatalf("after reload: %+v", v.Parts)
	}
}

// TestEdgeLimitCommand runs `caddy edge-limit` against a running Caddy (a
// process of its own, built from cmd/caddy).
func TestEdgeLimitCommand(t *testing.T) {
	bin := e2e.CaddyBinary(t)
	p := e2e.Run(t, bin, `{
	admin localhost:%ADMIN%
}
http://127.0.0.1:%PORT% {
	handle /health {
		respond "up"
	}
	edge_limit {
		limit api {
			key {header.Authorization} {client_ip}
			rate 2/1h
		}
	}
	respond "ok"
}
`)
	get := func(want int) {
		t.Helper()
		req, _ := http.NewRequest("GET", p.Base+"/", nil)
		req.Header.Set("Authorization", "Bearer s3cret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("status %d, want %d", resp.StatusCode, want)
		}
	}
	get(200)
	get(200)
	get(429)
	dir := t.TempDir()
	run := func(stdin string, args ...string) string {
		t.Helper()
		cmd := commandIn(bin, dir, stdin, append([]string{"edge-limit"}, append(args, "--address", p.Admin)...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("caddy %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	out := run("", "limits")
	if !strings.Contains(out, "NAME") || !strings.Contains(out, "api") || !strings.Contains(out, "2 per 1h0m0s") {
		t.Fatalf("limits:\n%s", out)
	}
	out = run("Bearer s3cret\n", "inspect", "--limit", "api", "--key", "-", "--part", "0")
	if !strings.Contains(out, "yes") || !strings.Contains(out, "{http.request.header.Authorization}  2      2     0") {
		t.Fatalf("inspect:\n%s", out)
	}
	t.Logf("caddy edge-limit inspect:\n%s", out)
	out = run("", "inspect", "--limit", "api", "--key", "Bearer s3cret", "--json")
	var v InspectResponse
	if err := json.Unmarshal([]byte(out), &v); err != nil || !v.Parts[0].Denying {
		t.Fatalf("inspect --json: %v\n%s", err, out)
	}
	out = run("", "credit", "--limit", "api", "--key", "Bearer s3cret", "--part", "0", "--units", "1")
	if !strings.Contains(out, "GIVEN") {
		t.Fatalf("credit:\n%s", out)
	}
	get(200)
	get(429)
	out = run("Bearer s3cret", "reset", "--all", "--key", "-")
	if !strings.Contains(out, "api") {
		t.Fatalf("reset:\n%s", out)
	}
	get(200)
	// A wrong name fails with the API's message.
	cmd := commandIn(bin, dir, "", "edge-limit", "inspect", "--limit", "nope", "--key", "x", "--address", p.Admin)
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), `no limit`) {
		t.Fatalf("unknown limit: %v\n%s", err, b)
	}
}

// TestAdminRedisTwoInstances: two Caddy processes on one redis-server,
// local denials on (the default). Both inspect the same answer; B denies
// from its local memory; a reset through A's admin API makes B allow at
// once.
func TestAdminRedisTwoInstances(t *testing.T) {
	bin := e2e.CaddyBinary(t)
	srv := redistest.Start(t)
	caddyfile := `{
	admin localhost:%ADMIN%
	edge_limit {
		storage redis {
			url redis://` + srv.Addr + `/0
			timeout 5s
		}
	}
}
http://127.0.0.1:%PORT% {
	handle /health {
		respond "up"
	}
	edge_limit {
		limit hourly {
			key {header.X-Api-Key}
			rate 3/1h
		}
		zone shared
	}
	respond "ok"
}
`
	a := e2e.Run(t, bin, caddyfile)
	b := e2e.Run(t, bin, caddyfile)
	get := func(p *e2e.Process) int {
		t.Helper()
		req, _ := http.NewRequest("GET", p.Base+"/", nil)
		req.Header.Set("X-Api-Key", "customer-x")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := range 3 {
		if code := get([]*e2e.Process{a, b}[i%2]); code != 200 {
			t.Fatalf("request %d: %d", i, code)
		}
	}
	// B denies, and remembers the denial (its subscription is up by now:
	// it took a request; the denial is local from the next one).
	if code := get(b); code != 429 {
		t.Fatalf("B: %d", code)
	}
	inspect := `{"limit": "hourly", "key": "customer-x"}`
	va := inspectAt(t, a.Admin, "POST", "/edge_limit/inspect", inspect)
	vb := inspectAt(t, b.Admin, "POST", "/edge_limit/inspect", inspect)
	pa, pb := va.Parts[0], vb.Parts[0]
	if !pa.Denying || pa.Used != 3 || !strings.HasPrefix(va.Storage, "redis ") ||
		pa.Used != pb.Used || pa.Denying != pb.Denying || pa.ResetUnix != pb.ResetUnix {
		t.Fatalf("inspect through A %+v, through B %+v", pa, pb)
	}
	// B answers these from its local denials: no script runs on Redis.
	rc := srv.Client(t)
	scripts := func() int64 {
		info, err := rc.Info(context.Background(), "commandstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		n := int64(0)
		for _, line := range strings.Split(info, "\n") {
			if strings.HasPrefix(line, "cmdstat_evalsha:calls=") || strings.HasPrefix(line, "cmdstat_eval:calls=") {
				v, _, _ := strings.Cut(strings.SplitN(line, "=", 2)[1], ",")
				c, _ := strconv.ParseInt(v, 10, 64)
				n += c
			}
		}
		return n
	}
	before := scripts()
	for range 20 {
		if code := get(b); code != 429 {
			t.Fatalf("B: %d", code)
		}
	}
	if n := scripts() - before; n != 0 {
		t.Fatalf("B asked Redis %d times for 20 denials: local denials are not on", n)
	}
	if status, body := adminDo(t, a.Admin, "POST", "/edge_limit/reset", inspect); status != 200 {
		t.Fatalf("reset through A: %d %s", status, body)
	}
	// B allows at once: the invalidation is a pub/sub message, waited for
	// (never slept for) with a generous deadline.
	start := time.Now()
	tries := 0
	for {
		tries++
		if get(b) == 200 {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("B still denies 5s after the reset through A\n%s", b.Output())
		}
	}
	t.Logf("B allowed %s after the reset through A (request %d)", time.Since(start), tries)
	vb = inspectAt(t, b.Admin, "POST", "/edge_limit/inspect", inspect)
	if vb.Parts[0].Used != 1 || vb.Parts[0].Denying {
		t.Fatalf("after the reset: %+v", vb.Parts[0])
	}
}

// commandIn is `caddy args...` in dir's environment, reading stdin.
func commandIn(bin, dir, stdin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.Env = e2e.Env(dir)
	cmd.Stdin = strings.NewReader(stdin)
	return cmd
}

// inspectAt sends an inspect (or credit) and decodes its answer.
func inspectAt(t testing.TB, admin, method, path, body string) InspectResponse {
	t.Helper()
	return inspectOf(t, pair(adminDo(t, admin, method, path, body)))
}

type statusBody struct {
	status int
	body   string
}

func pair(status int, body string) statusBody { return statusBody{status, body} }

// TestAdminTiers: inspect and credit with a tier use that tier's numbers
// (a token bucket's unit is its tier's refill interval); a wrong tier is
// named.
func TestAdminTiers(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `%ADDR% {
	map {header.X-Api-Key} {org_tier} {
		key-gold GOLD
	}
	edge_limit {
		limit bucket {
			key {header.X-Api-Key}
			tier {org_tier} {
				BASE token_bucket 2 1/1m
				GOLD token_bucket 4 1/1s
				default BASE
			}
		}
		zone tiers
	}
	respond "ok"
}`)
	admin := adminAddr()
	for range 4 {
		expect(t, s.get("/", "X-Api-Key", "key-gold"), 200)
	}
	expect(t, s.get("/", "X-Api-Key", "key-gold"), 429)
	v := inspectAt(t, admin, "POST", "/edge_limit/inspect", `{"limit": "bucket", "key": "key-gold", "tier": "GOLD"}`)
	if p := v.Parts[0]; v.Tier != "GOLD" || p.Limit != 4 || p.Remaining != 0 || !p.Denying || p.RetryAfterSeconds != 1 || v.Numbers.Limit != 4 {
		t.Fatalf("GOLD: %+v", v)
	}
	// In BASE's numbers (the default): the backlog is time (4 s), less
	// than one of BASE's units (a minute), so a BASE client would pass.
	v = inspectAt(t, admin, "POST", "/edge_limit/inspect", `{"limit": "bucket", "key": "key-gold"}`)
	if p := v.Parts[0]; v.Tier != "BASE" || p.Limit != 2 || p.Denying || p.Remaining != 1 {
		t.Fatalf("BASE: %+v", v)
	}
	v = inspectAt(t, admin, "POST", "/edge_limit/credit", `{"limit": "bucket", "key": "key-gold", "tier": "GOLD", "units": 3}`)
	if p := v.Parts[0]; *p.Given != 3 || p.Remaining != 3 {
		t.Fatalf("credit in GOLD: %+v", p)
	}
	for range 3 {
		expect(t, s.get("/", "X-Api-Key", "key-gold"), 200)
	}
	expect(t, s.get("/", "X-Api-Key", "key-gold"), 429)
	status, body := adminDo(t, admin, "POST", "/edge_limit/inspect", `{"limit": "bucket", "key": "key-gold", "tier": "PLATINUM"}`)
	if status != 400 || !strings.Contains(body, `no tier \"PLATINUM\" (it has BASE, GOLD)`) {
		t.Fatalf("unknown tier: %d %s", status, body)
	}
	_, body = adminDo(t, admin, "GET", "/edge_limit/limits", "")
	if !strings.Contains(body, `"GOLD"`) || !strings.Contains(body, `"tier": "{org_tier}"`) || !strings.Contains(body, `"default_tier": "BASE"`) {
		t.Fatalf("limits: %s", body)
	}
}

// A reload that fails after the new edge_limit app started (here: its
// http app cannot listen, the port is taken) stops the new app; the old
// configuration keeps running, and the admin API answers for it. Caddy
// starts apps in map order, so whether this one started first varies:
// TestRegistryFollowsRunningApps fixes the order.
func TestAdminAfterFailedReload(t *testing.T) {
	fakeClock(t)
	site := func(extra string) string {
		return `%ADDR% {
	edge_limit {
		limit kept {
			rate 2/1h
		}
		zone z
	}
	respond "ok"
}
` + extra
	}
	s := startSite(t, site(""))
	expect(t, s.get("/"), 200)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	bad, _ := e2e.Caddyfile(t, strings.ReplaceAll(site(fmt.Sprintf("http://%s {\n\trespond \"never\"\n}\n", taken.Addr())), "%ADDR%", s.base))
	cfg, err := e2e.Adapt(t, bad)
	if err != nil {
		t.Fatal(err)
	}
	admin := adminAddr()
	if v := inspectAt(t, admin, "POST", "/edge_limit/inspect", `{"limit": "kept", "key": "127.0.0.1"}`); v.Parts[0].Used != 1 {
		t.Fatalf("before: %+v", v.Parts)
	}
	want := 2     // the request before and the one after the reload; 1 after a reset
	for range 4 { // each attempt starts the apps in another order
		if status, body := adminDo(t, admin, "POST", "/load", string(cfg)); status == 200 {
			t.Fatalf("the reload on a taken port succeeded: %s", body)
		}
		expect(t, s.get("/"), 200)
		if v := inspectAt(t, admin, "POST", "/edge_limit/inspect", `{"limit": "kept", "key": "127.0.0.1"}`); v.Parts[0].Used != int64(want) {
			t.Fatalf("after a failed reload: %+v, want %d used", v.Parts, want)
		}
		if status, body := adminDo(t, admin, "POST", "/edge_limit/reset", `{"limit": "kept", "key": "127.0.0.1"}`); status != 200 {
			t.Fatalf("reset after a failed reload: %d %s", status, body)
		}
		want = 1
	}
}

// The admin API answers for the newest app still running: a reload starts
// the new app and stops the old one; a failed reload stops the new one.
func TestRegistryFollowsRunningApps(t *testing.T) {
	old, failed, next := new(registry), new(registry), new(registry)
	t.Cleanup(func() { stopRegistry(old); stopRegistry(failed); stopRegistry(next) })
	startRegistry(old)
	startRegistry(failed)
	stopRegistry(failed)
	if liveRegistry.Load() != old {
		t.Fatal("after a failed reload, the running configuration's registry is not live")
	}
	startRegistry(next)
	stopRegistry(old)
	if liveRegistry.Load() != next {
		t.Fatal("after a reload, the new configuration's registry is not live")
	}
}

// A Redis user who may not publish (Redis 7's default for new ACL users,
// acl-pubsub-default resetchannels): a credit and a reset are made and
// answered 200 with a warning, not 502 (an operator, or a script, would
// retry a 502 and give the units twice).
func TestAdminChangeMadeButNotPublished(t *testing.T) {
	srv := redistest.Start(t)
	if err := srv.Client(t).Do(context.Background(), "ACL", "SETUSER", "limiter", "on", ">pw", "~*", "+@all", "resetchannels").Err(); err != nil {
		t.Skipf("this Redis has no ACL channels: %v", err)
	}
	fakeClock(t)
	s := startSite(t, fmt.Sprintf(`%%ADDR%% {
	edge_limit {
		limit c {
			key {header.X-C}
			rate 3/1h
		}
		storage redis redis://limiter:pw@127.0.0.1:%d/0 {
			clock local
		}
	}
	respond "ok"
}`, srv.Port()))
	for i, want := range []int{200, 200, 200, 429} {
		if r := s.get("/", "X-C", "a"); r.status != want {
			t.Fatalf("request %d: %d, want %d", i, r.status, want)
		}
	}
	admin := adminAddr()
	v := inspectAt(t, admin, "POST", "/edge_limit/credit", `{"limit": "c", "key": "a", "units": 2}`)
	if *v.Parts[0].Given != 2 || v.Parts[0].Used != 1 || len(v.Warnings) != 1 || !strings.Contains(v.Warnings[0], "not published") {
		t.Fatalf("credit: %+v %v", v.Parts, v.Warnings)
	}
	for i, want := range []int{200, 200, 429} { // given once
		if r := s.get("/", "X-C", "a"); r.status != want {
			t.Fatalf("after the credit, request %d: %d, want %d", i, r.status, want)
		}
	}
	status, body := adminDo(t, admin, "POST", "/edge_limit/reset", `{"limit": "c", "key": "a"}`)
	var rr ResetResponse
	if err := json.Unmarshal([]byte(body), &rr); status != 200 || err != nil || len(rr.Reset) != 1 || len(rr.Warnings) != 1 {
		t.Fatalf("reset: %d %s", status, body)
	}
	expect(t, s.get("/", "X-C", "a"), 200)
}

// A shared limit used by a directive with storage of its own is counted
// by two stores under one name and no zone: "storage" picks one. With two
// Redis stores, "redis" named both and the error listed two identical
// choices: each store has a label of its own (where it counts), which
// "storage" takes.
func TestAdminSharedLimitInTwoStores(t *testing.T) {
	srv := redistest.Start(t)
	other := redistest.Start(t)
	fakeClock(t)
	s := startSite(t, fmt.Sprintf(`{
	edge_limit {
		quota daily {
			key {header.X-C}
			limit 10 per day
		}
	}
}
%%ADDR%% {
	handle /redis {
		edge_limit {
			use daily
			storage redis %s {
				clock local
				timeout 5s
			}
		}
	}
	handle /other {
		edge_limit {
			use daily
			storage redis %s {
				clock local
				timeout 5s
			}
		}
	}
	edge_limit {
		use daily
	}
	respond "ok"
}`, srv.URL, other.URL))
	expect(t, s.get("/", "X-C", "a"), 200)
	for range 3 {
		expect(t, s.get("/redis", "X-C", "a"), 200)
	}
	expect(t, s.get("/other", "X-C", "a"), 200)
	admin := adminAddr()
	if status, body := adminDo(t, admin, "POST", "/edge_limit/inspect", `{"limit": "daily", "key": "a"}`); status != 400 || !strings.Contains(body, `storage`) {
		t.Fatalf("ambiguous: %d %s", status, body)
	}
	status, body := adminDo(t, admin, "POST", "/edge_limit/inspect", `{"limit": "daily", "key": "a", "storage": "redis"}`)
	labelA := "redis " + strings.TrimPrefix(srv.URL, "redis://")
	labelB := "redis " + strings.TrimPrefix(other.URL, "redis://")
	if status != 400 || !strings.Contains(body, labelA) || !strings.Contains(body, labelB) {
		t.Fatalf("two Redis stores: %d %s, want both labels (%s, %s)", status, body, labelA, labelB)
	}
	// /redis and /other pass two directives: the shared limit counts in
	// the memory store and in their Redis.
	for storage, used := range map[string]int64{"memory": 5, labelA: 3, labelB: 1} {
		v := inspectAt(t, admin, "POST", "/edge_limit/inspect", `{"limit": "daily", "key": "a", "storage": "`+storage+`"}`)
		if v.Storage != storage || v.Parts[0].Used != used {
			t.Errorf("%s: %+v, want %d used", storage, v, used)
		}
	}
	if status, body := adminDo(t, admin, "POST", "/edge_limit/inspect", `{"limit": "daily", "key": "a", "storage": "disk"}`); status != 404 || !strings.Contains(body, `field \"storage\"`) {
		t.Fatalf("unknown storage: %d %s", status, body)
	}
}

// A reset says what each part had counted before it, and warns when the
// key had no counts at all: a key mistyped (or not as the limit reads it)
// is not reported as a client reset without a word.
func TestAdminResetSaysWhatItFound(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `%ADDR% {
	edge_limit {
		limit c {
			key {header.Authorization}
			rate 3/1h
		}
	}
	respond "ok"
}`)
	for range 2 {
		expect(t, s.get("/", "Authorization", "Bearer tok1"), 200)
	}
	admin := adminAddr()
	reset := func(key string) ResetResponse {
		t.Helper()
		status, body := adminDo(t, admin, "POST", "/edge_limit/reset", `{"limit": "c", "key": "`+key+`"}`)
		var rr ResetResponse
		if err := json.Unmarshal([]byte(body), &rr); status != 200 || err != nil || len(rr.Reset) != 1 {
			t.Fatalf("reset %q: %d %s", key, status, body)
		}
		return rr
	}
	if rr := reset("bearer tok2"); len(rr.Warnings) != 1 || !strings.Contains(rr.Warnings[0], "nothing was counted") || rr.Reset[0].UsedBefore[0] != 0 {
		t.Fatalf("a key with no counts: %+v", rr)
	}
	if rr := reset("  bearer tok1 "); len(rr.Warnings) != 0 || rr.Reset[0].UsedBefore[0] != 2 {
		t.Fatalf("the client's key (scheme and spaces as a request may send them): %+v", rr)
	}
	if v := inspectAt(t, admin, "POST", "/edge_limit/inspect", `{"limit": "c", "key": "Bearer tok1"}`); v.Parts[0].Used != 0 {
		t.Fatalf("after the reset: %+v", v.Parts)
	}
}
