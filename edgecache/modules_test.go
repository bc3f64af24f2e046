package edgecache_test

// The end-to-end tests run edge_cache in a Caddy with Caddy's standard
// modules and edge_limit, as xcaddy builds it.
import (
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/edgelimit/caddy-edgelimit"
)
