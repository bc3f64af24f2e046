package edgecache

import (
	"encoding/json"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/edgelimit/caddy-edgelimit/internal/args"
	"github.com/edgelimit/caddy-edgelimit/internal/zone"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("edge_cache", parseCacheDirective)
	// Right after authentication and before edge_limit (which is ordered
	// before request_header): a HIT is served without counting.
	httpcaddyfile.RegisterDirectiveOrder("edge_cache", httpcaddyfile.After, "forward_auth")
}

// parseCacheDirective reads the edge_cache directive:
//
//	edge_cache [<matcher>] {
//		ttl <duration>
//		ttl_max <duration>
//		max_size <size>
//		max_memory <size>
//		stale_if_error <duration>
//		stale_while_revalidate <duration>
//		identity <placeholder>...
//		private_headers <header>...|off
//		keep_headers <header>...
//		coalesce_wait <duration>
//		storage memory|redis {
//			prefix <text>
//		}
//		zone <name>
//		cache_status <name>|off
//		bloom_status off
//	}
//
// Sizes are bytes, or numbers with units as go-humanize reads them
// (256KB, 256MB, 1GiB).
func parseCacheDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var c Handler
	if err := c.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	// Entries belong to this directive: the zone comes from what it says,
	// so that it stays the same across reloads and on every instance.
	err := zone.Default(h.State, "edge_cache.zones", c.zoneView(), &c.Zone)
	return &c, err
}

// UnmarshalCaddyfile reads the edge_cache directive's tokens.
func (c *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	at := d.Token()
	if d.NextArg() {
		return d.Errf("edge_cache takes a block, not the argument %q", d.Val())
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("edge_cache option %q given twice", opt)
		}
		seen[opt] = true
		switch opt {
		case "ttl", "ttl_max", "stale_if_error", "stale_while_revalidate":
			dur, err := args.Duration(d)
			if err != nil {
				return err
			}
			if dur <= 0 && (opt == "ttl" || opt == "ttl_max") || dur < 0 {
				return d.Errf("%s must be positive, got %s", opt, dur)
			}
			switch opt {
			case "ttl":
				c.TTL = caddy.Duration(dur)
			case "ttl_max":
				c.TTLMax = caddy.Duration(dur)
			case "stale_if_error":
				c.StaleIfError = caddy.Duration(dur)
			default:
				c.StaleWhileRevalidate = caddy.Duration(dur)
			}
		case "max_size", "max_memory":
			n, err := args.Size(d)
			if err != nil {
				return err
			}
			if opt == "max_size" {
				c.MaxSize = n
			} else {
				c.MaxMemory = n
			}
		case "identity":
			c.Identity = d.RemainingArgs()
			if len(c.Identity) == 0 {
				return d.ArgErr()
			}
		case "private_headers", "keep_headers":
			names := d.RemainingArgs()
			if len(names) == 0 {
				return d.ArgErr()
			}
			switch {
			case opt == "keep_headers":
				c.KeepHeaders = names
			case len(names) == 1 && names[0] == "off":
				c.SharePrivate = true
			default:
				c.PrivateHeaders = names
			}
		case "coalesce_wait":
			dur, err := args.Duration(d)
			if err != nil {
				return err
			}
			if dur <= 0 {
				return d.Errf("coalesce_wait must be positive, got %s", dur)
			}
			c.CoalesceWait = caddy.Duration(dur)
		case "storage":
			raw, err := parseStorage(d)
			if err != nil {
				return err
			}
			c.StorageRaw = raw
		case "zone":
			v, err := args.One(d)
			if err != nil {
				return err
			}
			c.Zone = v
		case "cache_status":
			v, err := args.One(d)
			if err != nil {
				return err
			}
			if _, err := statusItem(v); err != nil {
				return d.Errf("cache_status %q: %v", v, err)
			}
			c.CacheStatus = v
		case "bloom_status":
			v, err := args.One(d)
			if err != nil {
				return err
			}
			if v != "off" {
				return d.Errf("bloom_status %q: want off (Bloom-Status is sent by default)", v)
			}
			c.BloomStatusOff = true
		default:
			return d.Errf("unknown edge_cache option %q", opt)
		}
	}
	if err := c.validate(); err != nil {
		return args.ErrAt(at, "edge_cache: %v", err)
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
	if _, err := caddy.GetModule("edge_cache.storage." + name); err != nil {
		return nil, d.Errf("storage %q: want memory or redis", name)
	}
	mod, err := caddyfile.UnmarshalModule(d, "edge_cache.storage."+name)
	if err != nil {
		return nil, err
	}
	return caddyconfig.JSONModuleObject(mod, "backend", name, nil), nil
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*Handler)(nil)
