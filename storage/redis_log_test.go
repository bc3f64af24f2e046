package storage_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
	"github.com/edgelimit/caddy-edgelimit/store/storetest"
)

// TestGoRedisLogsThroughTheStore: go-redis wrote raw lines to stderr
// ("redis: ... pool.go:770: redis: connection pool: failed to dial ..."),
// past Caddy's structured log. With a Redis that refuses connections, the
// store's requests make go-redis log: the lines reach the store's logger,
// and nothing reaches stderr. go-redis's logger is one for the process and
// writes to the stderr it saw at start, so the store runs in a child
// process whose stderr is read here.
func TestGoRedisLogsThroughTheStore(t *testing.T) {
	if os.Getenv("EDGELIMIT_GO_REDIS_LOG_CHILD") == "1" {
		goRedisLogChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestGoRedisLogsThroughTheStore$", "-test.v")
	cmd.Env = append(os.Environ(), "EDGELIMIT_GO_REDIS_LOG_CHILD=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s\n%s", err, out, stderr.String())
	}
	if !strings.Contains(string(out), "LOGGED go-redis: redis: connection pool: failed to dial") {
		t.Fatalf("the store's logger got no go-redis line:\n%s", out)
	}
	if strings.Contains(stderr.String(), "redis:") {
		t.Fatalf("go-redis wrote to stderr:\n%s", stderr.String())
	}
}

func goRedisLogChild(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nobody listens there now: every dial is refused
	core, logs := observer.New(zap.WarnLevel)
	client := storage.NewRedisClient(&redis.UniversalOptions{Addrs: []string{addr}}, 200*time.Millisecond)
	s, err := storage.NewRedis(client, storage.RedisOptions{LocalClock: true, Logger: zap.New(core), RetryInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 5, Window: time.Minute}
	res := make([]limiter.Result, 1)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && logs.FilterLoggerName("go-redis").Len() == 0 {
		_ = s.Take(context.Background(), storetest.Base, []store.Request{{Counter: "c", Key: "k", Limit: l, Cost: 1}}, res)
	}
	for _, e := range logs.All() {
		os.Stdout.WriteString("LOGGED " + e.LoggerName + ": " + e.Message + "\n")
	}
}
