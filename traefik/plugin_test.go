package edgelimit

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock for the compiled tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: testBase()} }

// testBase is where fake clocks start, as in the Caddy module's tests
// (internal/clock.TestBase): tomorrow at 10:00 UTC, or what
// EDGELIMIT_TEST_TIME says (an RFC 3339 time or an offset such as -8760h,
// rounded up to the hour).
func testBase() time.Time {
	y, m, d := time.Now().UTC().Date()
	base := time.Date(y, m, d+1, 10, 0, 0, 0, time.UTC)
	v := os.Getenv("EDGELIMIT_TEST_TIME")
	if v == "" {
		return base
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		off, perr := time.ParseDuration(v)
		if perr != nil {
			panic("EDGELIMIT_TEST_TIME: " + v)
		}
		t = base.Add(off)
	}
	t = t.UTC()
	if h := t.Truncate(time.Hour); !h.Equal(t) {
		t = h.Add(time.Hour)
	}
	return t
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
}

func mustNew(t *testing.T, c *Config, next http.Handler) http.Handler {
	t.Helper()
	h, err := New(context.Background(), next, c, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func send(h http.Handler, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "192.0.2.1:1234"
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestExemptionCarriesOver(t *testing.T) {
	clk := newClock()
	inner := mustNew(t, &Config{Now: clk.Now, Limits: map[string]*Limit{
		"api_global": {Key: []string{"header:X-User-Id", "ip"}, Limit: 2, Window: "1m"},
	}}, okHandler())
	outer := mustNew(t, &Config{Now: clk.Now, Limits: map[string]*Limit{
		"plugin_quota": {Key: []string{"header:X-Plugin-Id"}, Limit: 4, Calendar: &Calendar{Period: "day"}, Exempt: []string{"api_global"}},
	}}, inner)
	for i := 0; i < 4; i++ {
		if w := send(outer, "X-Plugin-Id", "p1", "X-User-Id", "u1"); w.Code != 200 {
			t.Fatalf("plugin request %d: %d", i, w.Code)
		}
	}
	if w := send(outer, "X-Plugin-Id", "p1"); w.Code != 429 {
		t.Errorf("over the quota: %d", w.Code)
	}
}

// TestIPv6ClientsCountByPrefix: the ip source counts an IPv6 client by its
// /64 (ipv6Prefix sets another) and a mapped IPv4 address as IPv4, as the
// Caddy module's {client_ip}.
func TestIPv6ClientsCountByPrefix(t *testing.T) {
	h := mustNew(t, &Config{Now: newClock().Now, Limits: map[string]*Limit{"per_ip": {Limit: 2, Window: "1h"}}}, okHandler())
	passed := 0
	for i := 1; i <= 6; i++ {
		if sendFrom(h, fmt.Sprintf("[2001:db8:1:2:%x::%x]:443", i*4099, i)).Code == 200 {
			passed++
		}
	}
	if passed != 2 {
		t.Errorf("%d of 6 addresses of one /64 passed a limit of 2", passed)
	}
	codes := []int{sendFrom(h, "[2001:db8:1:3::1]:1").Code, sendFrom(h, "203.0.113.77:1").Code,
		sendFrom(h, "[::ffff:203.0.113.77]:1").Code, sendFrom(h, "203.0.113.77:1").Code}
	if fmt.Sprint(codes) != "[200 200 200 429]" {
		t.Errorf("another /64, IPv4, the same mapped, IPv4 again: %v", codes)
	}
	each := mustNew(t, &Config{Now: newClock().Now, Limits: map[string]*Limit{"per_address": {Limit: 1, Window: "1h", IPv6Prefix: 128}}}, okHandler())
	if sendFrom(each, "[2001:db8::1]:1").Code != 200 || sendFrom(each, "[2001:db8::2]:1").Code != 200 {
		t.Error("ipv6Prefix 128 counts each address apart")
	}
}

// TestIPv4InIPv6CountsAsIPv4: an IPv4 client behind SIIT/NAT64
// (64:ff9b::/96), 6to4 (2002::/16) or Teredo counts as its IPv4 address,
// as the Caddy module's {client_ip}: a /64 made every NAT64 client one,
// and gave one 6to4 address 2^16 counters.
func TestIPv4InIPv6CountsAsIPv4(t *testing.T) {
	h := mustNew(t, &Config{Now: newClock().Now, Limits: map[string]*Limit{"per_ip": {Limit: 2, Window: "1h"}}}, okHandler())
	codes := []int{sendFrom(h, "[64:ff9b::cb00:7101]:1").Code, sendFrom(h, "[64:ff9b::cb00:7102]:1").Code,
		sendFrom(h, "[64:ff9b::cb00:7103]:1").Code, sendFrom(h, "203.0.113.1:1").Code, sendFrom(h, "203.0.113.1:1").Code,
		sendFrom(h, "[2002:c633:6401:1::1]:1").Code, sendFrom(h, "[2002:c633:6401:2::1]:1").Code, sendFrom(h, "[2002:c633:6401:3::1]:1").Code}
	if fmt.Sprint(codes) != "[200 200 200 200 429 200 200 429]" {
		t.Errorf("three NAT64 clients, their first again twice, one 6to4 site from three /64s: %v", codes)
	}
}

func sendFrom(h http.Handler, remote string) *httptest.ResponseRecorder {
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = remote
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// TestOwnSourcesKey: the plugin's own sources (query, cookie, bearer),
// which the core does not read, key a request, before a header or the
// address (read by the core) of the same limit, with and without
// credentials.
func TestOwnSourcesKey(t *testing.T) {
	for _, creds := range []*Credentials{nil, {From: "header:X-Cred", Clients: map[string]*Client{"c1": {ID: "one"}}}} {
		h := mustNew(t, &Config{Now: newClock().Now, Credentials: creds, Limits: map[string]*Limit{
			"l": {Key: []string{"query:k", "cookie:sid", "bearer", "header:X-Api-Key", "ip"}, Limit: 1, Window: "1h"},
		}}, okHandler())
		get := func(target string, hdr ...string) int {
			r := httptest.NewRequest("GET", target, nil)
			r.RemoteAddr = "192.0.2.1:1234"
			for i := 0; i+1 < len(hdr); i += 2 {
				r.Header.Add(hdr[i], hdr[i+1])
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			return w.Code
		}
		codes := []int{
			get("/?k=a"), get("/?k=a"), get("/?k=b"),
			get("/", "Cookie", "sid=s1"), get("/", "Cookie", "sid=s1"),
			get("/", "Authorization", "Bearer t1"), get("/", "Authorization", "Bearer t1"),
			get("/", "X-Api-Key", "k1"), get("/", "X-Api-Key", "k1"),
			get("/"), get("/"),
		}
		if got := fmt.Sprint(codes); got != "[200 429 200 200 429 200 429 200 429 200 429]" {
			t.Errorf("credentials %v: %s", creds != nil, got)
		}
	}
}

// TestHeldClientLeftGivesBackEarlier: a client that leaves while a later
// middleware holds its request (wait) consumes nothing at the middlewares
// before it either, as at the Caddy module (policy.Held with the request's
// ledger).
func TestHeldClientLeftGivesBackEarlier(t *testing.T) {
	clk := newClock()
	inner := mustNew(t, &Config{Now: clk.Now, Limits: map[string]*Limit{
		"hooks": {Key: []string{"header:X-Customer"}, Algorithm: "gcra", Limit: 1, Refill: 10, Window: "1s", Wait: "300ms"},
	}}, okHandler())
	outer := mustNew(t, &Config{Now: clk.Now, Limits: map[string]*Limit{
		"outer": {Key: []string{"header:X-Customer"}, Limit: 3, Window: "1m"},
	}}, inner)
	req := func(ctx context.Context) int {
		r := httptest.NewRequest("GET", "/", nil).WithContext(ctx)
		r.Header.Set("X-Customer", "acme")
		w := httptest.NewRecorder()
		outer.ServeHTTP(w, r)
		return w.Code
	}
	codes := []int{req(context.Background())}
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	req(gone) // held by the inner middleware's wait: its client is gone
	for i := 0; i < 3; i++ {
		clk.Add(time.Second)
		codes = append(codes, req(context.Background()))
	}
	if fmt.Sprint(codes) != "[200 200 200 429]" {
		t.Errorf("codes %v, want [200 200 200 429]: the request whose client left was counted by the outer middleware", codes)
	}
}

// A limit that exempts others keyed on what a client sends as it likes
// (a query parameter here) lets any client skip them with a made-up
// value: the plugin warns of it as the Caddy module does; keyed on a
// credential it does not.
func TestExemptFromClientWarns(t *testing.T) {
	var out lockedLog
	log.SetOutput(&out)
	defer log.SetOutput(os.Stderr)
	mustNew(t, &Config{Now: newClock().Now, Limits: map[string]*Limit{
		"plugin": {Limit: 5, Window: "1m", Key: []string{"query:plugin"}, Exempt: []string{"route"}},
		"route":  {Limit: 1, Window: "1m"},
	}}, okHandler())
	if got := out.String(); !strings.Contains(got, `limit "plugin" exempts [route]`) || !strings.Contains(got, "query parameter plugin") {
		t.Fatalf("log: %q", got)
	}
}
