package harness

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"gopkg.in/yaml.v3"
)

// The recipes of docs/traefik.md for limits that count responses, loaded
// through Yaegi as the page gives them, in front of what Traefik would put
// after them on the router.

// docRecipe builds the middleware of docs/traefik.md named name, on clk,
// in front of next.
func docRecipe(t *testing.T, name string, clk *fakeClock, next http.Handler) http.Handler {
	t.Helper()
	p := loadPlugin(t)
	conf, ok := docMiddlewares(t)[name]
	if !ok {
		t.Fatalf("docs/traefik.md has no middleware %s", name)
	}
	h, err := p.newHandler(p.config(t, conf, clk.Now), next, name)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// docBasicAuthUsers reads the users of the basicAuth middleware of
// docs/traefik.md named name.
func docBasicAuthUsers(t *testing.T, name string) map[string]string {
	t.Helper()
	b, err := os.ReadFile("../../docs/traefik.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, blk := range strings.Split(string(b), "```yaml\n")[1:] {
		var doc struct {
			HTTP struct {
				Middlewares map[string]struct {
					BasicAuth struct{ Users []string } `yaml:"basicAuth"`
				}
			}
		}
		if err := yaml.Unmarshal([]byte(blk[:strings.Index(blk, "```")]), &doc); err != nil {
			t.Fatal(err)
		}
		if mw, ok := doc.HTTP.Middlewares[name]; ok {
			users := map[string]string{}
			for _, u := range mw.BasicAuth.Users {
				user, hash, _ := strings.Cut(u, ":")
				users[user] = hash
			}
			return users
		}
	}
	t.Fatalf("docs/traefik.md has no basicAuth middleware %s", name)
	return nil
}

// basicAuth answers as Traefik's basicAuth middleware does: 401 with its
// challenge and body unless the credentials are those of a user.
type basicAuth struct {
	users map[string]string
	next  http.Handler
}

