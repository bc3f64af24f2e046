package harness

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/mitchellh/mapstructure"
	"github.com/redis/go-redis/v9"

	_ "github.com/edgelimit/caddy-edgelimit"
	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
	edgelimit "github.com/edgelimit/caddy-edgelimit/traefik"
)

// The differential test: one behaviour at both edges. Each row is a
// configuration written for the Caddy module (an edge_limit directive's
// body, its limits global, so that their counters are named as the
// plugin's) and for the Traefik plugin (its YAML), and a sequence of
// requests on a fake clock. The Caddy module (in this process, on the fake
// clock), the plugin compiled, and the plugin loaded through Yaegi answer
// the same requests at the same times: their statuses, rate-limit headers,
// Retry-After, content types and bodies must be equal, in memory and on a
// real Redis, where the three leave the same state behind.

type diffRow struct {
	name    string
	caddy   string // the edge_limit directive's body
	traefik string // the plugin's configuration
	steps   []diffStep
	// echo: the upstream answers with the status of the request's
	// X-Status, and the response headers X-Usage-Tokens and X-Login of
	// its X-Usage and X-Login (none without them): the responses that
	// limits counting responses count.
	echo bool
}

type diffStep struct {
	after   time.Duration // the fake clock moves by this first
	path    string
	headers []string // name, value pairs
}

// dstep is a request to / from client k after d.
func dstep(d time.Duration, k string, more ...string) diffStep {
	return diffStep{after: d, path: "/v1/items", headers: append([]string{"X-Api-Key", k}, more...)}
}

// repeat is n requests of client k, the first after d.
func repeat(n int, d time.Duration, k string, more ...string) []diffStep {
	out := []diffStep{dstep(d, k, more...)}
	for i := 1; i < n; i++ {
		out = append(out, dstep(0, k, more...))
	}
	return out
}

