package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// results is everything one bench run found; results.json holds it.
type results struct {
	Date        string       `json:"date"`
	Machine     machine      `json:"machine"`
	Settings    settings     `json:"settings"`
	Configs     []*summary   `json:"configs"`
	Exactness   *exactResult `json:"exactness,omitempty"`
	BytesPerKey []algoBytes  `json:"bytes_per_key,omitempty"`
	Targets     []target     `json:"targets"`
}

type machine struct {
	CPU    string `json:"cpu"`
	Cores  int    `json:"cores"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
	Wrk    string `json:"wrk"`
	Redis  string `json:"redis,omitempty"`
	Caddy  string `json:"caddy"`
	Commit string `json:"commit"`
}

type settings struct {
	Rounds     int    `json:"rounds"`
	Duration   string `json:"duration"`
	Warmup     string `json:"warmup"`
	Conns      int    `json:"connections"`
	WrkThreads int    `json:"wrk_threads"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	GOGC       int    `json:"gogc"`
	CaddyCPU   string `json:"caddy_cpu"`
	LoadCPU    string `json:"wrk_redis_upstream_cpu"`
	Keys       int    `json:"client_keys"`
	Smoke      bool   `json:"smoke,omitempty"`
	// The 1-minute load average before and after the run.
	LoadBefore float64 `json:"load_average_before"`
	LoadAfter  float64 `json:"load_average_after"`
}

