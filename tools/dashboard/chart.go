package main

import (
	"fmt"
	"html"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/common/model"
)

// chart draws the dashboard's panels from Prometheus's query_range
// answers, as Grafana's dark theme would, roughly.
type chart struct {
	start, end time.Time
	outage     [2]float64 // seconds since start; zero when Redis stayed up
	subtitle   []string   // lines under the title
	panels     []drawn
	missing    []string // panels left out: Prometheus had no series for them
}

type line struct {
	name   string
	xs, ys []float64
}

type drawn struct {
	title, unit string
	log         bool
	lines       []line
}

// addPanel adds a panel whose targets' query_range answers are ms (one
// matrix per target); a panel without a single sample is left out, and
// named in a note. It reports whether the panel was drawn.
func (c *chart) addPanel(p panel, ms []model.Matrix) bool {
	d := drawn{title: p.Title, unit: p.FieldConfig.Defaults.Unit,
		log: p.FieldConfig.Defaults.Custom.ScaleDistribution.Type == "log"}
	for t, m := range ms {
		for _, ss := range m {
			labels := map[string]string{}
			for k, v := range ss.Metric {
				labels[string(k)] = string(v)
			}
			l := line{name: legend(p.Targets[t].LegendFormat, labels, ss.Metric.String())}
			for _, v := range ss.Values {
				f := float64(v.Value)
				if math.IsNaN(f) || math.IsInf(f, 0) {
					continue
				}
				l.xs = append(l.xs, v.Timestamp.Time().Sub(c.start).Seconds())
				l.ys = append(l.ys, f)
			}
			if len(l.xs) > 0 {
				d.lines = append(d.lines, l)
			}
		}
	}
	if len(d.lines) == 0 {
		var names []string
		for _, t := range p.Targets {
			for _, n := range metricRe.FindAllString(t.Expr, -1) {
				if !slices.Contains(names, n) {
					names = append(names, n)
				}
			}
		}
		c.missing = append(c.missing, fmt.Sprintf("%s: no %s series", p.Title, strings.Join(names, ", ")))
		return false
	}
	c.panels = append(c.panels, d)
	return true
}

var metricRe = regexp.MustCompile(`caddy_[a-z_]+`)

// Grafana's classic palette.
var palette = []string{"#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9", "#FF9830", "#37872D", "#E0B400"}

func colorFor(name string, i int) string {
	switch {
	case strings.HasSuffix(name, " allowed"):
		return []string{"#73BF69", "#37872D", "#96D98D", "#56A64B"}[i%4]
	case strings.HasSuffix(name, " denied"):
		return []string{"#F2495C", "#FF7383", "#C4162A", "#FF9830"}[i%4]
	}
	return palette[i%len(palette)]
}

const (
	width    = 1400
	colW     = 680
	gap      = 13
	panelH   = 360
	headerH  = 52 // the title; and 18 a subtitle line
	plotL    = 70 // left margin inside a panel, for the y labels
	plotR    = 20
	plotT    = 38
	legendH  = 92
	xLabelsH = 34
)

