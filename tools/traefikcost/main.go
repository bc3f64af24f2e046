// Command traefikcost measures what a request costs in a real Traefik,
// through HTTP: instructions per request under valgrind's callgrind (the
// whole Traefik process: net/http, the proxy, the runtime and the garbage
// collector, whatever else the machine does), allocations per request
// (runtime.MemStats through Traefik's /debug/vars), then req/s under wrk
// (which the machine's load moves). Each configuration is a Traefik on
// loopback with the file provider, one route to a keep-alive Go backend
// of this process, and nothing, Traefik's own RateLimit or the plugin in
// front of it. tools/real-traefik.sh cost runs it with the Traefik it
// builds and the plugin's release tree:
//
//	tools/real-traefik.sh cost [-n 20000] [-warm 600] [-wrk 10s] [-only none,memory-1]
//
// Traefik's logs and callgrind's dumps (callgrind_annotate) stay in -work.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/edgelimit/caddy-edgelimit/tools/bench/callgrind"
)

// clients is the number of client keys (X-Api-Key) the requests take in
// turn; conns the keep-alive connections of the counted load.
const (
	clients = 300
	conns   = 8
)

// configs are the middlewares of the route, as the harness's benchmark
// (traefik/harness/bench_test.go) configures the plugin; %s is Redis's
// address.
var configs = []struct{ name, yaml string }{
	{"none", ""},
	{"traefik-ratelimit", "      rateLimit: {average: 1000000000, burst: 1000000000}\n"},
	{"memory-1", plugin(`per_client: {key: [header:X-Api-Key, ip], limit: 1073741824, window: 1h}`)},
	{"memory-3", plugin(`per_client: {key: [header:X-Api-Key, ip], limit: 1073741824, window: 1h}`,
		`burst: {key: [ip], algorithm: token_bucket, limit: 1073741824, refill: 1048576, window: 1s}`,
		`daily: {key: [header:X-Api-Key], limit: 1073741824, calendar: {period: day}}`) +
		"          headers: both\n"},
	{"redis-1", plugin(`per_client: {key: [header:X-Api-Key, ip], limit: 1073741824, window: 1h}`) +
		"          storage: {redis: {address: \"%s\", timeout: 1s}}\n"},
}

func plugin(limits ...string) string {
	s := "      plugin:\n        edgelimit:\n          limits:\n"
	for _, l := range limits {
		s += "            " + l + "\n"
	}
	return s
}

type options struct {
	traefik, work, only string
	n, warm             int
	wrk                 time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.traefik, "traefik", "", "Traefik's binary")
	flag.StringVar(&o.work, "work", "", "directory holding plugins-local/ (the plugin's release tree); Traefik runs there")
	flag.IntVar(&o.n, "n", 20000, "requests counted under callgrind per configuration (0: no count)")
	flag.IntVar(&o.warm, "warm", 2*clients, "warm-up requests before the count")
	flag.DurationVar(&o.wrk, "wrk", 10*time.Second, "wrk's run per configuration (0: none)")
	flag.StringVar(&o.only, "only", "", "comma-separated configurations (default: all)")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "traefikcost:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	if err := callgrind.Available(); err != nil && o.n > 0 {
		return err
	}
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer backend.Close()
	go func() {
		_ = http.Serve(backend, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", "3")
			_, _ = io.WriteString(w, "ok\n")
		}))
	}()
	redisPort := freePort()
	rd := exec.CommandContext(ctx, "redis-server", "--port", strconv.Itoa(redisPort), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", o.work)
	if err := rd.Start(); err != nil {
		return err
	}
	defer stop(rd)
	if err := waitFor(ctx, 10*time.Second, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", redisPort))
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		return fmt.Errorf("redis-server: %w", err)
	}
	fmt.Printf("Traefik %s; %d clients; callgrind: %d requests over %d connections after %d, GOMAXPROCS=1 GOGC=100\n",
		o.traefik, clients, o.n, conns, o.warm)
	for _, c := range configs {
		if o.only != "" && !strings.Contains(","+o.only+",", ","+c.name+",") {
			continue
		}
		yaml := c.yaml
		if strings.Contains(yaml, "%s") {
			yaml = fmt.Sprintf(yaml, fmt.Sprintf("127.0.0.1:%d", redisPort))
		}
		dyn := filepath.Join(o.work, c.name+".yml")
		if err := os.WriteFile(dyn, []byte(dynamic(backend.Addr().String(), yaml)), 0o644); err != nil {
			return err
		}
		if o.n > 0 {
			if err := count(ctx, o, c.name, dyn); err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
		}
		if o.wrk > 0 {
			if err := rate(ctx, o, c.name, dyn); err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
		}
	}
	return nil
}

func dynamic(backend, middleware string) string {
	s := "http:\n  routers:\n    api:\n      rule: PathPrefix(`/`)\n      service: api\n"
	if middleware != "" {
		s += "      middlewares: [m]\n  middlewares:\n    m:\n" + middleware
	}
	return s + "  services:\n    api:\n      loadBalancer:\n        servers:\n          - url: http://" + backend + "\n"
}