// summary is one configuration over every round.
type summary struct {
	Name    string   `json:"name"`
	Title   string   `json:"title"`
	Samples []sample `json:"samples"`
	// Median, min and max requests/s over the rounds.
	RPS    float64 `json:"rps"`
	RPSMin float64 `json:"rps_min"`
	RPSMax float64 `json:"rps_max"`
	// The median, min and max of the ratios of each measurement to the
	// mean of the plain ones just before and after it; and, for
	// reference, the median rps over plain's median rps.
	Ratio          *float64 `json:"ratio,omitempty"`
	RatioMin       *float64 `json:"ratio_min,omitempty"`
	RatioMax       *float64 `json:"ratio_max,omitempty"`
	RatioOfMedians *float64 `json:"ratio_of_medians,omitempty"`
	P50ms          float64  `json:"p50_ms"`
	P99ms          float64  `json:"p99_ms"`
	CaddyCPUus     float64  `json:"caddy_cpu_us_per_request"`
	perRequest
	DeniedShare float64 `json:"non_2xx_share"`
	// Measurements taken again because another process used Caddy's
	// CPU, and those kept although it still did.
	Retried int `json:"retried"`
	Noisy   int `json:"noisy"`
	// The count under callgrind, when it ran.
	Counted *counted `json:"callgrind,omitempty"`
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// medianOf is the median of the non-nil values, nil if there are none.
func medianOf(samples []sample, f func(s *sample) *float64) *float64 {
	var xs []float64
	for i := range samples {
		if v := f(&samples[i]); v != nil {
			xs = append(xs, *v)
		}
	}
	if len(xs) == 0 {
		return nil
	}
	return ptr(median(xs))
}

func summarize(name, title string, samples []sample, plain []sample) *summary {
	s := &summary{Name: name, Title: title, Samples: samples}
	var rps, p50, p99, cpu, denied []float64
	s.RPSMin = math.Inf(1)
	for _, x := range samples {
		rps = append(rps, x.RPS)
		p50 = append(p50, x.P50ms)
		p99 = append(p99, x.P99ms)
		cpu = append(cpu, x.CaddyCPUus)
		denied = append(denied, float64(x.Non2xx)/float64(x.Requests))
		s.RPSMin = math.Min(s.RPSMin, x.RPS)
		s.RPSMax = math.Max(s.RPSMax, x.RPS)
		s.Retried += x.Retries
		if x.OtherCores > noisy {
			s.Noisy++
		}
	}
	s.RPS, s.P50ms, s.P99ms, s.CaddyCPUus, s.DeniedShare = median(rps), median(p50), median(p99), median(cpu), median(denied)
	for k, f := range s.perRequest.fields() {
		*f = medianOf(samples, func(x *sample) *float64 { return *x.perRequest.fields()[k] })
	}
	if len(plain) > 0 {
		bySeq := map[int]float64{}
		var prps []float64
		for _, x := range plain {
			bySeq[x.Seq] = x.RPS
			prps = append(prps, x.RPS)
		}
		s.RatioOfMedians = ptr(s.RPS / median(prps))
		// Each measurement over the mean of plain's just before and after.
		var paired []float64
		for i := range s.Samples {
			x := &s.Samples[i]
			var ps []float64
			for _, n := range []int{x.Seq - 1, x.Seq + 1} {
				if p, ok := bySeq[n]; ok && p > 0 {
					ps = append(ps, p)
				}
			}
			if name == "plain" {
				ps = []float64{x.RPS}
			}
			if len(ps) > 0 {
				x.PlainAround = ptr((ps[0] + ps[len(ps)-1]) / 2)
				paired = append(paired, x.RPS / *x.PlainAround)
			}
		}
		if len(paired) > 0 {
			sort.Float64s(paired)
			s.Ratio = ptr(median(paired))
			s.RatioMin, s.RatioMax = ptr(paired[0]), ptr(paired[len(paired)-1])
		}
	}
	return s
}

func (r *results) config(name string) *summary {
	for _, s := range r.Configs {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// target is one of the targets, checked against this run.
type target struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	Pass bool   `json:"pass"`
}

func (r *results) checkTargets() {
	r.Targets = nil
	add := func(name, want, got string, pass bool) {
		r.Targets = append(r.Targets, target{name, want, got, pass})
	}
	ratio := func(cfg string, min float64, what string) {
		s := r.config(cfg)
		if s == nil || s.Ratio == nil {
			return
		}
		add(what, fmt.Sprintf(">= %.2f x plain", min), fmt.Sprintf("%.3f x (each measurement: %s)", *s.Ratio, ratioRange(s)), *s.Ratio >= min)
	}
	ratio("memory-1", 0.95, "memory store, one limit")
	ratio("memory-3", 0.95, "memory store, three limits, 10k keys")
	if s := r.config("redis-3"); s != nil && s.RedisEvalsha != nil && s.RedisRoundTrips != nil {
		// Before the load, MONITOR: one command per request, nothing
		// outside the script. Under load, commandstats: at most one
		// EVALSHA per request, fewer when concurrent decisions share a
		// script (requests in flight at both ends blur the count a
		// little).
		add("Redis: one round trip per request at most", "<= 1 EVALSHA/request (INFO commandstats), 1 top-level command/request (MONITOR)",
			fmt.Sprintf("%.3f EVALSHA/request under load, %.2f top-level commands/request by MONITOR (%.2f commands/request with those inside the script)",
				*s.RedisEvalsha, *s.RedisRoundTrips, *s.RedisCmds),
			*s.RedisEvalsha <= 1.01 && *s.RedisRoundTrips == 1)
	}
	if s := r.config("redis-3"); s != nil && s.RedisCPUus != nil {
		add("Redis CPU per three-limit decision", "<= 15 us", fmt.Sprintf("%.1f us", *s.RedisCPUus), *s.RedisCPUus <= 15)
	}
	if rs, ms := r.config("redis-3"), r.config("memory-3"); rs != nil && ms != nil {
		d := rs.CaddyCPUus - ms.CaddyCPUus
		add("Caddy CPU per request, redis-3 minus memory-3", "<= +12 us",
			fmt.Sprintf("%+.1f us (%.1f - %.1f)", d, rs.CaddyCPUus, ms.CaddyCPUus), d <= 12)
	}
	ratio("redis-3", 0.60, "Redis store, three limits, 10k keys")
	ratio("deny", 0.95, "denials, memory store")
	if d, p := r.config("deny"), r.config("plain"); d != nil && p != nil && d.AllocsPerReq != nil && p.AllocsPerReq != nil {
		add("allocations of a denial", "<= plain + 5 per request",
			fmt.Sprintf("%.1f (plain %.1f)", *d.AllocsPerReq, *p.AllocsPerReq), *d.AllocsPerReq <= *p.AllocsPerReq+5)
	}
	if rd, d := r.config("redis-deny"), r.config("deny"); rd != nil && d != nil && rd.Ratio != nil && d.Ratio != nil {
		v := *rd.Ratio / *d.Ratio
		add("denials, Redis store vs memory", ">= 0.90 x deny", fmt.Sprintf("%.3f x (%.3f / %.3f x plain)", v, *rd.Ratio, *d.Ratio), v >= 0.90)
	}
	if rd := r.config("redis-deny"); rd != nil && rd.RedisCmds != nil {
		add("Redis commands per denied request", "<= 0.01", fmt.Sprintf("%.4f", *rd.RedisCmds), *rd.RedisCmds <= 0.01)
	}
	hit, px := r.config("cache-hit"), r.config("proxy")
	if hit != nil && px != nil {
		v := hit.RPS / px.RPS
		add("cache HIT vs reverse_proxy alone", ">= 1.5 x (a wide margin)", fmt.Sprintf("%.2f x", v), v >= 1.5)
	}
	ratio("cache-hit", 0.90, "cache HIT vs respond")
	if len(r.BytesPerKey) > 0 {
		worst := r.BytesPerKey[0]
		var parts []string
		for _, b := range r.BytesPerKey {
			parts = append(parts, fmt.Sprintf("%s %.0f", b.Algorithm, b.BytesPerKey))
			if b.BytesPerKey > worst.BytesPerKey {
				worst = b
			}
		}
		add("memory store at 1M keys", "<= 200 bytes/key", strings.Join(parts, ", "), worst.BytesPerKey <= 200)
	}
	r.countTargets(add)
	if x := r.Exactness; x != nil {
		add("Redis, 2 instances: admitted == limit per window", "EXACT",
			fmt.Sprintf("%s (%d of %d full windows at %d)", x.Verdict, x.ExactWindows, x.FullWindows, x.Limit), x.Verdict == "EXACT")
	}
}

// ratioRange is the range of the ratios of each measurement.
func ratioRange(s *summary) string {
	if s.RatioMin == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f-%.2f", *s.RatioMin, *s.RatioMax)
}

// thousands writes 12345.6 as 12,346.
func thousands(f float64) string {
	s := strconv.FormatInt(int64(math.Round(f)), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func optf(v *float64, format string) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf(format, *v)
}

var columns = []string{"config", "what", "req/s", "min-max", "x plain", "x plain min-max", "p50 ms", "p99 ms",
	"allocs/req", "Caddy CPU us/req", "Redis CPU us/req", "Redis EVALSHA/req", "Redis cmds/req", "non-2xx"}

func (s *summary) row() []string {
	return []string{
		s.Name, s.Title, thousands(s.RPS), thousands(s.RPSMin) + "-" + thousands(s.RPSMax),
		optf(s.Ratio, "%.3f"), ratioRange(s),
		fmt.Sprintf("%.2f", s.P50ms), fmt.Sprintf("%.2f", s.P99ms),
		optf(s.AllocsPerReq, "%.1f"), fmt.Sprintf("%.1f", s.CaddyCPUus),
		optf(s.RedisCPUus, "%.1f"), optf(s.RedisEvalsha, "%.3f"), optf(s.RedisCmds, "%.2f"),
		fmt.Sprintf("%.1f%%", 100*s.DeniedShare),
	}
}

// table is the plain-text table printed at the end of a run.
func (r *results) table() string {
	rows := [][]string{columns}
	for _, s := range r.Configs {
		rows = append(rows, s.row())
	}
	width := make([]int, len(columns))
	for _, row := range rows {
		for i, c := range row {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	var b strings.Builder
	for _, row := range rows {
		for i, c := range row {
			pad := width[i] - len([]rune(c))
			if i >= 2 { // numbers right-aligned
				b.WriteString(strings.Repeat(" ", pad) + c)
			} else {
				b.WriteString(c + strings.Repeat(" ", pad))
			}
			if i < len(row)-1 {
				b.WriteString("  ")
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func (r *results) machineLine() string {
	m := r.Machine
	return fmt.Sprintf("%s, %d cores, Linux %s, %s, %s, Redis %s, Caddy %s, commit %s; %s",
		m.CPU, m.Cores, m.Kernel, m.Go, m.Wrk, m.Redis, m.Caddy, m.Commit, r.Date)
}

func (r *results) settingsLine() string {
	st := r.Settings
	return fmt.Sprintf("%d rounds, interleaved; each: %s warm-up, %s measured; wrk -t%d -c%d on CPU %s; every Caddy GOMAXPROCS=%d GOGC=%d on CPU %s; Redis and the upstream on CPU %s",
		st.Rounds, st.Warmup, st.Duration, st.WrkThreads, st.Conns, st.LoadCPU, st.GOMAXPROCS, st.GOGC, st.CaddyCPU, st.LoadCPU)
}

// noiseLine tells how many measurements another process disturbed.
func (r *results) noiseLine() string {
	retried, noisyKept := 0, 0
	for _, s := range r.Configs {
		retried += s.Retried
		noisyKept += s.Noisy
	}
	return fmt.Sprintf("load average %.2f before the run, %.2f after; %d measurements taken again because another process used more than %.0f%% of Caddy's CPU, %d kept although one still did",
		r.Settings.LoadBefore, r.Settings.LoadAfter, retried, 100*noisy, noisyKept)
}

func (r *results) targetLines() string {
	var b strings.Builder
	for _, t := range r.Targets {
		v := "MISS"
		if t.Pass {
			v = "PASS"
		}
		fmt.Fprintf(&b, "%s  %s: want %s, got %s\n", v, t.Name, t.Want, t.Got)
	}
	return b.String()
}

// markdown is the block of docs/benchmarks.md: machine, chart, table,
// targets. chartPath is the chart as the page links it.
func (r *results) markdown(chartPath string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Measured on %s.\n%s; %s.\n\n", r.machineLine(), r.settingsLine(), r.noiseLine())
	fmt.Fprintf(&b, "![requests per second of each configuration, median and range over the rounds](%s)\n\n", chartPath)
	b.WriteString("| " + strings.Join(columns, " | ") + " |\n|")
	for i := range columns {
		if i < 2 {
			b.WriteString(" --- |")
		} else {
			b.WriteString(" ---: |")
		}
	}
	b.WriteByte('\n')
	for _, s := range r.Configs {
		row := s.row()
		row[0] = "`" + row[0] + "`"
		b.WriteString("| " + strings.Join(row, " | ") + " |\n")
	}
	b.WriteString(r.perCore())
	b.WriteString(r.countTable())
	if len(r.BytesPerKey) > 0 {
		b.WriteString("\nMemory store, 1,000,000 keys: ")
		for i, a := range r.BytesPerKey {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s %.0f", a.Algorithm, a.BytesPerKey)
		}
		b.WriteString(" bytes/key.\n")
	}
	if r.Exactness != nil {
		fmt.Fprintf(&b, "\nExactness, Redis: %s.\n", r.Exactness)
	}
	if len(r.Targets) > 0 {
		b.WriteString("\n| target | want | got | |\n| --- | --- | --- | --- |\n")
		for _, t := range r.Targets {
			v := "MISS"
			if t.Pass {
				v = "PASS"
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.Name, t.Want, t.Got, v)
		}
	}
	return b.String()
}

// perCore is what one core does at the CPU cost per request measured:
// requests per second of a Caddy core (1 s / Caddy CPU per request) and
// decisions per second of a Redis core (1 s / Redis CPU per request), the
// figures of the capacity model (docs/capacity.md).
func (r *results) perCore() string {
	var b strings.Builder
	for _, s := range r.Configs {
		if s.CaddyCPUus <= 0 {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("\nPer core at these costs (1 s / CPU per request): ")
		} else {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "`%s` %s req/s per Caddy core", s.Name, thousands(1e6/s.CaddyCPUus))
		if s.RedisCPUus != nil && *s.RedisCPUus > 0 {
			fmt.Fprintf(&b, " and %s decisions/s per Redis core", thousands(1e6 / *s.RedisCPUus))
		}
	}
	if b.Len() > 0 {
		b.WriteString(".\n")
	}
	return b.String()
}

const (
	resultsBegin = "<!-- bench:results:begin (written by tools/bench: cd tools && go run ./bench) -->"
	resultsEnd   = "<!-- bench:results:end -->"
)

// updateDoc replaces the block between the markers of the page at path.
func updateDoc(path, block string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, resultsBegin), strings.Index(s, resultsEnd)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %q ... %q block", path, resultsBegin, resultsEnd)
	}
	s = s[:i+len(resultsBegin)] + "\n" + block + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}

// chartLink is the chart's path as the page at doc links it: relative to
// the page's directory when the chart is inside the repository at root (so
// docs/benchmarks.md links ../tools/bench/results/chart.svg), else as given.
func chartLink(root, doc, chart string) string {
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	root, doc, chart = abs(root), abs(doc), abs(chart)
	if in, err := filepath.Rel(root, chart); err != nil || in == ".." || strings.HasPrefix(in, ".."+string(filepath.Separator)) {
		return filepath.ToSlash(chart)
	}
	rel, err := filepath.Rel(filepath.Dir(doc), chart)
	if err != nil {
		return filepath.ToSlash(chart)
	}
	return filepath.ToSlash(rel)
}
