package edgelimit

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("edge_limit", parseHandlerDirective)
	// After authentication, so that {http.auth.user.id} is known; before
	// everything that answers or proxies. Plugins may only be ordered
	// against standard directives.
	httpcaddyfile.RegisterDirectiveOrder("edge_limit", httpcaddyfile.After, "forward_auth")
	httpcaddyfile.RegisterDirectiveOrder("edge_cache", httpcaddyfile.After, "forward_auth")
	httpcaddyfile.RegisterGlobalOption("edge_limit", parseGlobalOption)
}

// parseHandlerDirective reads the edge_limit directive:
//
//	edge_limit [<matcher>] {
//		limit <name> {
//			key <placeholder|text>...
//			rate <n>/<duration>
//			window fixed|anchored|sliding
//			token_bucket <capacity> <n>/<duration>
//			gcra [<n>/<duration>] [burst <n>]
//			burst <n>
//			offset <duration>
//			quota <n> per day|week|month [at HH:MM] [in <time zone>]
//			cost <n>
//			scope route|global
//			dry_run
//		}
//		status <code>
//		headers x-ratelimit|ratelimit|both|none [time]
//		body <template>
//		content_type <type>
//		handle_errors
//		dry_run
//		zone <name>
//		storage <backend> ...
//	}
func parseHandlerDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var handler Handler
	if err := handler.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	if handler.Zone == "" {
		// Counters of route limits belong to this directive: derive the
		// zone from what the directive says, so that it stays the same
		// across reloads, and number equal directives in file order.
		text, err := json.Marshal(&handler)
		if err != nil {
			return nil, err
		}
		sum := shortHash(string(text))
		seen, _ := h.State["edge_limit.zones"].(map[string]int)
		if seen == nil {
			seen = make(map[string]int)
			h.State["edge_limit.zones"] = seen
		}
		seen[sum]++
		handler.Zone = sum
		if n := seen[sum]; n > 1 {
			handler.Zone = fmt.Sprintf("%s-%d", sum, n)
		}
	}
	return &handler, nil
}

// UnmarshalCaddyfile reads the edge_limit directive's tokens.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if d.NextArg() {
		return d.Errf("edge_limit takes a block, not the argument %q", d.Val())
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		opt := d.Val()
		if opt != "limit" {
			if seen[opt] {
				return d.Errf("edge_limit option %q given twice", opt)
			}
			seen[opt] = true
		}
		switch opt {
		case "limit":
			l, err := parseLimit(d)
			if err != nil {
				return err
			}
			for _, other := range h.Limits {
				if other.Name == l.Name {
					return d.Errf("limit %q is declared twice", l.Name)
				}
			}
			h.Limits = append(h.Limits, l)
		case "status":
			n, err := intArg(d)
			if err != nil {
				return err
			}
			if n < 400 || n > 599 {
				return d.Errf("status %d: a denial needs a 4xx or 5xx status", n)
			}
			h.Status = int(n)
		case "headers":
			args := d.RemainingArgs()
			if len(args) == 0 || len(args) > 2 {
				return d.ArgErr()
			}
			if _, err := parseHeaderStyle(args[0]); err != nil {
				return d.Err(err.Error())
			}
			h.Headers = args[0]
			if len(args) == 2 {
				if args[1] != "time" {
					return d.Errf("headers: unknown modifier %q (want time)", args[1])
				}
				h.TimeHeader = true
			}
		case "body":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.Body = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "content_type":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.ContentType = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "handle_errors":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.HandleErrors = true
		case "dry_run":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.DryRun = true
		case "zone":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.Zone = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "storage":
			raw, err := parseStorage(d)
			if err != nil {
				return err
			}
			h.StorageRaw = raw
		default:
			return d.Errf("unknown edge_limit option %q", opt)
		}
	}
	return nil
}

