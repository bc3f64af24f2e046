package storage

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// TestBatchDecidesAsOneByOne: a batch of decisions in one take script
// answers, and leaves each counter, exactly as the same decisions sent one
// script each, one after the other. The batches mix clients, repeat a
// client across decisions and a counter within one, hold up to eight
// limits per decision, dry runs, denials, and calendar quotas asked with
// another day's bounds (a decision that counts nothing).
func TestBatchDecidesAsOneByOne(t *testing.T) {
	srv := redistest.Shared(t)
	opt, err := redis.ParseURL(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	client := redis.NewClient(&redis.Options{Addr: opt.Addr, DB: opt.DB})
	defer client.Close()
	ctx := context.Background()
	if err := client.ScriptLoad(ctx, takeScript.Src).Err(); err != nil {
		t.Fatal(err)
	}
	open := func(prefix string) *Redis {
		// The store closes its own client.
		s, err := NewRedis(redis.NewClient(&redis.Options{Addr: opt.Addr, DB: opt.DB}), RedisOptions{LocalClock: true, NoLocalDenials: true, Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	rng := rand.New(rand.NewPCG(3, 5))
	w := &pipeWorker{index: map[string]int{}}
	base := time.Date(2027, 3, 1, 10, 0, 0, 0, time.UTC).Add(time.Duration(rng.IntN(86400)) * time.Second)
	run0 := time.Now().UnixNano() // keys of this run only (the shared Redis outlives a run: -count)
	for round := range 150 {
		one, batch := open(fmt.Sprintf("%d:serial%d:", run0, round)), open(fmt.Sprintf("%d:batch%d:", run0, round))
		var limits []limiter.Limit
		for range 5 {
			limits = append(limits, randomLimit(rng))
		}
		now := base
		var serial, together []*pipeCall
		for range 1 + rng.IntN(20) {
			now = now.Add(time.Duration(rng.IntN(3)) * time.Second)
			n := 1 + rng.IntN(8)
			reqs := make([]store.Request, n)
			for j := range reqs {
				li := rng.IntN(len(limits))
				reqs[j] = store.Request{Counter: fmt.Sprintf("c%d", li), Key: []string{"a", "b", "c"}[rng.IntN(3)],
					Limit: limits[li], Cost: 1 + int64(rng.IntN(3))*int64(rng.IntN(2)), DryRun: rng.IntN(6) == 0}
			}
			at := now.UnixMicro()
			if rng.IntN(25) == 0 {
				at -= 2 * 86400e6 // calendar bounds of another day: "B"
			}
			serial = append(serial, call(one, reqs, at, now))
			together = append(together, call(batch, reqs, at, now))
		}
		var want strings.Builder
		for _, c := range serial {
			want.WriteString(run(t, ctx, client, w, []*pipeCall{c}))
		}
		if got := run(t, ctx, client, w, together); got != want.String() {
			t.Fatalf("round %d: the batch of %d decisions answered\n%q\none by one:\n%q", round, len(together), got, want.String())
		}
		for _, key := range []string{"a", "b", "c"} {
			a, b := counters(t, ctx, client, one, key), counters(t, ctx, client, batch, key)
			if !maps.Equal(a, b) {
				t.Fatalf("round %d, client %s: the batch left %v, one by one %v", round, key, b, a)
			}
		}
		one.Close()
		batch.Close()
	}
}

// call is the pipe's call of one decision of s.
func call(s *Redis, reqs []store.Request, at int64, now time.Time) *pipeCall {
	sc := s.scratch.Get().(*redisScratch)
	defer s.putScratch(sc)
	s.prepare(sc, reqs)
	keys, spec, fields := s.requests(sc, reqs, nil, at)
	return &pipeCall{keys: slices.Clone(keys), spec: slices.Clone(spec), fields: slices.Clone(fields), now: now.UnixMicro()}
}

// run sends calls as one take script, as the pipe does, and returns its
// reply.
func run(t *testing.T, ctx context.Context, client *redis.Client, w *pipeWorker, calls []*pipeCall) string {
	t.Helper()
	cmd := w.build(ctx, calls)
	_ = client.Process(ctx, cmd)
	reply, err := cmd.Result()
	if err != nil {
		t.Fatal(err)
	}
	return reply
}

// counters is the hash of s's client key without its TTL mark.
func counters(t *testing.T, ctx context.Context, client *redis.Client, s *Redis, key string) map[string]string {
	t.Helper()
	sc := s.scratch.Get().(*redisScratch)
	defer s.putScratch(sc)
	s.prepare(sc, []store.Request{{Key: key}})
	h, err := client.HGetAll(ctx, sc.keys[0]).Result()
	if err != nil {
		t.Fatal(err)
	}
	delete(h, "~")
	return h
}
