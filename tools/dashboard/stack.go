package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
)

// pluginModule is the plugin's module, which the tools module requires
// through a replace: its directory is the repository's root.
const pluginModule = "github.com/edgelimit/caddy-edgelimit"

// pluginRoot is the repository's root, as the replace directive names it.
func pluginRoot() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", pluginModule).Output()
	if err != nil {
		return "", fmt.Errorf("go list -m %s (run from the tools module): %w", pluginModule, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// stack is a real Caddy built from this repository (./cmd/caddy) with
// edge_limit and edge_cache, a redis-server of its own behind one route,
// and a Prometheus of its own scraping Caddy's /metrics every second, all
// on loopback, in a temporary directory.
type stack struct {
	dir       string
	caddyBase string // http://127.0.0.1:<port>
	adminPort int
	redis     *proc // nil without Redis
	redisArgv []string
	caddy     *proc
	prom      *proc
	promURL   string
	api       promv1.API
	logf      func(format string, args ...any)
}

// stackOptions says what a stack runs.
type stackOptions struct {
	// Redis puts the /shared route's limit on a redis-server of the
	// stack's own (else on the memory store, and the Redis panels have
	// nothing to show).
	Redis bool
	// Prometheus is the prometheus binary.
	Prometheus string
	// Logf logs the steps.
	Logf func(format string, args ...any)
}

// caddyfile is the Caddy under test: a cached API route with a limit per
// client, a search route with another, and a route whose limit is on Redis
// (%REDIS%), the decisions on the memory store otherwise.
const caddyfile = `{
	admin 127.0.0.1:%ADMIN%
	persist_config off
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

// redisStorage is /shared's storage with Redis: answered from the local
// memory while Redis is away, after a short timeout.
const redisStorage = `storage redis redis://127.0.0.1:%d/0 {
				on_error local
				timeout 50ms
			}`

// prometheusConfig scrapes Caddy's admin endpoint every second.
const prometheusConfig = `global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: caddy
    static_configs:
      - targets: ["127.0.0.1:%d"]
`

// startStack builds Caddy and starts the stack; close stops it.
func startStack(ctx context.Context, opt stackOptions) (s *stack, err error) {
	logf := opt.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	root, err := pluginRoot()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "edgelimit-dashboard-")
	if err != nil {
		return nil, err
	}
	s = &stack{dir: dir, logf: logf}
	defer func() {
		if err != nil {
			s.close()
		}
	}()

	bin := filepath.Join(dir, "caddy")
	logf("building ./cmd/caddy")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/caddy")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return s, fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, out)
	}

	port, err := freePort()
	if err != nil {
		return s, err
	}
	if s.adminPort, err = freePort(); err != nil {
		return s, err
	}
	cfg := strings.NewReplacer("%ADMIN%", strconv.Itoa(s.adminPort), "%PORT%", strconv.Itoa(port)).Replace(caddyfile)
	if opt.Redis {
		rport, err := freePort()
		if err != nil {
			return s, err
		}
		s.redisArgv = []string{"redis-server", "--port", strconv.Itoa(rport), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir}
		if err := s.startRedis(ctx); err != nil {
			return s, err
		}
		cfg = strings.Replace(cfg, "%REDIS%", fmt.Sprintf(redisStorage, rport), 1)
	} else {
		cfg = strings.Replace(cfg, "%REDIS%", "", 1)
	}
	cfgPath := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return s, err
	}
	s.caddyBase = "http://127.0.0.1:" + strconv.Itoa(port)
	s.caddy, err = startProc("caddy", []string{"HOME=" + dir, "XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir},
		bin, "run", "--config", cfgPath, "--adapter", "caddyfile")
	if err != nil {
		return s, err
	}
	if err := waitFor(ctx, s.caddy, "caddy answers "+s.caddyBase, func() error {
		return httpOK(ctx, s.caddyBase+"/search")
	}); err != nil {
		return s, err
	}

	ppath := opt.Prometheus
	if ppath == "" {
		ppath = "prometheus"
	}
	pport, err := freePort()
	if err != nil {
		return s, err
	}
	pcfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(pcfg, []byte(fmt.Sprintf(prometheusConfig, s.adminPort)), 0o600); err != nil {
		return s, err
	}
	s.promURL = "http://127.0.0.1:" + strconv.Itoa(pport)
	s.prom, err = startProc("prometheus", nil, ppath,
		"--config.file="+pcfg,
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address=127.0.0.1:"+strconv.Itoa(pport),
		"--log.level=warn")
	if err != nil {
		return s, err
	}
	if err := waitFor(ctx, s.prom, "prometheus is ready at "+s.promURL, func() error {
		return httpOK(ctx, s.promURL+"/-/ready")
	}); err != nil {
		return s, err
	}
	c, err := promapi.NewClient(promapi.Config{Address: s.promURL})
	if err != nil {
		return s, err
	}
	s.api = promv1.NewAPI(c)
	// Ready once Prometheus has scraped Caddy.
	if _, err := s.await(ctx, `up{job="caddy"} == 1`, time.Now().Add(time.Minute), nil); err != nil {
		return s, fmt.Errorf("prometheus scraping caddy: %w\n%s", err, s.prom.output())
	}
	logf("caddy on %s, its metrics on 127.0.0.1:%d, prometheus on %s", s.caddyBase, s.adminPort, s.promURL)
	return s, nil
}

// close stops every process of the stack and removes its directory.
func (s *stack) close() {
	for _, p := range []*proc{s.prom, s.caddy, s.redis} {
		p.stop()
	}
	os.RemoveAll(s.dir)
}

// startRedis starts (or starts again, on the same port) the stack's
// redis-server.
func (s *stack) startRedis(ctx context.Context) error {
	p, err := startProc("redis-server", nil, s.redisArgv...)
	if err != nil {
		return err
	}
	s.redis = p
	addr := "127.0.0.1:" + s.redisArgv[2]
	return waitFor(ctx, p, "redis-server answers on "+addr, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
}

// stopRedis kills the stack's redis-server.
func (s *stack) stopRedis() {
	s.redis.stop()
}

// proc is a child process in a process group of its own, killed with it.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
	once sync.Once
}

func startProc(name string, env []string, argv ...string) (*proc, error) {
	p := &proc{name: name, out: new(lockedBuffer), done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// stop kills the process's group and waits for it; a nil proc is none.
func (p *proc) stop() {
	if p == nil {
		return
	}
	p.once.Do(func() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	})
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// output is the end of what the process printed.
func (p *proc) output() string {
	s := p.out.String()
	if len(s) > 4000 {
		s = "..." + s[len(s)-4000:]
	}
	return s
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(b)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor polls check every 50 ms until it succeeds, p exits, ctx ends,
// or a minute has passed.
func waitFor(ctx context.Context, p *proc, what string, check func() error) error {
	deadline := time.Now().Add(time.Minute)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s: %s exited: %v\n%s", what, p.name, p.cmd.ProcessState, p.output())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w\n%s", what, err, p.output())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func httpOK(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return errors.New(url + ": " + resp.Status)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
