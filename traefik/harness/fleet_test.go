package harness

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fleetLimits are five limits, one per algorithm, declared alike in the
// Caddyfile's global option (global scope) and in the plugin's
// configuration: same names, algorithms, numbers and key sources in the
// same order, so the same Redis keys.
var fleetLimits = []struct {
	name, caddy, traefik string
}{
	{"fw", "rate 20/1d", "limit: 20\n    window: 1d"},
	{"aw", "rate 20/1h\n\t\t\twindow anchored", "algorithm: anchored_window\n    limit: 20\n    window: 1h"},
	{"sw", "rate 20/1h\n\t\t\twindow sliding", "algorithm: sliding_window\n    limit: 20\n    window: 1h"},
	{"tb", "token_bucket 20 1/24h", "algorithm: token_bucket\n    limit: 20\n    refill: 1\n    window: 24h"},
	{"gc", "gcra 20/24h", "algorithm: gcra\n    limit: 20\n    window: 24h"},
	{"qd", "quota 20 per day", "limit: 20\n    calendar:\n      period: day"},
}

// TestFleetSharesRedis runs a real Caddy with the edgelimit module and the
// Traefik plugin under Yaegi on one redis-server, both on Redis's clock,
// and sends one client's requests to both at once: together they admit
// exactly the limit, for every algorithm.
func TestFleetSharesRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs Caddy")
	}
	r := startRedis(t)
	caddy := runCaddy(t, r.Addr)
	p := loadPlugin(t)
	mux := http.NewServeMux()
	for _, l := range fleetLimits {
		conf := fmt.Sprintf("limits:\n  %s:\n    key: [header:X-Api-Key, ip]\n    %s\nstorage:\n  redis:\n    address: %s\n    timeout: 2s\n",
			l.name, l.traefik, r.Addr)
		mux.Handle("/"+l.name, p.middleware(t, conf, nil, &upstream{}))
	}
	traefik := httptest.NewServer(mux)
	defer traefik.Close()

	t.Run("responses", func(t *testing.T) { fleetResponses(t, caddy, traefik.URL) })
	for _, l := range fleetLimits {
		t.Run(l.name, func(t *testing.T) {
			// A window boundary of Redis's clock between the first and
			// the last request would let a new window admit more: then the
			// run is done again, with another client.
			for attempt := 0; attempt < 3; attempt++ {
				before := redisHour(t, r)
				key := randomKey(t)
				allowed, denied := fleetRun(t, caddy, traefik.URL, l.name, key)
				if redisHour(t, r) != before {
					continue
				}
				if allowed != 20 || denied != 40 {
					t.Fatalf("Caddy and Traefik together admitted %d and denied %d of 60 requests; want exactly the limit, 20", allowed, denied)
				}
				fleetLayout(t, r, key, l.name)
				return
			}
			t.Fatal("three runs crossed an hour of Redis's clock")
		})
	}
}

// fleetRun sends 60 requests of one new client, 30 to each edge, six at a
// time, and counts the answers.
func fleetRun(t *testing.T, caddy, traefik, path, key string) (allowed, denied int) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 10 * time.Second}
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				base := caddy
				if (g+i)%2 == 1 {
					base = traefik
				}
				req, _ := http.NewRequest("GET", base+"/"+path, nil)
				req.Header.Set("X-Api-Key", key)
				resp, err := client.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				mu.Lock()
				switch resp.StatusCode {
				case 200:
					allowed++
				case 429:
					denied++
				default:
					t.Errorf("%s: status %d", base, resp.StatusCode)
				}
				mu.Unlock()
			}
		}(g)
	}
	wg.Wait()
	return allowed, denied
}

// fleetLayout checks the Redis layout both edges wrote for one client and
// limit: one hash, edgelimit:{32 hex digits of the key's SHA-256}, whose
// fields are the counter and "~" (the TTL watermark), with a TTL.
func fleetLayout(t *testing.T, r *redisServer, key, name string) {
	t.Helper()
	sum := sha256.Sum256([]byte(key))
	hash := "edgelimit:{" + hex.EncodeToString(sum[:16]) + "}"
	if typ, err := r.command("TYPE", hash); err != nil || typ != "+hash" {
		t.Fatalf("TYPE %s: %q %v, want a hash", hash, typ, err)
	}
	fields, err := r.command("HKEYS", hash)
	if err != nil {
		t.Fatal(err)
	}
	counter := "g/" + name + "/" + fleetAlgorithms[name] + "#0"
	var got []string
	for _, line := range strings.Split(fields, "\r\n") {
		if line != "" && line[0] != '*' && line[0] != '$' {
			got = append(got, line)
		}
	}
	sort.Strings(got)
	if strings.Join(got, " ") != counter+" ~" {
		t.Errorf("HKEYS %s: %q, want the fields %s and ~", hash, got, counter)
	}
	if ttl, err := r.command("PTTL", hash); err != nil || !strings.HasPrefix(ttl, ":") || strings.HasPrefix(ttl, ":-") {
		t.Errorf("PTTL %s: %q %v, want a TTL", hash, ttl, err)
	}
}

