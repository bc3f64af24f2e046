// Command dashboard draws the picture of the Grafana dashboard
// docs/grafana/edgelimit.json from a real run: it builds Caddy with this
// plugin (./cmd/caddy), starts it on loopback with edge_limit (memory, and
// Redis for one route) and edge_cache, with a redis-server and a
// Prometheus (Debian's prometheus) of its own scraping Caddy every second;
// it sends a bounded load from 38 clients, some of them over their
// limits, kills its redis-server for a while mid-run, then asks
// Prometheus for every query of the dashboard over the run
// (/api/v1/query_range, a point a second) and draws what Prometheus
// answered as one SVG: docs/grafana/dashboard.svg. Grafana need not run.
//
// From the tools module (cd tools):
//
//	go run ./dashboard [-duration 60s] [-range 15s] [-out docs/grafana/dashboard.svg]
//
// Its test (go test ./dashboard) runs the same stack and checks that
// Prometheus answers every query of the dashboard, as written.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/prometheus/common/model"
)

func main() {
	duration := flag.Duration("duration", 60*time.Second, "how long to drive load (Prometheus scrapes every second)")
	rng := flag.String("range", "15s", "the range of the dashboard's rate()s for this short run (the dashboard says 1m); empty keeps the dashboard's")
	dash := flag.String("dashboard", filepath.Join("docs", "grafana", "edgelimit.json"), "the Grafana dashboard whose queries are drawn, relative to the repository's root unless absolute")
	out := flag.String("out", filepath.Join("docs", "grafana", "dashboard.svg"), "the SVG to write, relative to the repository's root unless absolute")
	prom := flag.String("prometheus", "prometheus", "the prometheus binary (Debian: apt-get install prometheus)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *duration, *rng, *dash, *out, *prom)
	stop()
	if err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, duration time.Duration, rng, dashPath, outPath, prom string) error {
	if duration < 10*time.Second || duration > 10*time.Minute {
		return fmt.Errorf("duration %s: want 10s to 10m", duration)
	}
	root, err := pluginRoot()
	if err != nil {
		return err
	}
	if !filepath.IsAbs(dashPath) {
		dashPath = filepath.Join(root, dashPath)
	}
	if !filepath.IsAbs(outPath) {
		outPath = filepath.Join(root, outPath)
	}
	b, err := loadBoard(dashPath)
	if err != nil {
		return err
	}
	if _, err := exec.LookPath(prom); err != nil {
		return fmt.Errorf("%w (Debian: apt-get install prometheus)", err)
	}
	_, err = exec.LookPath("redis-server")
	withRedis := err == nil
	if !withRedis {
		log.Printf("no redis-server: /shared on the memory store, the Redis panels empty")
	}
	s, err := startStack(ctx, stackOptions{Redis: withRedis, Prometheus: prom, Logf: log.Printf})
	if err != nil {
		return err
	}
	defer s.close()

	log.Printf("load for %s on %s", duration, s.caddyBase)
	tr := drive(ctx, s.caddyBase, duration)
	defer tr.stop()
	var outage [2]float64
	if withRedis {
		// Redis goes away for a fifth of the run, mid-run.
		if err := sleep(ctx, tr.start.Add(duration*2/5)); err != nil {
			return err
		}
		log.Printf("killing redis-server")
		outage[0] = time.Since(tr.start).Seconds()
		s.stopRedis()
		if err := sleep(ctx, tr.start.Add(duration*3/5)); err != nil {
			return err
		}
		log.Printf("restarting redis-server")
		if err := s.startRedis(ctx); err != nil {
			return err
		}
		outage[1] = time.Since(tr.start).Seconds()
	}
	if err := sleep(ctx, tr.start.Add(duration)); err != nil {
		return err
	}
	tr.stop()
	end := time.Now()
	// Wait for a scrape after the load: the last requests counted.
	if _, err := s.await(ctx, "timestamp(up)", end.Add(30*time.Second), func(v model.Vector) bool {
		return float64(v[0].Value) > float64(end.UnixMilli())/1000
	}); err != nil {
		return err
	}
	end = time.Now()
	log.Printf("%s", tr)

	info, err := s.api.Buildinfo(ctx)
	if err != nil {
		return err
	}
	ch := chart{start: tr.start, end: end, outage: outage,
		subtitle: []string{
			fmt.Sprintf("A real Caddy (./cmd/caddy) on loopback, %.0f s of load from %d clients (%s), scraped every second by Prometheus %s.",
				duration.Seconds(), tr.clients, tr, info.Version),
			fmt.Sprintf("Every line is Prometheus's query_range answer to the dashboard's query, a point a second, rates over [%s].", rangeOr(rng)),
		}}
	if withRedis {
		ch.subtitle[1] += " The redis-server was killed over the shaded interval."
	}
	for _, p := range b.Panels {
		var ms []model.Matrix
		for _, t := range p.Targets {
			m, err := s.series(ctx, withRange(t.Expr, rng), tr.start, end, time.Second)
			if err != nil {
				return fmt.Errorf("panel %q: %w", p.Title, err)
			}
			ms = append(ms, m)
		}
		if !ch.addPanel(p, ms) {
			log.Printf("panel %q: Prometheus answered no series: left out", p.Title)
		}
	}
	if err := os.WriteFile(outPath, []byte(ch.svg()), 0o644); err != nil {
		return err
	}
	log.Printf("wrote %s", outPath)
	return nil
}

// sleep waits until t, or until ctx ends.
func sleep(ctx context.Context, t time.Time) error {
	select {
	case <-ctx.Done():
		return errors.Join(errors.New("interrupted"), ctx.Err())
	case <-time.After(time.Until(t)):
		return nil
	}
}

func rangeOr(r string) string {
	if r == "" {
		return "the dashboard's range"
	}
	return r
}
