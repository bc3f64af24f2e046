package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"strconv"
	"strings"
)

func xmlText(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// chart is a horizontal bar chart of each configuration's median
// requests/s, with the min-max range of the rounds as a whisker, the ratio
// to plain Caddy, and a line at plain Caddy's median.
func (r *results) chart() []byte {
	const (
		width  = 960
		left   = 250 // labels
		barW   = 500 // the longest whisker
		rowH   = 38
		top    = 64
		barH   = 22
		bottom = 58
	)
	n := len(r.Configs)
	height := top + n*rowH + bottom
	maxRPS := 0.0
	for _, s := range r.Configs {
		maxRPS = math.Max(maxRPS, s.RPSMax)
	}
	if maxRPS <= 0 {
		maxRPS = 1
	}
	// A round scale: 5 gridlines.
	step := math.Pow(10, math.Floor(math.Log10(maxRPS/5)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if maxRPS/(step*m) <= 6 {
			step *= m
			break
		}
	}
	scaleMax := math.Ceil(maxRPS/step) * step
	x := func(v float64) float64 { return left + v/scaleMax*barW }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif" font-size="13">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="#ffffff"/>`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="16" y="24" font-size="16" font-weight="bold">edgelimit: requests/s through Caddy on loopback (median over %d rounds, whisker min-max)</text>`+"\n", r.Settings.Rounds)
	fmt.Fprintf(&b, `<text x="16" y="44" fill="#555">%s</text>`+"\n", xmlText(r.Machine.CPU+", "+strconv.Itoa(r.Machine.Cores)+" cores, "+r.Machine.Go+", "+r.Date))
	for v := 0.0; v <= scaleMax+step/2; v += step {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e4e4e4"/>`+"\n", x(v), top-6, x(v), top+n*rowH)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%s</text>`+"\n", x(v), top+n*rowH+16, thousands(v))
	}
	for i, s := range r.Configs {
		y := top + i*rowH
		color := "#4a7ab8"
		switch {
		case s.Name == "plain":
			color = "#8a8a8a"
		case s.Name == "deny":
			color = "#c0504d"
		case s.Name == "proxy" || s.Name == "cache-hit":
			color = "#4f9a6a"
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end" font-weight="bold">%s</text>`+"\n", left-10, y+barH/2, xmlText(s.Name))
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end" fill="#555" font-size="11">%s</text>`+"\n", left-10, y+barH/2+13, xmlText(s.Title))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", left, y, x(s.RPS)-left, barH, color)
		mid := y + barH/2
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#222" stroke-width="1.5"/>`+"\n", x(s.RPSMin), mid, x(s.RPSMax), mid)
		for _, v := range []float64{s.RPSMin, s.RPSMax} {
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#222" stroke-width="1.5"/>`+"\n", x(v), mid-6, x(v), mid+6)
		}
		label := thousands(s.RPS) + "/s"
		if s.Ratio != nil && s.Name != "plain" {
			label += fmt.Sprintf(" · %.2f x plain", *s.Ratio)
		}
		if s.Name == "deny" {
			label += fmt.Sprintf(" · %.0f%% 429", 100*s.DeniedShare)
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d">%s</text>`+"\n", x(math.Max(s.RPSMax, s.RPS))+8, mid+4, xmlText(label))
	}
	if p := r.config("plain"); p != nil {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#333" stroke-dasharray="4 3"/>`+"\n", x(p.RPS), top-6, x(p.RPS), top+n*rowH)
	}
	fmt.Fprintf(&b, `<text x="16" y="%d" fill="#555" font-size="11">%s</text>`+"\n", height-22, xmlText(r.settingsLine()))
	fmt.Fprintf(&b, `<text x="16" y="%d" fill="#555" font-size="11">dashed: plain Caddy (respond "ok"), the ceiling; x plain: median ratio to the plain runs just before and after. tools/bench; commit %s.</text>`+"\n", height-8, xmlText(r.Machine.Commit))
	b.WriteString("</svg>\n")
	return []byte(b.String())
}