// parseLimit reads one `limit <name> { ... }` block; the dispenser is on
// "limit".
func parseLimit(d *caddyfile.Dispenser) (*Limit, error) {
	at := d.Token()
	if !d.NextArg() {
		return nil, d.Errf("limit needs a name")
	}
	l := &Limit{Name: d.Val()}
	if err := checkName(l.Name); err != nil {
		return nil, d.Err(err.Error())
	}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	var window string // fixed, anchored or sliding, for rate
	var gcra bool
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("limit %q: %q given twice", l.Name, opt)
		}
		seen[opt] = true
		switch opt {
		case "key":
			l.Key = d.RemainingArgs()
			if len(l.Key) == 0 {
				return nil, d.ArgErr()
			}
			for _, k := range l.Key {
				if _, err := parseKeyPart(k); err != nil {
					return nil, d.Errf("key %q: %v", k, err)
				}
			}
		case "rate":
			n, dur, err := rateArg(d)
			if err != nil {
				return nil, err
			}
			l.Limit, l.Window = n, caddy.Duration(dur)
		case "window":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			switch window = d.Val(); window {
			case "fixed", "aligned", "anchored", "sliding":
			default:
				return nil, d.Errf("window %q: want fixed, anchored or sliding", window)
			}
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		case "token_bucket":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			capacity, err := strconv.ParseInt(d.Val(), 10, 64)
			if err != nil {
				return nil, d.Errf("token_bucket capacity %q is not a whole number", d.Val())
			}
			if capacity < 1 {
				return nil, d.Errf("token_bucket capacity must be at least 1, got %d", capacity)
			}
			n, dur, err := rateArg(d)
			if err != nil {
				return nil, err
			}
			l.Algorithm = "token_bucket"
			l.Limit, l.Refill, l.Window = capacity, n, caddy.Duration(dur)
		case "gcra":
			gcra = true
			if d.NextArg() {
				d.Prev()
				n, dur, err := rateArg(d)
				if err != nil {
					return nil, err
				}
				l.Refill, l.Window = n, caddy.Duration(dur)
			}
		case "burst":
			n, err := intArg(d)
			if err != nil {
				return nil, err
			}
			if n < 1 {
				return nil, d.Errf("burst must be at least 1, got %d", n)
			}
			l.Limit = n
		case "offset":
			dur, err := durationArg(d)
			if err != nil {
				return nil, err
			}
			l.Offset = caddy.Duration(dur)
		case "quota":
			if err := parseQuota(d, l); err != nil {
				return nil, err
			}
		case "cost":
			n, err := intArg(d)
			if err != nil {
				return nil, err
			}
			if n < 1 {
				return nil, d.Errf("cost must be at least 1, got %d", n)
			}
			l.Cost = n
		case "scope":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			l.Scope = d.Val()
			if l.Scope != "route" && l.Scope != "global" {
				return nil, d.Errf("scope %q: want route or global", l.Scope)
			}
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		case "dry_run":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			l.DryRun = true
		default:
			return nil, d.Errf("unknown option %q in limit %q", opt, l.Name)
		}
	}
	if err := l.settle(window, gcra, seen); err != nil {
		return nil, errAt(at, "limit %q: %v", l.Name, err)
	}
	if _, err := compileLimit(l, "check"); err != nil {
		return nil, errAt(at, "limit %q: %v", l.Name, err)
	}
	return l, nil
}

// settle resolves the algorithm from the options given together.
func (l *Limit) settle(window string, gcra bool, seen map[string]bool) error {
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
	if window != "" && !seen["rate"] {
		return fmt.Errorf("window %s goes with rate", window)
	}
	if seen["burst"] && !gcra {
		return errors.New("burst goes with gcra (a token bucket's burst is its capacity)")
	}
	switch {
	case gcra:
		if window != "" {
			return errors.New("gcra takes no window")
		}
		if seen["rate"] {
			// rate n/d with gcra: n per d, evenly spaced.
			l.Refill = l.Limit
		}
		if !seen["burst"] {
			l.Limit = l.Refill
		}
		l.Algorithm = "gcra"
	case window == "anchored":
		l.Algorithm = "anchored_window"
	case window == "sliding":
		l.Algorithm = "sliding_window"
	case seen["rate"]:
		l.Algorithm = "fixed_window"
	}
	return nil
}

