package storage_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
	"github.com/edgelimit/caddy-edgelimit/store/storetest"
)

// The Redis store counts local denials, its errors by kind when its
// redis-server is killed, and each decision of its on_error policy.
func TestRedisStats(t *testing.T) {
	for _, policy := range []store.OnError{store.Allow, store.Deny, store.Local} {
		t.Run(policy.String(), func(t *testing.T) {
			srv := redistest.Start(t)
			s := openRedis(t, srv, storage.RedisOptions{
				LocalClock: true, OnError: policy, Timeout: 500 * time.Millisecond, RetryInterval: time.Hour,
			})
			// Local denials are used once the store's invalidation
			// subscription is confirmed.
			waitLocalDenials(t, s, true)
			ctx := context.Background()
			l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 1, Window: time.Hour}
			req := []store.Request{{Counter: "c", Key: "k", Limit: l, Cost: 1}}
			res := make([]limiter.Result, 1)
			for range 4 { // allowed, denied by Redis, denied here twice
				if err := s.Take(ctx, storetest.Base, req, res); err != nil {
					t.Fatal(err)
				}
			}
			st := s.Stats()
			if st.LocalDenials != 2 || st.Errors != [storage.NumRedisErrorKinds]uint64{} || st.OnError != [3]uint64{} {
				t.Fatalf("before the fault: %+v", st)
			}
			srv.Stop()
			other := []store.Request{{Counter: "c", Key: "other", Limit: l, Cost: 1}}
			const down = 5
			for range down {
				_ = s.Take(ctx, storetest.Base, other, res)
			}
			st = s.Stats()
			// One exchange failed (the connection closed or refused); the
			// retry interval is an hour, so the others went to on_error
			// without trying.
			if st.Errors[storage.RedisConnection] != 1 || st.Errors[storage.RedisTimeout]+st.Errors[storage.RedisScript]+st.Errors[storage.RedisOther] != 0 {
				t.Errorf("errors by kind: %v", st.Errors)
			}
			for p := range st.OnError {
				want := uint64(0)
				if store.OnError(p) == policy {
					want = down
				}
				if st.OnError[p] != want {
					t.Errorf("on_error %s: %d, want %d", store.OnError(p), st.OnError[p], want)
				}
			}
			if policy == store.Local && st.LocalKeys != 1 {
				t.Errorf("local keys: %d", st.LocalKeys)
			}
		})
	}
}

// A Redis that accepts and never answers: a timeout.
func TestRedisStatsTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	accepted := make(chan struct{})
	var conns sync.WaitGroup
	go func() {
		defer close(accepted)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				<-done
				c.Close()
			}()
		}
	}()
	defer func() {
		// The accept loop ends before the wait: a connection it took as
		// the listener closed must not be added while conns.Wait runs
		// (the race detector saw it).
		ln.Close()
		<-accepted
		close(done)
		conns.Wait()
	}()
	client := storage.NewRedisClient(&redis.UniversalOptions{Addrs: []string{ln.Addr().String()}}, 100*time.Millisecond)
	s, err := storage.NewRedis(client, storage.RedisOptions{Timeout: 100 * time.Millisecond, OnError: store.Allow, RetryInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 3, Window: time.Hour}
	req := []store.Request{{Counter: "c", Key: "k", Limit: l, Cost: 1}}
	res := make([]limiter.Result, 1)
	for range 3 {
		_ = s.Take(context.Background(), time.Now(), req, res)
	}
	st := s.Stats()
	if st.Errors[storage.RedisTimeout] != 1 || st.Errors[storage.RedisConnection] != 0 || st.OnError[store.Allow] != 3 {
		t.Fatalf("%+v", st)
	}
}
