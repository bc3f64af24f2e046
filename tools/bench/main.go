// Command bench measures what edgelimit costs: it builds Caddy with the
// plugin once, then, on loopback, runs plain Caddy (respond "ok", the
// ceiling), edge_limit with the memory and the Redis stores, edge_cache
// hits against reverse_proxy alone, and a denial-heavy run, interleaved
// over several rounds, with wrk as the load generator. It prints a table
// (requests/s, p50/p99 latency, allocations, CPU and Redis commands per
// request, ratio to plain Caddy), checks the targets, and writes
// results.json, chart.svg and results.md. It also checks that two Caddy
// instances sharing Redis admit exactly the limit per window, and runs
// store's bytes-per-key benchmark at 1,000,000 keys.
//
// From the tools module (cd tools):
//
//	go run ./bench                  # the full run, about 10 minutes; writes tools/bench/results and docs/benchmarks.md
//	go run ./bench -smoke           # a few seconds per configuration; CI runs it
//	go run ./bench -only plain,memory-1 -rounds 3 -duration 5s
//
// Every process is pinned: each Caddy (GOMAXPROCS=1, GOGC=100) on CPU 0;
// wrk, Redis and the upstream on CPU 1. See docs/benchmarks.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/edgelimit/caddy-edgelimit/tools/bench/callgrind"
)

type options struct {
	rounds     int
	duration   time.Duration
	warmup     time.Duration
	conns      int
	only       map[string]bool
	out        string
	doc        string
	smoke      bool
	keep       bool
	caddyBin   string
	pprof      string
	retries    int
	gomaxprocs int
	gogc       int
	caddyCPU   string
	loadCPU    string
	// Requests counted per configuration under callgrind (0: none), after
	// countWarm requests of warm-up.
	count     int
	countWarm int
}

// noisy is the share of Caddy's CPU that other processes may take during
// a measurement before it is taken again.
const noisy = 0.05

// errSkip ends a run that cannot happen here (no wrk) without failing.
var errSkip = errors.New("skipped")

// errNoResponses is a measurement in which wrk got no response at all.
var errNoResponses = errors.New("no responses")

