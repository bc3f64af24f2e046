package edgelimit

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/edgelimit/caddy-edgelimit/internal/args"
	"github.com/edgelimit/caddy-edgelimit/internal/zone"
	"github.com/edgelimit/caddy-edgelimit/policy"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("edge_limit", parseHandlerDirective)
	// After authentication, so that {http.auth.user.id} is known; before
	// everything that answers or proxies. Plugins may only be ordered
	// against standard directives.
	// edge_cache (package edgecache) goes right after forward_auth, and
	// edge_limit right before request_header: so edge_cache comes first,
	// whichever package registers first, and a cache HIT never counts.
	httpcaddyfile.RegisterDirectiveOrder("edge_limit", httpcaddyfile.Before, "request_header")
	httpcaddyfile.RegisterGlobalOption("edge_limit", parseGlobalOption)
}

// parseHandlerDirective reads the edge_limit directive:
//
//	edge_limit [<matcher>] {
//		limit <name> {
//			key <placeholder|text>...
//			rate <n>/<duration>
//			window fixed|anchored|sliding
//			split <duration>
//			token_bucket <capacity> <n>/<duration>
//			gcra [<n>/<duration>] [burst <n>]
//			burst <n>
//			offset <duration>
//			quota <n> per day|week|month [at HH:MM] [in <time zone>]
//			tier <placeholder> {
//				<tier> <rate|token_bucket|gcra|quota ...>
//				default <tier>
//			}
//			cost <n>
//			scope route|global
//			exempt <limit>...
//			status <code>
//			body <template>
//			dry_run
//		}
//		quota <name> {
//			key <placeholder|text>...
//			limit <n> per day|week|month|<duration> [anchored|aligned]
//			reset <HH:MM> [<time zone>]
//			exempt <limit>...
//			cost, scope, status, body, dry_run as for limit
//		}
//		use <shared limit>...
//		status <code>
//		headers x-ratelimit|ratelimit|both|none [time]
//		body <template>
//		content_type <type>
//		show_key hashed [<secret>]|raw
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
	// Counters of route limits belong to this directive: the zone comes
	// from the names of its limits (numbered in file order when another
	// directive has the same names), not from their numbers, so that a
	// reload that tunes a limit keeps its counts.
	if err := checkUse(h, &handler); err != nil {
		return nil, err
	}
	err := zone.Default(h.State, "edge_limit.zones", handler.zoneNames(), &handler.Zone)
	return &handler, err
}

// checkUse refuses, at its line, a shared limit that the edge_limit global
// option does not declare (the global options are read before any site).
// The handler's Provision refuses it too, for JSON configurations, but
// without a line to point to.
func checkUse(h httpcaddyfile.Helper, handler *Handler) error {
	var app App
	if opt, ok := h.Option("edge_limit").(httpcaddyfile.App); ok {
		if err := json.Unmarshal(opt.Value, &app); err != nil {
			return err
		}
	}
	var names []string
	for _, l := range app.Limits {
		names = append(names, l.Name)
	}
	for i, name := range handler.Use {
		if slices.Contains(names, name) {
			continue
		}
		if len(names) == 0 {
			return args.ErrAt(handler.useAt[i], "use %q: the edge_limit global option declares no limits to use", name)
		}
		return args.ErrAt(handler.useAt[i], "use %q: no such limit in the edge_limit global option (it declares %s)", name, strings.Join(names, ", "))
	}
	return nil
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
		switch opt {
		case "limit", "quota", "use":
			if err := h.limitOption(d, opt); err != nil {
				return err
			}
			continue
		}
		if seen[opt] {
			return d.Errf("edge_limit option %q given twice", opt)
		}
		seen[opt] = true
		if err := h.option(d, opt); err != nil {
			return err
		}
	}
	return nil
}

// limitOption reads a limit or quota block, or the names of shared limits
// (use, or limit <name> without a block).
func (h *Handler) limitOption(d *caddyfile.Dispenser, opt string) error {
	switch opt {
	case "limit", "quota":
		if opt == "limit" && !args.HasBlock(d) {
			// limit <name> with no block uses a shared limit.
			names := d.RemainingArgs()
			if len(names) != 1 {
				return d.ArgErr()
			}
			h.Use = append(h.Use, names[0])
			h.useAt = append(h.useAt, d.Token())
			return nil
		}
		at := d.Token()
		l, err := parseLimitBlock(d)
		if err != nil {
			return err
		}
		if err := declaredOnce(h.Limits, l, at); err != nil {
			return err
		}
		h.Limits = append(h.Limits, l)
	case "use":
		before := len(h.Use)
		for d.NextArg() {
			h.Use = append(h.Use, d.Val())
			h.useAt = append(h.useAt, d.Token())
		}
		if len(h.Use) == before {
			return d.ArgErr()
		}
	}
	return nil
}

