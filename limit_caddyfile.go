package edgelimit

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/edgelimit/caddy-edgelimit/internal/args"
	"github.com/edgelimit/caddy-edgelimit/policy"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// parseLimitBlock reads `limit <name> { ... }` or `quota <name> { ... }`;
// the dispenser is on "limit" or "quota".
func parseLimitBlock(d *caddyfile.Dispenser) (*Limit, error) {
	at := d.Token()
	quota := d.Val() == "quota"
	if !d.NextArg() {
		return nil, d.Errf("%s needs a name", at.Text)
	}
	l := &Limit{Name: d.Val()}
	if err := policy.CheckName(l.Name); err != nil {
		return nil, d.Err(err.Error())
	}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	np := numbersParser{seen: map[string]bool{}}
	var tierLines [][]caddyfile.Token
	var qs quotaSpec
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("%s %q: %q given twice", at.Text, l.Name, opt)
		}
		seen[opt] = true
		if ok, err := commonOption(d, l); ok || err != nil {
			if err != nil {
				return nil, err
			}
			continue
		}
		if quota {
			switch opt {
			case "limit":
				if err := qs.parseLimit(d); err != nil {
					return nil, err
				}
			case "reset":
				if err := qs.parseReset(d); err != nil {
					return nil, err
				}
			default:
				return nil, d.Errf("unknown option %q in quota %q", opt, l.Name)
			}
			continue
		}
		if opt == "tier" {
			lines, err := parseTierBlock(d, l)
			if err != nil {
				return nil, err
			}
			tierLines = lines
			continue
		}
		ok, err := np.option(d, &l.Numbers)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, d.Errf("unknown option %q in limit %q%s", opt, l.Name, unknownHint(opt, limitOptions))
		}
	}
	if quota {
		if err := qs.settle(l); err != nil {
			return nil, args.ErrAt(at, "quota %q: %v", l.Name, err)
		}
	} else {
		if len(tierLines) > 0 && !np.hasAlgorithm() {
			// Only tiers have numbers: compileLimit checks that clients in
			// no known tier get the default tier's.
		} else if err := np.settle(&l.Numbers); err != nil {
			return nil, args.ErrAt(at, "limit %q: %v", l.Name, err)
		}
		if err := parseTierLines(tierLines, l, np.window); err != nil {
			return nil, err
		}
	}
	if _, err := compileLimit(l, "check"); err != nil {
		return nil, args.ErrAt(at, "%s %q: %v", at.Text, l.Name, err)
	}
	return l, nil
}

// commonOption reads the options limits and quotas share; it reports
// whether it knew the option.
func commonOption(d *caddyfile.Dispenser, l *Limit) (bool, error) {
	switch d.Val() {
	case "key":
		l.Key = d.RemainingArgs()
		if len(l.Key) == 0 {
			return true, d.ArgErr()
		}
		for _, k := range l.Key {
			if _, err := parseKeyPart(k); err != nil {
				return true, d.Errf("key %q: %v", k, err)
			}
		}
	case "cost":
		return true, parseCost(d, l)
	case "count_responses":
		return true, parseCountResponses(d, l)
	case "ipv6_prefix":
		n, err := args.Int(d)
		if err != nil {
			return true, err
		}
		if n < 1 || n > 128 {
			return true, d.Errf("ipv6_prefix %d: want a prefix length from 1 to 128", n)
		}
		l.IPv6Prefix = int(n)
	case "scope":
		v, err := args.One(d)
		if err != nil {
			return true, err
		}
		if err := checkScope(v); err != nil {
			return true, d.Err(err.Error())
		}
		l.Scope = v
	case "exempt":
		l.Exempt = d.RemainingArgs()
		if len(l.Exempt) == 0 {
			return true, d.ArgErr()
		}
		for _, e := range l.Exempt {
			if err := policy.CheckName(e); err != nil {
				return true, d.Errf("exempt: %v", err)
			}
		}
	case "status":
		n, err := args.Int(d)
		if err != nil {
			return true, err
		}
		if err := checkStatus(n); err != nil {
			return true, d.Err(err.Error())
		}
		l.Status = int(n)
	case "body":
		v, err := args.One(d)
		if err != nil {
			return true, err
		}
		l.Body = v
	case "dry_run":
		if err := args.None(d); err != nil {
			return true, err
		}
		l.DryRun = true
	case "ban":
		dur, err := args.Duration(d)
		if err != nil {
			return true, err
		}
		if err := policy.CheckBan(dur); err != nil {
			return true, d.Err(err.Error())
		}
		l.Ban = caddy.Duration(dur)
	case "wait":
		return true, parseWait(d, l)
	case "sync":
		dur, err := args.Duration(d)
		if err != nil {
			return true, err
		}
		if dur < store.MinSync || dur > store.MaxSync {
			return true, d.Errf("sync %s: want an interval from %s to %s", dur, store.MinSync, store.MaxSync)
		}
		l.Sync = caddy.Duration(dur)
	default:
		return false, nil
	}
	return true, nil
}