// parseQuota reads `quota <n> per day|week|month [at HH:MM] [in <zone>]`.
func parseQuota(d *caddyfile.Dispenser, l *Limit) error {
	n, err := intArg(d, "per")
	if err != nil {
		return err
	}
	if n < 1 {
		return d.Errf("quota must be at least 1, got %d", n)
	}
	if !d.NextArg() || d.Val() != "per" || !d.NextArg() {
		return d.Errf("quota %d: want quota <n> per day|week|month", n)
	}
	cal := &CalendarConfig{Period: d.Val()}
	for d.NextArg() {
		switch d.Val() {
		case "at":
			if !d.NextArg() {
				return d.ArgErr()
			}
			cal.At = d.Val()
		case "in":
			if !d.NextArg() {
				return d.ArgErr()
			}
			cal.TimeZone = d.Val()
		default:
			return d.Errf("quota: unexpected %q (want at HH:MM or in <time zone>)", d.Val())
		}
	}
	if _, err := cal.compile(); err != nil {
		return d.Errf("quota: %v", err)
	}
	l.Algorithm, l.Limit, l.Calendar = "fixed_window", n, cal
	return nil
}

// parseGlobalOption reads the edge_limit global option:
//
//	{
//		edge_limit {
//			storage <backend> ...
//		}
//	}
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	var app App
	d.Next() // the option's name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "storage":
			if app.StorageRaw != nil {
				return nil, d.Err("storage given twice")
			}
			raw, err := parseStorage(d)
			if err != nil {
				return nil, err
			}
			app.StorageRaw = raw
		default:
			return nil, d.Errf("unknown edge_limit global option %q", d.Val())
		}
	}
	return httpcaddyfile.App{Name: "edge_limit", Value: caddyconfig.JSON(app, nil)}, nil
}

// parseStorage reads `storage <backend> ...`, handing the rest to the
// backend module; the dispenser is on "storage".
func parseStorage(d *caddyfile.Dispenser) (json.RawMessage, error) {
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	name := d.Val()
	if _, err := caddy.GetModule("edge_limit.storage." + name); err != nil {
		return nil, d.Errf("unknown storage %q", name)
	}
	mod, err := caddyfile.UnmarshalModule(d, "edge_limit.storage."+name)
	if err != nil {
		return nil, err
	}
	return caddyconfig.JSONModuleObject(mod, "backend", name, nil), nil
}

// rateArg reads <n>/<duration> (or <n>/s, /m, /h, /d for one unit).
func rateArg(d *caddyfile.Dispenser) (int64, time.Duration, error) {
	if !d.NextArg() {
		return 0, 0, d.ArgErr()
	}
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

// intArg reads one whole-number argument; a following argument is an error
// unless it is one of allowNext.
func intArg(d *caddyfile.Dispenser, allowNext ...string) (int64, error) {
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	name := d.Token().Text
	n, err := strconv.ParseInt(name, 10, 64)
	if err != nil {
		return 0, d.Errf("%q is not a whole number", name)
	}
	if d.NextArg() {
		for _, a := range allowNext {
			if d.Val() == a {
				d.Prev()
				return n, nil
			}
		}
		return 0, d.ArgErr()
	}
	return n, nil
}

// durationArg reads one duration argument.
func durationArg(d *caddyfile.Dispenser) (time.Duration, error) {
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(d.Val())
	if err != nil {
		return 0, d.Errf("bad duration %q: %v", d.Val(), err)
	}
	if d.NextArg() {
		return 0, d.ArgErr()
	}
	return dur, nil
}

// errAt is an error at a token's place in the Caddyfile, as Dispenser.Errf
// would write it.
func errAt(tok caddyfile.Token, format string, args ...any) error {
	return fmt.Errorf("%s, at %s:%d", fmt.Sprintf(format, args...), tok.File, tok.Line)
}

// Interface guards.
var _ caddyfile.Unmarshaler = (*Handler)(nil)