func (c *chart) svg() string {
	cells := len(c.panels)
	if len(c.missing) > 0 {
		cells++
	}
	rows := (cells + 1) / 2
	top := headerH + 18*len(c.subtitle)
	height := top + rows*(panelH+gap) + gap
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Inter, Helvetica, Arial, sans-serif">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="#111217"/>`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="%d" y="32" fill="#ccccdc" font-size="22" font-weight="600">edgelimit: rate limits, storage and cache</text>`+"\n", gap)
	for i, l := range c.subtitle {
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#8e8e8e" font-size="13">%s</text>`+"\n", gap, 56+18*i, html.EscapeString(l))
	}
	for i, p := range c.panels {
		x := gap + (i%2)*(colW+gap)
		y := top + (i/2)*(panelH+gap)
		c.drawPanel(&b, p, x, y)
	}
	if len(c.missing) > 0 {
		i := len(c.panels)
		x := gap + (i%2)*(colW+gap)
		y := top + (i/2)*(panelH+gap)
		fmt.Fprintf(&b, `<g transform="translate(%d,%d)"><rect width="%d" height="%d" rx="3" fill="#181b1f" stroke="#2c3235"/>`, x, y, colW, panelH)
		fmt.Fprintf(&b, `<text x="10" y="22" fill="#ccccdc" font-size="15" font-weight="600">Panels not drawn</text>`)
		for j, m := range c.missing {
			fmt.Fprintf(&b, `<text x="10" y="%d" fill="#8e8e8e" font-size="12">%s</text>`, 50+j*18, html.EscapeString(m))
		}
		fmt.Fprintf(&b, `<text x="10" y="%d" fill="#8e8e8e" font-size="12">(Prometheus answered no series for their queries)</text></g>`+"\n", 50+len(c.missing)*18)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func (c *chart) drawPanel(b *strings.Builder, p drawn, px, py int) {
	fmt.Fprintf(b, `<g transform="translate(%d,%d)">`+"\n", px, py)
	fmt.Fprintf(b, `<rect width="%d" height="%d" rx="3" fill="#181b1f" stroke="#2c3235"/>`+"\n", colW, panelH)
	fmt.Fprintf(b, `<text x="10" y="22" fill="#ccccdc" font-size="15" font-weight="600">%s</text>`+"\n", html.EscapeString(p.title))
	w := colW - plotL - plotR
	h := panelH - plotT - xLabelsH - legendH
	tmax := c.end.Sub(c.start).Seconds()
	xOf := func(t float64) float64 { return plotL + t/tmax*float64(w) }

	lo, hi := math.Inf(1), math.Inf(-1)
	for _, l := range p.lines {
		for _, v := range l.ys {
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	var ticks []float64
	var yOf func(v float64) float64
	if p.log {
		lo = math.Pow(10, math.Floor(math.Log10(math.Max(lo, 1e-9))))
		hi = math.Pow(10, math.Ceil(math.Log10(math.Max(hi, lo*10))))
		for v := lo; v <= hi*1.0001; v *= 10 {
			ticks = append(ticks, v)
		}
		yOf = func(v float64) float64 {
			v = math.Max(v, lo)
			return plotT + float64(h)*(1-(math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo)))
		}
	} else {
		if p.unit == "percentunit" {
			hi = 1
		}
		ticks = niceTicks(hi)
		top := ticks[len(ticks)-1]
		yOf = func(v float64) float64 { return plotT + float64(h)*(1-v/top) }
	}
	// The Redis outage.
	if c.outage[0] > 0 {
		x0, x1 := xOf(c.outage[0]), xOf(math.Min(c.outage[1], tmax))
		fmt.Fprintf(b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="#F2495C" fill-opacity="0.12"/>`+"\n", x0, plotT, x1-x0, h)
		fmt.Fprintf(b, `<text x="%.1f" y="%d" fill="#F2495C" fill-opacity="0.8" font-size="11">Redis down</text>`+"\n", x0+4, plotT+12)
	}
	for _, t := range ticks {
		y := yOf(t)
		fmt.Fprintf(b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#2c3235"/>`+"\n", plotL, plotL+w, y, y)
		fmt.Fprintf(b, `<text x="%d" y="%.1f" fill="#8e8e8e" font-size="11" text-anchor="end">%s</text>`+"\n", plotL-6, y+4, formatValue(t, p.unit))
	}
	for t := 0.0; t <= tmax; t += 10 {
		x := xOf(t)
		fmt.Fprintf(b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#2c3235"/>`+"\n", x, x, plotT, plotT+h)
		fmt.Fprintf(b, `<text x="%.1f" y="%d" fill="#8e8e8e" font-size="11" text-anchor="middle">%ds</text>`+"\n", x, plotT+h+15, int(t))
	}
	fmt.Fprintf(b, `<text x="%d" y="%d" fill="#8e8e8e" font-size="11" text-anchor="middle">time since the load started</text>`+"\n", plotL+w/2, plotT+h+29)
	fmt.Fprintf(b, `<text transform="translate(14,%d) rotate(-90)" fill="#8e8e8e" font-size="11" text-anchor="middle">%s</text>`+"\n", plotT+h/2, unitName(p.unit))
	for i, l := range p.lines {
		var pts []string
		for j := range l.xs {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", xOf(l.xs[j]), yOf(l.ys[j])))
		}
		col := colorFor(l.name, i)
		if len(pts) == 1 {
			fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"/>`+"\n", xOf(l.xs[0]), yOf(l.ys[0]), col)
		}
		fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", col, strings.Join(pts, " "))
	}
	// Legend: a table of name, last and max, in two columns.
	ly := plotT + h + xLabelsH + 14
	fmt.Fprintf(b, `<text x="%d" y="%d" fill="#8e8e8e" font-size="11">series</text>`, 10, ly)
	for col := 0; col < 2 && col*5 < len(p.lines); col++ {
		fmt.Fprintf(b, `<text x="%d" y="%d" fill="#8e8e8e" font-size="11" text-anchor="end">last / max</text>`+"\n", 10+col*330+320, ly)
	}
	for i, l := range p.lines {
		if i >= 10 {
			fmt.Fprintf(b, `<text x="%d" y="%d" fill="#8e8e8e" font-size="11">… %d more</text>`+"\n", 340, ly+15*6, len(p.lines)-10)
			break
		}
		lx, row := 10+(i/5)*330, ly+15*(i%5+1)
		last, mx := l.ys[len(l.ys)-1], l.ys[0]
		for _, v := range l.ys {
			mx = math.Max(mx, v)
		}
		fmt.Fprintf(b, `<rect x="%d" y="%d" width="14" height="4" fill="%s"/>`, lx, row-6, colorFor(l.name, i))
		fmt.Fprintf(b, `<text x="%d" y="%d" fill="#ccccdc" font-size="12">%s</text>`, lx+20, row, html.EscapeString(l.name))
		fmt.Fprintf(b, `<text x="%d" y="%d" fill="#ccccdc" font-size="12" text-anchor="end">%s / %s</text>`+"\n", lx+320, row,
			formatValue(last, p.unit), formatValue(mx, p.unit))
	}
	b.WriteString("</g>\n")
}

// niceTicks returns 0 and four or five round steps up to at least hi.
func niceTicks(hi float64) []float64 {
	if hi <= 0 || math.IsInf(hi, 0) {
		hi = 1
	}
	raw := hi / 4
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag * 10
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var t []float64
	for v := 0.0; v < hi+step*0.999; v += step {
		t = append(t, v)
	}
	return t
}

func unitName(unit string) string {
	switch unit {
	case "reqps":
		return "requests / s"
	case "ops":
		return "per second"
	case "s":
		return "seconds (log scale)"
	case "percentunit":
		return "ratio"
	}
	return "count"
}

func formatValue(v float64, unit string) string {
	switch unit {
	case "s":
		switch {
		case v == 0:
			return "0"
		case v < 1e-6:
			return trim(v*1e9) + " ns"
		case v < 1e-3:
			return trim(v*1e6) + " µs"
		case v < 1:
			return trim(v*1e3) + " ms"
		}
		return trim(v) + " s"
	case "percentunit":
		return trim(v*100) + "%"
	}
	switch {
	case math.Abs(v) >= 1e6:
		return trim(v/1e6) + "M"
	case math.Abs(v) >= 1e4:
		return trim(v/1e3) + "k"
	}
	return trim(v)
}

func trim(v float64) string {
	s := fmt.Sprintf("%.1f", v)
	if math.Abs(v) >= 100 {
		s = fmt.Sprintf("%.0f", v)
	}
	return strings.TrimSuffix(s, ".0")
}