// fleetAlgorithms names each fleet limit's algorithm, as counters carry it.
var fleetAlgorithms = map[string]string{
	"fw": "fixed_window", "aw": "anchored_window", "sw": "sliding_window",
	"tb": "token_bucket", "gc": "gcra", "qd": "fixed_window",
}

func randomKey(t *testing.T) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "fleet-" + hex.EncodeToString(b)
}

// redisHour is the hour of Redis's clock (seconds / 3600).
func redisHour(t *testing.T, r *redisServer) int64 {
	t.Helper()
	out, err := r.command("TIME")
	if err != nil {
		t.Fatal(err)
	}
	// *2\r\n$10\r\n<seconds>\r\n...
	lines := strings.Split(out, "\r\n")
	if len(lines) < 3 {
		t.Fatalf("TIME: %q", out)
	}
	s, err := strconv.ParseInt(lines[2], 10, 64)
	if err != nil {
		t.Fatalf("TIME: %q", out)
	}
	return s / 3600
}

// runCaddy builds Caddy with the edgelimit module from this repository
// (cmd/caddy), runs it with the fleet's limits on Redis, and stops it when
// the test ends.
func runCaddy(t *testing.T, redisAddr string) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "caddy")
	build := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/caddy: %v\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin off\n\tedge_limit {\n\t\tstorage redis {\n\t\t\turl redis://%s/0\n\t\t\ttimeout 2s\n\t\t}\n", redisAddr)
	for _, l := range fleetLimits {
		fmt.Fprintf(&b, "\t\tlimit %s {\n\t\t\tkey {header.X-Api-Key} {client_ip}\n\t\t\t%s\n\t\t}\n", l.name, l.caddy)
	}
	fmt.Fprintf(&b, "\t}\n}\n\nhttp://127.0.0.1:%d {\n\tbind 127.0.0.1\n", port)
	for _, l := range fleetLimits {
		fmt.Fprintf(&b, "\thandle /%s {\n\t\tedge_limit {\n\t\t\tuse %s\n\t\t}\n\t\trespond \"ok\"\n\t}\n", l.name, l.name)
	}
	b.WriteString("\thandle /health {\n\t\trespond \"ok\"\n\t}\n}\n")
	conf := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, "run", "--config", conf, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	cmd.Stdout, cmd.Stderr = &syncWriter{w: &out}, &syncWriter{w: &out}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
	})
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(base + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return base
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("Caddy did not answer within 30s:\n%s", out.String())
	return ""
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// fleetResponses: one client, alternately on Caddy and on Traefik, sees one
// counter and the same headers and denials from both.
func fleetResponses(t *testing.T, caddy, traefik string) {
	key := randomKey(t)
	get := func(base string) (*http.Response, string) {
		req, _ := http.NewRequest("GET", base+"/aw", nil) // anchored: no clock boundary to cross
		req.Header.Set("X-Api-Key", key)
		// Bounded: a request that hangs fails the test at once, naming it.
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp, b.String()
	}
	var resets []string
	for i := 0; i < 20; i++ {
		base := []string{caddy, traefik}[i%2]
		resp, _ := get(base)
		if resp.StatusCode != 200 || resp.Header.Get("X-Ratelimit-Limit") != "20" || resp.Header.Get("X-Ratelimit-Remaining") != strconv.Itoa(19-i) {
			t.Fatalf("request %d to %s: %d limit %s remaining %s, want 200 20 %d", i, base, resp.StatusCode,
				resp.Header.Get("X-Ratelimit-Limit"), resp.Header.Get("X-Ratelimit-Remaining"), 19-i)
		}
		resets = append(resets, resp.Header.Get("X-Ratelimit-Reset"))
	}
	if resets[0] != resets[1] {
		t.Errorf("X-RateLimit-Reset: Caddy %s, Traefik %s", resets[0], resets[1])
	}
	c, cb := get(caddy)
	tr, tb := get(traefik)
	if c.StatusCode != 429 || tr.StatusCode != 429 {
		t.Fatalf("denials: Caddy %d, Traefik %d", c.StatusCode, tr.StatusCode)
	}
	for _, h := range []string{"Content-Type", "X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Reset"} {
		if c.Header.Get(h) != tr.Header.Get(h) {
			t.Errorf("%s: Caddy %q, Traefik %q", h, c.Header.Get(h), tr.Header.Get(h))
		}
	}
	ca, _ := strconv.Atoi(c.Header.Get("Retry-After"))
	ta, _ := strconv.Atoi(tr.Header.Get("Retry-After"))
	if ta > ca || ca-ta > 2 {
		t.Errorf("Retry-After: Caddy %d, Traefik %d", ca, ta)
	}
	// The bodies say the same thing, the seconds aside.
	digits := func(s string) string {
		return strings.Map(func(r rune) rune {
			if r >= '0' && r <= '9' {
				return '#'
			}
			return r
		}, s)
	}
	if digits(cb) != digits(tb) || !strings.HasPrefix(tb, `{"status":429,"error":"Rate limit exceeded, try again in `) {
		t.Errorf("denial bodies:\nCaddy   %s\nTraefik %s", cb, tb)
	}
}
