// Command render runs a real Caddy with edge_limit (and edge_cache) on
// loopback under a bounded load, scrapes its /metrics every second,
// evaluates the queries of the Grafana dashboard docs/grafana/edgelimit.json
// on what it scraped, and draws the panels as one SVG:
// docs/grafana/dashboard.svg. Grafana need not run.
//
//	go run ./docs/grafana/render [-duration 60s] [-range 15s] [-out docs/grafana/dashboard.svg]
//
// Run it from the module's root; it builds ./cmd/caddy and, when
// redis-server is installed, starts one of its own on a free port, which it
// kills for a while mid-run so that the Redis panels have something to show.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	duration := flag.Duration("duration", 60*time.Second, "how long to drive load and scrape")
	rng := flag.String("range", "15s", "the range of the dashboard's rate()s for this short run (the dashboard says 1m); empty keeps the dashboard's")
	dash := flag.String("dashboard", "docs/grafana/edgelimit.json", "the Grafana dashboard whose queries are evaluated")
	out := flag.String("out", "docs/grafana/dashboard.svg", "the SVG to write")
	flag.Parse()
	if err := run(*duration, *rng, *dash, *out); err != nil {
		log.Fatal(err)
	}
}

// panelDef is one panel of the dashboard, its queries parsed.
type panelDef struct {
	Title       string `json:"title"`
	Description string `json:"description"`
	FieldConfig struct {
		Defaults struct {
			Unit   string `json:"unit"`
			Custom struct {
				ScaleDistribution struct {
					Type string `json:"type"`
				} `json:"scaleDistribution"`
			} `json:"custom"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
	Targets []struct {
		Expr         string `json:"expr"`
		LegendFormat string `json:"legendFormat"`
	} `json:"targets"`
	nodes []node
}

var rangeRe = regexp.MustCompile(`\[[0-9]+[smh]\]`)

func loadDashboard(path, rng string) ([]*panelDef, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d struct {
		Panels []*panelDef `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, p := range d.Panels {
		for _, t := range p.Targets {
			expr := t.Expr
			if rng != "" {
				expr = rangeRe.ReplaceAllString(expr, "["+rng+"]")
			}
			n, err := parse(expr)
			if err != nil {
				return nil, fmt.Errorf("panel %q: %w", p.Title, err)
			}
			p.nodes = append(p.nodes, n)
		}
	}
	return d.Panels, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitFor polls check every 50 ms until it succeeds or 30 s have passed.
func waitFor(what string, check func() error) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// redisServer is a redis-server of this run's own.
type redisServer struct {
	bin, dir string
	port     int
	cmd      *exec.Cmd
}

func (r *redisServer) start() error {
	r.cmd = exec.Command(r.bin, "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir)
	if err := r.cmd.Start(); err != nil {
		return err
	}
	return waitFor("redis-server answers", func() error {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(r.port), time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
}

func (r *redisServer) stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
		r.cmd = nil
	}
}

const caddyfile = `{
	admin 127.0.0.1:%ADMIN%
	edge_limit {
		storage memory
	}
}
http://127.0.0.1:%PORT% {
	route /api/* {
		edge_cache {
			ttl 60s
		}
		edge_limit {
			limit per_client {
				key {header.X-Client}
				rate 40/10s
			}
		}
		respond "items"
	}
	route /search {
		edge_limit {
			limit search {
				key {header.X-Client}
				rate 20/10s
			}
		}
		respond "results"
	}
	route /shared {
		edge_limit {
			limit shared_client {
				key {header.X-Client}
				rate 20/10s
			}
			%REDIS%
		}
		respond "shared"
	}
	log {
		output discard
	}
}
`

const redisStorage = `storage redis redis://127.0.0.1:%d/0 {
				on_error local
				timeout 50ms
			}`

// client is a simulated API client.
type client struct {
	name  string
	path  func(i int) string
	every time.Duration
}

func clients() []client {
	var cs []client
	for i := range 20 { // well within their limits; GETs the cache can answer
		cs = append(cs, client{fmt.Sprint("reader-", i), func(n int) string { return fmt.Sprintf("/api/items?id=%d", n%10) }, 500 * time.Millisecond})
	}
	for i := range 3 { // 10 req/s against 40/10s: most denied
		cs = append(cs, client{fmt.Sprint("heavy-", i), func(n int) string { return fmt.Sprintf("/api/items?id=%d&n=%d", i, n) }, 100 * time.Millisecond})
	}
	for i := range 5 { // 3 req/s against 20/10s
		cs = append(cs, client{fmt.Sprint("searcher-", i), func(int) string { return "/search" }, 333 * time.Millisecond})
	}
	for i := range 10 { // 3 req/s against 20/10s, on Redis
		cs = append(cs, client{fmt.Sprint("shared-", i), func(int) string { return "/shared" }, 333 * time.Millisecond})
	}
	return cs
}

func run(duration time.Duration, rng, dashPath, outPath string) error {
	if duration <= 0 || duration > 10*time.Minute {
		return fmt.Errorf("duration %s: want up to 10m", duration)
	}
	panels, err := loadDashboard(dashPath, rng)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "edgelimit-render-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.Mkdir(filepath.Join(dir, "bin"), 0o700); err != nil {
		return err
	}
	bin := filepath.Join(dir, "bin", "caddy")
	log.Printf("building ./cmd/caddy")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/caddy").CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	admin, err := freePort()
	if err != nil {
		return err
	}
	cfg := strings.NewReplacer("%ADMIN%", strconv.Itoa(admin), "%PORT%", strconv.Itoa(port)).Replace(caddyfile)
	var redis *redisServer
	if rbin, err := exec.LookPath("redis-server"); err == nil {
		rport, err := freePort()
		if err != nil {
			return err
		}
		redis = &redisServer{bin: rbin, dir: dir, port: rport}
		if err := redis.start(); err != nil {
			return err
		}
		defer redis.stop()
		cfg = strings.Replace(cfg, "%REDIS%", fmt.Sprintf(redisStorage, rport), 1)
	} else {
		log.Printf("no redis-server: /shared on the memory store, Redis panels empty")
		cfg = strings.Replace(cfg, "%REDIS%", "", 1)
	}
	cfgPath := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	caddy := exec.Command(bin, "run", "--config", cfgPath, "--adapter", "caddyfile")
	caddy.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	var caddyOut strings.Builder
	caddy.Stdout, caddy.Stderr = &caddyOut, &caddyOut
	if err := caddy.Start(); err != nil {
		return err
	}
	defer func() {
		_ = caddy.Process.Kill()
		_ = caddy.Wait()
	}()
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	metricsURL := "http://127.0.0.1:" + strconv.Itoa(admin) + "/metrics"
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	if err := waitFor("caddy answers", func() error {
		resp, err := hc.Get(base + "/search")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}); err != nil {
		return fmt.Errorf("%w\n%s", err, caddyOut.String())
	}

	log.Printf("load for %s on %s, scraping %s every second", duration, base, metricsURL)
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	start := time.Now()
	var sent, failed atomic.Int64
	statuses := make(map[int]int64)
	var mu sync.Mutex
	var wg sync.WaitGroup
	maxPerClient := int(duration/(100*time.Millisecond)) + 1 // bounded in count, too
	for _, c := range clients() {
		wg.Add(1)
		go func(c client) {
			defer wg.Done()
			tick := time.NewTicker(c.every)
			defer tick.Stop()
			for i := 0; i < maxPerClient; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+c.path(i), nil)
				req.Header.Set("X-Client", c.name)
				resp, err := hc.Do(req)
				if ctx.Err() != nil {
					return // the run is over: not a request
				}
				sent.Add(1)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				statuses[resp.StatusCode]++
				mu.Unlock()
			}
		}(c)
	}
	// Redis goes away for a while, mid-run.
	downAt, upAt := duration*2/5, duration*3/5
	var outage [2]float64
	if redis != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-ctx.Done():
				return
			case <-time.After(downAt):
			}
			log.Printf("killing redis-server")
			outage[0] = time.Since(start).Seconds()
			redis.stop()
			select {
			case <-ctx.Done():
				return
			case <-time.After(upAt - downAt):
			}
			log.Printf("restarting redis-server")
			if err := redis.start(); err != nil {
				log.Printf("restarting redis-server: %v", err)
			}
			outage[1] = time.Since(start).Seconds()
		}()
	}
	var history []scrape
	tick := time.NewTicker(time.Second)
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
		}
		s, err := scrapeMetrics(hc, metricsURL)
		if err != nil {
			log.Printf("scrape: %v", err)
			continue
		}
		history = append(history, s)
	}
	tick.Stop()
	wg.Wait()
	if outage[1] == 0 && outage[0] != 0 {
		outage[1] = time.Since(start).Seconds()
	}
	log.Printf("%d requests (%d failed), statuses %v, %d scrapes", sent.Load(), failed.Load(), statuses, len(history))
	if len(history) < 3 {
		return errors.New("fewer than 3 scrapes")
	}
	ch := chart{start: start, history: history, outage: outage, rng: rng,
		subtitle: fmt.Sprintf("a real Caddy (./cmd/caddy) on loopback, %.0f s of load from %d clients (%d requests: %s), scraped every second; rates over [%s]",
			duration.Seconds(), len(clients()), sent.Load(), statusText(statuses), rangeOr(rng))}
	if redis != nil {
		ch.subtitle += "; redis-server killed at the shaded interval"
	}
	for _, p := range panels {
		if !ch.addPanel(p) {
			log.Printf("panel %q: no series (this build does not export them): left out", p.Title)
		}
	}
	if err := os.WriteFile(outPath, []byte(ch.svg()), 0o644); err != nil {
		return err
	}
	log.Printf("wrote %s", outPath)
	return nil
}

