package main

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// A small PromQL evaluator for the subset the dashboard uses: instant
// selectors with equality matchers, rate over a range, sum [by (...)],
// topk, histogram_quantile, numbers and division of vectors.

// sample is one series of one scrape.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// scrape is what /metrics said at one time.
type scrape struct {
	at      time.Time
	samples []sample
}

// series is one element of an instant vector.
type series struct {
	labels map[string]string
	value  float64
}

type node interface {
	eval(h []scrape, i int) []series
}

type selector struct {
	name     string
	matchers map[string]string
	rng      time.Duration // for rate
}

type rateNode struct{ sel *selector }

type sumNode struct {
	by  []string
	arg node
}

type topkNode struct {
	k   int
	arg node
}

type quantileNode struct {
	q   float64
	arg node
}

type divNode struct{ a, b node }

func labelKey(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q,", k, l[k])
	}
	return b.String()
}

func (s *selector) matches(x *sample) bool {
	if x.name != s.name {
		return false
	}
	for k, v := range s.matchers {
		if x.labels[k] != v {
			return false
		}
	}
	return true
}

// eval of a bare selector: the latest values.
func (s *selector) eval(h []scrape, i int) []series {
	var out []series
	for _, x := range h[i].samples {
		if s.matches(&x) {
			out = append(out, series{labels: x.labels, value: x.value})
		}
	}
	return out
}

// eval of rate: the increase between the first and the last sample in the
// range, counter resets accounted for, per second between them (no
// extrapolation to the range's edges).
func (r *rateNode) eval(h []scrape, i int) []series {
	type acc struct {
		labels         map[string]string
		first, last    time.Time
		prev, increase float64
		n              int
	}
	accs := map[string]*acc{}
	var order []string
	from := h[i].at.Add(-r.sel.rng)
	for j := 0; j <= i; j++ {
		if !h[j].at.After(from) {
			continue
		}
		for _, x := range h[j].samples {
			if !r.sel.matches(&x) {
				continue
			}
			k := labelKey(x.labels)
			a := accs[k]
			if a == nil {
				a = &acc{labels: x.labels, first: h[j].at, prev: x.value}
				accs[k] = a
				order = append(order, k)
			} else if x.value >= a.prev {
				a.increase += x.value - a.prev
			} else {
				a.increase += x.value
			}
			a.prev, a.last = x.value, h[j].at
			a.n++
		}
	}
	var out []series
	for _, k := range order {
		a := accs[k]
		if a.n < 2 {
			continue
		}
		out = append(out, series{labels: a.labels, value: a.increase / a.last.Sub(a.first).Seconds()})
	}
	return out
}

func (s *sumNode) eval(h []scrape, i int) []series {
	groups := map[string]*series{}
	var order []string
	for _, x := range s.arg.eval(h, i) {
		l := map[string]string{}
		for _, b := range s.by {
			if v, ok := x.labels[b]; ok {
				l[b] = v
			}
		}
		k := labelKey(l)
		g := groups[k]
		if g == nil {
			g = &series{labels: l}
			groups[k] = g
			order = append(order, k)
		}
		g.value += x.value
	}
	out := make([]series, 0, len(order))
	for _, k := range order {
		out = append(out, *groups[k])
	}
	return out
}

func (t *topkNode) eval(h []scrape, i int) []series {
	v := t.arg.eval(h, i)
	slices.SortStableFunc(v, func(a, b series) int {
		switch {
		case a.value > b.value:
			return -1
		case a.value < b.value:
			return 1
		}
		return 0
	})
	return v[:min(t.k, len(v))]
}

// eval of histogram_quantile, as Prometheus computes it: linear
// interpolation within the bucket the rank falls in.
func (q *quantileNode) eval(h []scrape, i int) []series {
	type bucket struct{ le, count float64 }
	groups := map[string][]bucket{}
	labels := map[string]map[string]string{}
	var order []string
	for _, x := range q.arg.eval(h, i) {
		le, err := strconv.ParseFloat(x.labels["le"], 64)
		if err != nil {
			continue
		}
		l := map[string]string{}
		for k, v := range x.labels {
			if k != "le" {
				l[k] = v
			}
		}
		k := labelKey(l)
		if _, ok := groups[k]; !ok {
			order = append(order, k)
			labels[k] = l
		}
		groups[k] = append(groups[k], bucket{le, x.value})
	}
	var out []series
	for _, k := range order {
		b := groups[k]
		sort.Slice(b, func(i, j int) bool { return b[i].le < b[j].le })
		if len(b) < 2 || !math.IsInf(b[len(b)-1].le, 1) {
			continue
		}
		total := b[len(b)-1].count
		if total <= 0 {
			continue
		}
		rank := q.q * total
		j := sort.Search(len(b), func(j int) bool { return b[j].count >= rank })
		var v float64
		switch {
		case j == len(b)-1:
			v = b[len(b)-2].le
		default:
			lo, below := 0.0, 0.0
			if j > 0 {
				lo, below = b[j-1].le, b[j-1].count
			}
			in := b[j].count - below
			if in <= 0 {
				v = b[j].le
			} else {
				v = lo + (b[j].le-lo)*(rank-below)/in
			}
		}
		out = append(out, series{labels: labels[k], value: v})
	}
	return out
}

