package edgelimit

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/edgelimit/caddy-edgelimit/internal/args"
	"github.com/edgelimit/caddy-edgelimit/policy"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Webhook{})
}

// EventExceeded is emitted on the first denial of a client in a window.
// Its data: limit, key (as show_key says), tier, client_ip, host, path,
// limit_value, retry_after (seconds), window_end (RFC 3339), reset (unix
// seconds), dry_run, and for a limit with a ban, ban and banned_until
// (policy.EventData: the Traefik plugin's too).
const EventExceeded = policy.EventExceeded

// emitter hands edge_limit events to Caddy's events app, off the request
// path, at most policy.MaxPendingEvents at once.
type emitter struct {
	ctx     caddy.Context
	app     *caddyevents.App
	logger  *zap.Logger
	pending policy.Pending
}

func newEmitter(ctx caddy.Context, logger *zap.Logger) (*emitter, error) {
	app, err := ctx.App("events")
	if err != nil {
		return nil, fmt.Errorf("loading the events app: %w", err)
	}
	return &emitter{ctx: ctx, app: app.(*caddyevents.App), logger: logger}, nil
}

func (e *emitter) exceeded(data map[string]any) {
	if e == nil || !e.app.ShouldEmit(EventExceeded) {
		return
	}
	if dropped := e.pending.Go(func() { e.app.Emit(e.ctx, EventExceeded, data) }); dropped != 0 {
		e.logger.Warn(policy.EventsDropped, zap.Uint64("dropped", dropped))
	}
}

// Webhook is an events handler that POSTs each event as a CloudEvent in
// JSON to a URL: a way to notify a team chat, a mail gateway or an incident
// tool when a client hits a limit.
//
//	{
//		events {
//			on edge_limit.exceeded edge_limit_webhook https://hooks.example.com/rate-limits
//		}
//	}
type Webhook struct {
	// URL receives the POST.
	URL string `json:"url"`
	// Headers are added to the POST (an Authorization for the receiver,
	// say). Values may use placeholders such as {env.HOOK_TOKEN}.
	Headers map[string]string `json:"headers,omitempty"`
	// Timeout bounds each delivery. Default: 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	hook   *policy.Webhook
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Webhook) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "events.handlers.edge_limit_webhook",
		New: func() caddy.Module { return new(Webhook) },
	}
}

// Provision checks the URL and prepares the client.
func (wh *Webhook) Provision(ctx caddy.Context) error {
	wh.logger = ctx.Logger()
	repl := caddy.NewReplacer()
	headers := make(map[string]string, len(wh.Headers))
	for k, v := range wh.Headers {
		headers[k] = repl.ReplaceAll(v, "")
	}
	hook, err := policy.NewWebhook(repl.ReplaceAll(wh.URL, ""), headers, time.Duration(wh.Timeout))
	if err != nil {
		return fmt.Errorf("webhook %w", err)
	}
	wh.hook = hook
	return nil
}

// Handle delivers the event (within the timeout, whatever ctx); failures
// are logged, never returned, so a broken receiver cannot abort anything.
func (wh *Webhook) Handle(ctx context.Context, e caddy.Event) error {
	if err := wh.hook.Post(ctx, e.CloudEvent()); err != nil {
		wh.logger.Warn("webhook delivery failed", zap.String("event", e.Name()), zap.Error(err))
	}
	return nil
}

// UnmarshalCaddyfile reads
//
//	edge_limit_webhook <url> {
//		header <name> <value>
//		timeout <duration>
//	}
func (wh *Webhook) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the handler's name
	if !d.NextArg() {
		return d.Errf("edge_limit_webhook needs a URL")
	}
	wh.URL = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "header":
			var name, value string
			if !d.Args(&name, &value) {
				return d.ArgErr()
			}
			if wh.Headers == nil {
				wh.Headers = map[string]string{}
			}
			wh.Headers[name] = value
		case "timeout":
			dur, err := args.Duration(d)
			if err != nil {
				return err
			}
			wh.Timeout = caddy.Duration(dur)
		default:
			return d.Errf("unknown edge_limit_webhook option %q", d.Val())
		}
	}
	return nil
}

// Interface guards.
var (
	_ caddyevents.Handler   = (*Webhook)(nil)
	_ caddy.Provisioner     = (*Webhook)(nil)
	_ caddyfile.Unmarshaler = (*Webhook)(nil)
)

// notify reports the first denial of a key in a window, request i of d:
// one info log line and an edge_limit.exceeded event (the payload is the
// Traefik plugin's too: policy.EventData).
func (h *Handler) notify(r *http.Request, d *policy.Decision, i int) {
	data := h.pol.EventData(d, i, policy.Request{ClientIP: clientIP(r), Host: r.Host, Path: r.URL.Path})
	if res := &d.Res[i]; !d.Reqs[i].DryRun {
		fields := []zap.Field{
			zap.String("limit", d.Meta[i].Limit.Name),
			zap.String("key", data["key"].(string)),
			zap.String("tier", d.Meta[i].Tier),
			zap.String("client_ip", clientIP(r)),
			zap.Int64("limit_value", res.Limit),
			zap.Duration("retry_after", res.RetryAfter),
			zap.Time("window_end", time.UnixMicro(res.ResetAt)),
		}
		if res.Banned {
			fields = append(fields, zap.Duration("ban", d.Reqs[i].Limit.Ban), zap.Time("banned_until", time.UnixMicro(res.ResetAt)))
		}
		h.logger.Info("rate limit exceeded", fields...)
	}
	h.events.exceeded(data)
}