// numbersParser reads the options that give a limit (or a tier) its
// algorithm and numbers.
type numbersParser struct {
	window   string // fixed, anchored or sliding, for rate
	gcra     bool
	gcraRate bool // gcra gave its own rate
	seen     map[string]bool
}

// option reads one numbers option; it reports whether it knew it.
func (p *numbersParser) option(d *caddyfile.Dispenser, n *Numbers) (bool, error) {
	opt := d.Val()
	switch opt {
	case "rate":
		count, dur, err := rateArg(d)
		if err != nil {
			return true, err
		}
		if d.NextArg() {
			return true, d.ArgErr()
		}
		n.Limit, n.Window = count, caddy.Duration(dur)
	case "window":
		v, err := args.One(d)
		if err != nil {
			return true, err
		}
		switch v {
		case "fixed", "aligned", "anchored", "sliding":
		default:
			hint := ""
			if _, err := caddy.ParseDuration(v); err == nil {
				hint = ratelimitHint("window") // a length, as caddy-ratelimit's window takes
			}
			return true, d.Errf("window %q: want fixed, anchored or sliding%s", v, hint)
		}
		p.window = v
	case "token_bucket":
		if err := tokenBucketLine(d, n); err != nil {
			return true, err
		}
	case "gcra":
		p.gcra = true
		if err := p.gcraLine(d, n); err != nil {
			return true, err
		}
	case "burst":
		if err := p.burst(d, n); err != nil {
			return true, err
		}
	case "offset":
		dur, err := args.Duration(d)
		if err != nil {
			return true, err
		}
		n.Offset = caddy.Duration(dur)
	case "split":
		dur, err := args.Duration(d)
		if err != nil {
			return true, err
		}
		n.Split = caddy.Duration(dur)
	case "quota":
		if err := parseQuotaLine(d, n); err != nil {
			return true, err
		}
	default:
		return false, nil
	}
	p.seen[opt] = true
	return true, nil
}

// tokenBucketLine reads `token_bucket <capacity> <n>/<duration>`.
func tokenBucketLine(d *caddyfile.Dispenser, n *Numbers) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	capacity, err := strconv.ParseInt(d.Val(), 10, 64)
	if err != nil {
		return d.Errf("token_bucket capacity %q is not a whole number", d.Val())
	}
	if capacity < 1 {
		return d.Errf("token_bucket capacity must be at least 1, got %d", capacity)
	}
	count, dur, err := rateArg(d)
	if err != nil {
		return err
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	n.Algorithm = "token_bucket"
	n.Limit, n.Refill, n.Window = capacity, count, caddy.Duration(dur)
	return nil
}

// gcraLine reads `gcra [<n>/<duration>] [burst <n>]`.
func (p *numbersParser) gcraLine(d *caddyfile.Dispenser, n *Numbers) error {
	if !d.NextArg() {
		return nil
	}
	d.Prev()
	if d.NextArg() && d.Val() != "burst" {
		count, dur, err := rateArgHere(d)
		if err != nil {
			return err
		}
		n.Refill, n.Window = count, caddy.Duration(dur)
		p.gcraRate = true
	} else {
		d.Prev()
	}
	if !d.NextArg() {
		return nil
	}
	if d.Val() != "burst" {
		return d.ArgErr()
	}
	return p.burst(d, n)
}

func (p *numbersParser) hasAlgorithm() bool {
	return p.seen["rate"] || p.seen["token_bucket"] || p.seen["gcra"] || p.seen["quota"]
}

func (p *numbersParser) burst(d *caddyfile.Dispenser, n *Numbers) error {
	b, err := args.Int(d)
	if err != nil {
		return err
	}
	if b < 1 {
		return d.Errf("burst must be at least 1, got %d", b)
	}
	p.seen["burst"] = true
	n.Limit = b
	return nil
}

// settle resolves the algorithm from the options given together.
func (p *numbersParser) settle(n *Numbers) error {
	seen := p.seen
	algos := 0
	for _, o := range []string{"rate", "token_bucket", "quota"} {
		if seen[o] {
			algos++
		}
	}
	if seen["gcra"] && !seen["rate"] {
		algos++
	}
	switch {
	case algos == 0:
		return errors.New("no algorithm: give rate, token_bucket, gcra or quota")
	case algos > 1:
		return errors.New("give only one of rate, token_bucket, gcra and quota")
	}
	if p.window != "" && !seen["rate"] {
		return fmt.Errorf("window %s goes with rate", p.window)
	}
	if p.gcraRate && seen["rate"] {
		return errors.New("gcra has a rate of its own: give only one of rate and gcra <n>/<duration>")
	}
	if seen["burst"] && !p.gcra {
		return errors.New("burst goes with gcra (a token bucket's burst is its capacity)")
	}
	switch {
	case p.gcra:
		if p.window != "" {
			return errors.New("gcra takes no window")
		}
		if seen["rate"] {
			// rate n/d with gcra: n per d, evenly spaced.
			n.Refill = n.Limit
		}
		if !seen["burst"] {
			n.Limit = n.Refill
		}
		n.Algorithm = "gcra"
	case p.window == "anchored":
		n.Algorithm = "anchored_window"
	case p.window == "sliding":
		n.Algorithm = "sliding_window"
	case seen["rate"]:
		n.Algorithm = "fixed_window"
	}
	return nil
}