// option reads one of the handler's own options.
func (h *Handler) option(d *caddyfile.Dispenser, opt string) error {
	switch opt {
	case "show_key":
		vals := d.RemainingArgs()
		if len(vals) == 0 || len(vals) > 2 {
			return d.ArgErr()
		}
		if err := checkShowKey(vals[0]); err != nil {
			return d.Err(err.Error())
		}
		h.ShowKey = vals[0]
		if len(vals) == 2 {
			if vals[0] != "hashed" {
				return d.Errf("show_key %s takes no secret: a secret goes with hashed", vals[0])
			}
			h.KeySecret = vals[1]
		}
	case "status":
		n, err := args.Int(d)
		if err != nil {
			return err
		}
		if err := checkStatus(n); err != nil {
			return d.Err(err.Error())
		}
		h.Status = int(n)
	case "headers":
		vals := d.RemainingArgs()
		if len(vals) == 0 || len(vals) > 2 {
			return d.ArgErr()
		}
		if _, err := policy.ParseHeaderStyle(vals[0]); err != nil {
			return d.Err(err.Error())
		}
		h.Headers = vals[0]
		if len(vals) == 2 {
			if vals[1] != "time" {
				return d.Errf("headers: unknown modifier %q (want time)", vals[1])
			}
			h.TimeHeader = true
		}
	case "body":
		v, err := args.One(d)
		if err != nil {
			return err
		}
		h.Body = v
	case "content_type":
		v, err := args.One(d)
		if err != nil {
			return err
		}
		h.ContentType = v
	case "handle_errors":
		if err := args.None(d); err != nil {
			return err
		}
		h.HandleErrors = true
	case "dry_run":
		if err := args.None(d); err != nil {
			return err
		}
		h.DryRun = true
	case "zone":
		if args.HasBlock(d) {
			return d.Errf("unknown edge_limit block \"zone <name> { ... }\"%s", ratelimitHint("zone"))
		}
		v, err := args.One(d)
		if err != nil {
			return err
		}
		h.Zone = v
	case "storage":
		raw, err := parseStorage(d)
		if err != nil {
			return err
		}
		h.StorageRaw = raw
	default:
		return d.Errf("unknown edge_limit option %q%s", opt, unknownHint(opt, handlerOptions))
	}
	return nil
}

// parseGlobalOption reads the edge_limit global option:
//
//	{
//		edge_limit {
//			storage <backend> ...
//			limit <name> { ... }
//			quota <name> { ... }
//		}
//	}
//
// Limits and quotas declared here are global; handlers apply them with
// `use <name>...`.
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
		case "limit", "quota":
			at := d.Token()
			l, err := parseLimitBlock(d)
			if err != nil {
				return nil, err
			}
			if l.Scope == "route" {
				return nil, args.ErrAt(at, "limit %q: limits of the global option are global", l.Name)
			}
			if err := declaredOnce(app.Limits, l, at); err != nil {
				return nil, err
			}
			l.Scope = ""
			app.Limits = append(app.Limits, l)
		default:
			return nil, d.Errf("unknown edge_limit global option %q%s", d.Val(), unknownHint(d.Val(), globalOptionNames))
		}
	}
	return httpcaddyfile.App{Name: "edge_limit", Value: caddyconfig.JSON(app, nil)}, nil
}

// declaredOnce refuses a second limit of the same name in one block, at the
// line of the second's "limit" (or "quota").
func declaredOnce(limits []*Limit, l *Limit, at caddyfile.Token) error {
	for _, other := range limits {
		if other.Name == l.Name {
			return args.ErrAt(at, "limit %q is declared twice", l.Name)
		}
	}
	return nil
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

// ratelimitHints are the words of mholt/caddy-ratelimit's rate_limit
// directive, most users' first rate limiter, with what to write here
// instead: a Caddyfile ported from it fails at its first such word, and
// the error says how to go on. Consulted only when an option is refused.
var ratelimitHints = map[string]string{
	"zone":           `edgelimit calls a zone a limit: write "limit <name> { key ...; rate <events>/<window> }"`,
	"events":         `write the events and the window as one "rate <events>/<window>", e.g. "rate 100/1m"`,
	"window":         `the window's length goes in "rate <events>/<window>", e.g. "rate 100/1m"; caddy-ratelimit's window slides: add "window sliding" for the same`,
	"match":          `a limit has no matchers: give edge_limit one ("edge_limit @api { ... }") or put it in a handle block`,
	"ipv4_prefix":    `IPv4 addresses count one by one; IPv6 addresses count by their prefix, "ipv6_prefix <bits>" in the limit (64 by default)`,
	"distributed":    `counts are shared exactly through Redis: write "storage redis <url>" in the edge_limit global option`,
	"jitter":         `Retry-After is the exact wait, rounded up to the second; there is no jitter`,
	"sweep_interval": `it belongs to the storage: write "storage memory { sweep_interval <duration> }" in the edge_limit global option`,
	"log_key":        `denials are logged with the key as show_key says (hashed by default): write "show_key raw" to log it as sent`,
}

// The options of the directive, of the global option and of a limit, for
// the hints of unknownHint.
var (
	handlerOptions    = []string{"limit", "quota", "use", "status", "headers", "body", "content_type", "show_key", "handle_errors", "dry_run", "zone", "storage"}
	globalOptionNames = []string{"storage", "limit", "quota"}
	limitOptions      = []string{"key", "rate", "window", "split", "token_bucket", "gcra", "burst", "offset", "quota", "limit", "reset", "tier", "cost", "ipv6_prefix", "scope", "exempt", "status", "body", "dry_run", "count_responses", "ban", "wait", "sync"}
)

// unknownHint ends the error of an unknown option: caddy-ratelimit's
// hint for its words, else the option of known meant by a near miss
// ("stauts": status), else nothing.
func unknownHint(word string, known []string) string {
	if h := ratelimitHint(word); h != "" {
		return h
	}
	if near := policy.Nearest(word, known); near != "" {
		return fmt.Sprintf(" (did you mean %q?)", near)
	}
	return ""
}

// ratelimitHint is the hint for a caddy-ratelimit word, to end an error's
// message, or "" for any other word.
func ratelimitHint(word string) string {
	h, ok := ratelimitHints[word]
	if !ok {
		return ""
	}
	return fmt.Sprintf(": %s (caddy-ratelimit's %q; see docs/caddy-ratelimit.md)", h, word)
}

// Interface guards.
var _ caddyfile.Unmarshaler = (*Handler)(nil)
