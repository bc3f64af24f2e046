package edgelimit

import (
	"context"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// proxyCheck warns once when a limit keyed on the client's address runs
// behind a trusted proxy without trusted_proxies_strict. Caddy then takes
// the client address from the leftmost X-Forwarded-For entry, which the
// client writes itself when the proxy in front appends to the header: each
// made-up address is a new counter. The server a handler runs in is known
// only from its requests (Caddy drops a server's trusted_proxies JSON once
// loaded, and does not tell a handler which server provisions it), so the
// check is made on the first request a trusted proxy sends, and stops there.
type proxyCheck struct {
	limits []string // the limits keyed on {client_ip}; none: no check
	done   atomic.Bool
}

// check looks at one request: vars are its variables.
func (p *proxyCheck) check(ctx context.Context, vars map[string]any, logger *zap.Logger) {
	if trusted, _ := vars[caddyhttp.TrustedProxyVarKey].(bool); !trusted {
		return
	}
	srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil || p.done.Swap(true) || srv.TrustedProxiesStrict > 0 {
		return
	}
	logger.Warn("limits keyed on the client's address run behind a trusted proxy without trusted_proxies_strict: "+
		"Caddy takes the client address from the leftmost X-Forwarded-For entry, which a client writes itself when the proxy in front appends to the header, "+
		"and each made-up address is a new counter; set trusted_proxies_strict in the server's options "+
		"(see docs/security.md), or ignore this if the proxy in front replaces X-Forwarded-For",
		zap.Strings("limits", p.limits), zap.String("client_ip_headers", firstOr(srv.ClientIPHeaders, "X-Forwarded-For")))
}

func firstOr(list []string, def string) string {
	if len(list) > 0 {
		return list[0]
	}
	return def
}