func (d *divNode) eval(h []scrape, i int) []series {
	den := map[string]float64{}
	for _, x := range d.b.eval(h, i) {
		den[labelKey(x.labels)] = x.value
	}
	var out []series
	for _, x := range d.a.eval(h, i) {
		if v, ok := den[labelKey(x.labels)]; ok && v != 0 {
			out = append(out, series{labels: x.labels, value: x.value / v})
		}
	}
	return out
}

// parse reads an expression of the subset.
func parse(expr string) (node, error) {
	p := &parser{s: expr}
	n, err := p.expr()
	if err != nil {
		return nil, fmt.Errorf("%q: %w", expr, err)
	}
	p.space()
	if p.i != len(p.s) {
		return nil, fmt.Errorf("%q: unexpected %q", expr, p.s[p.i:])
	}
	return n, nil
}

type parser struct {
	s string
	i int
}

func (p *parser) space() {
	for p.i < len(p.s) && p.s[p.i] == ' ' {
		p.i++
	}
}

func (p *parser) eat(tok string) bool {
	p.space()
	if strings.HasPrefix(p.s[p.i:], tok) {
		p.i += len(tok)
		return true
	}
	return false
}

func (p *parser) want(tok string) error {
	if !p.eat(tok) {
		return fmt.Errorf("want %q at %q", tok, p.s[p.i:])
	}
	return nil
}

func (p *parser) ident() string {
	p.space()
	j := p.i
	for j < len(p.s) && (p.s[j] == '_' || p.s[j] >= 'a' && p.s[j] <= 'z' || p.s[j] >= 'A' && p.s[j] <= 'Z' || p.s[j] >= '0' && p.s[j] <= '9' && j > p.i) {
		j++
	}
	id := p.s[p.i:j]
	p.i = j
	return id
}

func (p *parser) number() (float64, error) {
	p.space()
	j := p.i
	for j < len(p.s) && strings.IndexByte("0123456789.", p.s[j]) >= 0 {
		j++
	}
	v, err := strconv.ParseFloat(p.s[p.i:j], 64)
	p.i = j
	return v, err
}

func (p *parser) expr() (node, error) {
	a, err := p.term()
	if err != nil {
		return nil, err
	}
	if p.eat("/") {
		b, err := p.term()
		if err != nil {
			return nil, err
		}
		return &divNode{a, b}, nil
	}
	return a, nil
}

func (p *parser) term() (node, error) {
	id := p.ident()
	switch id {
	case "sum":
		var by []string
		if p.eat("by") {
			if err := p.want("("); err != nil {
				return nil, err
			}
			for {
				by = append(by, p.ident())
				if !p.eat(",") {
					break
				}
			}
			if err := p.want(")"); err != nil {
				return nil, err
			}
		}
		arg, err := p.paren()
		return &sumNode{by: by, arg: arg}, err
	case "rate":
		if err := p.want("("); err != nil {
			return nil, err
		}
		sel, err := p.selector(p.ident())
		if err != nil {
			return nil, err
		}
		if sel.rng == 0 {
			return nil, fmt.Errorf("rate without a range")
		}
		return &rateNode{sel}, p.want(")")
	case "topk", "histogram_quantile":
		if err := p.want("("); err != nil {
			return nil, err
		}
		v, err := p.number()
		if err != nil {
			return nil, err
		}
		if err := p.want(","); err != nil {
			return nil, err
		}
		arg, err := p.expr()
		if err != nil {
			return nil, err
		}
		if err := p.want(")"); err != nil {
			return nil, err
		}
		if id == "topk" {
			return &topkNode{k: int(v), arg: arg}, nil
		}
		return &quantileNode{q: v, arg: arg}, nil
	case "":
		return nil, fmt.Errorf("want an expression at %q", p.s[p.i:])
	}
	return p.selector(id)
}

func (p *parser) paren() (node, error) {
	if err := p.want("("); err != nil {
		return nil, err
	}
	n, err := p.expr()
	if err != nil {
		return nil, err
	}
	return n, p.want(")")
}

func (p *parser) selector(name string) (*selector, error) {
	s := &selector{name: name, matchers: map[string]string{}}
	if p.eat("{") {
		for !p.eat("}") {
			k := p.ident()
			if err := p.want("="); err != nil {
				return nil, err
			}
			if err := p.want(`"`); err != nil {
				return nil, err
			}
			j := strings.IndexByte(p.s[p.i:], '"')
			if j < 0 {
				return nil, fmt.Errorf("unterminated string")
			}
			s.matchers[k] = p.s[p.i : p.i+j]
			p.i += j + 1
			p.eat(",")
		}
	}
	if p.eat("[") {
		j := strings.IndexByte(p.s[p.i:], ']')
		if j < 0 {
			return nil, fmt.Errorf("unterminated range")
		}
		d, err := time.ParseDuration(p.s[p.i : p.i+j])
		if err != nil {
			return nil, err
		}
		s.rng = d
		p.i += j + 1
	}
	return s, nil
}
