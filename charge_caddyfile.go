package edgelimit

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/edgelimit/caddy-edgelimit/internal/args"
	"github.com/edgelimit/caddy-edgelimit/policy"
)

// parseCountResponses reads `count_responses [status <code|class>...]`, or
// `count_responses { status ...; header <field> <value> }`: Caddy's
// response matcher, as reverse_proxy's handle_response reads it. Without
// a condition every response counts.
func parseCountResponses(d *caddyfile.Dispenser, l *Limit) error {
	at := d.Token()
	matchers := map[string]caddyhttp.ResponseMatcher{}
	if err := caddyhttp.ParseNamedResponseMatcher(d.NewFromNextSegment(), matchers); err != nil {
		return err
	}
	m := matchers[at.Text]
	if err := policy.CheckRule(&policy.ResponseRule{Statuses: m.StatusCode}); err != nil {
		return args.ErrAt(at, "count_responses: %v", err)
	}
	l.CountResponses = &m
	return nil
}

// parseCost reads `cost <n>` or `cost header <field> [keep]`.
func parseCost(d *caddyfile.Dispenser, l *Limit) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	if d.Val() != "header" {
		d.Prev()
		n, err := args.Int(d)
		if err != nil {
			return err
		}
		if n < 1 {
			return d.Errf("cost must be at least 1, got %d", n)
		}
		l.Cost = n
		return nil
	}
	if !d.NextArg() {
		return d.Errf("cost header needs the name of the response header that says what a request cost")
	}
	l.CostHeader = d.Val()
	if d.NextArg() {
		if d.Val() != "keep" {
			return d.Errf("cost header %s: unexpected %q (want keep, to pass the header on to the client)", l.CostHeader, d.Val())
		}
		l.KeepCostHeader = true
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}
