module github.com/edgelimit/caddy-edgelimit/traefik

go 1.26.8

require github.com/edgelimit/caddy-edgelimit v0.0.0-00010101000000-000000000000

replace github.com/edgelimit/caddy-edgelimit => ../