func main() {
	var opt options
	var only string
	flag.IntVar(&opt.rounds, "rounds", 6, "rounds; each round measures every configuration once")
	flag.DurationVar(&opt.duration, "duration", 4*time.Second, "measured time per configuration and round (whole seconds)")
	flag.DurationVar(&opt.warmup, "warmup", time.Second, "wrk warm-up before each measurement (0: none)")
	flag.IntVar(&opt.conns, "conns", 64, "wrk connections")
	flag.StringVar(&only, "only", "", "comma-separated subset of: "+strings.Join(allNames(), ","))
	flag.StringVar(&opt.out, "out", filepath.Join("tools", "bench", "results"), "directory for results.json, chart.svg and results.md, relative to the repository's root unless absolute")
	flag.StringVar(&opt.doc, "doc", filepath.Join("docs", "benchmarks.md"), "page whose benchmark block to rewrite, relative to the repository's root unless absolute (\"\": none; none by default with -smoke or -only)")
	flag.BoolVar(&opt.smoke, "smoke", false, "one short round, results in a temporary directory unless -out is given: checks that everything starts and answers, not numbers")
	flag.BoolVar(&opt.keep, "keep", false, "keep the temporary directory (Caddyfiles, logs)")
	flag.StringVar(&opt.caddyBin, "caddy", "", "use this Caddy binary instead of building ./cmd/caddy")
	flag.StringVar(&opt.pprof, "pprof", "", "save a CPU profile of each Caddy under load into this directory (go tool pprof; profiling costs throughput)")
	flag.IntVar(&opt.retries, "retries", 3, "measure again, at most this many times (and a third of the measurements in all), when other processes took more than 5% of Caddy's CPU")
	flag.IntVar(&opt.gomaxprocs, "gomaxprocs", 1, "GOMAXPROCS of every Caddy")
	flag.IntVar(&opt.gogc, "gogc", 100, "GOGC of every Caddy")
	flag.IntVar(&opt.count, "callgrind", 10000, "requests counted per configuration with Caddy (and Redis) under valgrind's callgrind, after -callgrind-warm more (0: no count)")
	flag.IntVar(&opt.countWarm, "callgrind-warm", distinctKeys, "warm-up requests before the count (at least one per client key)")
	flag.Parse()
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if only != "" {
		opt.only = map[string]bool{}
		for _, n := range strings.Split(only, ",") {
			n = strings.TrimSpace(n)
			if !contains(allNames(), n) {
				fmt.Fprintf(os.Stderr, "bench: -only: unknown %q (want %s)\n", n, strings.Join(allNames(), ", "))
				os.Exit(2)
			}
			opt.only[n] = true
		}
	}
	if opt.smoke {
		if !set["rounds"] {
			opt.rounds = 1
		}
		if !set["duration"] {
			opt.duration = time.Second
		}
		if !set["warmup"] {
			opt.warmup = 0
		}
		if !set["out"] {
			opt.out = ""
		}
		if !set["doc"] {
			opt.doc = ""
		}
		if !set["retries"] {
			opt.retries = 0
		}
		if !set["callgrind"] {
			opt.count = smokeCount
		}
		if !set["callgrind-warm"] {
			opt.countWarm = smokeCount
		}
	}
	if opt.only != nil && !set["doc"] {
		opt.doc = ""
	}
	if opt.rounds < 1 || opt.duration < time.Second || opt.conns < 1 || opt.count < 0 || opt.countWarm < 0 {
		fmt.Fprintln(os.Stderr, "bench: need -rounds >= 1, -duration >= 1s, -conns >= 1, -callgrind >= 0, -callgrind-warm >= 0")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, &opt)
	stop()
	switch {
	case errors.Is(err, errSkip):
		os.Exit(0)
	case err != nil:
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func allNames() []string {
	var ns []string
	for _, c := range configs {
		ns = append(ns, c.Name)
	}
	return append(ns, "exact", "bytes-per-key")
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

func (o *options) wants(name string) bool { return o.only == nil || o.only[name] }

func run(ctx context.Context, opt *options) (err error) {
	ci := os.Getenv("CI") != ""
	if _, err := exec.LookPath("wrk"); err != nil {
		if opt.smoke && !ci {
			fmt.Println("bench: wrk not found (Debian: apt-get install wrk): skipping the smoke run")
			return errSkip
		}
		return errors.New("wrk not found (Debian: apt-get install wrk)")
	}
	haveRedis := true
	if _, err := exec.LookPath("redis-server"); err != nil {
		if ci || !opt.smoke {
			return errors.New("redis-server not found (Debian: apt-get install redis-server)")
		}
		fmt.Println("bench: redis-server not found: skipping the Redis configurations")
		haveRedis = false
	}
	if runtime.NumCPU() >= 2 {
		if _, err := exec.LookPath("taskset"); err == nil {
			opt.caddyCPU, opt.loadCPU = "0", "1"
		}
	}
	if opt.caddyCPU == "" {
		fmt.Println("bench: fewer than 2 CPUs or no taskset: processes are not pinned, figures are less comparable")
	}

	if opt.pprof != "" {
		if err := os.MkdirAll(opt.pprof, 0o755); err != nil {
			return err
		}
	}
	root, err := pluginRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "edgelimit-bench-")
	if err != nil {
		return err
	}
	defer func() {
		if opt.keep || err != nil {
			fmt.Println("bench: Caddyfiles and logs kept in", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	defer children.stopAll()

	e := &env{opt: opt, dir: dir, caddy: opt.caddyBin}
	if e.caddy == "" {
		fmt.Print("building Caddy with the plugin (go build ./cmd/caddy)... ")
		t := time.Now()
		e.caddy = filepath.Join(dir, "caddy")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", e.caddy, "./cmd/caddy")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, out)
		}
		fmt.Printf("%.1fs\n", time.Since(t).Seconds())
	}

	var selected []*config
	for _, c := range configs {
		if !opt.wants(c.Name) {
			continue
		}
		if c.Redis && !haveRedis {
			continue
		}
		selected = append(selected, c)
	}
	needRedis, needUpstream := haveRedis && opt.wants("exact"), false
	for _, c := range selected {
		needRedis = needRedis || c.Redis
		needUpstream = needUpstream || c.Upstream
	}
	if needRedis {
		if e.redis, err = startRedis(ctx, dir, opt.loadCPU); err != nil {
			return err
		}
		defer e.redis.stop()
	}
	if needUpstream {
		if e.upPort, err = freePort(); err != nil {
			return err
		}
		path := filepath.Join(dir, "upstream.Caddyfile")
		if err := os.WriteFile(path, []byte(upstreamCaddyfile(e.upPort)), 0o644); err != nil {
			return err
		}
		e.upstream, err = start("upstream", opt.loadCPU, e.caddyEnv(), filepath.Join(dir, "upstream.log"),
			e.caddy, "run", "--config", path, "--adapter", "caddyfile")
		if err != nil {
			return err
		}
		defer e.upstream.stop()
		if err := waitPort(ctx, e.upstream, e.upPort, 20*time.Second); err != nil {
			return err
		}
	}

	res := &results{Date: time.Now().UTC().Format("2006-01-02 15:04 UTC"), Machine: machineInfo(ctx, e, root)}
	res.Settings = settings{Rounds: opt.rounds, Duration: opt.duration.String(), Warmup: opt.warmup.String(),
		Conns: opt.conns, WrkThreads: 1, GOMAXPROCS: opt.gomaxprocs, GOGC: opt.gogc,
		CaddyCPU: opt.caddyCPU, LoadCPU: opt.loadCPU, Keys: distinctKeys, Smoke: opt.smoke}
	if opt.caddyCPU == "" {
		res.Settings.CaddyCPU, res.Settings.LoadCPU = "any", "any"
	}
	fmt.Println(res.machineLine())
	fmt.Println(res.settingsLine())
	res.Settings.LoadBefore = loadAverage()
	if l := res.Settings.LoadBefore; l > 0.5 {
		fmt.Printf("bench: load average %.2f before the run: something else is using the CPUs\n", l)
	}

	samples := map[string][]sample{}
	steps := schedule(selected, opt.rounds)
	// Retries are bounded per measurement and, so that a machine busy
	// for long does not make the run last an hour, per run: a third of
	// the measurements.
	budget := len(steps) / 3
	for seq, st := range steps {
		c, r := st.c, st.round
		s, err := e.measure(ctx, c, r)
		// Caddy answered its probe but nothing under load: on a machine
		// so busy that Caddy's CPU is someone else's for the whole of a
		// one-second smoke measurement (seen at a load average of 14 on
		// two cores). Once more, after a pause; twice is a failure.
		if errors.Is(err, errNoResponses) {
			fmt.Printf("%3d/%d round %d/%d  %-9s no responses under load: again in 5s\n", seq+1, len(steps), r, opt.rounds, c.Name)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Second):
			}
			s, err = e.measure(ctx, c, r)
		}
		// Another process on Caddy's CPU spoils a measurement: measure
		// again, a few times at most.
		for try := 1; err == nil && s.OtherCores > noisy && try <= opt.retries && budget > 0; try++ {
			budget--
			fmt.Printf("%3d/%d round %d/%d  %-9s other processes took %.0f%% of Caddy's CPU: again in 5s (%d/%d)\n",
				seq+1, len(steps), r, opt.rounds, c.Name, 100*s.OtherCores, try, opt.retries)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Second):
			}
			s, err = e.measure(ctx, c, r)
			s.Retries = try
		}
		if err != nil {
			return err
		}
		s.Seq = seq
		samples[c.Name] = append(samples[c.Name], s)
		fmt.Printf("%3d/%d round %d/%d  %-9s %9s req/s  p50 %6.2fms  p99 %7.2fms  allocs/req %s  Caddy %.1fus/req%s%s\n",
			seq+1, len(steps), r, opt.rounds, c.Name, thousands(s.RPS), s.P50ms, s.P99ms, optf(s.AllocsPerReq, "%.1f"), s.CaddyCPUus,
			extra(&s), warnNote(&s))
	}
	for _, c := range selected {
		res.Configs = append(res.Configs, summarize(c.Name, c.Title, samples[c.Name], samples["plain"]))
	}
	if opt.count > 0 && callgrind.Available() != nil && opt.smoke && !ci {
		fmt.Println("bench:", callgrind.Available(), "- skipping the counts")
		opt.count = 0
	}
	if opt.count > 0 {
		toCount := selected
		if opt.smoke {
			// The smoke run counts two configurations, one of them on
			// Redis: that the count works, in a minute.
			toCount = nil
			for _, c := range selected {
				if c.Name == "memory-1" || c.Name == "redis-3" {
					toCount = append(toCount, c)
				}
			}
		}
		fmt.Printf("callgrind: %d requests per configuration over %d connections, after %d to warm up...\n", opt.count, countConns, opt.countWarm)
		counts, err := e.countAll(ctx, toCount, opt.countWarm, opt.count)
		if err != nil {
			return err
		}
		for _, s := range res.Configs {
			s.Counted = counts[s.Name]
		}
	}

	if opt.wants("exact") && e.redis != nil {
		limit, window := 1000, 2*time.Second
		if opt.smoke {
			limit, window = 200, time.Second
		}
		fmt.Printf("exactness: 2 Caddy instances, one Redis, limit %d per %s, 16 clients for %s...\n", limit, window, 3*window+window/4)
		if res.Exactness, err = e.exactCheck(ctx, limit, window, 16); err != nil {
			return err
		}
		fmt.Println("exactness:", res.Exactness)
	}
	if opt.wants("bytes-per-key") && !opt.smoke {
		fmt.Println("memory per key: go test -run '^$' -bench BenchmarkMemoryBytesPerKey -benchtime 1x ./store ...")
		if res.BytesPerKey, _, err = bytesPerKey(ctx, root); err != nil {
			return err
		}
		for _, b := range res.BytesPerKey {
			fmt.Printf("memory per key: %-16s %6.1f bytes/key\n", b.Algorithm, b.BytesPerKey)
		}
	}
	res.Settings.LoadAfter = loadAverage()
	res.checkTargets()

	fmt.Println()
	fmt.Print(res.table())
	fmt.Print(res.countTable())
	fmt.Println()
	if opt.smoke {
		fmt.Println("smoke run: figures not checked")
	}
	fmt.Println(res.noiseLine())
	fmt.Print(res.targetLines())

	out := opt.out
	switch {
	case out == "":
		out = filepath.Join(dir, "results")
	case !filepath.IsAbs(out):
		out = filepath.Join(root, out)
	}
	if err := writeResults(res, out); err != nil {
		return err
	}
	if opt.out == "" {
		fmt.Println("results written to the temporary directory (removed at exit: give -out to keep them)")
	} else {
		fmt.Println("wrote", filepath.Join(opt.out, "results.json"), filepath.Join(opt.out, "chart.svg"), filepath.Join(opt.out, "results.md"))
	}
	if opt.doc != "" {
		doc := opt.doc
		if !filepath.IsAbs(doc) {
			doc = filepath.Join(root, doc)
		}
		if err := updateDoc(doc, res.markdown(chartLink(root, doc, filepath.Join(out, "chart.svg")))); err != nil {
			return err
		}
		fmt.Println("updated the benchmark block of", opt.doc)
	}
	return nil
}

