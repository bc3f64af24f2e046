// Command caddy is Caddy with the edgelimit plugin, as
// `xcaddy build --with github.com/edgelimit/caddy-edgelimit` would build it.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// the standard Caddy modules
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	// edge_limit and edge_cache
	_ "github.com/edgelimit/caddy-edgelimit"
)

func main() {
	caddycmd.Main()
}