type traefik struct {
	cmd       *exec.Cmd
	url, api  string
	callgrind string // the dump's base name, under callgrind
}

// start starts Traefik on dyn, under callgrind if wrap, and waits until
// the route answers 200.
func start(ctx context.Context, o options, name, dyn string, wrap bool) (*traefik, error) {
	web, api := freePort(), freePort()
	t := &traefik{url: fmt.Sprintf("http://127.0.0.1:%d/", web), api: fmt.Sprintf("http://127.0.0.1:%d", api)}
	argv := []string{o.traefik,
		"--entrypoints.web.address=127.0.0.1:" + strconv.Itoa(web), "--entrypoints.traefik.address=127.0.0.1:" + strconv.Itoa(api),
		"--api.insecure=true", "--api.dashboard=false", "--api.debug=true", "--ping=true", "--providers.file.filename=" + dyn,
		"--experimental.localPlugins.edgelimit.moduleName=github.com/edgelimit/traefik-edgelimit",
		"--global.checkNewVersion=false", "--global.sendAnonymousUsage=false", "--log.level=ERROR"}
	env := os.Environ()
	wait := 30 * time.Second
	if wrap {
		t.callgrind = filepath.Join(o.work, name+".callgrind")
		argv = append(callgrind.Args(t.callgrind), argv...)
		env = append(append(env, callgrind.GoEnv...), "GOMAXPROCS=1", "GOGC=100")
		wait = 10 * time.Minute
	}
	t.cmd = exec.CommandContext(ctx, argv[0], argv[1:]...)
	t.cmd.Dir, t.cmd.Env = o.work, env
	log, err := os.Create(filepath.Join(o.work, name+".log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	t.cmd.Stdout, t.cmd.Stderr = log, log
	if err := t.cmd.Start(); err != nil {
		return nil, err
	}
	cl := &http.Client{Timeout: 20 * time.Second}
	err = waitFor(ctx, wait, func() bool {
		r, err := cl.Get(t.url)
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
		return r.StatusCode == 200 && (!strings.HasPrefix(name, "memory") && !strings.HasPrefix(name, "redis") ||
			r.Header.Get("X-Ratelimit-Limit") != "")
	})
	if err != nil {
		stop(t.cmd)
		return nil, fmt.Errorf("no answer 200 (with X-RateLimit-Limit for the plugin) within %s; log: %s", wait, log.Name())
	}
	return t, nil
}

// count counts name's Traefik under callgrind.
func count(ctx context.Context, o options, name, dyn string) error {
	t0 := time.Now()
	t, err := start(ctx, o, name, dyn, true)
	if err != nil {
		return err
	}
	defer stop(t.cmd)
	if err := drive(ctx, t.url, 0, o.warm); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	// A collection first (pprof's heap profile, gc=1), so that each count
	// starts with none under way.
	if err := get(t.api + "/debug/pprof/heap?gc=1"); err != nil {
		return err
	}
	m0, err := memStats(t.api)
	if err != nil {
		return err
	}
	if err := callgrind.Zero(t.cmd.Process.Pid); err != nil {
		return err
	}
	if err := drive(ctx, t.url, o.warm, o.n); err != nil {
		return err
	}
	ir, err := callgrind.Dump(t.cmd.Process.Pid, t.callgrind, "")
	if err != nil {
		return err
	}
	m1, err := memStats(t.api)
	if err != nil {
		return err
	}
	gc, err := gcShare(t.callgrind + ".1")
	if err != nil {
		return err
	}
	n := float64(o.n)
	fmt.Printf("callgrind  %-17s %8.0f instructions/request (%2.0f%% in the GC)  %6.1f allocs/request (%.0f bytes; %d GCs)  (%.0fs)\n",
		name, float64(ir)/n, 100*gc, float64(m1.Mallocs-m0.Mallocs)/n, float64(m1.TotalAlloc-m0.TotalAlloc)/n, m1.NumGC-m0.NumGC,
		time.Since(t0).Seconds())
	return nil
}

func get(url string) error {
	cl := &http.Client{Timeout: time.Minute}
	r, err := cl.Get(url)
	if err != nil {
		return err
	}
	defer r.Body.Close()
	_, err = io.Copy(io.Discard, r.Body)
	if err == nil && r.StatusCode != 200 {
		err = fmt.Errorf("%s: status %d", url, r.StatusCode)
	}
	return err
}

// gcFunc names the runtime's functions of the garbage collector (marking,
// scanning, sweeping, scavenging): what gcShare counts.
var gcFunc = regexp.MustCompile(`^runtime\.(gc|scan|mark|sweep|grey|shade|findObject|tryDeferToSpanScan|typePointers|extractHeapBits|spanSet|bgsweep|bgscavenge|wbBuf|bulkBarrier|\(\*(gcWork|gcBits|spanQueue|spanSet|spanInlineMarkBits|sweepLocked|scavenger)\)|\(\*mspan\)\.(moveInlineMarks|heapBitsSmallForAddr|typePointersOf|sweep|markBitsForIndex|refillAllocCache|nextFreeIndex)|\(\*mheap\)\.nextSpanForSweep|\(\*pallocBits\)\.summarize|\(\*pageAlloc\)\.(update|free|scavenge))`)

// gcShare reads a callgrind dump: the share of its instructions executed
// in the garbage collector's own functions (self cost, by name).
func gcShare(dump string) (float64, error) {
	f, err := os.Open(dump)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	names := map[string]string{}
	var all, gc int64
	inGC, call := false, false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "fn=("); ok {
			id, name, _ := strings.Cut(rest, ")")
			if name = strings.TrimSpace(name); name != "" {
				names[id] = name
			}
			inGC = gcFunc.MatchString(names[id])
		} else if rest, ok := strings.CutPrefix(line, "cfn=("); ok {
			if id, name, _ := strings.Cut(rest, ")"); strings.TrimSpace(name) != "" {
				names[id] = strings.TrimSpace(name)
			}
		} else if strings.HasPrefix(line, "calls=") {
			call = true // the next cost line is the call's, inclusive
		} else if line != "" && strings.ContainsAny(line[:1], "0123456789+-*") {
			if call {
				call = false
				continue
			}
			if f := strings.Fields(line); len(f) > 1 {
				v, _ := strconv.ParseInt(f[1], 10, 64)
				all += v
				if inGC {
					gc += v
				}
			}
		}
	}
	if err := sc.Err(); err != nil || all == 0 {
		return 0, fmt.Errorf("%s: no costs read (%v)", dump, err)
	}
	return float64(gc) / float64(all), nil
}