func rangeOr(r string) string {
	if r == "" {
		return "the dashboard's range"
	}
	return r
}

func statusText(m map[int]int64) string {
	var parts []string
	for _, code := range []int{200, 429, 503} {
		if m[code] > 0 {
			parts = append(parts, fmt.Sprintf("%d x %d", m[code], code))
		}
	}
	return strings.Join(parts, ", ")
}

// scrapeMetrics reads Prometheus's text format.
func scrapeMetrics(hc *http.Client, url string) (scrape, error) {
	s := scrape{at: time.Now()}
	resp, err := hc.Get(url)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("%s: %s", url, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || !strings.HasPrefix(line, "caddy_edge_") {
			continue
		}
		x, err := parseSample(line)
		if err != nil {
			return s, err
		}
		s.samples = append(s.samples, x)
	}
	return s, sc.Err()
}

func parseSample(line string) (sample, error) {
	x := sample{labels: map[string]string{}}
	sp := strings.LastIndexByte(line, ' ')
	if sp < 0 {
		return x, fmt.Errorf("metrics line %q", line)
	}
	v, err := strconv.ParseFloat(line[sp+1:], 64)
	if err != nil {
		return x, fmt.Errorf("metrics line %q: %w", line, err)
	}
	x.value = v
	head := line[:sp]
	br := strings.IndexByte(head, '{')
	if br < 0 {
		x.name = head
		return x, nil
	}
	x.name = head[:br]
	rest := strings.TrimSuffix(head[br+1:], "}")
	for rest != "" {
		eq := strings.IndexByte(rest, '=')
		if eq < 0 || eq+1 >= len(rest) || rest[eq+1] != '"' {
			return x, fmt.Errorf("metrics line %q: labels", line)
		}
		k := rest[:eq]
		var b strings.Builder
		i := eq + 2
		for ; i < len(rest) && rest[i] != '"'; i++ {
			if rest[i] == '\\' && i+1 < len(rest) {
				i++
				if rest[i] == 'n' {
					b.WriteByte('\n')
					continue
				}
			}
			b.WriteByte(rest[i])
		}
		x.labels[k] = b.String()
		rest = strings.TrimPrefix(rest[min(i+1, len(rest)):], ",")
	}
	return x, nil
}
