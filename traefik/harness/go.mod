module github.com/edgelimit/caddy-edgelimit/traefik/harness

go 1.26.8

require (
	github.com/mitchellh/mapstructure v1.5.0
	github.com/traefik/yaegi v0.16.1
	gopkg.in/yaml.v3 v3.0.1
)