type mem struct{ Mallocs, TotalAlloc, NumGC uint64 }

// memStats reads Traefik's runtime.MemStats from expvar (--api.debug).
func memStats(api string) (mem, error) {
	cl := &http.Client{Timeout: time.Minute}
	r, err := cl.Get(api + "/debug/vars")
	if err != nil {
		return mem{}, err
	}
	defer r.Body.Close()
	var v struct{ Memstats mem }
	if err := json.NewDecoder(r.Body).Decode(&v); err != nil {
		return mem{}, fmt.Errorf("/debug/vars: %w", err)
	}
	return v.Memstats, nil
}

// drive sends n requests over conns keep-alive connections, request i
// with client key from+i, and wants 200 for each.
func drive(ctx context.Context, url string, from, n int) error {
	return callgrind.Drive(conns, n, func(cl *http.Client, _, i int) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		req.Header.Set("X-Api-Key", fmt.Sprintf("client-%05d", (from+i)%clients+1))
		r, err := cl.Do(req)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, r.Body)
		r.Body.Close()
		if err == nil && r.StatusCode != 200 {
			err = fmt.Errorf("status %d", r.StatusCode)
		}
		return err
	})
}

var wrkLine = regexp.MustCompile(`Requests/sec:\s+([\d.]+)|Non-2xx or 3xx responses: \d+|Socket errors: .*`)

// rate runs wrk (2 threads, 16 connections, the client keys in turn)
// against name's Traefik as it runs in production (GOMAXPROCS and GOGC
// unset) for o.wrk, after a second of warm-up.
func rate(ctx context.Context, o options, name, dyn string) error {
	t, err := start(ctx, o, name, dyn, false)
	if err != nil {
		return err
	}
	defer stop(t.cmd)
	script := filepath.Join(o.work, "keys.lua")
	lua := fmt.Sprintf("local i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(nil, nil, {[\"X-Api-Key\"] = string.format(\"client-%%05d\", i %% %d + 1)})\nend\n", clients)
	if err := os.WriteFile(script, []byte(lua), 0o644); err != nil {
		return err
	}
	wrk := func(d time.Duration) (string, error) {
		out, err := exec.CommandContext(ctx, "wrk", "-t2", "-c16", "-d"+d.String(), "-s", script, t.url).CombinedOutput()
		return string(out), err
	}
	if _, err := wrk(time.Second); err != nil {
		return err
	}
	load0 := loadavg()
	out, err := wrk(o.wrk)
	if err != nil {
		return fmt.Errorf("wrk: %v\n%s", err, out)
	}
	var rps, bad string
	for _, m := range wrkLine.FindAllStringSubmatch(out, -1) {
		if m[1] != "" {
			rps = m[1]
		} else {
			bad += "; " + strings.TrimSpace(m[0])
		}
	}
	fmt.Printf("wrk        %-17s %8s req/s (2 threads, 16 connections, %s; load average %s before, %s after)%s\n",
		name, rps, o.wrk, load0, loadavg(), bad)
	return nil
}

func loadavg() string {
	f, err := os.Open("/proc/loadavg")
	if err != nil {
		return "?"
	}
	defer f.Close()
	s, _ := bufio.NewReader(f).ReadString(' ')
	return strings.TrimSpace(s)
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitFor(ctx context.Context, d time.Duration, ok func() bool) error {
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %s", d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// stop ends a process this command started, and waits for it.
func stop(c *exec.Cmd) {
	if c.Process == nil {
		return
	}
	_ = c.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = c.Process.Kill()
		<-done
	}
}
