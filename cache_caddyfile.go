package edgelimit

import (
	"encoding/json"
	"fmt"
	"math"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	// The directive's order (before edge_limit) is registered in
	// caddyfile.go, after edge_limit's own.
	httpcaddyfile.RegisterHandlerDirective("edge_cache", parseCacheDirective)
}

// parseCacheDirective reads the edge_cache directive:
//
//	edge_cache [<matcher>] {
//		ttl <duration>
//		ttl_max <duration>
//		max_size <size>
//		max_memory <size>
//		stale_if_error <duration>
//		identity <placeholder>...
//		storage memory|redis {
//			prefix <text>
//		}
//		zone <name>
//	}
//
// Sizes are bytes, or numbers with units as go-humanize reads them
// (256KB, 256MB, 1GiB).
func parseCacheDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var c Cache
	if err := c.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	if c.Zone == "" {
		// Entries belong to this directive: derive the zone from what it
		// says, so that it stays the same across reloads and on every
		// instance, and number equal directives in file order.
		text, err := json.Marshal(&c)
		if err != nil {
			return nil, err
		}
		sum := shortHash(string(text))
		seen, _ := h.State["edge_cache.zones"].(map[string]int)
		if seen == nil {
			seen = make(map[string]int)
			h.State["edge_cache.zones"] = seen
		}
		seen[sum]++
		c.Zone = sum
		if n := seen[sum]; n > 1 {
			c.Zone = fmt.Sprintf("%s-%d", sum, n)
		}
	}
	return &c, nil
}

// UnmarshalCaddyfile reads the edge_cache directive's tokens.
func (c *Cache) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
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
		case "ttl", "ttl_max", "stale_if_error":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			if dur <= 0 && opt != "stale_if_error" || dur < 0 {
				return d.Errf("%s must be positive, got %s", opt, dur)
			}
			switch opt {
			case "ttl":
				c.TTL = caddy.Duration(dur)
			case "ttl_max":
				c.TTLMax = caddy.Duration(dur)
			default:
				c.StaleIfError = caddy.Duration(dur)
			}
		case "max_size", "max_memory":
			n, err := sizeArg(d)
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
		case "storage":
			if !d.NextArg() {
				return d.ArgErr()
			}
			c.Storage = d.Val()
			if c.Storage != "memory" && c.Storage != "redis" {
				return d.Errf("storage %q: want memory or redis", c.Storage)
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				switch d.Val() {
				case "prefix":
					if c.Storage != "redis" {
						return d.Errf("prefix goes with storage redis")
					}
					if !d.NextArg() {
						return d.ArgErr()
					}
					c.RedisPrefix = d.Val()
					if d.NextArg() {
						return d.ArgErr()
					}
				default:
					return d.Errf("unknown %s storage option %q", c.Storage, d.Val())
				}
			}
		case "zone":
			if !d.NextArg() {
				return d.ArgErr()
			}
			c.Zone = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unknown edge_cache option %q", opt)
		}
	}
	if err := c.validate(); err != nil {
		return errAt(at, "edge_cache: %v", err)
	}
	return nil
}

// sizeArg reads one size argument: bytes, or a number with a unit (256KB,
// 1MiB).
func sizeArg(d *caddyfile.Dispenser) (int64, error) {
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	opt := d.Token()
	n, err := humanize.ParseBytes(d.Val())
	if err != nil {
		return 0, d.Errf("size %q: want bytes or a size such as 256KB or 256MB", d.Val())
	}
	if n == 0 || n > math.MaxInt64/2 {
		return 0, d.Errf("size %q: out of range", opt.Text)
	}
	if d.NextArg() {
		return 0, d.ArgErr()
	}
	return int64(n), nil
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*Cache)(nil)
