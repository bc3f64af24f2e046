package edgelimit

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// An exempt name must be a limit of the configuration: a typo would
// silently exempt nothing. Limits are declared by the global option and by
// handlers anywhere in the http app, before or after the limit that exempts
// them, and Caddy provisions the apps in no set order; yet `caddy validate`
// provisions and never starts, so the check must be complete by the end of
// provisioning. It is, whatever the order: a name is known when the global
// option or a handler provisioned so far declares it (App.declared), or
// when a handler not yet provisioned does: those are still raw JSON in the
// http app being provisioned (Caddy drops a module's JSON once it is
// loaded), read by pendingNames. When the edge_limit app is provisioned
// before the http app, it has the http app provisioned first (see
// App.checkExemptions).

// checkExemptions checks the exemptions of the global option's limits.
func (a *App) checkExemptions(ctx caddy.Context) error {
	var unknown []string
	for _, cl := range a.shared {
		for _, e := range cl.Exempt {
			if !a.declared[e] {
				unknown = append(unknown, cl.Name+"\x00"+e)
			}
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	if httpApp(ctx) == nil {
		// The http app is not provisioning: its handlers are to come.
		// Provision it now (it finds this app, provisioned so far), so
		// that every handler has declared its limits.
		if _, err := ctx.AppIfConfigured("http"); err != nil && !errors.Is(err, caddy.ErrNotConfigured) {
			return err
		}
	}
	slices.Sort(unknown)
	for _, u := range unknown {
		name, e, _ := strings.Cut(u, "\x00")
		if err := a.known(ctx, "the edge_limit global option", name, e); err != nil {
			return err
		}
	}
	return nil
}

// checkExempt checks the exemptions of a handler's own limits, once they
// are declared.
func (a *App) checkExempt(ctx caddy.Context, own []*compiledLimit) error {
	var with []string
	for _, cl := range own {
		with = append(with, cl.Name)
	}
	where := "the edge_limit directive with limits " + strings.Join(with, ", ")
	for _, cl := range own {
		for _, e := range cl.Exempt {
			if err := a.known(ctx, where, cl.Name, e); err != nil {
				return err
			}
		}
	}
	return nil
}

// known refuses the exemption of name by limit (in where) unless a limit of
// that name is declared, or is to be when the http app's pending handlers
// are provisioned.
func (a *App) known(ctx caddy.Context, where, limit, name string) error {
	if a.declared[name] {
		return nil
	}
	pending := pendingNames(httpApp(ctx))
	if pending[name] {
		return nil
	}
	all := make([]string, 0, len(a.declared)+len(pending))
	for n := range a.declared {
		all = append(all, n)
	}
	for n := range pending {
		if !a.declared[n] {
			all = append(all, n)
		}
	}
	slices.Sort(all)
	return fmt.Errorf("limit %q in %s: exempt %q: no edge_limit directive nor the global option declares a limit of that name (the limits are %s)",
		limit, where, name, strings.Join(all, ", "))
}

// httpApp is the http app whose provisioning is under way, or nil.
func httpApp(ctx caddy.Context) *caddyhttp.App {
	for _, m := range ctx.Modules() {
		if app, ok := m.(*caddyhttp.App); ok {
			return app
		}
	}
	return nil
}

// pendingNames lists the limit names of the edge_limit handlers of app
// that are not provisioned yet: what remains of its JSON (the handlers
// already loaded are gone from it). It reads every object of the JSON that
// names the edge_limit handler, so handlers inside subroutes, named routes
// and error routes count too.
func pendingNames(app *caddyhttp.App) map[string]bool {
	names := map[string]bool{}
	if app == nil {
		return names
	}
	raw, err := json.Marshal(app)
	if err != nil {
		return names
	}
	var tree any
	if json.Unmarshal(raw, &tree) != nil {
		return names
	}
	collectNames(tree, names)
	return names
}

func collectNames(v any, names map[string]bool) {
	switch v := v.(type) {
	case map[string]any:
		if v["handler"] == "edge_limit" {
			var h struct {
				Limits []struct {
					Name string `json:"name"`
				} `json:"limits"`
			}
			if b, err := json.Marshal(v); err == nil && json.Unmarshal(b, &h) == nil {
				for _, l := range h.Limits {
					names[l.Name] = true
				}
			}
		}
		for _, child := range v {
			collectNames(child, names)
		}
	case []any:
		for _, child := range v {
			collectNames(child, names)
		}
	}
}