func (b basicAuth) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	if ok && b.users[user] != "" && bcrypt.CompareHashAndPassword([]byte(b.users[user]), []byte(pass)) == nil {
		b.next.ServeHTTP(w, r)
		return
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="traefik"`)
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = io.WriteString(w, "401 Unauthorized\n")
}

// sendFrom serves one request from the client at ip.
func sendFrom(h http.Handler, ip string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest("GET", "/account", nil)
	r.RemoteAddr = ip + ":1234"
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func expectReply(t *testing.T, w *httptest.ResponseRecorder, status int, pairs ...string) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d (%v %q)", w.Code, status, w.Header(), w.Body.String())
	}
	for i := 0; i+1 < len(pairs); i += 2 {
		if got := w.Header().Get(pairs[i]); got != pairs[i+1] {
			t.Fatalf("%s = %q, want %q (%v)", pairs[i], got, pairs[i+1], w.Header())
		}
	}
}

// TestFailedLoginsRecipe: the failed-logins middleware of docs/traefik.md
// in front of basicAuth (with the page's users): five wrong passwords for
// a user, or from an IP, in 15 minutes from the first, then 429 for every
// request of that user or IP, the right password too; right passwords
// count nothing.
func TestFailedLoginsRecipe(t *testing.T) {
	clk := newClock()
	app := &upstream{}
	h := docRecipe(t, "failed-logins", clk, basicAuth{users: docBasicAuthUsers(t, "app-auth"), next: app})
	right, wrong := basic("alice", "correct horse"), basic("alice", "guess")
	for range 10 {
		expectReply(t, sendFrom(h, "192.0.2.1", "Authorization", right), 200, "X-Ratelimit-Remaining", "5")
	}
	start := clk.Now()
	for i := 4; i >= 0; i-- {
		clk.Add(time.Minute)
		expectReply(t, sendFrom(h, "192.0.2.1", "Authorization", wrong), 401, "X-Ratelimit-Remaining", strconv.Itoa(i),
			"X-Ratelimit-Reset", unix(start.Add(16*time.Minute)), "Www-Authenticate", `Basic realm="traefik"`)
	}
	served := app.count()
	expectReply(t, sendFrom(h, "192.0.2.1", "Authorization", right), 429, "Retry-After", "660")
	expectReply(t, sendFrom(h, "192.0.2.1"), 429)
	expectReply(t, sendFrom(h, "192.0.2.2", "Authorization", right), 429)
	expectReply(t, sendFrom(h, "192.0.2.2", "Authorization", basic("bob", "x")), 401, "X-Ratelimit-Remaining", "4")
	if app.count() != served {
		t.Fatal("a denied request was served")
	}
	clk.Add(11 * time.Minute)
	expectReply(t, sendFrom(h, "192.0.2.1", "Authorization", right), 200)
}

// TestFailedLoginsInFlightRecipe: attempts in flight at once are all
// served; with n in flight when the client reaches the limit, n - 1 pass
// it, then none.
func TestFailedLoginsInFlightRecipe(t *testing.T) {
	clk := newClock()
	const inFlight = 6
	var (
		mu      sync.Mutex
		waiting int
		release = make(chan struct{})
		served  int
	)
	failing := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		served++
		if r.Header.Get("X-Hold") != "" {
			if waiting++; waiting == inFlight {
				close(release)
			}
		}
		mu.Unlock()
		if r.Header.Get("X-Hold") != "" {
			select {
			case <-release:
			case <-time.After(30 * time.Second):
			}
		}
		w.WriteHeader(http.StatusUnauthorized)
	})
	h := docRecipe(t, "failed-logins", clk, failing)
	for range 4 {
		expectReply(t, sendFrom(h, "192.0.2.9"), 401)
	}
	var wg sync.WaitGroup
	codes := make([]int, inFlight)
	for i := range inFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = sendFrom(h, "192.0.2.9", "X-Hold", "1").Code
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if c != 401 {
			t.Fatalf("attempt %d in flight: %d", i, c)
		}
	}
	for range 3 {
		expectReply(t, sendFrom(h, "192.0.2.9"), 429)
	}
	mu.Lock()
	defer mu.Unlock()
	if served != 4+inFlight {
		t.Fatalf("served %d, want limit + in flight - 1 = %d", served, 4+inFlight)
	}
}

// TestTokenQuotaRecipe: the llm-tokens middleware of docs/traefik.md: a
// monthly quota charged with what the upstream reports, the last answer
// overdrawing it, headers after the charge, the header removed, bad values
// as the page says; a streamed answer flushed as it is written.
func TestTokenQuotaRecipe(t *testing.T) {
	clk := newClock()
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if v := r.Header.Get("X-Test-Usage"); v != "" {
			w.Header().Set("X-Usage-Tokens", v)
		}
		if r.Header.Get("X-Test-Length") != "" {
			w.Header().Set("Content-Length", "18")
		}
		_, _ = io.WriteString(w, "part one, ")
		_, _ = io.WriteString(w, "part two")
	})
	h := docRecipe(t, "llm-tokens", clk, app)
	ask := func(account, usage string) *httptest.ResponseRecorder {
		return sendFrom(h, "192.0.2.1", "X-Account", account, "X-Test-Usage", usage)
	}
	w := ask("acme", "600000")
	expectReply(t, w, 200, "X-Ratelimit-Limit", "1000000", "X-Ratelimit-Remaining", "400000", "X-Usage-Tokens", "")
	// A stream (no Content-Length) is flushed as it is written; an answer
	// of known length is not.
	if w.Body.String() != "part one, part two" || !w.Flushed {
		t.Fatalf("body %q, flushed %v", w.Body.String(), w.Flushed)
	}
	w = sendFrom(h, "192.0.2.1", "X-Account", "acme", "X-Test-Length", "1")
	if w.Body.String() != "part one, part two" || w.Flushed {
		t.Fatalf("body %q, flushed %v", w.Body.String(), w.Flushed)
	}
	expectReply(t, ask("acme", ""), 200, "X-Ratelimit-Remaining", "400000")
	expectReply(t, ask("acme", "twelve"), 200, "X-Ratelimit-Remaining", "399999")
	expectReply(t, ask("acme", "399998"), 200, "X-Ratelimit-Remaining", "1")
	expectReply(t, ask("acme", "5000"), 200, "X-Ratelimit-Remaining", "0")
	y, m, _ := clk.Now().UTC().Date()
	next := time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC)
	w = ask("acme", "1")
	expectReply(t, w, 429, "X-Ratelimit-Reset", unix(next))
	if !strings.Contains(w.Body.String(), `"code":"insufficient_quota"`) {
		t.Fatalf("body %s", w.Body.String())
	}
	expectReply(t, ask("other", "99999999999999999999999"), 200, "X-Ratelimit-Remaining", "0")
	expectReply(t, ask("other", "1"), 429)
	clk.Add(next.Sub(clk.Now()))
	expectReply(t, ask("acme", "10"), 200, "X-Ratelimit-Remaining", "999990")
	if got := errorLog.lines(`one unit charged (limit monthly_tokens, header X-Usage-Tokens, value "twelve")`); len(got) != 1 {
		t.Fatalf("the bad value was logged %d times", len(got))
	}
}

// TestResponseConfigErrors: what is wrong with countResponses or
// costHeader is refused, naming it; a misspelled option is not ignored.
func TestResponseConfigErrors(t *testing.T) {
	p := loadPlugin(t)
	base := "limits:\n  l:\n    limit: 5\n    window: 1m\n"
	for conf, want := range map[string]string{
		base + "    countResponses: {statuses: [401]}":        "unknown option limits.l.countResponses.statuses (did you mean status?)",
		base + "    countResponses: {status: [\"4xxx\"]}":     `status "4xxx"`,
		base + "    countResponses: {status: [700]}":          "from 100 to 599",
		base + "    countResponses: {headers: {\"!X-A\": b}}": "takes no value",
		base + "    countResponses: {headers: {\"X A\": b}}":  "not a header name",
		base + "    costHeader: X-Usage\n    cost: 2":         "either a cost or a cost header",
		base + "    keepCostHeader: true":                     "needs a cost header",
		base + "    costHeader: \"X Usage\"":                  "not a header name",
		base + "    costHeaders: X-Usage":                     "unknown option limits.l.costHeaders (did you mean costHeader?)",
		base + "    key: [basic_user]":                        "unknown source",
		base + "    countResponse: {status: [401]}":           "did you mean countResponses?",
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

// TestIPv4InIPv6CountsAsIPv4 loads the plugin through Yaegi: an IPv4
// client behind SIIT/NAT64 (64:ff9b::/96) or 6to4 (2002::/16) counts as
// its IPv4 address, as the Caddy module's {client_ip} (a /64 made every
// NAT64 client one, and gave one 6to4 address 2^16 counters).
func TestIPv4InIPv6CountsAsIPv4(t *testing.T) {
	p := loadPlugin(t)
	clk := newClock()
	var conf map[string]interface{}
	if err := yamlUnmarshal("limits:\n  per_ip:\n    limit: 2\n    window: 1h\n", &conf); err != nil {
		t.Fatal(err)
	}
	h, err := p.newHandler(p.config(t, conf, clk.Now), &upstream{}, "ip")
	if err != nil {
		t.Fatal(err)
	}
	var codes []int
	for _, ip := range []string{"[64:ff9b::cb00:7101]", "[64:ff9b::cb00:7102]", "[64:ff9b::cb00:7103]", "203.0.113.1", "203.0.113.1",
		"[2002:c633:6401:1::1]", "[2002:c633:6401:2::1]", "[2002:c633:6401:3::1]"} {
		codes = append(codes, sendFrom(h, ip).Code)
	}
	if fmt.Sprint(codes) != "[200 200 200 200 429 200 200 429]" {
		t.Errorf("three NAT64 clients, their first again twice, one 6to4 site from three /64s: %v", codes)
	}
}