type step struct {
	c     *config
	round int
}

// schedule is the order of the measurements. Every round measures every
// configuration once, each round starting one configuration later, so that
// no configuration always follows the same one; and plain Caddy is
// measured first and again after every other configuration, so that each
// measurement has a plain one on both sides, seconds away: the machine's
// speed drifts (on a shared virtual machine, by a quarter over minutes),
// and the ratio to the mean of the two cancels what drifts slower than
// that.
func schedule(selected []*config, rounds int) []step {
	var plain *config
	var others []*config
	for _, c := range selected {
		if c.Name == "plain" && len(selected) > 1 {
			plain = c
		} else {
			others = append(others, c)
		}
	}
	var steps []step
	if plain != nil {
		steps = append(steps, step{plain, 1})
	}
	for r := 0; r < rounds; r++ {
		for i := range others {
			steps = append(steps, step{others[(i+r)%len(others)], r + 1})
			if plain != nil {
				steps = append(steps, step{plain, r + 1})
			}
		}
	}
	return steps
}

func extra(s *sample) string {
	var b strings.Builder
	if s.RedisCmds != nil {
		fmt.Fprintf(&b, "  Redis %.1fus/req %.3f EVALSHA/req %.2f cmds/req, %.2f round trips/req by MONITOR", *s.RedisCPUus, *s.RedisEvalsha, *s.RedisCmds, *s.RedisRoundTrips)
	}
	if s.UpstreamCPUus != nil {
		fmt.Fprintf(&b, "  upstream %.1fus/req", *s.UpstreamCPUus)
	}
	if s.Non2xx > 0 {
		fmt.Fprintf(&b, "  non-2xx %.1f%%", 100*float64(s.Non2xx)/float64(s.Requests))
	}
	return b.String()
}

