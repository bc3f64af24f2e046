package storage_test

import (
	"strings"
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
		"redis://:7000",        // no host: localhost, the port kept
		"redis:///2",           // no host, no port
		"redis://:pw@/1",       // a password, no host
		"redis://cache?db=3",   // go-redis reads db in the query
		"redis://cache/1?db=4", // over the path's
		"redis://cache/2?db=",  // an empty one: the path's
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
	// An option go-redis reads and the plugin does not is refused there,
	// not left out.
	if _, err := store.ParseRedisURL("redis://cache?dial_timeout=1s"); err == nil || !strings.Contains(err.Error(), "dial_timeout") {
		t.Errorf("an option the plugin does not read: %v", err)
	}
	for _, raw := range []string{"http://cache", "redis://cache/x", "redis://cache?db=x", "redis://cache?password=x"} {
		if _, err := redis.ParseURL(raw); err == nil {
			t.Errorf("%s: go-redis accepts it", raw)
		}
		if _, err := store.ParseRedisURL(raw); err == nil {
			t.Errorf("%s: accepted", raw)
		}
	}
}

// A URL's errors never show its password at either edge: not in the
// query, where go-redis reads no password and refuses it, nor the piece
// that url.Parse quotes (a '/' in an unencoded password makes what is
// before it a "port"; a bad %-escape in it).
func TestRedisURLErrorsHidePassword(t *testing.T) {
	for _, raw := range []string{
		"redis://cache/3?password=hunter2",
		"redis://cache/x?password=hunter2",
		"redis://:hunter2/x@cache:6379",
		"redis://:hun%zzter2@cache",
	} {
		_, err := redis.ParseURL(raw)
		if err == nil {
			t.Fatalf("%s: go-redis accepts it", raw)
		}
		_, err2 := store.ParseRedisURL(raw)
		if err2 == nil {
			t.Fatalf("%s: the plugin's reader accepts it", raw)
		}
		for _, e := range []error{store.RedisURLError(raw, err), err2} {
			if strings.Contains(e.Error(), "hun") {
				t.Errorf("%s: %v", raw, e)
			}
		}
	}
}
