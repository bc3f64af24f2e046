package harness

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"
)

// TestPoolsUnderYaegi: two Redis stores (two pools of one connection, so
// that requests wait for one) serving 32 concurrent clients under Yaegi:
// every request ends. Yaegi v0.16.1 runs all executions of one select
// statement on one shared array of cases, and the pool's select let a
// request wait on another request's timer, or take a slot of the other
// pool, and hang for good; the pool has no select now.
func TestPoolsUnderYaegi(t *testing.T) {
	p := loadPlugin(t)
	r := startRedis(t)
	stamp := time.Now().UnixNano()
	var hs [2]http.Handler
	for i := range hs {
		conf := fmt.Sprintf("limits:\n  l:\n    key: [header:X-Api-Key]\n    limit: 1000000\n    window: 1h\nstorage:\n  redis:\n    address: %s\n    keyPrefix: \"pools-%d-%d:\"\n    timeout: 200ms\n    poolSize: 1\n", r.Addr, stamp, i)
		hs[i] = p.middleware(t, conf, nil, &upstream{})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for g := 0; g < 32; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 25; i++ {
					send(hs[(g+i)%2], "GET", "/", "X-Api-Key", fmt.Sprintf("c%d", g))
				}
			}()
		}
		wg.Wait()
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("requests still running after 2 minutes: a request hung in the Redis pool")
	}
}