// parseTierBlock reads `tier <placeholder> { <tier> <numbers...>; default
// <tier> }`; it returns the tier lines, parsed once the limit's own window
// mode is known.
func parseTierBlock(d *caddyfile.Dispenser, l *Limit) ([][]caddyfile.Token, error) {
	if !d.NextArg() {
		return nil, d.Errf("tier needs the placeholder that names the client's tier")
	}
	l.Tier = d.Val()
	if _, err := parseKeyPart(l.Tier); err != nil {
		return nil, d.Errf("tier %q: %v", l.Tier, err)
	}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	var lines [][]caddyfile.Token
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if d.Val() == "default" {
			v, err := args.One(d)
			if err != nil {
				return nil, err
			}
			l.DefaultTier = v
			continue
		}
		line := append([]caddyfile.Token{d.Token()}, d.RemainingArgsAsTokens()...)
		if len(line) < 2 {
			return nil, d.Errf("tier %q needs numbers: rate, token_bucket, gcra or quota", d.Val())
		}
		lines = append(lines, line)
	}
	if len(lines) == 0 {
		return nil, d.Err("tier block declares no tiers")
	}
	return lines, nil
}

// parseTierLines gives each tier its numbers, in the limit's window mode,
// offset and split.
func parseTierLines(lines [][]caddyfile.Token, l *Limit, window string) error {
	for _, line := range lines {
		name := line[0].Text
		if err := policy.CheckName(name); err != nil {
			return args.ErrAt(line[0], "tier: %v", err)
		}
		if _, dup := l.Tiers[name]; dup {
			return args.ErrAt(line[0], "tier %q is declared twice", name)
		}
		nd := caddyfile.NewDispenser(line[1:])
		nd.Next()
		np := numbersParser{window: window, seen: map[string]bool{}}
		n := &Numbers{Offset: l.Offset, Split: l.Split}
		ok, err := np.option(nd, n)
		if err != nil {
			return err
		}
		if !ok {
			return args.ErrAt(line[1], "tier %q: %q is not rate, token_bucket, gcra or quota", name, line[1].Text)
		}
		if err := np.settle(n); err != nil {
			return args.ErrAt(line[0], "tier %q: %v", name, err)
		}
		if n.Calendar != nil {
			n.Offset, n.Split = 0, 0
		}
		if l.Tiers == nil {
			l.Tiers = map[string]*Numbers{}
		}
		l.Tiers[name] = n
	}
	return nil
}

// rateArg reads <n>/<duration> (or <n>/s, /m, /h, /d for one unit).
func rateArg(d *caddyfile.Dispenser) (int64, time.Duration, error) {
	if !d.NextArg() {
		return 0, 0, d.ArgErr()
	}
	return rateArgHere(d)
}

// rateArgHere reads the current argument as <n>/<duration>.
func rateArgHere(d *caddyfile.Dispenser) (int64, time.Duration, error) {
	val := d.Val()
	count, per, ok := strings.Cut(val, "/")
	if !ok {
		return 0, 0, d.Errf("rate %q: want <count>/<duration>, such as 5/1m", val)
	}
	n, err := strconv.ParseInt(count, 10, 64)
	if err != nil {
		return 0, 0, d.Errf("rate %q: count %q is not a whole number", val, count)
	}
	if n < 1 {
		return 0, 0, d.Errf("rate %q: the count must be at least 1", val)
	}
	switch per {
	case "s", "m", "h", "d":
		per = "1" + per
	}
	dur, err := caddy.ParseDuration(per)
	if err != nil {
		return 0, 0, d.Errf("rate %q: bad duration %q (use forms like 10s, 1m, 1h, 1d)", val, per)
	}
	if dur <= 0 {
		return 0, 0, d.Errf("rate %q: the duration must be positive", val)
	}
	return n, dur, nil
}

// parseWait reads `wait <duration> [max <n>]`.
func parseWait(d *caddyfile.Dispenser, l *Limit) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	dur, err := caddy.ParseDuration(d.Val())
	if err != nil {
		return d.Errf("bad duration %q: %v", d.Val(), err)
	}
	if err := policy.CheckWait(dur); err != nil {
		return d.Err(err.Error())
	}
	l.Wait = caddy.Duration(dur)
	if !d.NextArg() {
		return nil
	}
	if d.Val() != "max" {
		return d.Errf("wait: unexpected %q (want max <n>)", d.Val())
	}
	n, err := args.Int(d)
	if err != nil {
		return err
	}
	if err := policy.CheckWaitMax(n); err != nil {
		return d.Err(err.Error())
	}
	l.WaitMax = int(n)
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}
