package storage_test

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/edgelimit/caddy-edgelimit/store"
)

// TestParseRedisURLAsGoRedis holds the core's Redis URL reader (the
// Traefik plugin's) to go-redis's (the Caddy module's): one URL, one
// server, database and credentials at both edges.
func TestParseRedisURLAsGoRedis(t *testing.T) {
	for _, raw := range []string{
		"redis://cache:6380/3",
		"redis://cache",
		"rediss://u:p%40ss@cache:6380/3",
		"redis://:only%2Fpassword@10.0.0.1:7000",
		"redis://user@cache/0",
		"redis://[::1]:7000/2",
		"redis://u:p%3Ass%25@[2001:db8::1]/15",
		"redis://:7000",  // no host: localhost, the port kept
		"redis:///2",     // no host, no port
		"redis://:pw@/1", // a password, no host
	} {
		want, err := redis.ParseURL(raw)
		if err != nil {
			t.Fatalf("%s: go-redis: %v", raw, err)
		}
		got, err := store.ParseRedisURL(raw)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if got.Addr != want.Addr || got.Username != want.Username || got.Password != want.Password || got.DB != want.DB || got.TLS != (want.TLSConfig != nil) {
			t.Errorf("%s: %+v, go-redis reads %s %q %q %d tls=%t", raw, got, want.Addr, want.Username, want.Password, want.DB, want.TLSConfig != nil)
		}
	}
	for _, raw := range []string{"http://cache", "redis://cache/x"} {
		if _, err := redis.ParseURL(raw); err == nil {
			t.Errorf("%s: go-redis accepts it", raw)
		}
		if _, err := store.ParseRedisURL(raw); err == nil {
			t.Errorf("%s: accepted", raw)
		}
	}
}