func warnNote(s *sample) string {
	var b strings.Builder
	if s.SocketErrors > 0 {
		fmt.Fprintf(&b, "  (%d socket errors)", s.SocketErrors)
	}
	if s.OtherCores > noisy {
		fmt.Fprintf(&b, "  (other processes took %.0f%% of Caddy's CPU: noisy)", 100*s.OtherCores)
	}
	if s.CaddyLogWarns > 0 {
		fmt.Fprintf(&b, "  (%d warnings in Caddy's log)", s.CaddyLogWarns)
	}
	return b.String()
}

func writeResults(res *results, out string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	j, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "results.json"), append(j, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "chart.svg"), res.chart(), 0o644); err != nil {
		return err
	}
	txt := res.markdown("chart.svg") + "\n```\n" + res.table() + "```\n"
	return os.WriteFile(filepath.Join(out, "results.md"), []byte(txt), 0o644)
}

// pluginRoot is the directory of the plugin's module (the repository's
// root), as the tools module's replace directive names it.
func pluginRoot() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", pluginModule).Output()
	if err != nil {
		return "", fmt.Errorf("go list -m %s (run the bench from the tools module: cd tools && go run ./bench): %w", pluginModule, err)
	}
	return strings.TrimSpace(string(out)), nil
}

const pluginModule = "github.com/edgelimit/caddy-edgelimit"

func machineInfo(ctx context.Context, e *env, root string) machine {
	m := machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	if cpus, err := procFS().CPUInfo(); err == nil && len(cpus) > 0 {
		m.CPU = cpus[0].ModelName
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if out, _ := exec.Command("wrk", "-v").CombinedOutput(); len(out) > 0 {
		line, _, _ := strings.Cut(string(out), "\n")
		line, _, _ = strings.Cut(line, " Copyright")
		m.Wrk = strings.TrimSpace(line)
	}
	if out, err := exec.Command(e.caddy, "version").Output(); err == nil {
		m.Caddy, _, _ = strings.Cut(strings.TrimSpace(string(out)), " ")
	}
	if out, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty", "--abbrev=12").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	if e.redis != nil {
		m.Redis = e.redis.version(ctx)
	}
	return m
}

// loadAverage is the 1-minute load average (/proc/loadavg).
func loadAverage() float64 {
	l, err := procFS().LoadAvg()
	if err != nil {
		return 0
	}
	return l.Load1
}