func seq(parts ...[]diffStep) []diffStep {
	var out []diffStep
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

var diffRows = []diffRow{
	{
		name:    "fixed window",
		caddy:   "limit fw {\n\tkey {header.X-Api-Key}\n\trate 3/1m\n\tscope global\n}",
		traefik: "limits:\n  fw: {key: [header:X-Api-Key], limit: 3, window: 1m}",
		steps:   seq(repeat(4, 0, "a"), repeat(2, 30*time.Second, "a"), repeat(2, 31*time.Second, "a"), repeat(1, 0, "b")),
	},
	{
		// The first request of a client is decided by Redis, the next from
		// the instance's view of it; no merge falls within the row (sync
		// 1m, the steps at one time), so that both edges leave in Redis
		// what the first decision counted.
		name:    "sync",
		caddy:   "limit sy {\n\tkey {header.X-Api-Key}\n\trate 3/1m\n\tsync 1m\n\tscope global\n}",
		traefik: "limits:\n  sy: {key: [header:X-Api-Key], limit: 3, window: 1m, sync: 1m}",
		steps:   seq(repeat(5, 0, "a"), repeat(2, 0, "b")),
	},
	{
		name:    "anchored window",
		caddy:   "limit aw {\n\tkey {header.X-Api-Key}\n\trate 3/1m\n\twindow anchored\n\tscope global\n}",
		traefik: "limits:\n  aw: {key: [header:X-Api-Key], algorithm: anchored_window, limit: 3, window: 1m}",
		steps:   seq(repeat(1, 13*time.Second, "a"), repeat(3, 20*time.Second, "a"), repeat(2, 41*time.Second, "a")),
	},
	{
		name:    "sliding window",
		caddy:   "limit sw {\n\tkey {header.X-Api-Key}\n\trate 4/1m\n\twindow sliding\n\tscope global\n}",
		traefik: "limits:\n  sw: {key: [header:X-Api-Key], algorithm: sliding_window, limit: 4, window: 1m}",
		steps:   seq(repeat(5, 50*time.Second, "a"), repeat(3, 15*time.Second, "a"), repeat(3, 30*time.Second, "a")),
	},
	{
		name:    "token bucket",
		caddy:   "limit tb {\n\tkey {header.X-Api-Key}\n\ttoken_bucket 3 1/10s\n\tscope global\n}",
		traefik: "limits:\n  tb: {key: [header:X-Api-Key], algorithm: token_bucket, limit: 3, refill: 1, window: 10s}",
		steps:   seq(repeat(4, 0, "a"), repeat(2, 10*time.Second, "a"), repeat(2, 25*time.Second, "a")),
	},
	{
		name:    "gcra",
		caddy:   "limit gc {\n\tkey {header.X-Api-Key}\n\tgcra 2/1s burst 3\n\tscope global\n}",
		traefik: "limits:\n  gc: {key: [header:X-Api-Key], algorithm: gcra, limit: 3, refill: 2, window: 1s}",
		steps:   seq(repeat(4, 0, "a"), repeat(2, 500*time.Millisecond, "a"), repeat(3, 2*time.Second, "a")),
	},
	{
		name:  "tiers with offset and split",
		caddy: "limit daily {\n\tkey {header.X-Api-Key}\n\trate 4/1d\n\toffset 6h\n\tsplit 12h\n\ttier {header.X-Tier} {\n\t\tGOLD rate 8/1d\n\t}\n\tscope global\n}",
		traefik: "limits:\n  daily:\n    key: [header:X-Api-Key]\n    limit: 4\n    window: 1d\n    offset: 6h\n    split: 12h\n" +
			"    tier: header:X-Tier\n    tiers: {GOLD: {limit: 8, window: 1d}}",
		steps: seq(repeat(3, 0, "a"), repeat(5, 0, "g", "X-Tier", "GOLD"), repeat(2, 12*time.Hour, "a"), repeat(1, 0, "g", "X-Tier", "GOLD"),
			// A tier header with space around it (HTTP/2 hands it on so)
			// is the same tier at both edges.
			repeat(1, 0, "h", "X-Tier", " GOLD\t"), repeat(5, 0, "h", "X-Tier", "GOLD ")),
	},
	{
		// A cookie is read by its exact name at both edges (the name an
		// upstream reads): another spelling sent first, new on every
		// request, is not a new client; a query parameter's first value.
		name:    "cookie and query keys",
		caddy:   "limit ck {\n\tkey {cookie.session} {query.key}\n\trate 2/1m\n\tscope global\n}",
		traefik: "limits:\n  ck: {key: [\"cookie:session\", \"query:key\"], limit: 2, window: 1m}",
		steps: []diffStep{
			{path: "/v1/items", headers: []string{"Cookie", "SESSION=n1; session=s1"}},
			{path: "/v1/items", headers: []string{"Cookie", "Session=n2; session=s1"}},
			{path: "/v1/items", headers: []string{"Cookie", "session=s1"}},
			{path: "/v1/items?key=q1&key=n1"},
			{path: "/v1/items?key=q1&key=n2"},
			{path: "/v1/items?key=q1"},
		},
	},
	{
		name:    "costs",
		caddy:   "limit c {\n\tkey {header.X-Api-Key}\n\trate 5/1m\n\tcost 2\n\tscope global\n}",
		traefik: "limits:\n  c: {key: [header:X-Api-Key], limit: 5, window: 1m, cost: 2}",
		steps:   repeat(4, 0, "a"),
	},
	{
		name: "exemptions",
		caddy: "limit api {\n\tkey {header.X-Api-Key}\n\trate 2/1m\n\tscope global\n}\n" +
			"quota plugin {\n\tkey {header.X-Plugin}\n\tlimit 3 per day\n\texempt api\n\tscope global\n}",
		traefik: "limits:\n  api: {key: [header:X-Api-Key], limit: 2, window: 1m}\n  plugin: {key: [header:X-Plugin], limit: 3, calendar: {period: day}, exempt: [api]}",
		steps:   seq(repeat(3, 0, "a"), repeat(4, 0, "a", "X-Plugin", "p1")),
	},
	{
		name:    "quota in a time zone",
		caddy:   "quota q {\n\tkey {header.X-Api-Key}\n\tlimit 3 per day\n\treset 06:00 America/New_York\n\tscope global\n}",
		traefik: "limits:\n  q: {key: [header:X-Api-Key], limit: 3, calendar: {period: day, at: \"06:00\", timeZone: America/New_York}}",
		steps:   seq(repeat(4, 0, "a"), repeat(2, 24*time.Hour, "a")),
	},
	{
		name:    "both header styles and the time",
		caddy:   "limit a {\n\tkey {header.X-Api-Key}\n\trate 2/1m\n\tscope global\n}\nlimit b {\n\tkey {header.X-Api-Key}\n\ttoken_bucket 5 1/1s\n\tscope global\n}\nheaders both time",
		traefik: "limits:\n  a: {key: [header:X-Api-Key], limit: 2, window: 1m}\n  b: {key: [header:X-Api-Key], algorithm: token_bucket, limit: 5, refill: 1, window: 1s}\nheaders: both\ntimeHeader: true",
		steps:   repeat(4, 0, "a"),
	},
	{
		name:    "ietf headers only",
		caddy:   "limit a {\n\tkey {header.X-Api-Key}\n\trate 2/1m\n\tscope global\n}\nheaders ratelimit",
		traefik: "limits:\n  a: {key: [header:X-Api-Key], limit: 2, window: 1m}\nheaders: ratelimit",
		steps:   repeat(3, 0, "a"),
	},
	{
		name: "denial template",
		caddy: "limit a {\n\tkey {header.X-Api-Key}\n\trate 1/1h\n\tscope global\n}\nstatus 420\ncontent_type \"application/json\"\n" +
			"body `{\"limit\":\"{edge_limit.name}\",\"retry\":{edge_limit.retry_after},\"human\":\"{edge_limit.retry_after_human}\",\"path\":\"{http.request.uri.path}\",\"h\":\"{header.X-Evil}\",\"reset\":{edge_limit.reset}}`",
		traefik: "limits:\n  a: {key: [header:X-Api-Key], limit: 1, window: 1h}\nstatus: 420\ncontentType: application/json\n" +
			"body: '{\"limit\":\"{edge_limit.name}\",\"retry\":{edge_limit.retry_after},\"human\":\"{edge_limit.retry_after_human}\",\"path\":\"{http.request.uri.path}\",\"h\":\"{header.X-Evil}\",\"reset\":{edge_limit.reset}}'",
		steps: seq(repeat(1, 17*time.Minute, "a"), repeat(2, 0, "a", "X-Evil", `"},"admin":true,"x":"<script>`)),
	},
	{
		// show_key hashed <secret> was the Caddy module's alone: the same
		// client's key differed between the edges' bodies, events and logs.
		name:    "hashed keys with a secret",
		caddy:   "limit a {\n\tkey {header.X-Api-Key}\n\trate 1/1h\n\tscope global\n}\nshow_key hashed s3cret-s3cret-s3cret\nbody `{\"key\":\"{edge_limit.key}\"}`",
		traefik: "limits:\n  a: {key: [header:X-Api-Key], limit: 1, window: 1h}\nkeySecret: s3cret-s3cret-s3cret\nbody: '{\"key\":\"{edge_limit.key}\"}'",
		steps:   repeat(2, 0, "secret-client"),
	},
	{
		name:    "raw keys",
		caddy:   "limit a {\n\tkey {header.X-Api-Key}\n\trate 1/1h\n\tscope global\n}\nshow_key raw\nbody `{\"key\":\"{edge_limit.key}\"}`",
		traefik: "limits:\n  a: {key: [header:X-Api-Key], limit: 1, window: 1h}\nshowKey: raw\nbody: '{\"key\":\"{edge_limit.key}\"}'",
		steps:   repeat(2, 0, "a\"<b>"),
	},
	{
		// Failed logins per claimed user (else per key): checked before,
		// charged by the 401s, not by the 200s; then denied until the
		// window ends.
		name:    "count responses: failed logins",
		caddy:   "limit logins {\n\tkey {edge_limit.basic_user} {header.X-Api-Key}\n\trate 3/1m\n\twindow anchored\n\tcount_responses status 401 403\n\tscope global\n}",
		traefik: "limits:\n  logins: {key: [basic-user, \"header:X-Api-Key\"], algorithm: anchored_window, limit: 3, window: 1m, countResponses: {status: [401, 403]}}",
		echo:    true,
		steps: seq(
			repeat(2, 5*time.Second, "a", "Authorization", basic("alice", "right")),
			repeat(2, time.Second, "a", "Authorization", basic("alice", "wrong"), "X-Status", "401"),
			repeat(1, time.Second, "b", "Authorization", "bAsIc "+basic("alice", "other")[6:], "X-Status", "403"),
			repeat(2, time.Second, "a", "Authorization", basic("alice", "right")),
			repeat(1, 0, "a", "Authorization", basic("bob", "right"), "X-Status", "500"),
			repeat(2, 0, "a", "X-Status", "401"),
			repeat(1, 0, "a"),
			repeat(1, 53*time.Second, "a", "Authorization", basic("alice", "right"))),
	},
	{
		// One credential however the client spells its scheme and the
		// space around it (HTTP/2 passes the space on), and the client's
		// address when it sends none (the plugin's ip without an
		// ipStrategy reads the remote host unparsed, Caddy its client_ip):
		// one counter at both edges, under the same Redis key.
		name:    "credentials and the client's address",
		caddy:   "limit cr {\n\tkey {header.Authorization} {client_ip}\n\trate 3/1m\n\tscope global\n}",
		traefik: "limits:\n  cr: {key: [header:Authorization, ip], limit: 3, window: 1m}",
		steps: seq(
			repeat(1, 0, "a", "Authorization", "Bearer t1"),
			repeat(1, 0, "a", "Authorization", "bearer  t1"),
			repeat(1, 0, "a", "Authorization", " BEARER\tt1 "),
			repeat(1, 0, "a", "Authorization", "Bearer t1"),
			repeat(2, 0, "a", "Authorization", basic("alice", "x")),
			repeat(2, 0, "a", "Authorization", "basic "+strings.TrimRight(basic("alice", "x")[6:], "=")),
			repeat(4, 0, "a")),
	},
	{
		// A status class, a header condition, and a plain limit beside
		// (all or nothing: a denial by either consumes nothing).
		name: "count responses: a class and a header, with a plain limit",
		caddy: "limit fails {\n\tkey {header.X-Api-Key}\n\ttoken_bucket 2 1/10s\n\tcount_responses {\n\t\tstatus 4xx\n\t\theader X-Login fail*\n\t}\n\tscope global\n}\n" +
			"limit plain {\n\tkey {header.X-Api-Key}\n\trate 6/1m\n\tscope global\n}\nheaders both",
		traefik: "limits:\n  fails: {key: [header:X-Api-Key], algorithm: token_bucket, limit: 2, refill: 1, window: 10s, countResponses: {status: [4xx], headers: {X-Login: fail*}}}\n" +
			"  plain: {key: [header:X-Api-Key], limit: 6, window: 1m}\nheaders: both",
		echo: true,
		steps: seq(
			repeat(1, 0, "a", "X-Status", "401", "X-Login", "ok"),
			repeat(1, 0, "a", "X-Status", "200", "X-Login", "failed"),
			repeat(2, 0, "a", "X-Status", "404", "X-Login", "failed"),
			repeat(2, 0, "a"),
			repeat(1, 10*time.Second, "a", "X-Status", "409", "X-Login", "failure"),
			repeat(2, 5*time.Second, "a")),
	},
	{
		// What the upstream reports: admitted while a unit remains, the
		// answer charged in full (overdrawn), headers after the charge,
		// the header removed; bad values as the docs say.
		name:    "cost header: a bucket overdrawn",
		caddy:   "limit tokens {\n\tkey {header.X-Api-Key}\n\ttoken_bucket 100 50/1m\n\tcost header X-Usage-Tokens\n\tscope global\n}",
		traefik: "limits:\n  tokens: {key: [header:X-Api-Key], algorithm: token_bucket, limit: 100, refill: 50, window: 1m, costHeader: X-Usage-Tokens}",
		echo:    true,
		steps: seq(
			repeat(1, 0, "a", "X-Usage", "40"),
			repeat(1, 0, "a", "X-Usage", " 59 "),
			repeat(1, 0, "a"),
			repeat(1, 0, "a", "X-Usage", "0"),
			repeat(1, 0, "a", "X-Usage", "30"),
			repeat(2, 0, "a", "X-Usage", "1"),
			repeat(1, 30*time.Second, "a", "X-Usage", "x1"),
			repeat(1, 0, "a", "X-Usage", "-3"),
			repeat(1, 12*time.Second, "a", "X-Usage", "2.5"),
			repeat(1, 0, "b", "X-Usage", "99999999999999999999"),
			repeat(1, time.Hour, "b", "X-Usage", "1"),
			repeat(1, 0, "a", "X-Usage", "500", "X-Status", "503")),
	},
	{
		name: "cost header: a daily quota, kept, counting 2xx only, IETF fields",
		caddy: "limit burst {\n\tkey {header.X-Api-Key}\n\trate 100/1m\n\tscope global\n}\n" +
			"quota q {\n\tkey {header.X-Api-Key}\n\tlimit 1000 per day\n\tcost header X-Usage-Tokens keep\n\tcount_responses status 2xx\n}\nheaders both time",
		traefik: "limits:\n  q: {key: [header:X-Api-Key], limit: 1000, calendar: {period: day}, costHeader: X-Usage-Tokens, keepCostHeader: true, countResponses: {status: [2xx]}}\n" +
			"  burst: {key: [header:X-Api-Key], limit: 100, window: 1m}\nheaders: both\ntimeHeader: true",
		echo: true,
		steps: seq(
			repeat(1, 0, "a", "X-Usage", "950"),
			repeat(1, 0, "a", "X-Usage", "900", "X-Status", "500"),
			repeat(1, 0, "a", "X-Usage", "49"),
			repeat(1, 0, "a", "X-Usage", "400"),
			repeat(2, 0, "a", "X-Usage", "1"),
			repeat(1, 24*time.Hour, "a", "X-Usage", "7")),
	},
	{
		// A penalty box: the denial bans the client for 10 minutes, past
		// the window; the headers and Retry-After say when it ends; others
		// are not touched; then it starts afresh.
		name:    "ban: past the window",
		caddy:   "limit api {\n\tkey {header.X-Api-Key}\n\trate 3/1m\n\tban 10m\n\tscope global\n}\nheaders both",
		traefik: "limits:\n  api: {key: [header:X-Api-Key], limit: 3, window: 1m, ban: 10m}\nheaders: both",
		steps: seq(
			repeat(4, 5*time.Second, "a"),
			repeat(1, time.Minute, "a"),
			repeat(1, 0, "b"),
			repeat(1, 8*time.Minute+59*time.Second, "a"),
			repeat(2, time.Second, "a")),
	},
	{
		// Failed logins that ban: checked, charged by 401s, a bucket
		// beside; the ban is longer than the anchored window.
		name:    "ban: failed logins, with a plain limit",
		caddy:   "limit logins {\n\tkey {header.X-Api-Key}\n\trate 2/1m\n\twindow anchored\n\tcount_responses status 401\n\tban 1h\n\tscope global\n}\nlimit plain {\n\tkey {header.X-Api-Key}\n\ttoken_bucket 5 1/10s\n\tscope global\n}",
		traefik: "limits:\n  logins: {key: [header:X-Api-Key], algorithm: anchored_window, limit: 2, window: 1m, countResponses: {status: [401]}, ban: 1h}\n  plain: {key: [header:X-Api-Key], algorithm: token_bucket, limit: 5, refill: 1, window: 10s}",
		echo:    true,
		steps: seq(
			repeat(2, time.Second, "a", "X-Status", "401"),
			repeat(2, time.Second, "a"),
			repeat(1, 2*time.Minute, "a"),
			repeat(1, time.Hour, "a")),
	},
	{
		// A bucket with a wait: a request that would wait longer is
		// denied until it would be held no longer than the wait (no step
		// here is held: the Caddy module holds on the fake clock).
		name:    "wait: denied past the wait",
		caddy:   "limit hooks {\n\tkey {header.X-Api-Key}\n\tgcra 1/10s\n\tburst 2\n\twait 1s\n\tscope global\n}\nheaders both",
		traefik: "limits:\n  hooks: {key: [header:X-Api-Key], algorithm: gcra, limit: 2, refill: 1, window: 10s, wait: 1s}\nheaders: both",
		steps: seq(
			repeat(3, time.Second, "a"),
			repeat(1, 5*time.Second, "a"),
			repeat(1, 25*time.Second, "a")),
	},
	{
		name:    "dry run and a limit's own status",
		caddy:   "limit soft {\n\tkey {header.X-Api-Key}\n\trate 1/1m\n\tdry_run\n\tscope global\n}\nlimit hard {\n\tkey {header.X-Api-Key}\n\trate 3/1m\n\tstatus 503\n\tscope global\n}",
		traefik: "limits:\n  soft: {key: [header:X-Api-Key], limit: 1, window: 1m, dryRun: true}\n  hard: {key: [header:X-Api-Key], limit: 3, window: 1m, status: 503}",
		steps:   repeat(4, 0, "a"),
	},
}

// caddyEcho is echoUpstream in Caddy's directives.
const caddyEcho = `@usage header X-Usage *
		header @usage X-Usage-Tokens {header.X-Usage}
		@login header X-Login *
		header @login X-Login {header.X-Login}
		@status header X-Status *
		respond @status "ok" {header.X-Status}
		respond "ok"`

// echoUpstream answers as caddyEcho does.
type echoUpstream struct{}

func (echoUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	for from, to := range map[string]string{"X-Usage": "X-Usage-Tokens", "X-Login": "X-Login"} {
		if v, ok := r.Header[from]; ok {
			w.Header()[to] = v
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if st, err := strconv.Atoi(r.Header.Get("X-Status")); err == nil {
		w.WriteHeader(st)
	}
	_, _ = io.WriteString(w, "ok")
}

// basic is Basic credentials.
func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// diffReply is what the edges must agree on.
type diffReply struct {
	Status  int
	Headers map[string]string
	Body    string
}

var diffHeaders = []string{"X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Reset", "X-Ratelimit-Time",
	"Ratelimit", "Ratelimit-Policy", "Retry-After", "Content-Type", "X-Usage-Tokens", "X-Login"}

func diffOf(status int, h http.Header, body string) diffReply {
	r := diffReply{Status: status, Headers: map[string]string{}, Body: body}
	for _, name := range diffHeaders {
		if v := h.Values(name); len(v) > 0 {
			r.Headers[name] = strings.Join(v, " | ")
		}
	}
	return r
}

func TestEdgesAgree(t *testing.T) {
	p := loadPlugin(t)
	for _, backend := range []string{"memory", "redis"} {
		t.Run(backend, func(t *testing.T) {
			var r *redisServer
			if backend == "redis" {
				r = startRedis(t)
			}
			for i, row := range diffRows {
				t.Run(row.name, func(t *testing.T) {
					diffRun(t, p, r, i, row)
				})
			}
		})
	}
}

// diffRun runs one row on the three edges, and compares.
func diffRun(t *testing.T, p *plugin, r *redisServer, n int, row diffRow) {
	// Each row starts at a time of its own, past midnight UTC (and 06:00
	// in New York) by a few hours, so that windows and quotas start afresh.
	base := clockBase().AddDate(0, 0, 3*n+7).Add(3*time.Hour + 7*time.Minute)
	caddyConf := row.caddy
	traefikConf := row.traefik
	prefixes := map[string]string{}
	if r != nil {
		id := fmt.Sprintf("%d-%d:", n, time.Now().UnixNano())
		prefixes = map[string]string{"caddy": "diff-c" + id, "compiled": "diff-p" + id, "yaegi": "diff-y" + id}
		// A generous timeout at each edge: on a loaded machine a decision
		// that took Redis over the default 100ms would pass by on_error.
		caddyConf += "\nstorage redis redis://" + r.Addr + " {\n\tkey_prefix " + prefixes["caddy"] + "\n\tclock local\n\ttimeout 10s\n}"
	}
	plugin := func(edge string) string {
		if r == nil {
			return traefikConf
		}
		return traefikConf + "\nstorage:\n  redis: {address: \"" + r.Addr + "\", keyPrefix: \"" + prefixes[edge] + "\", clock: local, timeout: 10s}\n"
	}
	clk := clock.NewFake(base)
	restore := clock.Install(clk)
	answer, next := "respond \"ok\"", http.Handler(&upstream{})
	if row.echo {
		answer, next = caddyEcho, echoUpstream{}
	}
	site := e2e.Start(t, "%ADDR% {\n\troute {\n\t\tedge_limit {\n"+indent(caddyConf, "\t\t\t")+"\n\t\t}\n\t\t"+answer+"\n\t}\n}")
	restore()
	compiled := compiledPlugin(t, plugin("compiled"), clk.Now, next)
	yaegi := p.middleware(t, plugin("yaegi"), clk.Now, next)

	for i, s := range row.steps {
		clk.Add(s.after)
		c := site.Do("GET", s.path, s.headers...)
		got := map[string]diffReply{"caddy": diffOf(c.Status, c.Header, c.Body)}
		for edge, h := range map[string]http.Handler{"compiled": compiled, "yaegi": yaegi} {
			req := httptest.NewRequest("GET", s.path, nil)
			req.RemoteAddr = "127.0.0.1:4321"
			for j := 0; j+1 < len(s.headers); j += 2 {
				req.Header.Set(s.headers[j], s.headers[j+1])
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			got[edge] = diffOf(w.Code, w.Header(), w.Body.String())
		}
		for _, edge := range []string{"compiled", "yaegi"} {
			if !reflect.DeepEqual(got[edge], got["caddy"]) {
				t.Errorf("step %d (%v after %s): the plugin %s answered\n%+v\nthe Caddy module\n%+v", i, s.headers, s.after, edge, got[edge], got["caddy"])
			}
		}
	}
	if r != nil {
		states := map[string]map[string]map[string]string{}
		for edge, prefix := range prefixes {
			states[edge] = redisDump(t, r, prefix)
		}
		if len(states["caddy"]) == 0 {
			t.Fatal("the Caddy module left nothing in Redis")
		}
		for _, edge := range []string{"compiled", "yaegi"} {
			if !reflect.DeepEqual(states[edge], states["caddy"]) {
				t.Errorf("Redis state of the plugin %s:\n%v\nof the Caddy module:\n%v", edge, states[edge], states["caddy"])
			}
		}
	}
}

// compiledPlugin is the plugin as Go compiles it, its configuration decoded
// as Traefik decodes it, in front of next.
func compiledPlugin(t *testing.T, conf string, now func() time.Time, next http.Handler) http.Handler {
	t.Helper()
	var m map[string]interface{}
	if err := yamlUnmarshal(conf, &m); err != nil {
		t.Fatal(err)
	}
	cfg := edgelimit.CreateConfig()
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		DecodeHook: mapstructure.StringToSliceHookFunc(","), WeaklyTypedInput: true, Result: cfg,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := dec.Decode(m); err != nil {
		t.Fatal(err)
	}
	cfg.Now = now
	h, err := edgelimit.New(context.Background(), next, cfg, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// redisDump is every hash under prefix, the prefix cut from its key: the
// client's hash and its fields (counters, and "~", the TTL's time).
func redisDump(t *testing.T, r *redisServer, prefix string) map[string]map[string]string {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer c.Close()
	ctx := context.Background()
	keys, err := c.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(keys)
	out := map[string]map[string]string{}
	for _, k := range keys {
		if k == prefix+"invalidate" {
			continue
		}
		h, err := c.HGetAll(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimPrefix(k, prefix)] = h
	}
	return out
}

func indent(s, by string) string {
	return by + strings.ReplaceAll(s, "\n", "\n"+by)
}

// clockBase is clock.TestBase, as the harness's fake clocks start.
func clockBase() time.Time { return clock.TestBase() }
